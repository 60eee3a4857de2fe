"""The task protocol the discovery loop consumes, its default metric, and argument checks for task generators."""

from __future__ import annotations

import random

import torch

from ..losses import logit_diff
from .pairs import PairBatch, PairSet


class Task:
    """What :func:`mgnp_lens.discover` needs from a task.

    Subclasses provide ``name``, ``metric_name``, :meth:`split` and :meth:`metric`; ``loss`` is what the
    discovery trains on (:data:`mgnp_lens.losses.LOSSES`, default KL at the answer positions).
    """

    name: str = "task"
    metric_name: str = "logit diff"
    loss: str = "kl"

    def split(self, name: str) -> PairSet:  # pragma: no cover - interface
        raise NotImplementedError

    def metric(self, logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
        """Per-example task metric [B] from [B, (P,) d_vocab] answer-position logits; default logit diff."""
        return logit_diff(logits, batch)

    def heldout_splits(self) -> list[str]:
        """The :data:`HELDOUT_SPLITS` this task has (evaluated beside ``eval_split`` at the end of a run)."""
        return []

    def describe(self) -> dict:
        """JSON-able description stored with circuits."""
        return {"name": self.name, "metric": self.metric_name, **({"loss": self.loss} if self.loss != "kl" else {})}


#: Training pairs a built-in task generates by default, more than the paper's (each task's ``PAPER_N_TRAIN``) because
#: with those the neuron gates fit the training templates (docs/calibration.md).
DEFAULT_N_TRAIN = 1000


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



#: Evaluation splits a task generator adds beside ``SPLITS``: prompts from templates never seen in
#: training or validation (``test_templates``), the training templates under a second corruption
#: (``test_corruption``), and both at once (``test_ood``).
HELDOUT_SPLITS = ("test_templates", "test_corruption", "test_ood")


def partition_templates(templates: list, n_heldout: int) -> dict[str, list]:
    """Templates per split: the last ``n_heldout`` are the held-out test templates, the ``n_heldout``
    before them the validation templates, the rest train (and the in-template test split).

    With ``n_heldout=0`` every split uses every template (no template is held out).

    Raises:
        ValueError: if fewer than one training template would be left.
    """
    if not isinstance(n_heldout, int) or isinstance(n_heldout, bool) or n_heldout < 0:
        raise ValueError(f"heldout_templates must be a non-negative integer, got {n_heldout!r}")
    if n_heldout == 0:
        return {"train": templates, "validation": templates, "test": templates}
    if len(templates) < 2 * n_heldout + 1:
        raise ValueError(f"heldout_templates={n_heldout} holds out {2 * n_heldout} of {len(templates)} templates "
                         "(validation and test), leaving none to train on; use fewer, or heldout_templates=0")
    k = len(templates) - 2 * n_heldout
    return {"train": templates[:k], "validation": templates[k:k + n_heldout], "test": templates[k + n_heldout:]}


def split_plan(sizes: dict[str, int], n_heldout_pairs: int, templates: dict[str, list], corruption: str,
               other_corruption: str | None) -> dict[str, tuple[int, list, str]]:
    """``{split: (n_pairs, templates, corruption)}`` for a generator: train / validation / test and,
    where they exist, the :data:`HELDOUT_SPLITS`.

    Args:
        sizes: ``{"train", "validation", "test"}`` sizes (from :func:`split_sizes`).
        n_heldout_pairs: pairs in each held-out split (0: none).
        templates: :func:`partition_templates` output.
        corruption: the training corruption.
        other_corruption: the corruption of ``test_corruption`` and ``test_ood`` (None: no such splits).
    """
    if not isinstance(n_heldout_pairs, int) or isinstance(n_heldout_pairs, bool) or n_heldout_pairs < 0:
        raise ValueError(f"n_heldout must be a non-negative integer, got {n_heldout_pairs!r}")
    train_tpl, test_tpl = templates["train"], templates["test"]
    plan = {"train": (sizes["train"], train_tpl, corruption),
            "validation": (sizes["validation"], templates["validation"], corruption),
            "test": (sizes["test"], train_tpl, corruption)}
    if n_heldout_pairs:
        held_out_templates = test_tpl is not train_tpl
        if held_out_templates:
            plan["test_templates"] = (n_heldout_pairs, test_tpl, corruption)
        if other_corruption is not None:
            plan["test_corruption"] = (n_heldout_pairs, train_tpl, other_corruption)
            if held_out_templates:
                plan["test_ood"] = (n_heldout_pairs, test_tpl, other_corruption)
    return plan


def generate(plan: dict[str, tuple[int, list, str]], seed: int, make) -> dict[str, list[dict]]:
    """Records per split: ``make(rng, i, template, corruption)`` for the i-th pair of each split, templates
    taken in turn. Each split has its own random stream (seeded by ``seed`` and its name), so adding a
    held-out split leaves the training pairs as they were."""
    out = {}
    for split, (n, templates, corruption) in plan.items():
        rng = random.Random(f"{seed}:{split}")
        out[split] = [make(rng, i, templates[i % len(templates)], corruption) for i in range(n)]
    return out
