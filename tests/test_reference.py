"""Reference circuits, comparison and ROC/AUC on hand-made cases, the paper's tables."""

from __future__ import annotations

import pandas as pd
import pytest

import mgnp_lens as mg
from mgnp_lens import reference

from helpers import with_heads

GPT2 = mg.ModelDims(n_layers=12, n_heads=12, d_head=64, d_mlp=3072, d_model=768)


TINY = mg.ModelDims(n_layers=2, n_heads=2, d_head=2, d_mlp=4, d_model=3)


def test_reference_circuits_load():
    ioi = reference.get_reference("ioi")
    assert len(ioi.heads) == 26 and ioi.head_class()[(9, 9)] == "name_mover" and not ioi.mlps
    acdc, hanna = reference.get_reference("gt-acdc"), reference.get_reference("gt-hanna")
    assert (6, 1) in acdc.heads and (6, 1) not in hanna.heads and {(5, 1), (8, 8)} <= hanna.heads - acdc.heads
    assert acdc.mlps == set(range(4)) | set(range(8, 12))
    with pytest.raises(ValueError, match="no reference circuit for 'gp'"):
        reference.get_reference("gp")
    with pytest.raises(ValueError, match="unknown reference circuit 'docstring'"):
        reference.get_reference("docstring")


def test_compare_known_answer():
    # 2 of 3 name movers, 1 of 2 previous-token heads, 1 head outside the circuit; MLPs 0, 1 and 5
    c = with_heads(GPT2, [(9, 9), (10, 0), (2, 2), (3, 3)], mlps=[0, 1, 5])
    t = reference.compare(c, "ioi").set_index(["level", "class"])
    assert t.loc[("head", "name_mover"), "recall"] == pytest.approx(2 / 3)
    assert t.loc[("head", "previous_token"), "recall"] == pytest.approx(1 / 2)
    assert t.loc[("head", "induction"), "recall"] == 0
    all_ = t.loc[("head", "all")]
    assert all_.true_positives == 3 and all_.precision == pytest.approx(3 / 4)
    assert all_.recall == pytest.approx(3 / 26) and all_.jaccard == pytest.approx(3 / 27)
    assert all_.f1 == pytest.approx(2 * 0.75 * (3 / 26) / (0.75 + 3 / 26))
    assert all_.fpr == pytest.approx(1 / (144 - 26))
    assert "mlp" not in t.index.get_level_values(0)  # IOI's reference has no MLP nodes
    g = reference.compare(c, "gt-acdc").set_index(["level", "class"])
    assert g.loc[("mlp", "mlp_early"), "recall"] == pytest.approx(2 / 4)
    assert g.loc[("mlp", "all"), "precision"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="GPT-2 small"):
        reference.compare(mg.Circuit.full(TINY), "ioi")


def test_roc_known_auc():
    ref = reference.ReferenceCircuit("toy", "hand-made", {"a": [(0, 0)]}, n_layers=2, n_heads=2)
    perfect = with_heads(TINY, [(0, 0)])
    wrong = with_heads(TINY, [(0, 1)])
    assert reference.roc([perfect], ref, level="head").auc == pytest.approx(1.0)
    curve = reference.roc([wrong], ref, level="head")
    assert curve.auc == pytest.approx(1 / 3)  # (0,0) → (1/3, 0) → (1, 1)
    assert curve.points[["fpr", "tpr"]].values.tolist() == [[0, 0], [pytest.approx(1 / 3), 0], [1, 1]]
    both = reference.roc([wrong, perfect, mg.Circuit.full(TINY)], ref, level="head", labels=["w", "p", "f"])
    assert both.auc == pytest.approx(1.0)
    assert list(both.points["label"]) == ["endpoint", "p", "w", "f", "endpoint"]
    assert list(both.points["on_curve"]) == [True, True, False, True, True]  # w is beaten by p
    with pytest.raises(ValueError, match="no MLP nodes"):
        reference.roc([perfect], ref, level="mlp")


