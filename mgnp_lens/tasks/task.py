"""The task protocol the discovery loop consumes, its default metric, and argument checks for task generators."""

from __future__ import annotations

import torch

from .pairs import PairBatch, PairSet


def logit_diff(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Logit of the correct answer minus logit of the incorrect one.

    Args:
        logits: [B, d_vocab] logits at the answer position.

    Returns:
        [B] logit differences.
    """
    idx = torch.arange(len(batch), device=logits.device)
    return logits[idx, batch.correct.to(logits.device)] - logits[idx, batch.incorrect.to(logits.device)]


class Task:
    """What :func:`mgnp_lens.discover` needs from a task.

    Subclasses provide ``name``, ``metric_name``, :meth:`split` and :meth:`metric`.
    """

    name: str = "task"
    metric_name: str = "logit diff"

    def split(self, name: str) -> PairSet:  # pragma: no cover - interface
        raise NotImplementedError

    def metric(self, logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
        """Per-example task metric from [B, d_vocab] answer-position logits; default logit diff."""
        return logit_diff(logits, batch)

    def describe(self) -> dict:
        """JSON-able description stored with circuits."""
        return {"name": self.name, "metric": self.metric_name}


def split_sizes(n_train, n_validation, n_test) -> dict[str, int]:
    """Validated ``{"train": .., "validation": .., "test": ..}``."""
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    for k, v in sizes.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"n_{k} must be a positive integer, got {v!r}")
    return sizes


def check_choice(kind: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(choices)}")
    return value

