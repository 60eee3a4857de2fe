"""Micro-model fixtures: random HookedTransformers shaped like GPT-2, Llama (GQA) and NeoX."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import mgnp_lens as mg
from mgnp_lens.tasks import PairSet, PromptPairTask

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


GPT2_TOKENIZER_DIR = SHARED / "tokenizers" / "gpt2"


def gpt2_tokenizer():
    """The real GPT-2 BPE tokenizer from ../shared/tokenizers/gpt2 (vocab.json + merges.txt)."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER_DIR))


@pytest.fixture(scope="session")
def tiny_gpt2_checkpoint(tmp_path_factory):
    """A random 2-layer GPT-2 written as a Hugging Face checkpoint with the real GPT-2 tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=len(tok))).eval()
    path = tmp_path_factory.mktemp("tiny_gpt2")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path, hf, tok


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory):
    """A private MGNP_LENS_CACHE for the session, so tests never touch the user's cache."""
    path = tmp_path_factory.mktemp("mgnp_cache")
    old = os.environ.get("MGNP_LENS_CACHE")
    os.environ["MGNP_LENS_CACHE"] = str(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield path
    if old is None:
        os.environ.pop("MGNP_LENS_CACHE", None)
    else:
        os.environ["MGNP_LENS_CACHE"] = old


@pytest.fixture(scope="session")
def default_model_loads(model_cache_dir):
    """The embedded default model loaded twice: first conversion, then from the cache."""
    from mgnp_lens import load_model

    first = load_model()
    second = load_model()
    return first, second


@pytest.fixture(scope="session")
def default_model(default_model_loads):
    return default_model_loads[1]


# ------------------------------------------------------------------- shared by several test modules
class _InterruptingPairs(PairSet):
    """Training pairs whose ``sample`` raises ``exc`` after ``after`` calls (Ctrl-C or a crash mid-run)."""

    def __init__(self, inner, after, exc):
        super().__init__(inner.buckets)
        self.calls, self.after, self.exc = 0, after, exc

    def sample(self, batch_size, generator=None):
        self.calls += 1
        if self.calls > self.after:
            raise self.exc
        return super().sample(batch_size, generator)


def _task_that_stops(model, after, exc):
    clean, corrupted = random_pairs(model, n=12)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    task.splits["train"] = _InterruptingPairs(task.splits["train"], after, exc)
    return task


def _pairs_task(model):
    clean, corrupted = random_pairs(model, n=12)  # the same pairs as _task_that_stops builds
    return PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])


def _same_run(a, b):
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


@pytest.fixture
def micro_task():
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=16)
    return model, PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])


@pytest.fixture(scope="module")
def tok():
    """The real GPT-2 tokenizer."""
    return gpt2_tokenizer()
