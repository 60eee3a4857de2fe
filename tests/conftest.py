"""Micro-model fixtures: random HookedTransformers shaped like GPT-2, Llama (GQA) and NeoX."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def micro_config(kind: str, **kw) -> HookedTransformerConfig:
    """Tiny configs of the three families the engine must support."""
    base = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=32, d_vocab=61, seed=0,
                device="cpu")
    if kind == "gpt2":
        base.update(act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard")
    elif kind == "llama":
        base.update(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                    n_key_value_heads=2, gated_mlp=True, rotary_dim=8, final_rms=True)
    elif kind == "neox":
        base.update(act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
                    rotary_dim=4, parallel_attn_mlp=True)
    else:
        raise ValueError(kind)
    base.update(kw)
    return HookedTransformerConfig(**base)


def micro_model(kind: str, **kw) -> HookedTransformer:
    torch.manual_seed(0)
    model = HookedTransformer(micro_config(kind, **kw))
    # default init is tiny; make the blocks matter so the identities are not trivially true
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(params=["gpt2", "llama", "neox"])
def any_model(request):
    return micro_model(request.param)


@pytest.fixture
def gpt2_micro():
    return micro_model("gpt2")


def random_pairs(model, n=6, pos=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (n, pos), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (n, pos), generator=g)
    return clean, corrupted
