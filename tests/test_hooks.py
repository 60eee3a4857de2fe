"""The interpolation hooks: all-ones = clean, all-zeros = corrupted, head patching by hand, both corruption modes."""

from __future__ import annotations

import types

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import mgnp_lens as mg
from mgnp_lens.gates import HardConcreteGates
from mgnp_lens.granularity import GRANULARITIES, ModelDims
from mgnp_lens.hooks import Interpolator, check_hook_points, corrupted_activations, masked_answer_logits

from helpers import micro_model, random_pairs


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_full_and_empty_circuits_reproduce_clean_and_corrupted_runs(kind):
    model = micro_model(kind)
    clean, corrupted = random_pairs(model)
    clean_logits, corrupted_logits = model(clean), model(corrupted)
    assert (clean_logits - corrupted_logits).abs().max() > 1.0  # the runs really differ
    full = mg.Circuit.full(model).run(model, clean, corrupted)
    empty = mg.Circuit.empty(model).run(model, clean, corrupted)
    assert (full - clean_logits).abs().max() <= 1e-4
    assert (empty - corrupted_logits).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("mode", ["batch", "cache"])
@pytest.mark.parametrize("soft", [False, True])
def test_identities_in_both_corruption_modes(kind, mode, soft):
    """All gates 1 → clean logits, all gates 0 → corrupted logits, at every answer position."""
    model = micro_model(kind)
    clean, corrupted = random_pairs(model)
    dims = ModelDims.from_model(model)
    interp = Interpolator(dims, mode)
    pos = torch.tensor([6, 3, 0, 5, 6, 2])
    idx = torch.arange(len(pos))
    for value, reference in ((1, model(clean)), (0, model(corrupted))):
        masks = {g: torch.full(dims.shape(g), value, dtype=torch.float if soft else torch.bool)
                 for g in GRANULARITIES}
        interp.set_masks(masks)
        if mode == "cache":
            interp.set_corrupted(corrupted_activations(model, dims, corrupted))
        with torch.no_grad():
            got = masked_answer_logits(model, interp, clean, corrupted, pos)
        assert (got - reference[idx, pos]).abs().max() <= 1e-4


@pytest.mark.parametrize("mode", ["batch", "cache"])
def test_soft_masks_are_the_same_in_both_modes(mode, gpt2_micro):
    model = gpt2_micro
    clean, corrupted = random_pairs(model)
    dims = ModelDims.from_model(model)
    gates = HardConcreteGates(dims, generator=torch.Generator().manual_seed(3))
    masks = gates.sample(torch.Generator().manual_seed(4))
    pos = torch.full((clean.shape[0],), clean.shape[1] - 1)
    out = {}
    for m in ("batch", "cache"):
        interp = Interpolator(dims, m)
        interp.set_masks(masks)
        if m == "cache":
            interp.set_corrupted(corrupted_activations(model, dims, corrupted))
        with torch.no_grad():
            out[m] = masked_answer_logits(model, interp, clean, corrupted, pos)
    assert (out["batch"] - out["cache"]).abs().max() <= 1e-4
    assert (out[mode] - model(clean)[:, -1]).abs().max() > 1e-3  # the soft mask changed something


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_pruning_one_head_equals_patching_its_hook_z_by_hand(kind):
    model = micro_model(kind)
    clean, corrupted = random_pairs(model)
    layer, head = 1, 2
    full = mg.Circuit.full(model)
    masks = {g: m.clone() for g, m in full.masks.items()}
    masks["attn_head"][layer, head] = False
    circuit = mg.Circuit(full.dims, masks)
    assert circuit.count("attn_head") == full.count("attn_head") - 1
    assert circuit.count("attn_neuron") == full.count("attn_neuron") - model.cfg.d_head
    got = circuit.run(model, clean, corrupted)

    _, cache = model.run_with_cache(corrupted, names_filter=f"blocks.{layer}.attn.hook_z")
    corrupted_z = cache[f"blocks.{layer}.attn.hook_z"]

    def patch(z, hook):
        z = z.clone()
        z[:, :, head] = corrupted_z[:, :, head]
        return z

    expected = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
    assert (got - expected).abs().max() <= 1e-4
    assert (got - model(clean)).abs().max() > 1e-3


def test_a_mixture_of_experts_model_built_by_hand_is_gated_or_refused_as_such():
    """TransformerLens's MoE block gets expert gates; gpt-oss's (biases, its own routing) is refused by name."""
    kw = dict(n_layers=1, d_model=16, d_head=4, n_heads=4, n_ctx=8, d_vocab=11, d_mlp=8, act_fn="silu",
              gated_mlp=True, num_experts=4, experts_per_token=2)
    circuit = mg.Circuit.full(HookedTransformer(HookedTransformerConfig(**kw)))
    assert circuit.dims.n_experts == 4 and circuit.count("mlp_expert") == 4
    oss = HookedTransformer(HookedTransformerConfig(**kw, original_architecture="GptOssForCausalLM"))
    with pytest.raises(ValueError, match=r"GptOssMoE.*only as HookedTransformer's MoE block"):
        mg.Circuit.full(oss)


def test_attention_only_model_is_rejected_with_the_missing_hook():
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, d_head=4, n_heads=4, n_ctx=8, d_vocab=11,
                                  attn_only=True, act_fn="relu")
    model = HookedTransformer(cfg)
    with pytest.raises(ValueError, match="hook_post|no MLP"):
        mg.Circuit.full(model)