def test_roc_node_level_counts_mlps_when_the_reference_has_them():
    c = with_heads(GPT2, [(0, 1), (0, 3)], mlps=[0, 1, 2, 3, 8, 9, 10, 11])
    pts = reference.roc([c], "gt-acdc", level="node").points
    row = pts[pts.label == 0].iloc[0]
    assert row.tpr == pytest.approx((2 + 8) / (9 + 8))  # 9 ACDC heads + 8 MLPs
    assert row.fpr == 0


def test_paper_tables_are_keyed_by_our_names():
    s = reference.paper_summary("ioi").set_index("granularity")
    assert s.loc["attn_head", "active"] == 21 and s.loc["attn_neuron", "sparsity_pct"] == 90.2
    assert reference.paper_faithfulness("gt")["kl"] == pytest.approx(0.0059)
    d = reference.paper_per_layer("ioi")
    assert list(d.columns) == mg.granularity.APPENDIX_D_COLUMNS and len(d) == 12 and d.iloc[0]["Attn Heads"] == "11/12"
    cmp = reference.paper_comparison(mg.Circuit.full(GPT2), "ioi").set_index("granularity")
    assert cmp.loc["attn_head", "active"] == 144 and cmp.loc["attn_head", "paper_active_gpt2"] == 21
    with pytest.raises(ValueError, match="no tables for task 'docstring'"):
        reference.paper_summary("docstring")


# ------------------------------------------------------------------ activation patching with TransformerLens's own
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_patching_effects_agree_with_mgnp_ablation_of_one_node(kind):
    """TransformerLens's patching and mgnp-lens's hooks, two independent implementations, give the same effect."""
    from helpers import micro_model, random_pairs

    from mgnp_lens.reference import patching_effects

    model = micro_model(kind)
    clean, corrupted = random_pairs(model, n=16)
    task = mg.PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    effects = patching_effects(model, task, "train", batch_size=4)
    assert len(effects) == 2 * 4 + 2 and effects["effect"].abs().is_monotonic_decreasing
    full = mg.Circuit.full(model)
    for _, row in effects.iterrows():
        masks = {g: m.clone() for g, m in full.masks.items()}
        if row["kind"] == "head":
            masks["attn_head"][row["layer"], row["head"]] = False
            masks["attn_neuron"][row["layer"], row["head"]] = False
        else:
            masks["mlp_block"][row.layer] = False
            masks["mlp_hidden"][row.layer] = False
            masks["mlp_output"][row.layer] = False
        ev = mg.evaluate(model, task, mg.Circuit(full.dims, masks), "train")
        assert row["effect"] == pytest.approx(ev.base_metric - ev.circuit_metric, abs=1e-4), row["name"]
    assert effects["effect"].abs().max() > 1e-3  # the components matter on this model


def test_rank_against_patching():
    from mgnp_lens.reference import rank_against_patching

    dims = mg.ModelDims(n_layers=2, n_heads=2, d_head=4, d_mlp=8, d_model=8)
    effects = pd.DataFrame({"kind": ["head"] * 4 + ["mlp"] * 2, "layer": [0, 0, 1, 1, 0, 1], "head": [0, 1, 0, 1, -1, -1],
                            "name": ["L0 H0", "L0 H1", "L1 H0", "L1 H1", "L0 MLP", "L1 MLP"],
                            "effect": [0.9, -0.5, 0.1, 0.0, 0.2, 0.7]})
    c = mg.Circuit.empty(dims)
    m = c.masks
    m["attn_block"][:] = True
    m["attn_head"][0, 0] = m["attn_head"][1, 0] = True
    m["attn_neuron"][0, 0] = m["attn_neuron"][1, 0] = True
    m["mlp_block"][1] = True
    m["mlp_hidden"][1] = m["mlp_output"][1] = True
    r = rank_against_patching(mg.Circuit(dims, m), effects).set_index("kind")
    # heads kept: |0.9|, |0.1|; pruned: |0.5|, |0.0| -> pairs won 3 of 4
    assert r.loc["head", "auc"] == pytest.approx(0.75) and r.loc["head", "precision_at_k"] == pytest.approx(0.5)
    assert r.loc["head", "strongest_not_kept"] == "L0 H1" and r.loc["head", "its_effect"] == -0.5
    assert r.loc["mlp", "auc"] == 1.0 and r.loc["mlp", "precision_at_k"] == 1.0
