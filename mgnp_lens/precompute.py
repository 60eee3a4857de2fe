"""What a run computes once per split without gradients: the full model's answer logits and, for cache
mode, the corrupted activations at every gated site."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .granularity import ModelDims
from .hooks import corrupted_activations, logits_at


@dataclass
class Precomputed:
    """One split's full-model outputs, bucket by bucket (the buckets of its :class:`~mgnp_lens.tasks.PairSet`).

    Attributes:
        base: per bucket, the full model's answer logits [n_bucket, d_vocab] in float32.
        cache: per bucket, ``{hook_name: [n_bucket, pos, ...]}`` corrupted activations (empty list: none).
    """

    base: list[torch.Tensor]
    cache: list[dict[str, torch.Tensor]] = field(default_factory=list)


def chunks(pairs, batch_size: int, device):
    """``(bucket index, row indices [b] in the bucket, those rows on device)``, bucket by bucket, in order."""
    for i, bucket in enumerate(pairs.buckets):
        for start in range(0, len(bucket), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(bucket)))
            yield i, idx, bucket.select(idx).to(device)


@torch.inference_mode()
def precompute(model, dims: ModelDims, pairs, batch_size: int, with_cache: bool) -> Precomputed:
    """The full model's answer logits of every pair and, if ``with_cache``, its corrupted activations."""
    logits = [[] for _ in pairs.buckets]
    acts = [[] for _ in pairs.buckets]
    for i, _, b in chunks(pairs, batch_size, next(model.parameters()).device):
        logits[i].append(logits_at(model, b.clean, b.answer_pos, len(b)).float())
        if with_cache:
            acts[i].append(corrupted_activations(model, dims, b.corrupted))
    base = [torch.cat(c) for c in logits]
    cache = [{k: torch.cat([a[k] for a in c]) for k in c[0]} for c in acts] if with_cache else []
    return Precomputed(base, cache)