@pytest.mark.parametrize("mode", ["batch", "cache"])
def test_per_example_masks_apply_row_by_row(mode):
    model = micro_model("llama")
    clean, corrupted = random_pairs(model, n=3)
    dims = ModelDims.from_model(model)
    gates = HardConcreteGates(dims, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for la in gates.log_alpha.values():
            la.normal_(0, 2)
    batched = gates.sample(torch.Generator().manual_seed(1), batch_size=3)
    assert batched["attn_neuron"].shape == (3,) + dims.shape("attn_neuron")
    pos = torch.full((3,), clean.shape[1] - 1)
    interp = Interpolator(dims, mode)
    if mode == "cache":
        interp.set_corrupted(corrupted_activations(model, dims, corrupted))
    interp.set_masks(batched)
    with torch.no_grad():
        together = masked_answer_logits(model, interp, clean, corrupted, pos)
    for i in range(3):
        one = Interpolator(dims, mode)
        one.set_masks({g: m[i] for g, m in batched.items()})
        if mode == "cache":
            one.set_corrupted(corrupted_activations(model, dims, corrupted[i:i + 1]))
        with torch.no_grad():
            alone = masked_answer_logits(model, one, clean[i:i + 1], corrupted[i:i + 1], pos[i:i + 1])
        assert (together[i] - alone[0]).abs().max() <= 1e-4
    assert (together[0] - together[1]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cache_mode_mixes_in_the_activation_dtype_under_autocast(kind):
    """A float32 cache is cast to each site's activation dtype before the mix, instead of promoting it."""
    from mgnp_lens.hooks import hook_names

    model = micro_model(kind)
    dims = ModelDims.from_model(model)
    clean, corrupted = random_pairs(model, n=4)
    cache = corrupted_activations(model, dims, corrupted)
    gates = HardConcreteGates(dims, generator=torch.Generator().manual_seed(0))
    masks = {g: m.detach() for g, m in gates.sample(torch.Generator().manual_seed(1), batch_size=4).items()}
    interp = Interpolator(dims, "cache")
    interp.set_corrupted(cache)
    interp.set_masks(masks)
    seen = {}

    def record(act, hook):
        seen[hook.name] = act.clone()
        mixed = interp._interpolate_site(hook.name, act)
        assert mixed.dtype == act.dtype, hook.name  # each site keeps its own dtype
        c = cache[hook.name].to(act.dtype)
        assert torch.equal(mixed, c + interp._masks[hook.name].to(act.dtype) * (act - c))
        exact = cache[hook.name] + interp._masks[hook.name] * (act.float() - cache[hook.name])
        assert (mixed.float() - exact).abs().max() <= 0.02 * exact.abs().max() + 1e-6
        return mixed

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with model.hooks(fwd_hooks=[(n, record) for n in hook_names(dims)]):
            model(clean, stop_at_layer=model.cfg.n_layers)
    assert len(seen) == len(hook_names(dims))
    assert any(a.dtype == torch.bfloat16 for a in seen.values())  # e.g. hook_z: the mix stayed in bfloat16


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


def test_missing_hook_point_is_named(gpt2_micro):
    dims = ModelDims.from_model(gpt2_micro)
    hooks = dict(gpt2_micro.hook_dict)
    del hooks["blocks.1.mlp.hook_post"]
    fake = types.SimpleNamespace(cfg=gpt2_micro.cfg, hook_dict=hooks)
    with pytest.raises(ValueError, match=r"missing hook point 'blocks.1.mlp.hook_post'"):
        check_hook_points(fake, dims)
    with pytest.raises(ValueError, match="no TransformerLens hook points"):
        check_hook_points(types.SimpleNamespace(cfg=gpt2_micro.cfg), dims)


def test_sites_are_checked_for_aliasing_and_shape(gpt2_micro):
    dims = ModelDims.from_model(gpt2_micro)
    hooks = dict(gpt2_micro.hook_dict)
    hooks["blocks.1.mlp.hook_post"] = hooks["blocks.1.hook_mlp_out"]  # an MoE block's one output, twice
    fake = types.SimpleNamespace(cfg=gpt2_micro.cfg, hook_dict=hooks)
    with pytest.raises(ValueError, match="'blocks.1.mlp.hook_post' and 'blocks.1.hook_mlp_out' are the same hook "
                                         "point"):
        check_hook_points(fake, dims)
    wrong = micro_model("gpt2")
    wrong.cfg.d_mlp = 32  # the config says 32, the MLP has 64 hidden units
    with pytest.raises(ValueError, match=r"'blocks.0.mlp.hook_post' gives activations shaped \(64,\) per position, "
                                         r"but its gates expect \(32,\).*likely cause: cfg.d_mlp"):
        mg.discover(wrong, None)
    check_hook_points(gpt2_micro, dims)
    assert gpt2_micro.mgnp_checked_sites == dims.to_dict()  # once per model


def test_a_recording_pass_that_misses_sites_is_refused():
    """A pass that stops before the last block (as one through compiled blocks would) records only some sites:
    refused on leaving, naming the first missing site, instead of handing on a partial cache."""
    from mgnp_lens.hooks import hook_names, recording_sites

    model = micro_model("gpt2")
    dims = ModelDims.from_model(model)
    _, corrupted = random_pairs(model, n=2)
    with recording_sites(model, dims) as store:
        model(corrupted)
    assert set(store) == set(hook_names(dims))
    with pytest.raises(RuntimeError, match="first missing: blocks.1"):
        with recording_sites(model, dims):
            model(corrupted, stop_at_layer=1)
