"""Reference comparison, ROC/AUC, baselines, sweeps, stability and interactions on hand-made cases."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens import baselines, reference
from mgnp_lens.interactions import interactions
from mgnp_lens.sweep import jaccard, overlap, stability, sweep
from mgnp_lens.tasks import PromptPairTask

from conftest import micro_model, random_pairs

GPT2 = mg.ModelDims(n_layers=12, n_heads=12, d_head=64, d_mlp=3072, d_model=768)
TINY = mg.ModelDims(n_layers=2, n_heads=2, d_head=2, d_mlp=4, d_model=3)


def with_heads(dims, heads, mlps=()):
    c = mg.Circuit.empty(dims)
    m = c.masks
    for l, h in heads:
        m["attn_block"][l] = True
        m["attn_head"][l, h] = True
        m["attn_neuron"][l, h] = True
    for l in mlps:
        m["mlp_block"][l] = True
        m["mlp_hidden"][l] = True
        m["mlp_output"][l] = True
    return mg.Circuit(dims, m)


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


# ------------------------------------------------------------------------------------------ baselines
@pytest.fixture
def micro_task():
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=16)
    return model, PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])


def test_random_baseline_matches_counts_and_is_valid():
    d = mg.ModelDims(n_layers=4, n_heads=4, d_head=4, d_mlp=16, d_model=8)
    target = baselines.random_circuit(d, {"embedding": 1, "attn_block": 3, "mlp_block": 2, "attn_head": 5,
                                          "attn_neuron": 11, "mlp_hidden": 9, "mlp_output": 4}, seed=1)
    for seed in range(5):
        c = baselines.random_circuit(d, target, seed=seed)
        assert c.counts() == target.counts()
        assert not mg.circuit.hierarchy_violations(c.masks)
    assert baselines.random_circuit(d, target, seed=0) != baselines.random_circuit(d, target, seed=3)
    with pytest.raises(ValueError, match="cannot keep 14 attn_head nodes: the kept parents hold only 12"):
        baselines.random_circuit(d, {"attn_block": 3, "attn_head": 14})
    with pytest.raises(ValueError, match="cannot keep only 2 attn_head nodes: 3 kept parents"):
        baselines.random_circuit(d, {"attn_block": 3, "attn_head": 2})
    with pytest.raises(ValueError, match="outside 0..4"):
        baselines.random_circuit(d, {"attn_block": 5})


def test_attribution_scores_and_budget(micro_task):
    model, task = micro_task
    with torch.no_grad():
        model.blocks[1].attn.W_O[2].zero_()  # head L1 H2 writes nothing: its score must be 0
    scores = baselines.attribution_scores(model, task, batch_size=8)
    assert scores["attn_head"][1, 2] == 0 and scores["attn_neuron"][1, 2].abs().sum() == 0
    assert scores["attn_head"].sum() > 0 and all(v.min() >= 0 for v in scores.values())
    budget = {"embedding": 1, "attn_block": 2, "mlp_block": 1, "attn_head": 3, "attn_neuron": 10, "mlp_hidden": 20,
              "mlp_output": 10}
    c = baselines.attribution(model, task, budget, batch_size=8)
    assert c.counts() == budget and (1, 2) not in c.active_heads()
    assert not mg.circuit.hierarchy_violations(c.masks)


def test_coarse_baseline_gates_only_heads_and_mlp_blocks(micro_task):
    model, task = micro_task
    r = baselines.coarse(model, task, steps=4, batch_size=8, progress=False, eval_split=None)
    assert r.gates.trainable == ("mlp_block", "attn_head")
    c = r.circuit
    for l, h in c.active_heads():
        assert bool(c.masks["attn_neuron"][l, h].all())  # neurons are not gated: whole heads
    for l in c.active_mlps():
        assert bool(c.masks["mlp_hidden"][l].all()) and bool(c.masks["mlp_output"][l].all())


# ------------------------------------------------------------------------------------ sweep, stability
def test_sweep_table_and_pareto(micro_task):
    model, task = micro_task
    res = sweep(model, task, scales=[0.0, 8.0], steps=25, lr=0.5, batch_size=8, progress=False,
                eval_split="train", eval_max_examples=8)
    t = res.table
    assert list(t["lambda_scale"]) == [0.0, 8.0] and {"n_nodes", "n_params", "kl", "attn_head"} <= set(t.columns)
    assert t.loc[0, "n_nodes"] > t.loc[1, "n_nodes"]  # no sparsity pressure keeps more
    assert t.loc[0, "kl"] <= t.loc[1, "kl"] + 1e-6
    assert set(res.pareto().index) <= set(t.index) and len(res.circuits()) == 2
    with pytest.raises(ValueError, match="at least one"):
        sweep(model, task, scales=[])


def test_stability_and_jaccard(micro_task):
    model, task = micro_task
    assert jaccard(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 1])) == pytest.approx(1 / 3)
    table, results = stability(model, task, seeds=[0, 1, 0], steps=3, batch_size=8, progress=False, eval_split=None)
    assert len(table) == 3 and set(table.columns) == {"a", "b", "attn_head", "attn_neuron", "mlp_hidden", "mlp_output"}
    same = table[(table.a == 0) & (table.b == 0)].iloc[0]
    assert same.attn_head == 1.0 and same.mlp_hidden == 1.0  # same seed, same circuit
    assert ((table.drop(columns=["a", "b"]) >= 0) & (table.drop(columns=["a", "b"]) <= 1)).all().all()
    assert len(overlap([r.circuit for r in results])) == 3


# ------------------------------------------------------------------------------------------ interactions
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_interactions_match_a_finite_difference(kind):
    """score(u → logits) is the first-order change of the metric when u's change reaches the logits directly."""
    model = micro_model(kind)
    clean, corrupted = random_pairs(model, n=4)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0],
                                      split_fractions={"train": 1.0})
    circuit = mg.Circuit.full(model)
    edges = interactions(model, task, circuit, batch_size=4)
    heads = {f"L{l} H{h}" for l, h in circuit.active_heads()}
    assert set(edges["src"]) <= heads | {"embed", "L0 MLP", "L1 MLP"}
    assert (edges["src_layer"] <= edges["dst_layer"]).all() and "logits" in set(edges["dst"])
    assert not ((edges.src == "L1 H0") & (edges.dst == "L1 H1")).any()  # same-layer heads do not talk
    # finite difference for the edge L0 MLP -> logits
    batch = task.split("train").buckets[0]
    _, cc = model.run_with_cache(batch.clean)
    _, cx = model.run_with_cache(batch.corrupted)
    delta = cc["blocks.0.hook_mlp_out"] - cx["blocks.0.hook_mlp_out"]
    eps = 1e-3

    def metric_with(shift):
        def hook(act, hook):
            return act + shift
        logits = model.run_with_hooks(batch.clean, fwd_hooks=[("blocks.1.hook_resid_post", hook)])[:, -1]
        return task.metric(logits, batch).mean()

    with torch.no_grad():
        fd = (metric_with(eps * delta) - metric_with(-eps * delta)) / (2 * eps)
    score = edges[(edges.src == "L0 MLP") & (edges.dst == "logits")].score.item()
    assert score == pytest.approx(float(fd), rel=1e-2, abs=1e-4)
    assert isinstance(edges, pd.DataFrame) and edges.score.abs().is_monotonic_decreasing


