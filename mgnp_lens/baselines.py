"""Baselines in the same framework (same tasks, same interpolation, same evaluation).

* :func:`coarse`: pruning with gates on attention heads and MLP blocks only (subnetwork-probing
  style): every neuron inside a kept component stays.
* :func:`attribution`: node attribution patching. Each gate's score is
  ``|∂metric/∂m|`` at ``m = 1`` per example, i.e. ``|Σ (clean − corrupted)·∂metric/∂activation|``
  over the unit's activations, averaged over examples; the top-scoring nodes are kept to a
  per-granularity node budget. ``method="ig"`` integrates the gradient along the path from the
  corrupted run to the clean one instead (EAP-IG's scoring, on nodes).
* :func:`random_circuit`: random nodes with the same per-granularity counts.

Budgets are kept exactly when the hierarchy allows it (every kept parent gets at least one kept
child; children are chosen among the kept parents' children): see :func:`select_nodes`.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .circuit import Circuit
from .granularity import ModelDims
from .hooks import Interpolator, check_hook_points, masked_answer_logits
from .speedups import frozen_weights

COARSE_GRANULARITIES = ("attn_head", "mlp_block")


def coarse(model, task, config=None, **overrides):
    """Coarse-only pruning: Hard-Concrete gates on attention heads and MLP blocks only.

    Same loop, λ and evaluation as :func:`mgnp_lens.discover`; returns its ``DiscoveryResult``.
    """
    from .discovery import discover

    overrides.setdefault("granularities", COARSE_GRANULARITIES)
    return discover(model, task, config, **overrides)


def select_nodes(dims: ModelDims, scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> Circuit:
    """Keep the best-scoring nodes of every granularity to ``counts``, respecting the hierarchy.

    Parents are chosen first; each kept parent then gets its best child, and the remaining budget
    goes to the best children of kept parents. Granularities missing from ``counts`` are kept whole.

    Args:
        scores: ``{granularity: tensor shaped dims.shape(g)}``, higher = more important.
        counts: ``{granularity: nodes to keep}``.

    Raises:
        ValueError: a count is out of range, or the hierarchy makes it impossible (e.g. more heads
            than the kept attention blocks hold, or fewer heads than kept attention blocks).
    """
    for g, k in counts.items():
        if g not in dims.granularities:
            raise ValueError(f"unknown granularity {g!r} in counts (this model's: {', '.join(dims.granularities)})")
        if not 0 <= int(k) <= dims.count(g):
            raise ValueError(f"count for {g!r} is {k}, outside 0..{dims.count(g)}")
    masks: dict[str, torch.Tensor] = {}

    def top(g: str, allowed: torch.Tensor, must: torch.Tensor | None = None) -> torch.Tensor:
        """Keep ``counts[g]`` of ``allowed`` units by score, always including ``must``."""
        shape = dims.shape(g)
        if g not in counts:
            return allowed.clone()
        k = int(counts[g])
        s = scores[g].reshape(shape).float().flatten().clone()
        allowed_f = allowed.flatten()
        keep = torch.zeros_like(allowed_f)
        if must is not None:
            keep |= must.flatten()
        if int(allowed_f.sum()) < k:
            raise ValueError(f"cannot keep {k} {g} nodes: the kept parents hold only {int(allowed_f.sum())}")
        if int(keep.sum()) > k:
            raise ValueError(f"cannot keep only {k} {g} nodes: {int(keep.sum())} kept parents need one child each")
        s[~allowed_f | keep] = -float("inf")
        extra = k - int(keep.sum())
        if extra > 0:
            keep[torch.topk(s, extra).indices] = True
        return keep.reshape(shape)

    def best_child(g: str, parent: torch.Tensor) -> torch.Tensor:
        """One True per kept parent: its best-scoring child (children on the last axis)."""
        if g not in counts:
            return torch.zeros(dims.shape(g), dtype=torch.bool)
        s = scores[g].reshape(*parent.shape, -1).float()  # [.., parent's units, its children]
        out = torch.zeros(s.shape, dtype=torch.bool)
        out.scatter_(-1, s.argmax(dim=-1, keepdim=True), True)
        return (out & parent.unsqueeze(-1)).reshape(dims.shape(g))

    true = lambda g: torch.ones(dims.shape(g), dtype=torch.bool)  # noqa: E731
    masks["embedding"] = top("embedding", true("embedding"))
    masks["attn_block"] = top("attn_block", true("attn_block"))
    masks["mlp_block"] = top("mlp_block", true("mlp_block"))
    head_allowed = masks["attn_block"][:, None].expand(dims.shape("attn_head"))
    masks["attn_head"] = top("attn_head", head_allowed, best_child("attn_head", masks["attn_block"]))
    masks["attn_neuron"] = top("attn_neuron", masks["attn_head"][..., None].expand(dims.shape("attn_neuron")),
                               best_child("attn_neuron", masks["attn_head"]))
    if dims.n_experts:
        masks["mlp_expert"] = top("mlp_expert", masks["mlp_block"][:, None].expand(dims.shape("mlp_expert")),
                                  best_child("mlp_expert", masks["mlp_block"]))
    for g in ("mlp_hidden", "mlp_output"):
        parent = masks[dims.parent(g)]
        masks[g] = top(g, dims.under_parent(g, parent).expand(dims.shape(g)), best_child(g, parent))
    return Circuit(dims, masks)


def random_circuit(dims_or_model, counts: Mapping[str, int] | Circuit, seed: int = 0) -> Circuit:
    """A random hierarchy-consistent circuit with the given per-granularity counts.

    Args:
        dims_or_model: a model or its :class:`ModelDims`.
        counts: ``{granularity: count}`` or a circuit whose counts to match.
        seed: random seed.
    """
    dims = dims_or_model if isinstance(dims_or_model, ModelDims) else ModelDims.from_model(dims_or_model)
    if isinstance(counts, Circuit):
        counts = counts.counts()
    g = torch.Generator().manual_seed(seed)
    scores = {name: torch.rand(dims.shape(name), generator=g) for name in dims.granularities}
    return select_nodes(dims, scores, counts)


#: How :func:`attribution_scores` scores a gate: ``"first_order"``, the gradient at the full model (attribution
#: patching); ``"ig"``, integrated gradients along the straight path from the corrupted run (every gate 0) to the clean
#: one (every gate 1), EAP-IG's scoring applied to nodes.
ATTRIBUTION_METHODS = ("first_order", "ig")


def _path_points(method: str, steps: int) -> list[float]:
    """The gate values at which :func:`attribution_scores` takes gradients: 1 (first order), or the midpoints of
    ``steps`` equal pieces of [0, 1] (integrated gradients by the midpoint rule)."""
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}; expected one of {', '.join(ATTRIBUTION_METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer (the points on the integration path), got {steps!r}")
    return [1.0] if method == "first_order" else [(k + 0.5) / steps for k in range(steps)]


def attribution_scores(model, task, split: str = "train", batch_size: int = 16, max_examples: int | None = 256,
                       metric=None, method: str = "first_order", steps: int = 5,
                       absolute: bool = True) -> dict[str, torch.Tensor]:
    """Node attribution scores per gate, averaged over examples.

    ``method="first_order"``: ``|∂metric/∂m|`` at ``m = 1`` (attribution patching). ``method="ig"``: integrated
    gradients, ``|∫₀¹ ∂metric/∂m (α) dα|`` with every gate of every granularity at ``α`` together (``m = α`` mixes
    ``α·clean + (1 − α)·corrupted`` activations at each hook), by the midpoint rule on ``steps`` points; it costs
    ``steps`` forward and backward passes a batch.

    Args:
        metric: ``f(logits [B, d_vocab], batch) -> [B]``; default the task's metric.
        method: one of :data:`ATTRIBUTION_METHODS`.
        steps: points on the integration path (``"ig"`` only).
        absolute: the mean of each example's absolute score (default); False: the signed mean, with which the
            ``"ig"`` scores of every gate sum to ``metric(clean) − metric(every gate 0)`` (completeness).

    Returns:
        ``{granularity: tensor shaped dims.shape(g)}``.
    """
    alphas = _path_points(method, steps)
    dims = ModelDims.from_model(model)
    check_hook_points(model, dims)
    pairs = task.split(split)
    if max_examples is not None:
        pairs = pairs.head(max_examples)
    metric = metric or task.metric
    device = next(model.parameters()).device
    totals = {g: torch.zeros(dims.shape(g)) for g in dims.granularities}
    n = 0
    interp = Interpolator(dims, "batch", skip_dead_sites=False)
    with frozen_weights(model):
        for batch in pairs.batches(batch_size):
            batch = batch.to(device)
            grads = _mean_gradient(model, interp, batch, dims, alphas, metric)
            for g in dims.granularities:
                totals[g] += (grads[g].abs() if absolute else grads[g]).sum(0).cpu()
            n += len(batch)
    return {g: v / max(n, 1) for g, v in totals.items()}


def _mean_gradient(model, interp: Interpolator, batch, dims: ModelDims, alphas: list[float],
                   metric) -> dict[str, torch.Tensor]:
    """``{g: [B, *dims.shape(g)]}``: each example's ``∂metric/∂m`` averaged over the points ``alphas``, every gate
    set to the point's value."""
    device, B = batch.clean.device, len(batch)
    out = {g: torch.zeros((B, *dims.shape(g)), device=device) for g in dims.granularities}
    for alpha in alphas:
        masks = {g: torch.full((B, *dims.shape(g)), alpha, device=device, requires_grad=True)
                 for g in dims.granularities}
        interp.set_masks(masks)
        logits = masked_answer_logits(model, interp, batch.clean, batch.corrupted, batch.answer_pos)
        metric(logits, batch).sum().backward()
        for g in dims.granularities:
            out[g] += masks[g].grad / len(alphas)
    return out


def attribution(model, task, counts: Mapping[str, int] | Circuit, **kwargs) -> Circuit:
    """Node attribution patching: the top-scoring nodes of every granularity, to ``counts``.

    Args:
        counts: per-granularity node budget, or a circuit whose counts to match.
        **kwargs: passed to :func:`attribution_scores` (split, batch_size, max_examples, metric, method, steps).
    """
    dims = ModelDims.from_model(model)
    if isinstance(counts, Circuit):
        counts = counts.counts()
    return select_nodes(dims, attribution_scores(model, task, **kwargs), counts)
