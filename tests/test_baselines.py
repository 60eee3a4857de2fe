"""Baselines: random circuits, attribution patching, coarse pruning."""

from __future__ import annotations

import pytest
import torch

import mgnp_lens as mg
from mgnp_lens import baselines


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


def test_integrated_gradients_add_up_to_the_metric_the_circuit_moves(micro_task):
    """Completeness: signed IG over every gate of every granularity sums to metric(clean) − metric(every gate 0)."""
    from mgnp_lens.hooks import Interpolator, masked_answer_logits

    model, task = micro_task
    ig = baselines.attribution_scores(model, task, batch_size=8, method="ig", steps=256, absolute=False)
    dims, ends = mg.ModelDims.from_model(model), []
    interp = Interpolator(dims, "batch", skip_dead_sites=False)
    batch = next(iter(task.split("train").batches(10_000)))
    with torch.no_grad():
        for value in (1.0, 0.0):
            interp.set_masks({g: torch.full((len(batch), *dims.shape(g)), value) for g in dims.granularities})
            ends.append(task.metric(masked_answer_logits(model, interp, batch.clean, batch.corrupted,
                                                         batch.answer_pos), batch).mean().item())
    moved = ends[0] - ends[1]
    assert abs(moved) > 0.1
    assert sum(v.sum().item() for v in ig.values()) == pytest.approx(moved, rel=2e-3)
    first = baselines.attribution_scores(model, task, batch_size=8, absolute=False)
    assert abs(sum(v.sum().item() for v in first.values()) - moved) > 0.01 * abs(moved)  # first order does not


def test_ig_attribution_builds_a_circuit_and_bad_settings_are_named(micro_task):
    model, task = micro_task
    budget = {"embedding": 1, "attn_block": 2, "mlp_block": 1, "attn_head": 3, "attn_neuron": 10, "mlp_hidden": 20,
              "mlp_output": 10}
    ig = baselines.attribution_scores(model, task, batch_size=8, method="ig", steps=3)
    assert all(v.min() >= 0 for v in ig.values())
    assert not torch.equal(ig["attn_head"], baselines.attribution_scores(model, task, batch_size=8)["attn_head"])
    c = baselines.attribution(model, task, budget, batch_size=8, method="ig", steps=3)
    assert c.counts() == budget and not mg.circuit.hierarchy_violations(c.masks)
    with pytest.raises(ValueError, match="unknown attribution method 'eap'; expected one of first_order, ig"):
        baselines.attribution_scores(model, task, method="eap")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        baselines.attribution_scores(model, task, method="ig", steps=0)


def test_coarse_baseline_gates_only_heads_and_mlp_blocks(micro_task):
    model, task = micro_task
    r = baselines.coarse(model, task, steps=4, batch_size=8, progress=False, eval_split=None)
    assert r.gates.trainable == ("mlp_block", "attn_head")
    c = r.circuit
    for l, h in c.active_heads():
        assert bool(c.masks["attn_neuron"][l, h].all())  # neurons are not gated: whole heads
    for l in c.active_mlps():
        assert bool(c.masks["mlp_hidden"][l].all()) and bool(c.masks["mlp_output"][l].all())
