"""Faithfulness of a circuit: KL(full ‖ circuit) and the task metric, full model vs circuit (Table 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import pandas as pd
import torch

from .ablation import Ablation, Replacement, ablation_of
from .circuit import Circuit
from .hooks import Interpolator, check_hook_points, logits_at, masked_answer_logits, recording_sites
from .granularity import ModelDims
from .losses import FullModelTarget, kl_full_circuit  # noqa: F401  (re-exported)
from .phases import Phases, silent
from .precompute import Precomputed, chunks


@dataclass
class Evaluation:
    """One Table 2 row: the task metric of the full model, of the circuit and of the empty circuit, and
    the KL(full ‖ circuit).

    ``recovered`` is the MIB normalisation of faithfulness, ``(m(C) − m(∅)) / (m(N) − m(∅))``: 1 when the
    circuit's metric is the full model's, 0 when it is the empty circuit's (the corrupted run). A task trained
    on another loss than KL (:mod:`mgnp_lens.losses`) has it in ``loss`` (``loss_name``) beside the KL.
    ``kl_se``, ``circuit_metric_se`` and ``loss_se`` are the standard errors of those means over the pairs
    (None for a single pair, or in files written before they were recorded).
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
    kl_se: float | None = None
    circuit_metric_se: float | None = None
    loss_se: float | None = None

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


#: An evaluation that stops at a standard error (``kl_se``) first measures at least this many pairs, so that the
#: standard error itself rests on enough pairs from every template.
MIN_PAIRS_FOR_SE = 128


@torch.inference_mode()
def evaluate(model, task, circuit: Circuit, split: str = "test", batch_size: int = 32,
             max_examples: int | None = None, ablation: Ablation | str | None = None,
             replacement: Replacement | None = None, phases: Phases | None = None,
             kl_se: float | None = None) -> Evaluation:
    """Evaluate ``circuit`` on a task split.

    Args:
        model: the HookedTransformer/TransformerBridge the circuit was found on.
        task: a :class:`mgnp_lens.tasks.Task`.
        circuit: the circuit to evaluate.
        split: which split (default ``"test"``).
        batch_size: examples per forward pass.
        max_examples: evaluate at most this many pairs of the split (each length bucket's share, its first rows:
            :meth:`~mgnp_lens.tasks.PairSet.head`).
        ablation: what pruned nodes output (:mod:`mgnp_lens.ablation`); default the one the circuit was
            found with (``"corrupted"`` if it records none).
        replacement: the ablation's :class:`~mgnp_lens.ablation.Replacement` when already built (the zero/mean
            constants; default: built here, the mean over the task's training pairs); it sets the ablation.
        phases: time the evaluation as phase ``"evaluate SPLIT"`` and show its progress (:mod:`mgnp_lens.phases`).
        kl_se: stop once the KL's standard error is at most this, after at least :data:`MIN_PAIRS_FOR_SE`
            pairs; the batches then alternate between the split's length buckets (templates), so the pairs
            measured are spread over all of them, and ``max_examples`` caps the pairs in that order.

    Returns:
        an :class:`Evaluation` with means over the examples (and their standard errors).
    """
    if ablation is None and replacement is None:
        ablation = ablation_of(circuit)
    return evaluate_many(model, task, [circuit], split, batch_size, max_examples, ablation, replacement, phases,
                         kl_se)[0]


def _split_batches(task, split: str, batch_size: int, max_examples: int | None, kl_se: float | None):
    """The split's batches to evaluate and how many pairs they hold: ``max_examples`` pairs spread over the buckets
    (:meth:`~mgnp_lens.tasks.PairSet.head`), or (with ``kl_se``, which may stop early) interleaved over the buckets
    up to ``max_examples``."""
    pairs = task.split(split)
    if kl_se is None:
        pairs = pairs if max_examples is None else pairs.head(max_examples)
        return pairs.batches(batch_size), len(pairs)
    cap = len(pairs) if max_examples is None else min(max_examples, len(pairs))

    def capped():
        left = cap
        for batch in pairs.batches(batch_size, interleave=True):
            if left <= 0:
                return
            yield batch if len(batch) <= left else batch.select(torch.arange(left))
            left -= len(batch)
    return capped(), cap


