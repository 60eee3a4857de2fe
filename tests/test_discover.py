"""The discovery loop: planted circuits, determinism, history, interruption and bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.circuit import hierarchy_violations
from mgnp_lens.gates import HardConcreteGates
from mgnp_lens.granularity import GRANULARITIES, ModelDims
from mgnp_lens.tasks import PairSet, PromptPairTask

from conftest import micro_model, random_pairs

LIVE_HEADS = {(0, 1), (1, 2)}
LIVE_MLP = list(range(8))


@pytest.fixture(scope="module")
def planted():
    """GPT-2-shaped micro model where all but 2 heads and 8 MLP neurons per layer are dead."""
    model = micro_model("gpt2")
    with torch.no_grad():
        for l in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                if (l, h) not in LIVE_HEADS:
                    model.blocks[l].attn.W_O[h] = 0
            dead = torch.ones(model.cfg.d_mlp, dtype=torch.bool)
            dead[LIVE_MLP] = False
            model.blocks[l].mlp.W_out[dead] = 0
    clean, corrupted = random_pairs(model, n=64, pos=6, seed=1)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    return model, task


def test_planted_circuit_prunes_every_dead_node_and_keeps_kl_low(planted):
    model, task = planted
    result = mg.discover(model, task, steps=200, batch_size=16, lambda_scale=0.2, progress=False)
    c = result.circuit
    assert set(c.active_heads()) == LIVE_HEADS  # every dead head pruned, both live heads kept
    for l in range(model.cfg.n_layers):
        kept = set(c.masks["mlp_hidden"][l].nonzero().flatten().tolist())
        assert kept <= set(LIVE_MLP), f"dead MLP neurons kept in layer {l}: {kept - set(LIVE_MLP)}"
    empty_kl = mg.evaluate(model, task, mg.Circuit.empty(model), "train").kl
    assert empty_kl > 1.0
    assert result.train_evaluation.kl < 0.1 * empty_kl
    assert hierarchy_violations(c.masks) == []
    # history: one row per step with KL, loss, L0 and expected counts per granularity
    h = result.history
    assert len(h) == 200 and h["step"].tolist() == list(range(1, 201))
    for g in GRANULARITIES:
        assert f"l0_{g}" in h and f"active_{g}" in h
    assert h["active_attn_head"].iloc[-1] < h["active_attn_head"].iloc[0]
    assert result.evaluation.split == "test" and result.evaluation.n_examples > 0


@pytest.mark.parametrize("mode", ["batch", "cache"])
def test_same_seed_same_circuit_and_modes_agree(mode):
    model = micro_model("llama")
    clean, corrupted = random_pairs(model, n=24, pos=5, seed=2)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    kw = dict(steps=25, batch_size=8, progress=False, corruption=mode, autocast="float32")  # exact agreement
    a = mg.discover(model, task, seed=7, **kw)
    b = mg.discover(model, task, seed=7, **kw)
    c = mg.discover(model, task, seed=8, **kw)
    assert a.circuit == b.circuit
    assert a.history["loss"].tolist() == b.history["loss"].tolist()
    assert a.history["loss"].tolist() != c.history["loss"].tolist()
    other = mg.discover(model, task, seed=7, **{**kw, "corruption": "cache" if mode == "batch" else "batch"})
    assert torch.allclose(torch.tensor(a.history["kl"].values), torch.tensor(other.history["kl"].values),
                          atol=1e-4)


def test_model_weights_stay_frozen_and_untouched(gpt2_micro):
    model = gpt2_micro
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    clean, corrupted = random_pairs(model, n=12)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    result = mg.discover(model, task, steps=5, batch_size=4, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert sum(p.numel() for p in result.gates.parameters()) == mg.ModelDims.from_model(model).total_gates()


def test_lambda_warmup_and_coarse_only_granularities(gpt2_micro):
    clean, corrupted = random_pairs(gpt2_micro, n=12)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    r = mg.discover(gpt2_micro, task, steps=6, batch_size=4, lambda_warmup_steps=4, progress=False,
                    granularities=("attn_head", "mlp_block"))
    assert r.history["lambda_factor"].tolist() == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # noise_warmup_steps="auto": the attention gates' noise ramps in over 5/12 of the run (here 2 of 6 steps)
    assert r.config.noise_warmup_length == 2
    assert r.history["noise_scale"].tolist() == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert set(r.gates.log_alpha.keys()) == {"attn_head", "mlp_block"}
    assert "active_attn_neuron" not in r.history
    assert r.circuit.count("attn_neuron") == 8 * r.circuit.count("attn_head")  # ungated neurons stay



def test_noise_warmup_ramps_the_gate_noise_and_starts_noise_free(gpt2_micro):
    clean, corrupted = random_pairs(gpt2_micro, n=12)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    kw = dict(steps=6, batch_size=4, progress=False, eval_split=None, lr_warmup_steps=0)
    r = mg.discover(gpt2_micro, task, noise_warmup_steps=4, noise_warmup_granularities=None, **kw)
    assert r.history["noise_scale"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # the first step is noise-free: one mask per example or one per batch is then the same mask
    shared = mg.discover(gpt2_micro, task, noise_warmup_steps=4, noise_warmup_granularities=None,
                         mask_per_example=False, **kw)
    assert shared.history["kl"].iloc[0] == pytest.approx(r.history["kl"].iloc[0], rel=1e-6)
    # noise_warmup_steps=0, the paper's schedule: full noise on every gate from the first step
    noisy, noisy_shared = (mg.discover(gpt2_micro, task, noise_warmup_steps=0, mask_per_example=m, **kw)
                           for m in (True, False))
    assert noisy.history["noise_scale"].tolist() == [1.0] * 6
    assert noisy.history["kl"].iloc[0] != pytest.approx(noisy_shared.history["kl"].iloc[0], rel=1e-3)
    # warming up only the attention gates (the default granularities): a run between the two, and the
    # config survives a save
    attn = ("attn_block", "attn_head", "attn_neuron")
    part = mg.discover(gpt2_micro, task, noise_warmup_steps=4, **kw)
    assert part.config.noise_warmup_granularities == attn == mg.granularity.ATTENTION_GRANULARITIES
    assert mg.PruningConfig.from_dict(json.loads(json.dumps(part.config.to_dict()))) == part.config
    assert part.history["kl"].iloc[0] not in (r.history["kl"].iloc[0], noisy.history["kl"].iloc[0])


class _InterruptingPairs(PairSet):
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


def test_ctrl_c_returns_the_circuit_so_far_and_saves_it(gpt2_micro, tmp_path):
    task = _task_that_stops(gpt2_micro, 3, KeyboardInterrupt())
    r = mg.discover(gpt2_micro, task, steps=50, batch_size=4, progress=False, checkpoint_dir=str(tmp_path))
    assert r.interrupted and r.steps_completed == 3 and len(r.history) == 3
    assert isinstance(r.circuit, mg.Circuit)
    assert mg.Circuit.load(tmp_path / "circuit.json") == r.circuit
    status = json.loads((tmp_path / "evaluation.json").read_text())
    assert status["interrupted"] and status["steps_completed"] == 3


def test_error_mid_run_raises_with_the_partial_result_saved(gpt2_micro, tmp_path):
    task = _task_that_stops(gpt2_micro, 4, RuntimeError("disk on fire"))
    with pytest.raises(mg.DiscoveryError, match="after 4 steps.*disk on fire") as info:
        mg.discover(gpt2_micro, task, steps=50, batch_size=4, progress=False, checkpoint_dir=str(tmp_path))
    assert info.value.result.steps_completed == 4
    assert mg.Circuit.load(tmp_path / "circuit.json") == info.value.result.circuit
    assert len((tmp_path / "history.csv").read_text().strip().splitlines()) == 1 + 4


def test_periodic_checkpoints(gpt2_micro, tmp_path):
    clean, corrupted = random_pairs(gpt2_micro, n=12)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    r = mg.discover(gpt2_micro, task, steps=4, batch_size=4, progress=False,
                    checkpoint_dir=str(tmp_path), checkpoint_every=2)
    for name in ("circuit.json", "gates.pt", "history.csv", "per_layer.csv", "summary.csv", "evaluation.json",
                 "config.json"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config"]["steps"] == 4 and saved["seed"] == 0
    assert mg.PruningConfig.from_dict(saved["config"]) == r.config  # JSON round trip (betas list → tuple)
    assert saved["model_dims"]["n_layers"] == 2 and "torch" in saved["versions"] and saved["task"]["name"] == "custom"
    assert mg.Circuit.load(tmp_path / "circuit.json") == r.circuit


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps"), (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size"),
    (dict(corruption="both"), "corruption mode"), (dict(lambdas={"heads": 1.0}), "unknown granularity"),
    (dict(lambdas={"attn_head": -1.0}), "lambda"), (dict(granularities=("attn_heads",)), "unknown granularity"),
    (dict(lr_schedule="step"), "unknown lr_schedule"), (dict(micro_batch_size=0), "micro_batch_size"),
    (dict(lr_final_fraction=2.0), "lr_final_fraction"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=0.9), "betas"), (dict(log_alpha_clamp=0), "log_alpha_clamp"),
    (dict(log_alpha_clamp=(2.0, 1.0)), "log_alpha_clamp"), (dict(autocast="half"), "unknown autocast"),
    (dict(lr_warmup_steps=-1), "lr_warmup_steps"), (dict(lr_scales={"mlp": 2.0}), "unknown granularity"),
    (dict(lr_scales={"mlp_hidden": 0.0}), "lr_scales"), (dict(lr_scales=2.0), "lr_scales"), (dict(l0_penalty="node"), "unknown l0_penalty"), (dict(lr_warmup_steps=2.5), "lr_warmup_steps"),
    (dict(noise_warmup_steps=-1), "noise_warmup_steps"), (dict(noise_warmup_steps=1.5), "noise_warmup_steps"),
    (dict(noise_warmup_steps="half"), "noise_warmup_steps"), (dict(noise_warmup_steps=True), "noise_warmup_steps"),
    (dict(noise_warmup_granularities=("heads",)), "unknown granularity"),
    (dict(noise_warmup_granularities="attn_head"), "noise_warmup_granularities"),
    (dict(noise_warmup_granularities=3), "noise_warmup_granularities"),
    (dict(adam_eps=0.0), "adam_eps"), (dict(adam_eps=float("inf")), "adam_eps"), (dict(adam_eps="1e-8"), "adam_eps"),
    (dict(compile="yes"), "compile must be"), (dict(compile=1), "compile must be"),
])
def test_bad_config_is_a_clear_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        mg.PruningConfig(**bad)


def test_bad_task_input_names_the_problem(gpt2_micro):
    clean, corrupted = random_pairs(gpt2_micro, n=4)
    with pytest.raises(ValueError, match="row 2.*same length"):
        PromptPairTask.from_tokens(clean.tolist(), [c[:-1] if i == 2 else c for i, c in enumerate(corrupted.tolist())],
                                   [1] * 4, [2] * 4)
    with pytest.raises(ValueError, match="4 clean prompts but 3 correct"):
        PromptPairTask.from_tokens(clean, corrupted, [1] * 3, [2] * 4)
    with pytest.raises(ValueError, match="fractions must sum to 1"):
        PromptPairTask.from_tokens(clean, corrupted, [1] * 4, [2] * 4, split_fractions={"train": 0.5})
    with pytest.warns(UserWarning, match="only 4 pairs: every split uses all of them"):
        task = PromptPairTask.from_tokens(clean, corrupted, [1] * 4, [2] * 4)
    with pytest.raises(ValueError, match="no split 'dev'"):
        task.split("dev")


@pytest.mark.parametrize("mode", ["cache", "batch"])
@pytest.mark.parametrize("per_example", [False, True])
def test_micro_batches_give_the_same_run(gpt2_micro, mode, per_example):
    """Gradient accumulation over micro-batches reproduces the whole-batch run."""
    clean, corrupted = random_pairs(gpt2_micro, n=16)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    kw = dict(steps=6, batch_size=8, lr=0.5, corruption=mode, mask_per_example=per_example, progress=False,
              eval_split=None, autocast="float32")  # exact agreement needs one precision
    whole = mg.discover(gpt2_micro, task, **kw)
    micro = mg.discover(gpt2_micro, task, micro_batch_size=3, **kw)
    for g in whole.gates.log_alpha:
        torch.testing.assert_close(micro.gates.log_alpha[g], whole.gates.log_alpha[g], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(micro.history.kl, whole.history.kl, rtol=1e-4, atol=1e-6)


def test_skipping_dead_sites_is_exact(gpt2_micro):
    """A site whose mask is exactly 0 is cut from the graph: same output, same gate gradients."""
    from mgnp_lens.gates import HardConcreteGates
    from mgnp_lens.hooks import Interpolator, masked_answer_logits

    dims = mg.ModelDims.from_model(gpt2_micro)
    clean, corrupted = random_pairs(gpt2_micro, n=4)
    pos = torch.full((4,), clean.shape[1] - 1)
    grads, outs = [], []
    for skip in (False, True):
        gates = HardConcreteGates(dims, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            gates.log_alpha["attn_block"][1] = -20.0  # layer 1 attention certainly off
            gates.log_alpha["mlp_block"][0] = -20.0  # layer 0 MLP certainly off
        interp = Interpolator(dims, "batch", skip_dead_sites=skip)
        interp.set_masks(gates.sample(generator=torch.Generator().manual_seed(1)))
        out = masked_answer_logits(gpt2_micro, interp, clean, corrupted, pos)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append({g: torch.zeros_like(p) if p.grad is None else p.grad.clone() for g, p in gates.log_alpha.items()})
    torch.testing.assert_close(outs[0], outs[1])
    for g in grads[0]:
        torch.testing.assert_close(grads[0][g], grads[1][g])
    assert grads[1]["attn_head"][1].abs().sum() == 0 and grads[1]["attn_head"][0].abs().sum() > 0


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
    d = sys.modules["mgnp_lens.discover"]  # the module (mgnp_lens.discover is also the function's name)
    cpu = torch.device("cpu")
    has_backend = d.compile_backend_missing(cpu) is None
    long, short = mg.PruningConfig(steps=d.COMPILE_MIN_STEPS), mg.PruningConfig(steps=d.COMPILE_MIN_STEPS - 1)
    assert d.use_compile(long, gpt2_micro, cpu) is has_backend
    assert d.use_compile(short, gpt2_micro, cpu) is False  # the compile would not pay for itself
    assert d.use_compile(mg.PruningConfig(compile=False), gpt2_micro, cpu) is False
    one_block = micro_model("gpt2", n_layers=1)
    assert d.use_compile(long, one_block, cpu) is False
    with pytest.raises(ValueError, match="at least two blocks"):
        d.use_compile(mg.PruningConfig(compile=True), one_block, cpu)
    monkeypatch.setattr(d, "compile_backend_missing", lambda device: "TorchInductor found no usable C++ compiler")
    assert d.use_compile(long, gpt2_micro, cpu) is False  # "auto" quietly stays eager
    with pytest.raises(ValueError, match="no usable C\\+\\+ compiler.*compile=False"):
        d.use_compile(mg.PruningConfig(compile=True), gpt2_micro, cpu)


def test_cosine_schedule_decays_to_the_final_fraction():
    from mgnp_lens.discover import _lr_factor

    cfg = mg.PruningConfig(steps=11, lr_schedule="cosine", lr_final_fraction=0.2, lr_warmup_steps=0)
    assert _lr_factor(cfg, 0) == pytest.approx(1.0) and _lr_factor(cfg, 10) == pytest.approx(0.2)
    assert _lr_factor(cfg, 5) == pytest.approx(0.6)
    assert _lr_factor(mg.PruningConfig(steps=11, lr_warmup_steps=0), 7) == 1.0


def test_lr_warmup_ramps_linearly_then_follows_the_schedule():
    from mgnp_lens.discover import _lr_factor

    cfg = mg.PruningConfig(steps=20, lr_warmup_steps=4)
    assert [_lr_factor(cfg, s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    cos = mg.PruningConfig(steps=11, lr_schedule="cosine", lr_final_fraction=0.2, lr_warmup_steps=2)
    assert _lr_factor(cos, 0) == pytest.approx(0.5) and _lr_factor(cos, 10) == pytest.approx(0.2)


def test_lr_scales_move_only_the_named_granularity(gpt2_micro):
    clean, corrupted = random_pairs(gpt2_micro, n=8)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    common = dict(steps=1, batch_size=4, lr=0.1, progress=False, eval_split=None, autocast="float32")
    init = mg.discover(gpt2_micro, task, steps=1, lr=1e-12, batch_size=4, progress=False, eval_split=None)
    plain = mg.discover(gpt2_micro, task, **common)
    scaled = mg.discover(gpt2_micro, task, lr_scales={"mlp_hidden": 3.0}, **common)
    for g, la in plain.gates.log_alpha.items():
        moved = (la.detach() - init.gates.log_alpha[g].detach()).abs().max()
        moved_scaled = (scaled.gates.log_alpha[g].detach() - init.gates.log_alpha[g].detach()).abs().max()
        # Adam's first step moves every parameter by about lr, whatever its gradient's size
        assert float(moved_scaled) == pytest.approx(float(moved) * (3.0 if g == "mlp_hidden" else 1.0), rel=1e-3)
    assert mg.PruningConfig.from_dict(mg.PruningConfig(lr_scales={"attn_head": 0.5}).to_dict()).lr_scales \
        == {"attn_head": 0.5}


def test_a_config_saved_before_a_field_existed_loads_with_the_behaviour_it_ran_with():
    old = mg.PruningConfig().to_dict()
    del old["betas"], old["lr_warmup_steps"], old["noise_warmup_steps"], old["compile"]
    loaded = mg.PruningConfig.from_dict(old)
    assert loaded.betas == (0.9, 0.999) and loaded.lr_warmup_steps == 0 and loaded.noise_warmup_steps == 0
    assert loaded.compile is False  # those runs' blocks ran eager
    assert mg.PruningConfig.from_dict(mg.PruningConfig().to_dict()) == mg.PruningConfig()
    # saved with a noise warm-up but before noise_warmup_granularities existed: it warmed up every granularity
    between = {**mg.PruningConfig(noise_warmup_steps=100).to_dict()}
    del between["noise_warmup_granularities"]
    assert mg.PruningConfig.from_dict(between).noise_warmup_granularities is None
    # saved before the attention-only "auto" warm-up became the default: it kept its 0 (the paper's schedule)
    before = mg.PruningConfig.from_dict({**mg.PruningConfig().to_dict(), "noise_warmup_steps": 0,
                                         "noise_warmup_granularities": None})
    assert before.noise_warmup_length == 0


def test_auto_noise_warmup_is_five_twelfths_of_the_run():
    assert mg.PruningConfig().noise_warmup_steps == "auto"
    assert [mg.PruningConfig(steps=n).noise_warmup_length for n in (240, 120, 400, 1)] == [100, 50, 166, 0]
    assert mg.PruningConfig(steps=240, noise_warmup_steps=30).noise_warmup_length == 30
    assert mg.PruningConfig().noise_warmup_granularities == ("attn_block", "attn_head", "attn_neuron")


def test_log_alpha_clamp_and_betas_reach_the_optimizer(gpt2_micro):
    clean, corrupted = random_pairs(gpt2_micro, n=8)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    common = dict(steps=12, batch_size=4, lr=0.5, lr_warmup_steps=0, progress=False, eval_split=None)
    free = mg.discover(gpt2_micro, task, **common)
    clamped = mg.discover(gpt2_micro, task, log_alpha_clamp=1.0, **common)
    assert max(float(la.detach().abs().max()) for la in free.gates.log_alpha.values()) > 1.0
    assert max(float(la.detach().abs().max()) for la in clamped.gates.log_alpha.values()) <= 1.0
    capped = mg.discover(gpt2_micro, task, log_alpha_clamp=(-20.0, 1.5), **common)
    assert max(float(la.detach().max()) for la in capped.gates.log_alpha.values()) <= 1.5
    assert min(float(la.detach().min()) for la in capped.gates.log_alpha.values()) < -1.5
    assert mg.PruningConfig.from_dict(capped.config.to_dict()) == capped.config
    assert clamped.config.log_alpha_range == (-1.0, 1.0) and free.config.log_alpha_range is None
    slow = mg.discover(gpt2_micro, task, betas=(0.0, 0.5), **common)
    assert not all(torch.equal(slow.gates.log_alpha[g], free.gates.log_alpha[g]) for g in free.gates.log_alpha)
    start = HardConcreteGates(ModelDims.from_model(gpt2_micro), generator=torch.Generator().manual_seed(0))
    start = {g: la.detach() for g, la in start.log_alpha.items()}
    moved = {eps: max(float((mg.discover(gpt2_micro, task, adam_eps=eps, **common).gates.log_alpha[g].detach()
                              - start[g]).abs().max()) for g in start) for eps in (1e-8, 10.0)}
    assert moved[10.0] < 0.1 < moved[1e-8]  # an ε far above the gradients all but stops Adam


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
    from mgnp_lens.discover import autocast_dtype, bf16_is_fast

    cpu = torch.device("cpu")
    auto = mg.PruningConfig()
    assert autocast_dtype(auto, cpu, torch.float32) == (torch.bfloat16 if bf16_is_fast(cpu) else None)
    assert autocast_dtype(auto, cpu, torch.bfloat16) is None
    assert autocast_dtype(mg.PruningConfig(autocast="float32"), cpu, torch.float32) is None
    assert autocast_dtype(mg.PruningConfig(autocast="float16"), cpu, torch.float32) == torch.float16


def test_training_evaluation_from_the_loop_cache_equals_a_fresh_evaluation(gpt2_micro):
    """Cache mode scores the training split from the loop's precomputed logits and corrupted
    activations; it must agree with evaluate(), which recomputes both, over several buckets."""
    g = torch.Generator().manual_seed(3)
    lengths = [5] * 7 + [8] * 4
    clean = [torch.randint(0, gpt2_micro.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    corrupted = [torch.randint(0, gpt2_micro.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    pairs = PairSet.from_examples(clean, corrupted, [c[0] for c in clean], [c[0] for c in corrupted])
    task = PromptPairTask({"train": pairs})
    r = mg.discover(gpt2_micro, task, steps=6, batch_size=4, lr=0.5, lr_warmup_steps=0, progress=False,
                    eval_split=None, eval_batch_size=3, autocast="float32")
    assert len(pairs.buckets) == 2 and r.circuit != mg.Circuit.full(gpt2_micro)
    fresh = mg.evaluate(gpt2_micro, task, r.circuit, "train", batch_size=3)
    assert r.train_evaluation.n_examples == fresh.n_examples == 11
    assert r.train_evaluation.kl == pytest.approx(fresh.kl, rel=1e-4, abs=1e-6) and fresh.kl > 0
    assert r.train_evaluation.circuit_metric == pytest.approx(fresh.circuit_metric, rel=1e-4, abs=1e-5)
    assert r.train_evaluation.base_metric == pytest.approx(fresh.base_metric, rel=1e-4, abs=1e-5)


def test_path_l0_penalty_is_wired_into_the_loss(gpt2_micro):
    clean, corrupted = random_pairs(gpt2_micro, n=8)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    common = dict(steps=3, batch_size=4, progress=False, eval_split=None)
    gate = mg.discover(gpt2_micro, task, **common).history
    path = mg.discover(gpt2_micro, task, l0_penalty="path", **common).history
    # same initial gates; the path L0 of a child multiplies its own by its ancestors' (< 1)
    assert path["kl"].iloc[0] == pytest.approx(gate["kl"].iloc[0])
    assert path["active_attn_neuron"].iloc[0] < gate["active_attn_neuron"].iloc[0]
    assert path["active_attn_block"].iloc[0] == pytest.approx(gate["active_attn_block"].iloc[0])
    assert path["loss"].iloc[0] < gate["loss"].iloc[0]


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


# ----------------------------------------------------------------------------- resuming
# an integer noise warm-up: "auto" scales with ``steps``, so a 3-step run would not be the first 3 steps
# of an 8-step one
RESUME_KW = dict(batch_size=4, progress=False, eval_split=None, autocast="float32", noise_warmup_steps=3)


def _pairs_task(model):
    clean, corrupted = random_pairs(model, n=12)  # the same pairs as _task_that_stops builds
    return PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])


def _same_run(a, b):
    assert a.steps_completed == b.steps_completed and a.circuit == b.circuit
    assert all(torch.equal(a.gates.log_alpha[g], b.gates.log_alpha[g]) for g in a.gates.log_alpha)
    for column in ("step", "loss", "kl", "lr", "active_attn_head", "active_mlp_hidden"):
        np.testing.assert_array_equal(a.history[column].values, b.history[column].values, err_msg=column)


@pytest.fixture(scope="module")
def uninterrupted():
    model = micro_model("gpt2")
    return model, mg.discover(model, _pairs_task(model), steps=8, **RESUME_KW)


def test_resuming_after_ctrl_c_equals_the_uninterrupted_run(uninterrupted):
    model, full = uninterrupted
    stopped = mg.discover(model, _task_that_stops(model, 5, KeyboardInterrupt()), steps=8, **RESUME_KW)
    assert stopped.interrupted and stopped.steps_completed == 5 and stopped.state["step"] == 5
    resumed = mg.discover(model, _pairs_task(model), resume_from=stopped)  # the saved config, 8 steps
    assert not resumed.interrupted and resumed.meta["resumed_at_steps"] == [5]
    _same_run(resumed, full)
    assert resumed.train_evaluation.kl == full.train_evaluation.kl
    _same_run(mg.discover(model, _pairs_task(model), resume_from=stopped), full)  # its state was not used up


def test_an_error_inside_an_update_rolls_back_and_resumes_from_disk(uninterrupted, tmp_path, monkeypatch):
    model, full = uninterrupted
    real_step, calls = torch.optim.AdamW.step, []

    def failing_step(self, *a, **k):  # the 4th update changes the gates, then fails before the step finishes
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("power cut")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(mg.DiscoveryError, match="after 3 steps") as info:
        mg.discover(model, _pairs_task(model), steps=8, checkpoint_dir=str(tmp_path), **RESUME_KW)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    three = mg.discover(model, _pairs_task(model), steps=3, **RESUME_KW)
    _same_run(info.value.result, three)  # the half-done 4th update is not in the saved circuit
    assert (tmp_path / "state.pt").exists() and mg.Circuit.load(tmp_path / "circuit.json") == three.circuit
    resumed = mg.discover(model, _pairs_task(model), resume_from=tmp_path)
    _same_run(resumed, full)
    assert json.loads((tmp_path / "evaluation.json").read_text())["steps_completed"] == 8  # it kept checkpointing


def test_a_finished_run_resumes_for_more_steps(uninterrupted, tmp_path):
    model, full = uninterrupted
    five = mg.discover(model, _pairs_task(model), steps=5, checkpoint_dir=str(tmp_path), **RESUME_KW)
    assert five.steps_completed == 5 and (tmp_path / "state.pt").exists()
    longer = mg.discover(model, _pairs_task(model), resume_from=tmp_path / "state.pt", steps=8)
    _same_run(longer, full)


@pytest.mark.parametrize("change, match", [
    (dict(config=dict(lr=0.3)), r"lr \(0.2 → 0.3\)"),
    (dict(config=dict(steps=2)), "already taken 5 steps"),
    (dict(pairs_seed=9), "other pairs"),
    (dict(model=dict(n_layers=3)), "model shaped"),
])
def test_resuming_refuses_what_would_not_continue_the_run(tmp_path, change, match):
    from conftest import micro_config
    from transformer_lens import HookedTransformer

    model = micro_model("gpt2")
    saved = mg.discover(model, _pairs_task(model), steps=5, checkpoint_dir=str(tmp_path), **RESUME_KW)
    other = HookedTransformer(micro_config("gpt2", **change["model"])) if "model" in change else model
    task = _pairs_task(other)
    if "pairs_seed" in change:
        clean, corrupted = random_pairs(other, n=12, seed=change["pairs_seed"])
        task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    with pytest.raises(ValueError, match=match):
        mg.discover(other, task, saved.config, resume_from=tmp_path, **change.get("config", {}))


def test_resuming_without_a_state_is_a_clear_error(gpt2_micro, tmp_path):
    with pytest.raises(ValueError, match="no state.pt"):
        mg.discover(gpt2_micro, _pairs_task(gpt2_micro), resume_from=tmp_path)
    (tmp_path / "state.pt").write_bytes(b"")
    torch.save({"format": "something else"}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="not a mgnp-state/1"):
        mg.discover(gpt2_micro, _pairs_task(gpt2_micro), resume_from=tmp_path)


def test_validation_curve_is_the_hard_circuit_on_held_out_pairs_and_leaves_training_alone(gpt2_micro):
    from mgnp_lens.evaluate import evaluate

    clean, corrupted = random_pairs(gpt2_micro, n=30)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0],
                                      split_fractions={"train": 0.6, "validation": 0.4})
    kw = dict(steps=7, batch_size=4, progress=False, eval_split=None, autocast="bfloat16")
    plain = mg.discover(gpt2_micro, task, **kw)
    checked = mg.discover(gpt2_micro, task, validate_every=3, validate_max_examples=5, **kw)
    assert "val_kl" not in plain.history
    _same_run(checked, plain)  # the checks run in float32 between steps and change nothing
    val = checked.history.dropna(subset=["val_kl"])
    assert val.step.tolist() == [3, 6, 7]  # every 3 steps and after the last
    final = evaluate(gpt2_micro, task, checked.circuit, "validation", max_examples=5)
    assert val.val_kl.iloc[-1] == pytest.approx(final.kl, abs=1e-6)
    assert val.val_metric.iloc[-1] == pytest.approx(final.circuit_metric, abs=1e-5)
    assert next(gpt2_micro.parameters()).dtype == torch.float32
    from mgnp_lens.plot import training_curves

    fig = training_curves(checked.history)
    assert any(t.name == "hard circuit, validation KL" and list(t.y) == val.val_kl.tolist() for t in fig.data)


def test_validation_curve_needs_a_validation_split(gpt2_micro):
    task = _pairs_task(gpt2_micro)
    if "validation" in task.splits:
        del task.splits["validation"]
    with pytest.raises(ValueError, match="no split 'validation'"):
        mg.discover(gpt2_micro, task, steps=2, validate_every=1, progress=False)
    with pytest.raises(ValueError, match="validate_every"):
        mg.PruningConfig(validate_every=0)


def test_resuming_with_other_held_out_splits_is_allowed(tmp_path):
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=20)
    first = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    mg.discover(model, first, steps=2, checkpoint_dir=str(tmp_path), **RESUME_KW)
    wider = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    wider.splits["test"] = first.splits["train"]  # a different test split, the same training pairs
    assert wider.describe() != first.describe()
    assert mg.discover(model, wider, resume_from=tmp_path, steps=3).steps_completed == 3
