"""Faithfulness of a circuit: KL(full ‖ circuit) and the task metric, full model vs circuit (Table 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import pandas as pd
import torch

from .ablation import ablation_of, ablation_values
from .circuit import Circuit
from .hooks import Interpolator, check_hook_points, logits_at, masked_answer_logits
from .granularity import ModelDims
from .losses import FullModelTarget, kl_full_circuit  # noqa: F401  (re-exported)
from .precompute import Precomputed, chunks


@dataclass
class Evaluation:
    """One Table 2 row: the task metric of the full model, of the circuit and of the empty circuit, and
    the KL(full ‖ circuit).

    ``recovered`` is the MIB normalisation of faithfulness, ``(m(C) − m(∅)) / (m(N) − m(∅))``: 1 when the
    circuit's metric is the full model's, 0 when it is the empty circuit's (the corrupted run). A task trained
    on another loss than KL (:mod:`mgnp_lens.losses`) has it in ``loss`` (``loss_name``) beside the KL.
    """

    split: str
    n_examples: int
    base_metric: float
    circuit_metric: float
    kl: float
    metric_name: str = "logit diff"
    empty_metric: float | None = None
    loss_name: str = "kl"
    loss: float | None = None

    @property
    def objective(self) -> float:
        """The task's training loss on these pairs: ``loss``, or the KL for the KL loss."""
        return self.kl if self.loss is None else self.loss

    @property
    def recovered(self) -> float | None:
        """Fraction of the full model's metric the circuit recovers, measured from the empty circuit's."""
        if self.empty_metric is None or self.base_metric == self.empty_metric:
            return None
        return (self.circuit_metric - self.empty_metric) / (self.base_metric - self.empty_metric)

    def to_dict(self) -> dict:
        return {**asdict(self), "recovered": self.recovered}

    @classmethod
    def from_dict(cls, row: dict) -> "Evaluation":
        """Back from :meth:`to_dict` (an ``evaluation.json`` entry; ``recovered`` is recomputed)."""
        return cls(**{k: v for k, v in row.items() if k in cls.__dataclass_fields__})

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.to_dict()])


def check_circuit_fits(model, circuit: Circuit) -> None:
    """``ValueError`` (naming both shapes) unless ``circuit`` was found on a model of ``model``'s shape."""
    dims = ModelDims.from_model(model)
    if dims != circuit.dims:
        raise ValueError(f"the circuit is for a model shaped {circuit.dims.to_dict()}, but this model is shaped "
                         f"{dims.to_dict()}; evaluate it with the model it was found on")
    check_hook_points(model, dims)


def _resolve_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def evaluate(model, task, circuit: Circuit, split: str = "test", batch_size: int = 32,
             max_examples: int | None = None, ablation: str | None = None,
             constants: dict[str, torch.Tensor] | None = None) -> Evaluation:
    """Evaluate ``circuit`` on a task split.

    Args:
        model: the HookedTransformer/TransformerBridge the circuit was found on.
        task: a :class:`mgnp_lens.tasks.Task`.
        circuit: the circuit to evaluate.
        split: which split (default ``"test"``).
        batch_size: examples per forward pass.
        max_examples: evaluate only the first ``max_examples`` pairs of the split.
        ablation: what pruned nodes output (:mod:`mgnp_lens.ablation`); default the one the circuit was
            found with (``"corrupted"`` if it records none).
        constants: the zero/mean ablation's values, when already computed (default: computed here, the
            mean over the task's training pairs).

    Returns:
        an :class:`Evaluation` with means over the examples.
    """
    pairs = task.split(split)
    if max_examples is not None:
        pairs = pairs.head(max_examples)
    check_circuit_fits(model, circuit)
    device = _resolve_device(model)
    ablation = ablation or ablation_of(circuit)
    if constants is None and ablation != "corrupted":
        constants = ablation_values(model, circuit.dims, ablation, task.split("train"), batch_size)
    interp, empty_interp = (_interpolator(circuit.dims, m, constants) for m in (circuit.masks, None))

    def passes():
        for batch in pairs.batches(batch_size):
            batch = batch.to(device)
            base = logits_at(model, batch.clean, batch.answer_pos, len(batch))
            circ = masked_answer_logits(model, interp, batch.clean, batch.corrupted, batch.answer_pos)
            yield batch, base, circ, _empty_logits(model, empty_interp, batch)

    return summarize(task, split, passes())


def _interpolator(dims: ModelDims, masks, constants) -> Interpolator | None:
    """A batch-mode (or, with ablation constants, clean-only) interpolator holding ``masks``; None masks:
    the empty circuit's, or None where that is simply the corrupted run."""
    if masks is None:
        if constants is None:
            return None
        masks = Circuit.empty(dims).masks
    interp = Interpolator(dims, "batch", constants=constants)
    interp.set_masks(masks)
    return interp


def _empty_logits(model, empty_interp: Interpolator | None, batch) -> torch.Tensor:
    """[B, d_vocab] answer logits of the empty circuit: the corrupted run, or every node ablated."""
    if empty_interp is None:
        return logits_at(model, batch.corrupted, batch.answer_pos, len(batch))
    return masked_answer_logits(model, empty_interp, batch.clean, batch.corrupted, batch.answer_pos)