def test_interactions_only_between_kept_nodes():
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=4)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0], split_fractions={"train": 1.0})
    c = with_heads(mg.ModelDims.from_model(model), [(0, 1), (1, 3)], mlps=[0])
    edges = interactions(model, task, c, batch_size=4)
    assert set(edges.src) == {"embed", "L0 H1", "L0 MLP", "L1 H3"}
    assert set(edges.dst) == {"L0 H1", "L0 MLP", "L1 H3", "logits"}
    # embed → {L0 H1, L0 MLP, L1 H3, logits}, L0 H1 → {L0 MLP, L1 H3, logits}, L0 MLP → {L1 H3, logits};
    # L1 H3 is a writer too (→ logits)
    assert len(edges) == 4 + 3 + 2 + 1


def test_a_sweep_in_out_dir_resumes_instead_of_starting_over(micro_task, tmp_path, monkeypatch):
    import importlib

    model, task = micro_task
    kw = dict(steps=4, batch_size=8, progress=False, eval_split=None, autocast="float32")
    straight = sweep(model, task, scales=[0.5, 2.0], **kw)
    disc = importlib.import_module("mgnp_lens.discover")
    real, calls = disc._kl_backward, []

    def ctrl_c_in_the_second_run(*a, **k):  # the 6th step overall: step 2 of scale 2.0
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(disc, "_kl_backward", ctrl_c_in_the_second_run)
    stopped = sweep(model, task, scales=[0.5, 2.0, 4.0], out_dir=tmp_path, **kw)
    assert stopped.table.interrupted.tolist() == [False, True]  # Ctrl-C ends the sweep, scale 4 never starts
    assert not (tmp_path / "scale_4").exists() and (tmp_path / "scale_2" / "state.pt").exists()
    monkeypatch.setattr(disc, "_kl_backward", real)

    again = sweep(model, task, scales=[0.5, 2.0], out_dir=tmp_path, **kw)
    assert [r.meta["resumed_at_steps"] for r in again.results] == [[4], [1]]  # re-evaluated; continued
    assert again.circuits() == straight.circuits()
    for a, b in zip(again.results, straight.results):
        assert a.history.kl.tolist() == b.history.kl.tolist()
    with pytest.raises(ValueError, match="lr"):  # other settings: the saved runs are not silently mixed in
        sweep(model, task, scales=[0.5], out_dir=tmp_path, lr=0.5, **kw)


def test_stability_in_out_dir_resumes_its_runs(micro_task, tmp_path):
    model, task = micro_task
    kw = dict(steps=3, batch_size=8, progress=False, eval_split=None, autocast="float32")
    first, runs = stability(model, task, seeds=[0, 1], out_dir=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_0", "seed_1"]
    again, rerun = stability(model, task, seeds=[0, 1], out_dir=tmp_path, **kw)
    assert [r.meta.get("resumed_at_steps") for r in rerun] == [[3], [3]]
    pd.testing.assert_frame_equal(first, again)
