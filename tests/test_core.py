"""Core engine: gate counts, the interpolation identities, head patching, hierarchy, persistence."""

from __future__ import annotations

import json
import types

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import mgnp_lens as mg
from mgnp_lens.circuit import hierarchy_violations, make_consistent
from mgnp_lens.gates import HardConcreteGates, HardConcreteParams
from mgnp_lens.granularity import GRANULARITIES, ModelDims
from mgnp_lens.hooks import Interpolator, corrupted_activations, masked_answer_logits

from conftest import micro_model, random_pairs


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


def test_hard_concrete_formulas():
    dims = ModelDims(2, 3, 4, 5, 6)
    p = HardConcreteParams()
    gates = HardConcreteGates(dims, p, generator=torch.Generator().manual_seed(0))
    la = gates.log_alpha["attn_head"]
    assert la.min() >= 1.5 and la.max() <= 2.5
    with torch.no_grad():
        la.copy_(torch.tensor([[-3.0, -0.01, 0.01], [0.0, 3.0, 10.0]]))
    det = gates.deterministic()["attn_head"]
    expected = (torch.sigmoid(la) * (p.zeta - p.gamma) + p.gamma).clamp(0, 1)
    assert torch.allclose(det, expected)
    assert det[0, 0] == 0 and det[1, 2] == 1
    # Eq. 8 with threshold 0.5 keeps exactly the gates with log alpha > 0
    assert gates.binarize()["attn_head"].tolist() == [[False, False, True], [False, True, True]]
    l0 = gates.expected_l0()["attn_head"]
    assert torch.allclose(l0, torch.sigmoid(la - p.beta * torch.log(torch.tensor(-p.gamma / p.zeta))))
    samples = gates.sample(torch.Generator().manual_seed(1))
    assert all(((s >= 0) & (s <= 1)).all() for s in samples.values())
    assert set(samples) == set(GRANULARITIES)



