"""Hard-Concrete gates: the formulas of Eq. 6-8, noise scaling, path L0, exact zeros and ones."""

from __future__ import annotations

import pytest
import torch

from mgnp_lens.gates import HardConcreteGates, HardConcreteParams
from mgnp_lens.granularity import GRANULARITIES, ModelDims


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


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_the_cheap_open_masks_equal_binarize_and_the_scores_follow_the_same_rule(threshold):
    dims = ModelDims(n_layers=3, n_heads=2, d_head=4, d_mlp=8, d_model=6)
    gates = HardConcreteGates(dims, HardConcreteParams(threshold=threshold), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for la in gates.log_alpha.values():
            la.normal_(0, 3)
    cheap, exact = gates.open_on_cpu(), gates.binarize()
    assert all(torch.equal(cheap[g], exact[g]) for g in dims.granularities)
    probs = gates.open_probability({g: la for g, la in gates.log_alpha.items() if g == "embedding"})
    assert probs["embedding"].item() == pytest.approx(float(torch.sigmoid(
        gates.log_alpha["embedding"] - gates.params.beta * torch.logit(torch.tensor((threshold + 0.1) / 1.2)))))
    assert (probs["attn_head"] == 1).all()  # untrained here: always kept
    if threshold == 0.5:  # then a gate is kept exactly when its own probability of being kept exceeds 1/2
        own = gates.open_probability({g: gates.log_alpha[g] for g in ("mlp_hidden",)})["mlp_hidden"]
        assert torch.equal(own > 0.5, exact["mlp_hidden"])
        # a gate's own probability, not times its ancestors', is what binarisation compares, whatever the parents
        alone = gates.open_probability(along_hierarchy=False)
        along = gates.open_probability()
        assert torch.equal(alone["attn_neuron"] > 0.5, exact["attn_neuron"])
        assert (along["attn_neuron"] <= alone["attn_neuron"] + 1e-7).all()
        assert not torch.allclose(along["attn_neuron"], alone["attn_neuron"])
