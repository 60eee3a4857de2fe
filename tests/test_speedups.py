"""The training speed-ups: weight layout, precast weights, compiled blocks, autocast, frozen weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.config import SpeedSettings
from mgnp_lens.gates import HardConcreteGates
from mgnp_lens.granularity import ModelDims
from mgnp_lens.hooks import Interpolator, corrupted_activations, masked_answer_logits
from mgnp_lens.tasks import PromptPairTask

from helpers import micro_model, random_pairs


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_fast_weight_layout_changes_memory_order_only(kind):
    from mgnp_lens.speedups import fast_weight_layout

    model = micro_model(kind)
    tokens, _ = random_pairs(model, n=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        logits = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits_bf16 = model(tokens)
    gated = kind == "llama"
    # W_U; W_O, W_Q, W_K, W_V (the stored _W_K, _W_V with grouped-query attention) per layer; gated MLP weights
    expected = 1 + model.cfg.n_layers * (4 + (3 if gated else 0))
    assert fast_weight_layout(model) == expected
    assert fast_weight_layout(model) == 0  # idempotent
    assert model.unembed.W_U.T.is_contiguous() and not model.unembed.W_U.is_contiguous()
    w_o = model.blocks[0].attn.W_O
    assert w_o.permute(2, 0, 1).is_contiguous()
    assert model.blocks[0].attn.W_Q.permute(0, 2, 1).is_contiguous()
    if gated:
        assert model.blocks[1].mlp.W_out.T.is_contiguous()
    for n, p in model.named_parameters():
        assert p.shape == before[n].shape and torch.equal(p, before[n]), n
    with torch.no_grad():
        assert torch.equal(model(tokens), logits)  # bit for bit: the matmuls see the same operands
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(model(tokens), logits_bf16)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_precast_weights_is_bit_identical_under_autocast_and_restores(kind):
    from mgnp_lens.speedups import MATMUL_WEIGHTS, fast_weight_layout, precast_weights

    model = micro_model(kind)
    fast_weight_layout(model)
    dims = ModelDims.from_model(model)
    clean, corrupted = random_pairs(model, n=4)
    gates = HardConcreteGates(dims, generator=torch.Generator().manual_seed(0))
    masks = {g: m.detach() for g, m in gates.sample(torch.Generator().manual_seed(1), batch_size=4).items()}
    pos = torch.full((4,), clean.shape[1] - 1)
    interp = Interpolator(dims, "cache")
    interp.set_corrupted(corrupted_activations(model, dims, corrupted))  # float32 cache, as in discover
    interp.set_masks(masks)

    def masked_logits():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return masked_answer_logits(model, interp, clean, corrupted, pos)

    originals = {n: p.detach() for n, p in model.named_parameters()}
    reference = masked_logits()
    with precast_weights(model, torch.bfloat16) as swapped:
        params = dict(model.named_parameters())
        lowered = [n for n, p in params.items() if p.dtype == torch.bfloat16]
        assert swapped == len(lowered) and lowered and all(n.rsplit(".", 1)[-1] in MATMUL_WEIGHTS for n in lowered)
        assert {n.rsplit(".", 1)[-1] for n in lowered} >= {"W_Q", "W_O", "W_in", "W_out", "W_U"}
        assert all(params[n].dtype == torch.float32 for n in params if n.endswith(("W_E", ".w", "b_Q", "b_in")))
        assert all(params[n].stride() == originals[n].stride() for n in lowered)  # the fast layout survives
        assert torch.equal(masked_logits(), reference)  # autocast would have made exactly these casts
    assert all(p.data_ptr() == originals[n].data_ptr() and p.dtype == torch.float32
               and p.stride() == originals[n].stride() for n, p in model.named_parameters())  # the same storage
    with precast_weights(model, None) as swapped:  # no autocast: nothing to cast
        assert swapped == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_model_weights_stay_frozen_and_untouched(gpt2_micro):
    model = gpt2_micro
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    clean, corrupted = random_pairs(model, n=12)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    strides = {k: v.stride() for k, v in model.state_dict().items()}
    result = mg.discover(model, task, steps=5, batch_size=4, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {k: v.stride() for k, v in model.state_dict().items()} == strides  # the caller's layout, too
    assert [p.requires_grad for p in model.parameters()] == flags
    assert sum(p.numel() for p in result.gates.parameters()) == mg.ModelDims.from_model(model).total_gates()


@pytest.mark.slow  # compiles
@pytest.mark.parametrize("mode", ["cache", "batch"])
def test_compiled_blocks_train_like_eager_blocks(mode):
    """torch.compile'd blocks (one shared graph, dynamic batch sizes from micro-batches of 3, 3, 2)
    give the eager run up to float rounding, and leave the model as they found it."""
    from torch._dynamo.utils import counters

    model = micro_model("llama", n_layers=3)
    clean, corrupted = random_pairs(model, n=16)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    kw = dict(steps=6, batch_size=8, micro_batch_size=3, lr=0.5, corruption=mode, progress=False,
              eval_split=None, autocast="float32")
    eager = mg.discover(model, task, compile=False, **kw)
    graphs = counters["stats"]["unique_graphs"]
    compiled = mg.discover(model, task, compile=True, **kw)
    assert counters["stats"]["unique_graphs"] > graphs  # the blocks did go through the compiler
    assert compiled.meta["compiled_blocks"] is True and eager.meta["compiled_blocks"] is False
    np.testing.assert_allclose(compiled.history.kl, eager.history.kl, rtol=1e-4, atol=1e-6)
    for g in eager.gates.log_alpha:
        torch.testing.assert_close(compiled.gates.log_alpha[g], eager.gates.log_alpha[g], atol=1e-4, rtol=1e-4)
    assert compiled.circuit == eager.circuit
    assert all(b._compiled_call_impl is None for b in model.blocks)  # eager again for the user
    assert not any(hasattr(p, "mgnp_site_inputs") for p in model.hook_dict.values())  # no cache rows left behind
    torch.testing.assert_close(compiled.train_evaluation.kl, eager.train_evaluation.kl)


def test_compile_auto_resolves_by_model_device_and_run_length(gpt2_micro, monkeypatch):
    from mgnp_lens import speedups as d

    cpu = torch.device("cpu")
    has_backend = d.compile_backend_missing(cpu) is None
    auto, on, off = SpeedSettings(), SpeedSettings(compile=True), SpeedSettings(compile=False)
    long, short = d.COMPILE_MIN_STEPS, d.COMPILE_MIN_STEPS - 1
    assert gpt2_micro.cfg.d_model < d.COMPILE_MIN_WIDTH
    assert d.use_compile(auto, gpt2_micro, cpu, long) is False  # too narrow: the compile costs more than the steps
    monkeypatch.setattr(d, "COMPILE_MIN_WIDTH", gpt2_micro.cfg.d_model)
    assert d.use_compile(auto, gpt2_micro, cpu, long) is has_backend
    assert d.use_compile(auto, gpt2_micro, cpu, short) is False  # the compile would not pay for itself
    assert d.use_compile(off, gpt2_micro, cpu, long) is False
    one_block = micro_model("gpt2", n_layers=1)
    assert d.use_compile(auto, one_block, cpu, long) is False
    with pytest.raises(ValueError, match="at least two blocks"):
        d.use_compile(on, one_block, cpu, long)
    monkeypatch.setattr(d, "compile_backend_missing", lambda device: "TorchInductor found no usable C++ compiler")
    assert d.use_compile(auto, gpt2_micro, cpu, long) is False  # "auto" quietly stays eager
    with pytest.raises(ValueError, match="no usable C\\+\\+ compiler.*compile=False"):
        d.use_compile(on, gpt2_micro, cpu, long)


def test_bf16_autocast_trains_close_to_float32(gpt2_micro):
    clean, corrupted = random_pairs(gpt2_micro, n=16)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    kw = dict(steps=5, batch_size=8, progress=False, eval_split=None)
    full = mg.discover(gpt2_micro, task, autocast="float32", **kw)
    low = mg.discover(gpt2_micro, task, autocast="bfloat16", **kw)
    assert full.meta["training_precision"] == "float32" and low.meta["training_precision"] == "bfloat16"
    assert not np.array_equal(low.history.kl.values, full.history.kl.values)  # the low precision did run
    np.testing.assert_allclose(low.history.kl, full.history.kl, rtol=0.1, atol=2e-3)
    assert low.train_evaluation is not None and next(gpt2_micro.parameters()).dtype == torch.float32


def test_autocast_auto_resolves_by_device_and_model_dtype():
    from mgnp_lens.speedups import autocast_dtype, bf16_is_fast

    cpu = torch.device("cpu")
    auto = mg.PruningConfig()
    assert autocast_dtype(auto, cpu, torch.float32) == (torch.bfloat16 if bf16_is_fast(cpu) else None)
    assert autocast_dtype(auto, cpu, torch.bfloat16) is None
    assert autocast_dtype(mg.PruningConfig(autocast="float32"), cpu, torch.float32) is None
    assert autocast_dtype(mg.PruningConfig(autocast="float16"), cpu, torch.float32) == torch.float16


def test_precast_weights_gives_the_same_run_and_puts_float32_back(gpt2_micro):
    clean, corrupted = random_pairs(gpt2_micro, n=16)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    kw = dict(steps=4, batch_size=8, progress=False, eval_split=None, autocast="bfloat16")
    before = {n: p.detach().clone() for n, p in gpt2_micro.named_parameters()}
    cast = mg.discover(gpt2_micro, task, precast_weights=True, **kw)
    plain = mg.discover(gpt2_micro, task, precast_weights=False, **kw)
    np.testing.assert_array_equal(cast.history.kl.values, plain.history.kl.values)
    assert all(torch.equal(cast.gates.log_alpha[g], plain.gates.log_alpha[g]) for g in plain.gates.log_alpha)
    assert cast.train_evaluation.kl == plain.train_evaluation.kl  # evaluated with the float32 weights
    for n, p in gpt2_micro.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
