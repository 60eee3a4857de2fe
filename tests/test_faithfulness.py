"""Faithfulness curves, MIB's CPR/CMD, and mgnp-lens beside the three baselines on the same pairs."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import mgnp_lens as mg
from mgnp_lens import faithfulness as ff, methods
from mgnp_lens.baselines import random_circuit
from mgnp_lens.cli import main
from mgnp_lens.evaluate import evaluate, evaluate_many
from mgnp_lens.report import build_comparison_report
from mgnp_lens.sweep import sweep

RUN = dict(steps=20, lr=0.5, batch_size=8, progress=False, eval_split="test", eval_heldout=False)


# ------------------------------------------------------------------------------------------ the areas
def test_integrate_by_hand():
    # (0, 0) - (0.5, 1) - (1, 1): CPR = 0.25 + 0.5, CMD = 0.25 + 0
    assert ff.integrate([0.5], [1.0]) == pytest.approx((0.75, 0.25))
    # the diagonal: CPR 0.5, CMD 0.5; a point on it changes nothing
    assert ff.integrate([0.3], [0.3]) == pytest.approx((0.5, 0.5))
    # overshooting the full model counts against CMD: |1 - 1.5|
    assert ff.integrate([0.5], [1.5])[1] == pytest.approx(0.5 * (1 + 0.5) / 2 + 0.5 * (0.5 + 0) / 2)
    # unanchored: only the measured range; equal sizes are averaged, NaN dropped
    assert ff.integrate([0.2, 0.4, 0.4, 0.9], [1.0, 0.0, 1.0, float("nan")], anchored=False) == \
        pytest.approx((0.2 * 0.75, 0.2 * 0.25))


def test_integrate_refuses_bad_sizes():
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        ff.integrate([1.5], [1.0])
    with pytest.raises(ValueError, match="at least two points"):
        ff.integrate([0.5], [1.0], anchored=False)


def test_areas_and_at_sizes_per_method_and_split():
    table = pd.DataFrame({"method": ["a", "a", "b"], "split": ["test"] * 3, "param_fraction": [0.1, 0.5, 0.5],
                          "node_fraction": [0.1, 0.5, 0.5], "recovered": [0.5, 1.0, 0.5]})
    a = ff.areas(table).set_index("method")
    assert a.loc["a", "cpr"] > a.loc["b", "cpr"] and a.loc["a", "cmd"] < a.loc["b", "cmd"]
    assert a.loc["a", "points"] == 2 and a.loc["a", "min_size"] == 0.1 and a.loc["a", "max_size"] == 0.5
    at = ff.at_sizes(table, [0.3, 0.05]).set_index(["method", "param_fraction"])
    assert at.loc[("a", 0.3), "recovered"] == pytest.approx(0.75)
    assert math.isnan(at.loc[("a", 0.05), "recovered"]) and math.isnan(at.loc[("b", 0.3), "recovered"])
    with pytest.raises(ValueError, match="columns"):
        ff.areas(table, size="n_params")


def test_size_of_full_and_empty(gpt2_micro):
    full, empty = mg.Circuit.full(gpt2_micro), mg.Circuit.empty(gpt2_micro)
    assert ff.size_of(full)["node_fraction"] == 1.0 and ff.size_of(full)["param_fraction"] == 1.0
    assert ff.size_of(empty)["node_fraction"] == 0.0 and ff.size_of(empty)["n_params"] == 0


# ---------------------------------------------------------------------------------- evaluate_many
@pytest.mark.parametrize("ablation", ["corrupted", "zero"])
def test_evaluate_many_equals_evaluate_one_by_one(micro_task, ablation):
    model, task = micro_task
    circuits = [random_circuit(model, {"attn_head": k, "mlp_hidden": 15 * k}, seed=k) for k in (2, 4, 7)]
    for c in circuits:
        c.config = {"ablation": ablation}
    many = evaluate_many(model, task, circuits, "train", batch_size=4)
    for c, ev in zip(circuits, many):
        one = evaluate(model, task, c, "train", batch_size=4)
        assert ev.n_examples == one.n_examples
        for field in ("kl", "base_metric", "circuit_metric", "empty_metric"):
            assert getattr(ev, field) == pytest.approx(getattr(one, field), rel=1e-5, abs=1e-6), field
    assert len({round(ev.kl, 6) for ev in many}) == 3  # three different circuits, three different KLs


def test_evaluate_many_runs_the_corrupted_prompts_once_per_batch(micro_task):
    model, task = micro_task
    circuits = [random_circuit(model, {"attn_head": k, "mlp_hidden": 15 * k}, seed=k) for k in (2, 4, 7)]
    evaluate(model, task, circuits[0], "train", batch_size=4)  # the first evaluation also probes the hook points
    rows = []
    model.hook_embed.add_hook(lambda act, hook: rows.append(act.shape[0]))
    try:
        evaluate_many(model, task, circuits, "train", batch_size=4)
        many = sum(rows)
        rows.clear()
        evaluate(model, task, circuits[0], "train", batch_size=4)
        one = sum(rows)
    finally:
        model.reset_hooks()
    n = len(task.split("train"))
    assert many == (2 + len(circuits)) * n  # full model, corrupted prompts, then each circuit on the clean ones
    assert one == 3 * n  # full model, then one [2B] pass: the clean prompts masked, the corrupted ones beside


def test_evaluate_many_refuses_mixed_ablations(micro_task):
    model, task = micro_task
    a, b = mg.Circuit.full(model), mg.Circuit.full(model)
    b.config = {"ablation": "zero"}
    with pytest.raises(ValueError, match="different ablations"):
        evaluate_many(model, task, [a, b], "train")
    with pytest.raises(ValueError, match="at least one circuit"):
        evaluate_many(model, task, [], "train")
    assert len(evaluate_many(model, task, [a, b], "train", ablation="zero")) == 2


# -------------------------------------------------------------------------- the methods side by side
def test_sweep_table_has_faithfulness_and_areas(micro_task):
    model, task = micro_task
    res = sweep(model, task, scales=[0.0, 8.0], **RUN)
    t = res.table
    assert {"recovered", "empty_metric", "node_fraction", "param_fraction"} <= set(t.columns)
    assert t.loc[0, "node_fraction"] >= t.loc[1, "node_fraction"]
    got = res.areas()
    assert got["split"] == "test"
    assert got["cpr"] == pytest.approx(ff.integrate(t["param_fraction"], t["recovered"])[0])


def test_compare_methods_scores_six_methods_on_the_same_pairs(micro_task, tmp_path, capsys):
    model, task = micro_task
    comp = methods.compare_methods(model, task, scales=[1.0, 8.0], splits=("test", "train"), out_dir=tmp_path, **RUN)
    table = comp.curve
    assert set(table["method"]) == {"mgnp", "coarse", "attribution", "attribution_ig", "random", "mgnp_one_run"}
    assert set(table["split"]) == {"test", "train"}
    assert len(table) == 2 * (5 * 2 + len(methods.SCORE_FACTORS))  # five methods at two scales, one run's sizes
    one_run = comp.circuits["mgnp_one_run"]  # from the λ×1 run's scores; factor 1 is that run's circuit
    assert one_run[methods.SCORE_FACTORS.index(1.0)] == comp.circuits["mgnp"][0]
    assert [c.count("attn_neuron") for c in one_run] == sorted(c.count("attn_neuron") for c in one_run)
    # one set of pairs: the full model's and the empty circuit's metric are the same for every circuit of a split
    for _, part in table.groupby("split"):
        assert part["base_metric"].nunique() == 1 and part["empty_metric"].nunique() == 1
    # attribution and random circuits are built at mgnp's per-granularity counts
    for m in ("attribution", "attribution_ig", "random"):
        for c, ref in zip(comp.circuits[m], comp.circuits["mgnp"]):
            assert c.counts() == ref.counts()
    # the coarse circuits keep every neuron of what they keep
    for c in comp.circuits["coarse"]:
        kept_heads = c.masks["attn_head"]
        assert bool((c.masks["attn_neuron"].all(-1) == kept_heads).all())
    assert set(comp.areas["size"]) == set(ff.SIZE_AXES) and len(comp.areas) == 6 * 2 * 2
    assert ((comp.areas["cmd"] >= 0)).all()
    for name in ("curve.csv", "areas.csv", "faithfulness.json", "mgnp", "coarse"):
        assert (tmp_path / name).exists(), name
    # the report of the comparison, through the CLI
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "CPR" in page and "coarse" in page and "attribution_ig" in page and page.count("<table") >= 2
    # a second call resumes the finished sweeps: same circuits
    again = methods.compare_methods(model, task, scales=[1.0, 8.0], splits=("test",), out_dir=tmp_path, **RUN)
    assert all(a == b for a, b in zip(again.circuits["mgnp"], comp.circuits["mgnp"]))


def test_comparison_report_needs_a_curve(tmp_path):
    with pytest.raises(FileNotFoundError, match="curve.csv"):
        build_comparison_report(tmp_path)


def test_faithfulness_curves_figure():
    from mgnp_lens import plot

    table = pd.DataFrame({"method": ["mgnp", "mgnp", "coarse"], "split": ["test"] * 3, "param_fraction": [0.1, 0.4, 0.6],
                          "recovered": [0.6, 0.9, 0.95], "attn_head": [3, 8, 10], "kl": [0.3, 0.1, 0.05]})
    fig = plot.faithfulness_curves(table)
    assert [t.name.split(" ")[0] for t in fig.data] == ["mgnp", "coarse"]
    assert "CPR" in fig.data[0].name and fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="no rows for split"):
        plot.faithfulness_curves(table, split="test_ood")
    with pytest.raises(ValueError, match="no column"):
        plot.faithfulness_curves(table.drop(columns="method"))


def test_circuits_from_one_runs_scores(micro_task):
    model, task = micro_task
    r = mg.discover(model, task, **{**RUN, "steps": 30})
    circuits = methods.circuits_from_scores(r, [0.5, 1.0, 3.0])
    assert circuits[1] == r.circuit  # factor 1: the run's own circuit, so the scores rank as binarisation does
    for factor, c in zip([0.5, 1.0, 3.0], circuits):
        assert c.counts() == methods.scaled_counts(r.circuit, factor)
        assert not mg.circuit.hierarchy_violations(c.masks)
    kept, dims = r.circuit.counts(), r.circuit.dims
    for g, n in methods.scaled_counts(r.circuit, 3.0).items():
        assert min(dims.count(g), 3 * kept[g]) >= n >= min(kept[g], 1)
    with pytest.raises(ValueError, match="factors must be positive"):
        methods.circuits_from_scores(r, [0.0, 1.0])