def test_noise_scale_interpolates_from_noise_free_to_eq6():
    dims = ModelDims(2, 3, 4, 5, 6)
    p = HardConcreteParams()
    gates = HardConcreteGates(dims, p, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gates.log_alpha["attn_head"].copy_(torch.tensor([[-3.0, -0.3, 0.2], [0.5, 1.0, 10.0]]))
    full = gates.sample(torch.Generator().manual_seed(3), batch_size=4)
    default = gates.sample(torch.Generator().manual_seed(3), batch_size=4, noise_scale=1.0)
    assert all(torch.equal(full[g], default[g]) for g in GRANULARITIES)  # scale 1 is Eq. 6 bit for bit
    quiet = [gates.sample(torch.Generator().manual_seed(s), batch_size=4, noise_scale=0.0) for s in (3, 4)]
    la = gates.log_alpha["attn_head"]
    free = (torch.sigmoid(la / p.beta) * (p.zeta - p.gamma) + p.gamma).clamp(0, 1)
    for q in quiet:  # no noise: the same gate for every seed and example
        assert torch.allclose(q["attn_head"], free.expand(4, 2, 3))
    assert not torch.equal(full["attn_head"], quiet[0]["attn_head"])
    half = gates.sample(torch.Generator().manual_seed(3), batch_size=4, noise_scale=0.5)["attn_head"]
    # the same draw at half the noise sits between the noise-free gate and the full-noise one
    lo, hi = torch.minimum(free, full["attn_head"]), torch.maximum(free, full["attn_head"])
    assert ((half >= lo - 1e-6) & (half <= hi + 1e-6)).all()
    # per granularity: only the named one loses its noise, the others get the very same draw as Eq. 6
    mixed = gates.sample(torch.Generator().manual_seed(3), batch_size=4, noise_scale={"attn_head": 0.0})
    assert torch.allclose(mixed["attn_head"], free.expand(4, 2, 3))
    assert all(torch.equal(mixed[g], full[g]) for g in GRANULARITIES if g != "attn_head")


def test_path_l0_multiplies_each_gate_by_its_ancestors():
    dims = ModelDims(2, 3, 4, 5, 6)
    gates = HardConcreteGates(dims, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for la in gates.log_alpha.values():
            la.copy_(torch.randn(la.shape, generator=torch.Generator().manual_seed(la.numel())) * 3)
    own, path = gates.expected_l0(), gates.expected_l0(path=True)
    torch.testing.assert_close(path["attn_block"], own["attn_block"])
    torch.testing.assert_close(path["attn_head"], own["attn_head"] * own["attn_block"][:, None])
    torch.testing.assert_close(path["attn_neuron"],
                               own["attn_neuron"] * own["attn_head"][..., None] * own["attn_block"][:, None, None])
    torch.testing.assert_close(path["mlp_hidden"], own["mlp_hidden"] * own["mlp_block"][:, None])
    torch.testing.assert_close(path["mlp_output"], own["mlp_output"] * own["mlp_block"][:, None])
    # the children's L0 now reaches the parents' log alpha
    path["attn_neuron"].sum().backward()
    assert gates.log_alpha["attn_head"].grad.abs().min() > 0 and gates.log_alpha["attn_block"].grad is not None
    # an ungated parent counts as always on
    heads_fixed = HardConcreteGates(dims, granularities=("attn_block", "attn_neuron"))
    p2 = heads_fixed.expected_l0(path=True)
    o2 = heads_fixed.expected_l0()
    torch.testing.assert_close(p2["attn_neuron"], o2["attn_neuron"] * o2["attn_block"][:, None, None])


def test_sampled_gates_hit_exact_zero_and_one():
    dims = ModelDims(1, 1, 1, 1, 1)
    gates = HardConcreteGates(dims)
    with torch.no_grad():
        gates.log_alpha["attn_head"].fill_(0.0)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([gates.sample(g)["attn_head"] for _ in range(2000)]).flatten()
    assert (draws == 0).any() and (draws == 1).any()
    assert ((draws > 0) & (draws < 1)).any()


def test_bad_hard_concrete_params():
    with pytest.raises(ValueError, match="beta"):
        HardConcreteParams(beta=0)
    with pytest.raises(ValueError, match="threshold"):
        HardConcreteParams(threshold=1.5)


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


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_fast_weight_layout_changes_memory_order_only(kind):
    from mgnp_lens.hooks import fast_weight_layout

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
    from mgnp_lens.hooks import MATMUL_WEIGHTS, fast_weight_layout, precast_weights

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
    restore = precast_weights(model, torch.bfloat16)
    params = dict(model.named_parameters())
    lowered = [n for n, p in params.items() if p.dtype == torch.bfloat16]
    assert lowered and all(n.rsplit(".", 1)[-1] in MATMUL_WEIGHTS for n in lowered)
    assert {n.rsplit(".", 1)[-1] for n in lowered} >= {"W_Q", "W_O", "W_in", "W_out", "W_U"}
    assert all(params[n].dtype == torch.float32 for n in params if n.endswith(("W_E", ".w", "b_Q", "b_in")))
    assert all(params[n].stride() == originals[n].stride() for n in lowered)  # the fast layout survives
    assert torch.equal(masked_logits(), reference)  # autocast would have made exactly these casts
    restore()
    restore()  # idempotent
    assert all(p.data_ptr() == originals[n].data_ptr() and p.dtype == torch.float32
               and p.stride() == originals[n].stride() for n, p in model.named_parameters())  # the same storage
    precast_weights(model, None)()  # no autocast: nothing to cast
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_full_model_target_kl_equals_the_direct_formula():
    from mgnp_lens.evaluate import FullModelTarget, kl_full_circuit

    g = torch.Generator().manual_seed(0)
    base, circ = torch.randn(6, 50, generator=g) * 3, torch.randn(6, 50, generator=g) * 3
    def direct(b, c):  # torch's own KL, independent of the library's formula
        return torch.nn.functional.kl_div(torch.log_softmax(c, -1), torch.log_softmax(b, -1), log_target=True,
                                          reduction="none").sum(-1)

    target = FullModelTarget.from_logits(base)
    ref = direct(base, circ)
    assert torch.allclose(target.kl(circ), ref, atol=1e-5) and ref.min() > 0.1
    assert torch.allclose(kl_full_circuit(torch.log_softmax(base, -1), circ), ref, atol=1e-5)
    assert target.kl(base).abs().max() <= 1e-5  # the full model against itself
    rows = torch.tensor([4, 1])
    assert torch.allclose(target.rows(rows).kl(circ[rows]), ref[rows], atol=1e-5)
    assert torch.allclose(target.rows(rows).kl(circ[rows].bfloat16()),  # taken in float32
                          direct(base[rows], circ[rows].bfloat16().float()), atol=1e-5)


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