def _precise_enough(sums: list, kl_se: float | None) -> bool:
    """Whether every circuit's KL has reached ``kl_se`` on at least :data:`MIN_PAIRS_FOR_SE` pairs."""
    if kl_se is None or sums[0].n < MIN_PAIRS_FOR_SE:
        return False
    return all((_standard_error(s.kl, s.kl_sq, s.n) or 0.0) <= kl_se for s in sums)


def _mode(replacement: Replacement | None, corruption: str) -> str:
    """The interpolation mode: ``"constant"`` for a zero/mean ``replacement``, else ``corruption``."""
    return corruption if replacement is None else replacement.interpolation_mode(corruption)


def _interpolator(dims: ModelDims, masks, replacement: Replacement | None,
                  corruption: str = "batch") -> Interpolator | None:
    """A ``corruption``-mode (``"batch"`` or ``"cache"``; with a zero/mean replacement, constant-mode: clean prompts
    only) interpolator holding ``masks``; None masks: the empty circuit's, or None where that is simply the
    corrupted run."""
    mode = _mode(replacement, corruption)
    if masks is None:
        if mode != "constant":
            return None
        masks = Circuit.empty(dims).masks
    interp = Interpolator(dims, mode, replacement=replacement)
    interp.set_masks(masks)
    return interp


def _empty_logits(model, empty_interp: Interpolator | None, batch) -> torch.Tensor:
    """[B, d_vocab] answer logits of the empty circuit: the corrupted run, or every node ablated."""
    if empty_interp is None:
        return logits_at(model, batch.corrupted, batch.answer_pos, len(batch))
    return masked_answer_logits(model, empty_interp, batch.clean, batch.corrupted, batch.answer_pos)


