"""Circuits: hierarchy consistency, persistence, the Appendix D / Table 1 tables, bad shapes."""

from __future__ import annotations

import json

import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.circuit import hierarchy_violations, make_consistent
from mgnp_lens.granularity import GRANULARITIES, ModelDims
from mgnp_lens.hooks import Interpolator, masked_answer_logits

from helpers import micro_model, random_pairs


def random_masks(dims, seed, p=0.5):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(dims.shape(k), generator=g) < p for k in GRANULARITIES}


def test_hierarchy_is_never_violated_and_consistency_keeps_function(gpt2_micro):
    model = gpt2_micro
    dims = ModelDims.from_model(model)
    clean, corrupted = random_pairs(model)
    for seed in range(20):
        raw = random_masks(dims, seed, p=0.3 + 0.03 * seed)
        circuit = mg.Circuit(dims, raw)
        assert hierarchy_violations(circuit.masks) == []
        # upward consistency too: a kept parent has a kept child
        m = circuit.masks
        assert bool((m["attn_neuron"].any(-1) | ~m["attn_head"]).all())
        assert bool((m["attn_head"].any(-1) | ~m["attn_block"]).all())
    # making masks consistent never changes what the model computes
    raw = random_masks(dims, 99, p=0.5)
    raw["mlp_output"][0] = False  # MLP block 0 then computes nothing clean
    interp = Interpolator(dims, "batch")
    interp.set_masks(raw)
    pos = torch.full((clean.shape[0],), clean.shape[1] - 1)
    with torch.no_grad():
        before = masked_answer_logits(model, interp, clean, corrupted, pos)
    consistent = make_consistent(raw)
    assert not consistent["mlp_block"][0]
    interp.set_masks(consistent)
    with torch.no_grad():
        after = masked_answer_logits(model, interp, clean, corrupted, pos)
    assert (before - after).abs().max() <= 1e-4


def test_hierarchy_violations_are_reported():
    dims = ModelDims(2, 2, 2, 3, 4)
    masks = {g: torch.ones(dims.shape(g), dtype=torch.bool) for g in GRANULARITIES}
    masks["attn_block"][1] = False
    assert any("attn_head(1, 0)" in v for v in hierarchy_violations(masks))


def test_save_load_round_trip_bit_for_bit(tmp_path, gpt2_micro):
    dims = ModelDims.from_model(gpt2_micro)
    circuit = mg.Circuit(dims, random_masks(dims, 5), task={"name": "t"}, config={"steps": 3})
    path = circuit.save(tmp_path / "c.json")
    data = json.loads(path.read_text())
    assert data["format"] == "mgnp-circuit/1"
    assert data["model"] == {"n_layers": 2, "n_heads": 4, "d_head": 8, "d_mlp": 64, "d_model": 32}
    assert len(data["masks"]["attn_neuron"]) == 2 and len(data["masks"]["attn_neuron"][0][0]) == 8
    assert data["masks"]["embedding"] in ([0], [1])
    loaded = mg.Circuit.load(path)
    assert loaded == circuit
    for g in GRANULARITIES:
        assert torch.equal(loaded.masks[g], circuit.masks[g])
    assert loaded.task == {"name": "t"} and loaded.config == {"steps": 3}
    with pytest.raises(ValueError, match="format"):
        mg.Circuit.from_dict({**data, "format": "other"})
    with pytest.raises(FileNotFoundError):
        mg.Circuit.load(tmp_path / "missing.json")


def test_tables_match_appendix_d_and_table_1(gpt2_micro):
    dims = ModelDims.from_model(gpt2_micro)
    masks = {g: torch.zeros(dims.shape(g), dtype=torch.bool) for g in GRANULARITIES}
    masks["attn_block"][1] = masks["mlp_block"][0] = True
    masks["attn_head"][1, 3] = True
    masks["attn_neuron"][1, 3, :5] = True
    masks["mlp_hidden"][0, :10] = True
    masks["mlp_output"][0, :7] = True
    c = mg.Circuit(dims, masks)
    table = c.per_layer()
    assert list(table.columns) == ["Layer", "Attn Block", "MLP Block", "Attn Heads", "Attn Neurons",
                                   "MLP Hidden", "MLP Output"]
    assert table.iloc[0].tolist() == [0, "Pruned", "Active", "0/4", "0/32", "10/64", "7/32"]
    assert table.iloc[1].tolist() == [1, "Active", "Pruned", "1/4", "5/32", "0/64", "0/32"]
    assert c.per_layer(one_indexed=True)["Layer"].tolist() == [1, 2]
    summary = c.summary().set_index("granularity")
    assert summary.loc["attn_head", "active"] == 1 and summary.loc["attn_head", "total"] == 8
    assert summary.loc["attn_head", "sparsity_pct"] == 87.5
    assert c.active_heads() == [(1, 3)]
    assert c.n_params() == 4 * 32 * 5 + 10 * (32 + 7)
    assert c.compression_ratio() > 1


def test_circuit_rejects_bad_shapes_and_models(gpt2_micro):
    dims = ModelDims.from_model(gpt2_micro)
    masks = random_masks(dims, 0)
    masks["attn_head"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="attn_head"):
        mg.Circuit(dims, masks)
    clean, corrupted = random_pairs(gpt2_micro)
    with pytest.raises(ValueError, match="same shape"):
        mg.Circuit.full(gpt2_micro).run(gpt2_micro, clean, corrupted[:, :-1])
    other = micro_model("gpt2", n_layers=3)
    with pytest.raises(ValueError, match="made for"):
        mg.Circuit.full(gpt2_micro).run(other, clean, corrupted)
