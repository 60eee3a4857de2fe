"""What a run computes once per split without gradients: the full model's answer logits and, for cache
mode, the corrupted activations at every gated site."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .granularity import ModelDims
from .hooks import logits_at, recording_sites


@dataclass
class Precomputed:
    """One split's full-model outputs, bucket by bucket (the buckets of its :class:`~mgnp_lens.tasks.PairSet`).

    Attributes:
        base: per bucket, the full model's answer logits [n_bucket, d_vocab] in float32.
        cache: per bucket, ``{hook_name: [n_bucket, pos, ...]}`` corrupted activations (empty list: none).
        empty_metric: per bucket, the task metric of the corrupted run [n_bucket] (the empty circuit's under the
            corrupted ablation; empty list: not recorded).
    """

    base: list[torch.Tensor]
    cache: list[dict[str, torch.Tensor]] = field(default_factory=list)
    empty_metric: list[torch.Tensor] = field(default_factory=list)

    def head(self, counts: list[int]) -> "Precomputed":
        """The first ``counts[i]`` rows of bucket ``i``, buckets with none left out: what
        :meth:`~mgnp_lens.tasks.PairSet.head` keeps of the same split (``counts`` from its ``head_counts``)."""
        keep = [(i, k) for i, k in enumerate(counts) if k > 0]
        return Precomputed([self.base[i][:k] for i, k in keep],
                           [{h: v[:k] for h, v in self.cache[i].items()} for i, k in keep] if self.cache else [],
                           [self.empty_metric[i][:k] for i, k in keep] if self.empty_metric else [])


def chunks(pairs, batch_size: int, device, interleave: bool = False):
    """``(bucket index, row indices [b] in the bucket, those rows on device)``, bucket by bucket, in order; with
    ``interleave`` the buckets' chunks take turns as in :meth:`~mgnp_lens.tasks.PairSet.batches`."""
    order = []
    for i, bucket in enumerate(pairs.buckets):
        starts = range(0, len(bucket), batch_size)
        order += [((j + 0.5) / len(starts), i, start) for j, start in enumerate(starts)]
    if interleave:
        order.sort(key=lambda o: o[0])
    for _, i, start in order:
        idx = torch.arange(start, min(start + batch_size, len(pairs.buckets[i])))
        yield i, idx, pairs.buckets[i].select(idx).to(device)


def _fill(store: dict, key, n: int, idx: torch.Tensor, value: torch.Tensor) -> None:
    """Writes ``value`` [b, ...] into rows ``idx`` of ``store[key]``, allocated [n, ...] on first use."""
    if key not in store:
        store[key] = value.new_empty((n, *value.shape[1:]))
    store[key][idx.to(value.device)] = value


@torch.inference_mode()
def precompute(model, dims: ModelDims, pairs, batch_size: int, with_cache: bool, metric=None,
               corrupted_precision=nullcontext) -> Precomputed:
    """The full model's answer logits of every pair and, if ``with_cache``, its corrupted activations and (with
    ``metric(logits [b, d_vocab], batch)`` → [b]) the corrupted run's metric, from the same pass.

    The clean passes run in the model's precision (the answer logits are the KL targets and the evaluation's
    reference); the corrupted passes run inside ``corrupted_precision()``, a context manager: a run whose training
    passes autocast passes :meth:`~mgnp_lens.speedups.TrainingSpeedups.low_precision`, so the cached activations are
    computed in the precision the training passes mix them in (measured in ``docs/performance.md``).
    Each bucket's tensors are allocated once and filled chunk by chunk (no second copy from concatenating).
    """
    device = next(model.parameters()).device
    base = {}
    for i, idx, b in chunks(pairs, batch_size, device):
        _fill(base, i, len(pairs.buckets[i]), idx, logits_at(model, b.clean, b.answer_pos, len(b)).float())
    buckets = range(len(pairs.buckets))
    if not with_cache:
        return Precomputed([base[i] for i in buckets])
    empty, cache = _corrupted_passes(model, dims, pairs, batch_size, metric, corrupted_precision)
    return Precomputed([base[i] for i in buckets], cache, [empty[i] for i in buckets] if metric is not None else [])


def _corrupted_passes(model, dims: ModelDims, pairs, batch_size: int, metric, precision
                      ) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """Per bucket, the corrupted run's metric (with ``metric``; else ``{}``) and its activations at every gated
    site, every pass inside one ``precision()``."""
    empty, cache = {}, [{} for _ in pairs.buckets]
    with precision():
        for i, idx, b in chunks(pairs, batch_size, next(model.parameters()).device):
            n = len(pairs.buckets[i])
            with recording_sites(model, dims) as acts:
                logits = logits_at(model, b.corrupted, b.answer_pos, len(b))
            if metric is not None:
                _fill(empty, i, n, idx, metric(logits.float(), b))
            for name, act in acts.items():
                _fill(cache[i], name, n, idx, act)
    return empty, cache


def precompute_bytes(model, dims: ModelDims, pairs, with_cache: bool) -> int:
    """Bytes that :func:`precompute` of ``pairs`` and the KL targets made from it hold: two [n, d_vocab] float32
    tensors (logits, probabilities) and, with the cache, every gated site's activation of every token."""
    n = len(pairs)
    tokens = sum(b.clean.numel() for b in pairs.buckets)
    item = next(model.parameters()).element_size()
    per_token = dims.n_layers * (dims.n_heads * dims.d_head + dims.hidden_width + dims.d_model) + dims.d_model
    return 2 * 4 * n * model.cfg.d_vocab + (item * tokens * per_token if with_cache else 0)


def _cgroup_bytes_left() -> int | None:
    """Memory left under this process's cgroup (v2) limit, or None where there is no limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Memory a run can still take on ``device`` (CUDA: free GPU memory; CPU: MemAvailable, capped by a
    cgroup limit), or None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    left = _cgroup_bytes_left()
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        mem = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return left
    return mem if left is None else min(mem, left)
