"""The typed vocabulary: model dimensions and gate counts."""

from __future__ import annotations

import types

from transformer_lens import HookedTransformerConfig

from mgnp_lens.gates import HardConcreteGates
from mgnp_lens.granularity import GRANULARITIES, ModelDims


def gpt2_small_cfg():
    return HookedTransformerConfig(n_layers=12, d_model=768, d_head=64, n_heads=12, d_mlp=3072, n_ctx=1024,
                                   d_vocab=50257, act_fn="gelu_new", normalization_type="LN")


def test_gate_count_gpt2_small_is_papers_55465():
    dims = ModelDims.from_model(types.SimpleNamespace(cfg=gpt2_small_cfg()))
    assert dims.total_gates() == 55_465
    gates = HardConcreteGates(dims)
    assert sum(p.numel() for p in gates.parameters()) == 55_465
    assert {g: dims.count(g) for g in GRANULARITIES} == {
        "embedding": 1, "attn_block": 12, "mlp_block": 12, "attn_head": 144,
        "attn_neuron": 9216, "mlp_hidden": 36864, "mlp_output": 9216}
