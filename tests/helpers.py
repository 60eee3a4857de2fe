"""Helpers the test modules share: micro models, random pairs, hand-made circuits, interrupted tasks, run
comparisons, the GPT-2 tokenizer. Fixtures live in ``conftest.py``; test modules import helpers from here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import mgnp_lens as mg
from mgnp_lens.tasks import PairSet, PromptPairTask

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


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


def random_pairs(model, n=6, pos=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (n, pos), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (n, pos), generator=g)
    return clean, corrupted


GPT2_TOKENIZER_DIR = SHARED / "tokenizers" / "gpt2"


def gpt2_tokenizer():
    """The real GPT-2 BPE tokenizer from ../shared/tokenizers/gpt2 (vocab.json + merges.txt)."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER_DIR))


class InterruptingPairs(PairSet):
    """Training pairs whose ``sample`` raises ``exc`` after ``after`` calls (Ctrl-C or a crash mid-run)."""

    def __init__(self, inner, after, exc):
        super().__init__(inner.buckets)
        self.calls, self.after, self.exc = 0, after, exc

    def sample(self, batch_size, generator=None):
        self.calls += 1
        if self.calls > self.after:
            raise self.exc
        return super().sample(batch_size, generator)


def task_that_stops(model, after, exc):
    clean, corrupted = random_pairs(model, n=12)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    task.splits["train"] = InterruptingPairs(task.splits["train"], after, exc)
    return task


def pairs_task(model):
    clean, corrupted = random_pairs(model, n=12)  # the same pairs as task_that_stops builds
    return PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])


def same_run(a, b):
    """Two runs ended bit for bit alike: circuit, gates and history."""
    assert a.steps_completed == b.steps_completed and a.circuit == b.circuit
    assert all(torch.equal(a.gates.log_alpha[g], b.gates.log_alpha[g]) for g in a.gates.log_alpha)
    for column in ("step", "loss", "kl", "lr", "active_attn_head", "active_mlp_hidden"):
        np.testing.assert_array_equal(a.history[column].values, b.history[column].values, err_msg=column)


def with_heads(dims, heads, mlps=()):
    """A circuit of ``dims`` keeping exactly ``heads`` (whole) and ``mlps`` (whole)."""
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