@torch.inference_mode()
def evaluate_cached(model, task, circuit: Circuit, pairs, pre: Precomputed, batch_size: int,
                    split: str = "train", with_empty: bool = True,
                    constants: dict[str, torch.Tensor] | None = None) -> Evaluation:
    """:func:`evaluate` on ``pairs`` from their precomputed full-model logits and corrupted activations
    (a run's, for its training pairs): one masked clean pass per batch instead of three (and, with
    ``with_empty``, one more for the empty circuit's metric). With zero/mean ablation ``constants`` the
    corrupted activations are not needed (``pre.cache`` may be empty)."""
    device = _resolve_device(model)
    interp = Interpolator(circuit.dims, "cache", constants=constants)
    interp.set_masks(circuit.masks)
    empty_interp = _interpolator(circuit.dims, None, constants) if with_empty else None

    def passes():
        for i, idx, b in chunks(pairs, batch_size, device):
            if constants is None:
                interp.set_corrupted({k: v[idx.to(v.device)] for k, v in pre.cache[i].items()})
            circ = masked_answer_logits(model, interp, b.clean, b.corrupted, b.answer_pos)
            empty = _empty_logits(model, empty_interp, b) if with_empty else None
            yield b, pre.base[i][idx.to(pre.base[i].device)], circ, empty

    return summarize(task, split, passes())


class _Sums:
    """Running sums of one circuit's KL and task metrics (full model, circuit, empty circuit) over batches."""

    def __init__(self):
        self.n, self.kl, self.base, self.circuit, self.empty, self.with_empty = 0, 0.0, 0.0, 0.0, 0.0, True
        self.loss = 0.0

    def add(self, task, batch, base: torch.Tensor, circ: torch.Tensor, empty: torch.Tensor | None,
            target: FullModelTarget | None = None, base_metric: float | None = None) -> None:
        """One batch's [B, (P,) d_vocab] logits (``target`` and ``base_metric``: the full model's, if already
        made)."""
        target = target or FullModelTarget.from_logits(base, task_loss(task))
        self.kl += float(target.kl(circ).sum())
        if target.loss != "kl":
            self.loss += float(target.loss_of(circ, batch).sum())
        self.base += float(task.metric(base, batch).sum()) if base_metric is None else base_metric
        self.circuit += float(task.metric(circ, batch).sum())
        if empty is None:
            self.with_empty = False
        else:
            self.empty += float(task.metric(empty, batch).sum())
        self.n += len(batch)

    def result(self, task, split: str) -> Evaluation:
        n = self.n
        if n == 0:
            raise ValueError(f"split {split!r} has no examples to evaluate")
        loss = task_loss(task)
        return Evaluation(split=split, n_examples=n, base_metric=self.base / n, circuit_metric=self.circuit / n,
                          kl=self.kl / n, metric_name=getattr(task, "metric_name", "metric"),
                          empty_metric=self.empty / n if self.with_empty else None, loss_name=loss,
                          loss=None if loss == "kl" else self.loss / n)


def task_loss(task) -> str:
    """The loss ``task`` trains on (:data:`mgnp_lens.losses.LOSSES`; ``"kl"`` for tasks that do not say)."""
    return getattr(task, "loss", "kl")


def summarize(task, split: str, passes) -> Evaluation:
    """Means over ``passes`` of the KL and of the task metric: full model, circuit and empty circuit.

    Args:
        task: supplies ``metric(logits, batch)`` → [B].
        split: the split's name, recorded in the result.
        passes: iterable of ``(batch, base_logits, circuit_logits, empty_logits)``, each [B, d_vocab]; the
            empty circuit's (every node ablated: the corrupted run) may be None.
    """
    sums = _Sums()
    for batch, base, circ, empty in passes:
        sums.add(task, batch, base, circ, empty)
    return sums.result(task, split)


@torch.inference_mode()
def evaluate_many(model, task, circuits: Sequence[Circuit], split: str = "test", batch_size: int = 32,
                  max_examples: int | None = None, ablation: str | None = None,
                  constants: dict[str, torch.Tensor] | None = None) -> list[Evaluation]:
    """:func:`evaluate` for several circuits of one model on the same pairs, at the cost of one masked pass
    per circuit and batch: the full model and the empty circuit run once per batch for all of them.

    Args:
        circuits: circuits of ``model``'s shape, all with one ablation (or pass ``ablation``).
        split, batch_size, max_examples, ablation, constants: as in :func:`evaluate`.

    Returns:
        one :class:`Evaluation` per circuit, in order; each equals what :func:`evaluate` gives it.

    Raises:
        ValueError: no circuits, circuits of another model, or circuits recorded with different ablations.
    """
    if not circuits:
        raise ValueError("evaluate_many needs at least one circuit")
    for c in circuits:
        check_circuit_fits(model, c)
    kinds = {ablation_of(c) for c in circuits}
    if ablation is None and len(kinds) > 1:
        raise ValueError(f"the circuits were found with different ablations ({', '.join(sorted(kinds))}); pass "
                         "ablation= to evaluate them all under one")
    ablation = ablation or kinds.pop()
    dims = circuits[0].dims
    pairs = task.split(split)
    if max_examples is not None:
        pairs = pairs.head(max_examples)
    if constants is None and ablation != "corrupted":
        constants = ablation_values(model, dims, ablation, task.split("train"), batch_size)
    empty_interp = _interpolator(dims, None, constants)
    interps = [_interpolator(dims, c.masks, constants) for c in circuits]
    sums = [_Sums() for _ in circuits]
    device = _resolve_device(model)
    for batch in pairs.batches(batch_size):
        batch = batch.to(device)
        base = logits_at(model, batch.clean, batch.answer_pos, len(batch))
        target = FullModelTarget.from_logits(base, task_loss(task))
        base_metric = float(task.metric(base, batch).sum())
        empty = _empty_logits(model, empty_interp, batch)
        for interp, s in zip(interps, sums):
            circ = masked_answer_logits(model, interp, batch.clean, batch.corrupted, batch.answer_pos)
            s.add(task, batch, base, circ, empty, target, base_metric)
    return [s.result(task, split) for s in sums]