def _circuit_and_empty(model, interp: Interpolator, empty_interp: Interpolator | None, batch,
                       need_empty: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, (P,) d_vocab] answer logits of the circuit and (with ``need_empty``) of the empty circuit.

    Under the corrupted ablation a batch-mode pass runs the corrupted prompts unmasked beside the clean ones, so
    its second half is the empty circuit (the corrupted run): one [2B, pos] pass gives both."""
    if not need_empty or empty_interp is not None or interp.mode != "batch":
        circ = masked_answer_logits(model, interp, batch.clean, batch.corrupted, batch.answer_pos)
        return circ, _empty_logits(model, empty_interp, batch) if need_empty else None
    n = len(batch)
    with interp.attached(model):
        both = logits_at(model, torch.cat([batch.clean, batch.corrupted]), torch.cat([batch.answer_pos] * 2), 2 * n)
    return both[:n], both[n:]


@torch.inference_mode()
def evaluate_cached(model, task, circuit: Circuit, pairs, pre: Precomputed, batch_size: int,
                    split: str = "train", with_empty: bool = True,
                    replacement: Replacement | None = None, bar=None, kl_se: float | None = None) -> Evaluation:
    """:func:`evaluate` on ``pairs`` from their precomputed full-model logits and corrupted activations
    (a run's, for its training pairs): one masked clean pass per batch instead of three (and, with
    ``with_empty``, the empty circuit's metric: the precomputed corrupted run's where there is one, else one
    more pass). With a zero/mean ``replacement`` the corrupted activations are not needed (``pre.cache`` may be
    empty). ``bar``: a progress bar to ``update`` with each batch's pairs (:class:`mgnp_lens.phases.Phases`).
    ``kl_se``: as in :func:`evaluate` (the buckets' batches then take turns)."""
    device = _resolve_device(model)
    interp = Interpolator(circuit.dims, _mode(replacement, "cache"), replacement=replacement)
    interp.set_masks(circuit.masks)
    empty_interp = _interpolator(circuit.dims, None, replacement) if with_empty else None
    recorded = with_empty and empty_interp is None and bool(pre.empty_metric)
    sums = _Sums()
    for i, idx, b in chunks(pairs, batch_size, device, interleave=kl_se is not None):
        if _precise_enough([sums], kl_se):
            break
        if interp.mode == "cache":
            interp.set_corrupted({k: v[idx.to(v.device)] for k, v in pre.cache[i].items()})
        circ = masked_answer_logits(model, interp, b.clean, b.corrupted, b.answer_pos)
        empty = _empty_logits(model, empty_interp, b) if with_empty and not recorded else None
        sums.add(task, b, pre.base[i][idx.to(pre.base[i].device)], circ, empty,
                 empty_metric=pre.empty_metric[i][idx.to(pre.empty_metric[i].device)] if recorded else None)
        if bar is not None:
            bar.update(len(b))
    return sums.result(task, split)


def _squares(values: torch.Tensor) -> float:
    """Σ values² in float64 (for a standard error)."""
    v = values.detach().double()
    return float((v * v).sum())


def _standard_error(total: float, squares: float, n: int) -> float | None:
    """Standard error of a mean from the sum and the sum of squares of its ``n`` values (None for n < 2)."""
    if n < 2:
        return None
    variance = max(0.0, (squares - total * total / n) / (n - 1))
    return (variance / n) ** 0.5


class _Sums:
    """Running sums (and sums of squares, for standard errors) of one circuit's KL and task metrics (full model,
    circuit, empty circuit) over batches."""

    def __init__(self):
        self.n, self.kl, self.base, self.circuit, self.empty, self.with_empty = 0, 0.0, 0.0, 0.0, 0.0, True
        self.loss = 0.0
        self.kl_sq = self.circuit_sq = self.loss_sq = 0.0

    def add(self, task, batch, base: torch.Tensor, circ: torch.Tensor, empty: torch.Tensor | None,
            target: FullModelTarget | None = None, base_metric: float | None = None,
            empty_metric: torch.Tensor | None = None) -> None:
        """One batch's [B, (P,) d_vocab] logits (``target``, ``base_metric`` and ``empty_metric`` [B]: the full
        model's and the empty circuit's, if already made; without ``empty`` or ``empty_metric`` no empty
        circuit)."""
        target = target or FullModelTarget.from_logits(base, task_loss(task))
        kl = target.kl(circ).clamp_min(0.0)  # KL ≥ 0; a circuit that is the full model can round to −1e-7
        self.kl, self.kl_sq = self.kl + float(kl.sum()), self.kl_sq + _squares(kl)
        if target.loss != "kl":
            loss = target.loss_of(circ, batch)
            self.loss, self.loss_sq = self.loss + float(loss.sum()), self.loss_sq + _squares(loss)
        self.base += float(task.metric(base, batch).sum()) if base_metric is None else base_metric
        metric = task.metric(circ, batch)
        self.circuit, self.circuit_sq = self.circuit + float(metric.sum()), self.circuit_sq + _squares(metric)
        if empty is not None:
            empty_metric = task.metric(empty, batch)
        if empty_metric is None:
            self.with_empty = False
        else:
            self.empty += float(empty_metric.sum())
        self.n += len(batch)

    def result(self, task, split: str) -> Evaluation:
        n = self.n
        if n == 0:
            raise ValueError(f"split {split!r} has no examples to evaluate")
        loss = task_loss(task)
        return Evaluation(split=split, n_examples=n, base_metric=self.base / n, circuit_metric=self.circuit / n,
                          kl=self.kl / n, metric_name=getattr(task, "metric_name", "metric"),
                          empty_metric=self.empty / n if self.with_empty else None, loss_name=loss,
                          loss=None if loss == "kl" else self.loss / n, kl_se=_standard_error(self.kl, self.kl_sq, n),
                          circuit_metric_se=_standard_error(self.circuit, self.circuit_sq, n),
                          loss_se=None if loss == "kl" else _standard_error(self.loss, self.loss_sq, n))


def task_loss(task) -> str:
    """The loss ``task`` trains on (:data:`mgnp_lens.losses.LOSSES`; ``"kl"`` for tasks that do not say)."""
    return getattr(task, "loss", "kl")


@torch.inference_mode()
def evaluate_many(model, task, circuits: Sequence[Circuit], split: str = "test", batch_size: int = 32,
                  max_examples: int | None = None, ablation: Ablation | str | None = None,
                  replacement: Replacement | None = None, phases: Phases | None = None,
                  kl_se: float | None = None, share_corrupted: bool = True) -> list[Evaluation]:
    """:func:`evaluate` for several circuits of one model on the same pairs, at the cost of one masked pass
    per circuit and batch: the full model and the empty circuit run once per batch for all of them. Under the
    corrupted ablation the corrupted prompts' activations are recorded once per batch (the empty circuit's pass)
    and every circuit runs on the clean prompts alone, [B, pos] instead of [2B, pos]; one circuit runs its clean
    and corrupted prompts as one pass, as :func:`evaluate` does.

    Args:
        circuits: circuits of ``model``'s shape, all with one ablation (or pass ``ablation``).
        split, batch_size, max_examples, ablation, replacement, phases: as in :func:`evaluate`.
        kl_se: as in :func:`evaluate`, once every circuit's KL is that precise.
        share_corrupted: with several circuits under the corrupted ablation, record the corrupted prompts'
            activations once per batch (memory: every gated site of one batch) rather than run them beside each
            circuit; False: the one-circuit way for each.

    Returns:
        one :class:`Evaluation` per circuit, in order; each equals what :func:`evaluate` gives it (to float
        rounding: a pass of B rows and one of 2B may round differently).

    Raises:
        ValueError: no circuits, circuits of another model, circuits recorded with different ablations, or an
            ``ablation`` other than ``replacement``'s.
    """
    if not circuits:
        raise ValueError("evaluate_many needs at least one circuit")
    for c in circuits:
        check_circuit_fits(model, c)
    if replacement is not None:
        if ablation is not None and Ablation.of(ablation) is not replacement.ablation:
            raise ValueError(f"ablation={Ablation.of(ablation).value!r} but the replacement given is the "
                             f"{replacement.ablation.value!r} ablation's; pass one or the other")
        ablation = replacement.ablation
    kinds = {ablation_of(c) for c in circuits}
    if ablation is None and len(kinds) > 1:
        raise ValueError(f"the circuits were found with different ablations ({', '.join(sorted(kinds))}); pass "
                         "ablation= to evaluate them all under one")
    ablation = ablation or kinds.pop()
    dims = circuits[0].dims
    batches, n_pairs = _split_batches(task, split, batch_size, max_examples, kl_se)
    if replacement is None:
        replacement = Replacement.build(ablation, model, dims, task.split("train"), batch_size)
    empty_interp = _interpolator(dims, None, replacement)
    shared = share_corrupted and len(circuits) > 1 and _mode(replacement, "batch") == "batch"
    interps = [_interpolator(dims, c.masks, replacement, "cache" if shared else "batch") for c in circuits]
    sums = [_Sums() for _ in circuits]
    device = _resolve_device(model)
    with (phases or silent())(f"evaluate {split}", total=n_pairs, unit="pairs") as bar:
        for batch in batches:
            if _precise_enough(sums, kl_se):
                break
            batch = batch.to(device)
            base = logits_at(model, batch.clean, batch.answer_pos, len(batch))
            target = FullModelTarget.from_logits(base, task_loss(task))
            base_metric = float(task.metric(base, batch).sum())
            empty = _record_corrupted(model, dims, interps, batch) if shared else None
            for i, (interp, s) in enumerate(zip(interps, sums)):
                if shared:
                    circ = masked_answer_logits(model, interp, batch.clean, batch.corrupted, batch.answer_pos)
                else:
                    circ, first_empty = _circuit_and_empty(model, interp, empty_interp, batch, need_empty=i == 0)
                    empty = first_empty if i == 0 else empty
                s.add(task, batch, base, circ, empty, target, base_metric)
            bar.update(len(batch))
    return [s.result(task, split) for s in sums]


def _record_corrupted(model, dims: ModelDims, interps: Sequence[Interpolator], batch) -> torch.Tensor:
    """One unmasked pass on the batch's corrupted prompts: its activations at every gated site go to every
    cache-mode interpolator of ``interps``; returns its [B, (P,) d_vocab] answer logits (the empty circuit's)."""
    with recording_sites(model, dims) as acts:
        empty = logits_at(model, batch.corrupted, batch.answer_pos, len(batch))
    for interp in interps:
        interp.set_corrupted(acts)
    return empty
