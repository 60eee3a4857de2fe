"""The discovery loop: fit Hard-Concrete gates so the pruned model matches the full model.

loss = KL(full ‖ circuit) at the answer position + Σ_g λ_g · mean-L0_g

Only the gates' ``log α`` train (AdamW); the model's weights are frozen for the run. The full model's
answer logits (and, in cache mode, the corrupted activations) are computed once per split without
gradients. :func:`discover` is the algorithm; the speed-ups are :mod:`mgnp_lens.speedups`', the
resumable state :mod:`mgnp_lens.checkpoint`'s, and the run directory :mod:`mgnp_lens.result`'s.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import checkpoint, targets
from .ablation import Ablation, Replacement
from .confirm import confirm, nodes as confirm_nodes, open_gates
from .circuit import Circuit, make_consistent
from .config import PRECOMPUTE_MEMORY_FRACTION, PruningConfig
from .evaluate import Evaluation, evaluate, evaluate_cached, task_loss
from .gates import HardConcreteGates
from .granularity import DEFAULT_LAMBDAS, NEURON_GRANULARITIES, PAPER_LAMBDAS, ModelDims
from .hooks import Interpolator, check_hook_points, masked_answer_logits
from .losses import FullModelTarget
from .phases import Phases
from .precompute import Precomputed, available_bytes, precompute, precompute_bytes
from .result import DiscoveryError, DiscoveryResult, run_meta, write_run
from .speedups import TrainingSpeedups
from .views import run_views
from .tasks.pairs import PairSet

#: Validation pairs on which ``auto_target_fraction`` measures the loss at stake (one batch: a second or two).
AUTO_TARGET_PAIRS = 32


def discover(model, task, config: PruningConfig | None = None, *, resume_from=None,
             **overrides) -> DiscoveryResult:
    """Find the nodes of ``model`` that ``task`` needs, at all seven granularities at once.

    Args:
        model: a ``HookedTransformer`` (or ``TransformerBridge``) with the gated hook points.
        task: a :class:`mgnp_lens.tasks.Task` (its ``train`` split is optimised on).
        config: a :class:`PruningConfig`; keyword ``overrides`` replace its fields. When resuming
            without a config, the saved run's config (with the overrides) is used.
        resume_from: continue a run from its training state: a :class:`DiscoveryResult` (e.g. one
            that Ctrl-C interrupted), a run or checkpoint directory, or its ``state.pt``. The finished
            run equals the uninterrupted one bit for bit. Only ``steps`` and the fields in
            :data:`mgnp_lens.checkpoint.RESUMABLE_CHANGES` may differ from the saved config; the model
            shape and the training pairs must be the same. A run lengthened with ``steps`` equals the
            uninterrupted longer run where no schedule depends on ``steps`` (an integer
            ``noise_warmup_steps``, a constant lr).

    Returns:
        a :class:`DiscoveryResult`. Ctrl-C stops the loop early and returns the circuit of the
        last finished step (``interrupted=True``); any other error raises :class:`DiscoveryError`
        whose ``.result`` holds that circuit (and, with ``checkpoint_dir``, it is on disk too).
        Either way ``.state`` (and ``state.pt`` in ``checkpoint_dir``) can resume the run.

    Raises:
        ValueError: a bad config, a model without the hook points, or a ``resume_from`` state that
            does not match this model, task or config (the message names the difference).
    """
    run = _Run.start(model, task, config, resume_from, overrides)
    data, error = None, None
    try:
        data = _precompute_run(model, run)  # the full model's answer logits, the corrupted activations
        with run.fast.applied(), run.phases("training", show=False):
            interp = Interpolator(run.dims, data.replacement.interpolation_mode(run.config.corruption),
                                  skip_dead_sites=run.config.skip_dead_sites,
                                  shared_hooks=run.fast.compiled, replacement=data.replacement)
            for step in _progress(run):
                row = _train_step(model, interp, run, data, step)  # sample gates; KL + s·λ·L0; AdamW
                if run.validation_due(step + 1):
                    with run.fast.suspended():  # float32 and eager, like every evaluation
                        row.update(_validate(model, run, data, step + 1))
                run.record(row)  # history, resumable state, periodic checkpoint
                if _converged_now(run, row):
                    run.meta["stopped_early_at_step"] = run.step  # the hard circuit is stable and meets the target
                    break
    except KeyboardInterrupt:
        run.roll_back()
    except Exception as e:  # keep finished work, then re-raise with it attached
        run.roll_back()
        error = e
    if error is None and not run.interrupted and run.config.confirm:
        _confirm(model, task, run, data)  # discrete repairs on the training and validation pairs; gates follow
    return _finish(model, task, run, data, error)  # binarised circuit, evaluations, run directory


def _converged_now(run: _Run, row: dict) -> bool:
    """Whether training can stop after this step: with ``target_kl``, :data:`~mgnp_lens.targets.STABLE_CHECKS`
    validation checks saw one hard circuit within the target; otherwise (``stop_when_converged``) the hard circuit
    has been stable long enough to count as converged (:func:`mgnp_lens.targets.stable_after_warmup`) and, with
    ``target_sparsity``, is within its tolerance."""
    config = run.config
    if config.target_kl is not None:
        return "val_kl" in row and targets.converged(run.rows, config.target_kl, after_step=config.warmup_end)
    if not config.stop_when_converged or run.step >= config.steps or not targets.stable_after_warmup(config, run.rows):
        return False
    if config.target_sparsity:
        hard = Circuit(run.dims, run.gates.binarize())
        return targets.sparsity_gap(config, hard) <= targets.SPARSITY_TOLERANCE
    return True


@dataclass
class _Data:
    """What the loop reads but never changes: the training pairs' full-model outputs and their KL targets
    (None with ``precompute="per_batch"``), the validation pairs' (None without ``validate_every``), and
    and what pruned units output (:class:`~mgnp_lens.ablation.Replacement`: the zero/mean ablation's constants)."""

    train: Precomputed | None
    targets: list[FullModelTarget] | None
    validation: Precomputed | None
    batch_size: int
    replacement: Replacement


@dataclass
class _BatchTargets:
    """One batch's loss targets and corrupted activations (cache mode), by row of the batch.

    Attributes:
        target: the full model's answers of ``rows``' bucket (or of the batch alone).
        cache: ``{hook_name: [n, pos, ...]}`` corrupted activations, likewise (None in batch mode).
        rows: [B] the batch's rows in ``target`` and ``cache``.
    """

    target: FullModelTarget
    cache: dict[str, torch.Tensor] | None
    rows: torch.Tensor

    def loss(self, sl: slice, logits: torch.Tensor, batch) -> torch.Tensor:
        """[b] per-example loss of the circuit's logits for rows ``sl`` of ``batch``."""
        part = batch if self.target.loss == "kl" else batch.select(torch.arange(len(batch))[sl])
        return self.target.rows(self.rows[sl]).loss_of(logits, part)

    def corrupted(self, sl: slice) -> dict[str, torch.Tensor]:
        idx = self.rows[sl]
        return {k: v[idx.to(v.device)] for k, v in self.cache.items()}


@dataclass
class _Run:
    """One discovery run's state between steps: gates, optimizer, random generators, history."""

    model: object
    task: object
    config: PruningConfig
    dims: ModelDims
    train: object
    validation: object
    gates: HardConcreteGates
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    lambdas: dict[str, float]
    fast: TrainingSpeedups
    streaming: bool
    meta: dict
    identity: dict
    rows: list[dict] = field(default_factory=list)
    step: int = 0
    seconds_before: float = 0.0
    interrupted: bool = False
    t0: float = field(default_factory=time.perf_counter)
    last: dict | None = None
    selected: dict | None = None  # the best validation check so far: step, key, val_kl, masks
    hard: dict | None = None  # the hard circuit after the last finished step (None: not computed since a (re)start)
    phases: Phases = field(default_factory=Phases)

    @classmethod
    def start(cls, model, task, config: PruningConfig | None, resume_from, overrides: dict) -> "_Run":
        """Validate everything, build the gates and their optimizer, and restore a saved state if resuming."""
        state = checkpoint.load_state(resume_from) if resume_from is not None else None
        if config is None:
            config = PruningConfig.from_dict({**state["config"], **overrides}) if state else PruningConfig(**overrides)
        elif overrides:
            config = PruningConfig.from_dict({**config.to_dict(), **overrides})
        dims = ModelDims.from_model(model)
        check_hook_points(model, dims)
        config, auto_target = _auto_target(model, task, dims, config)
        train = task.split("train")
        if config.batch_size > len(train):
            largest = max(len(b) for b in train.buckets)
            warnings.warn(f"batch_size {config.batch_size:,} is larger than the {len(train):,} training pairs: each "
                          f"step draws at most {largest:,} (one length bucket)", stacklevel=3)
        validation = task.split("validation").head(config.validate_max_examples) if config.validation_interval else None
        if config.target_kl is not None and len(validation) < targets.MIN_VALIDATION_PAIRS:
            raise ValueError(f"target_kl needs at least {targets.MIN_VALIDATION_PAIRS} validation pairs to measure the "
                             f"hard circuit's KL; the task's validation split has {len(validation)} (give it more, or "
                             "raise validate_max_examples)")
        identity = {"task": task.describe(), "train_fingerprint": checkpoint.train_fingerprint(train),
                    "model_dims": dims.to_dict()}
        if state is not None:
            checkpoint.check_resumable(state, PruningConfig.from_dict(state["config"]).to_dict(), config.to_dict(),
                                       identity)
        gates, optimizer, generators = _gates_and_optimizer(dims, config, next(model.parameters()).device)
        lambdas = {g: config.lambdas[g] * config.lambda_scale for g in gates.trainable}
        fast = TrainingSpeedups(model, config.speed, config.steps)
        streaming = _streams(model, dims, train, config)
        meta = {**run_meta(model, task), **fast.describe(), "precompute": "per_batch" if streaming else "all"}
        if auto_target:
            meta["auto_target"] = auto_target
        run = cls(model, task, config, dims, train, validation, gates, optimizer, generators, lambdas, fast,
                  streaming, meta, identity, phases=Phases(progress=config.progress))
        if state is not None:
            checkpoint.restore(state, gates, optimizer, generators)
            run.rows, run.step, run.seconds_before = list(state["history"]), int(state["step"]), float(state["seconds"])
            run.selected = state.get("selected")
            meta["resumed_at_steps"] = [*state.get("resumed_at_steps", []), run.step]
        identity.update(config=config.to_dict(), resumed_at_steps=meta.get("resumed_at_steps", []))
        run.t0 = time.perf_counter()
        run.last = run.capture()  # what Ctrl-C or an error mid-step goes back to
        return run

    @property
    def checkpoint_dir(self) -> Path | None:
        return Path(self.config.checkpoint_dir) if self.config.checkpoint_dir else None

    def seconds(self) -> float:
        """Wall time of the run so far, earlier sessions of a resumed run included."""
        return self.seconds_before + time.perf_counter() - self.t0

    def capture(self) -> dict:
        """The resumable state now (``rows`` holds exactly the history of ``step`` finished steps)."""
        state = checkpoint.capture(self.step, self.gates, self.optimizer, self.generators, self.rows, self.seconds(),
                                   self.identity)
        state["selected"] = self.selected  # never changed in place: a new check replaces it whole
        return state

    def validation_due(self, steps_done: int) -> bool:
        every = self.config.validation_interval
        return self.validation is not None and (steps_done % every == 0 or steps_done == self.config.steps)

    def record(self, row: dict) -> None:
        """Add a finished step's history row, capture the state, and write a checkpoint when one is due."""
        self.rows.append(row)
        self.step = row["step"]
        self.last = self.capture()
        ckpt = self.checkpoint_dir
        if ckpt is not None and self.step % self.config.checkpoint_every == 0:
            write_run(ckpt, self.result(self.last["seconds"]))

    def roll_back(self) -> None:
        """Back to the last finished step, even if the stop came in the middle of an update."""
        self.interrupted = True
        checkpoint.restore(self.last, self.gates, self.optimizer, self.generators)
        self.rows, self.step = list(self.last["history"]), self.last["step"]
        self.selected = self.last.get("selected")
        self.hard = None  # the gates went back: recompute it from them

    def result(self, seconds: float) -> DiscoveryResult:
        """The returned circuit (the best validation check's with ``select="validation"``, else the binarised,
        hierarchy-consistent circuit of the gates now), with the history and state."""
        chosen = self.selected if self.config.select == "validation" else None
        masks = chosen["masks"] if chosen else self.gates.binarize()
        circuit = Circuit(self.dims, masks, task=self.task.describe(), config=self.config.to_dict())
        return DiscoveryResult(circuit, pd.DataFrame(self.rows), None, None, self.config, self.gates, self.step,
                               self.interrupted, seconds, self.meta, self.last, selection=self.selection(),
                               scored_log_alpha=chosen.get("log_alpha") if chosen else None,
                               timings=self.phases.seconds)

    def selection(self) -> dict | None:
        """Which step's circuit the run returns and why (None without validation checks)."""
        if self.selected is None:
            return None
        chosen = self.config.select == "validation"
        return {"select": self.config.select, "rule": targets.selection_rule(self.config),
                "step": self.selected["step"] if chosen else self.step, "of_steps": self.step,
                "validation_checks": sum(1 for r in self.rows if "val_kl" in r),
                "validation_kl": self.selected["val_kl"] if chosen else _last_val_kl(self.rows)}

    def consider(self, step: int, circuit: Circuit, val_kl: float) -> float:
        """Keep ``circuit`` as the one to return if it ranks before the best check so far; returns its
        λ-weighted size (:func:`mgnp_lens.targets.hard_penalty`, with the configured λ: a target's multipliers
        steer the training, they do not change what counts as small)."""
        penalty = targets.hard_penalty(circuit, self.lambdas)
        key = targets.selection_key(self.config, step, val_kl, penalty, targets.sparsity_gap(self.config, circuit))
        if self.selected is None or key < self.selected["key"]:
            self.selected = {"step": step, "key": key, "val_kl": val_kl,
                             "masks": {g: m.clone() for g, m in circuit.masks.items()},
                             "log_alpha": {g: v.detach().cpu().clone() for g, v in self.gates.log_alpha.items()}}
        return penalty


def _last_val_kl(rows: list[dict]) -> float | None:
    checked = [r["val_kl"] for r in rows if "val_kl" in r and not math.isnan(r["val_kl"])]
    return checked[-1] if checked else None


def _gates_and_optimizer(dims: ModelDims, config: PruningConfig, device):
    """The gates (initialised from ``seed``), their AdamW (one group per granularity) and the batch and
    noise generators (``seed + 1``, ``seed + 2``)."""
    init_gen = torch.Generator().manual_seed(config.seed)
    generators = {"batch": torch.Generator().manual_seed(config.seed + 1),
                  "noise": torch.Generator(device=device).manual_seed(config.seed + 2)}
    gates = HardConcreteGates(dims, config.hard_concrete, config.granularities, generator=init_gen).to(device)
    groups = [{"params": [gates.log_alpha[g]], "granularity": g, "lr_scale": config.lr_scales.get(g, 1.0)}
              for g in gates.trainable]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.adam_eps,
                                  weight_decay=config.weight_decay)
    return gates, optimizer, generators


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


def _streams(model, dims: ModelDims, train, config: PruningConfig) -> bool:
    """Whether the training pairs' full-model outputs are computed batch by batch (``precompute``).

    Raises:
        ValueError: ``precompute="all"`` and they would not fit in the free memory (the figures and the ways
            out named).
    """
    if config.precompute == "per_batch":
        return True
    if config.precompute == "auto" and config.steps * config.batch_size < len(train):
        return True  # a short run draws fewer pairs than it holds: each batch's when it is drawn costs less
    need = precompute_bytes(model, dims, train, config.caches_corrupted)
    free = available_bytes(next(model.parameters()).device)
    if free is None or need <= PRECOMPUTE_MEMORY_FRACTION * free:
        return False
    if config.precompute == "all":
        without_cache = precompute_bytes(model, dims, train, False)
        raise ValueError(
            f"precomputing the {len(train):,} training pairs needs {_gb(need)} but {_gb(free)} is free; use "
            f"precompute='per_batch' (each batch's outputs when it is drawn), corruption='batch' (no corrupted "
            f"cache: {_gb(without_cache)}), or fewer training pairs (mgnp discover --max-train N)")
    return True


def _precompute_run(model, run: _Run) -> _Data:
    """The training (and validation) pairs' full-model answer logits (in the model's precision) and corrupted
    activations (the training pairs' in the training passes' precision, the validation pairs' in the model's), in
    chunks no larger than the run's micro-batches (the training pairs' only when they are not streamed)."""
    config = run.config
    size = min(config.eval_batch_size, config.micro_batch_size or config.eval_batch_size)
    train = targets = None
    with run.phases("precompute"):
        replacement = Replacement.build(config.ablation, model, run.dims, run.train, size)
        if not run.streaming:
            train = precompute(model, run.dims, run.train, size, config.caches_corrupted, metric=run.task.metric,
                               corrupted_precision=run.fast.low_precision)
            targets = [FullModelTarget.from_logits(b, task_loss(run.task)) for b in train.base]  # once, not per step
        validation = None if run.validation is None else \
            precompute(model, run.dims, run.validation, size, Ablation.of(config.ablation).uses_corrupted_run)
    return _Data(train, targets, validation, size, replacement)


def _progress(run: _Run):
    """The steps still to take, with a progress bar that shows the latest KL and expected node counts."""
    config, start = run.config, run.step
    bar = tqdm(range(start, config.steps), desc="mgnp discover", disable=not config.progress,
               dynamic_ncols=True, initial=start, total=config.steps)
    val_kl = None
    for step in bar:
        if run.fast.compiled and step in (start, start + 1):
            bar.set_description("mgnp discover (compiling the blocks)" if step == start else "mgnp discover")
        yield step
        row = run.rows[-1]
        val_kl = row.get("val_kl", val_kl)
        bar.set_postfix(kl=f"{row['kl']:.3f}", heads=f"{row.get('active_attn_head', 0):.0f}",
                        attn_n=f"{row.get('active_attn_neuron', 0):.0f}",
                        mlp_h=f"{row.get('active_mlp_hidden', 0):.0f}",
                        **({"val_kl": f"{val_kl:.3f}"} if val_kl is not None else {}), refresh=False)


def _lr_factor(config: PruningConfig, step: int) -> float:
    """Multiplier of ``config.lr`` at 0-based ``step``: the linear warm-up times the schedule."""
    warm = min(1.0, (step + 1) / config.lr_warmup_steps) if config.lr_warmup_steps else 1.0
    if config.lr_schedule == "constant" or config.steps == 1:
        return warm
    end = config.lr_final_fraction
    return warm * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * step / (config.steps - 1))))


def _noise_scales(run: _Run, step: int):
    """The Hard-Concrete noise scale at ``step``: one number, or one per granularity (warm-up or not)."""
    warmup = run.config.noise_warmup_length
    noise = min(1.0, step / warmup) if warmup else 1.0
    warm = run.config.noise_warmup_granularities
    return noise, noise if warm is None else {g: noise if g in warm else 1.0 for g in run.gates.trainable}


def _stages(config: PruningConfig, trainable, step: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The two-stage schedules at 0-based ``step``: the neuron granularities still held open (before
    ``neuron_start``) and the node granularities already fixed at their binarised state (from ``node_stop``);
    both empty by default."""
    held = () if config.neuron_start is None or step >= config.neuron_start * config.steps else \
        tuple(g for g in trainable if g in NEURON_GRANULARITIES)
    fixed = () if config.node_stop is None or step < config.node_stop * config.steps else \
        tuple(g for g in trainable if g not in NEURON_GRANULARITIES)
    return held, fixed


def _train_step(model, interp: Interpolator, run: _Run, data: _Data, step: int) -> dict:
    """One optimizer update (step ``step``, 0-based) on a freshly sampled batch; returns its history row.

    loss = KL(full ‖ sampled circuit) + λ-warm-up factor · Σ_g λ_g · mean-L0_g. The KL part is
    back-propagated by :func:`_kl_backward`, the L0 part here; then AdamW steps ``log α``.
    """
    config, gates, optimizer = run.config, run.gates, run.optimizer
    t_step = time.perf_counter()
    batch_cpu = run.train.sample(config.batch_size, generator=run.generators["batch"])
    batch = batch_cpu.to(run.fast.device)
    optimizer.zero_grad(set_to_none=True)
    noise, scales = _noise_scales(run, step)
    masks = gates.sample(generator=run.generators["noise"],
                         batch_size=len(batch) if config.mask_per_example else None, noise_scale=scales)
    held, fixed = _stages(config, gates.trainable, step)
    for g in held:  # the first stage of a two-stage schedule: these gates wait, open, untrained and unpenalised
        masks[g] = torch.ones_like(masks[g])
    if fixed:  # after node_stop: the node gates stay at their binarised state, untrained and unpenalised
        hard = gates.open_on_cpu()
        for g in fixed:
            masks[g] = hard[g].to(masks[g]).expand_as(masks[g])
    kl = _kl_backward(model, interp, masks, batch, _batch_targets(model, run, data, batch_cpu), config, run.fast)
    before = run.hard if run.hard is not None else make_consistent(gates.open_on_cpu())  # for changed_<g>
    factor = _penalty_factor(config, step)
    # per-gate P(z > 0) (times its ancestors' with l0_penalty="path"), shared by the loss and the history
    expected_l0 = gates.expected_l0(path=config.l0_penalty == "path")
    l0 = {g: v.mean() for g, v in expected_l0.items()}
    scales = targets.scales_from_history(run.rows, gates.trainable, targets.initial_scale(config))
    sparsity = sum(run.lambdas[g] * scales[g] * l0[g] for g in gates.trainable if g not in held + fixed)
    (factor * sparsity).backward()
    for g in fixed:  # no step at all (Adam's momentum would move a zero gradient too), even by a child's path L0
        gates.log_alpha[g].grad = None
    lr_now = config.lr * _lr_factor(config, step)
    for group in optimizer.param_groups:
        group["lr"] = lr_now * group["lr_scale"]
    optimizer.step()
    clamp = config.log_alpha_range
    if clamp is not None:
        with torch.no_grad():
            for la in gates.log_alpha.values():
                la.clamp_(*clamp)
    after = make_consistent(gates.open_on_cpu())
    row = {"step": step + 1, "loss": kl + factor * float(sparsity.detach()), "kl": kl, "lambda_factor": factor,
           "lr": lr_now, "noise_scale": noise, "seconds": time.perf_counter() - t_step,
           "hard_key": targets.circuit_key(after), **targets.hard_changes(before, after)}
    with torch.no_grad():
        row.update({f"l0_{g}": float(l0[g]) for g in gates.trainable})
        row.update({f"active_{g}": float(expected_l0[g].sum()) for g in gates.trainable})
    if config.target_kl is not None or config.target_sparsity:  # target_kl's move at checks (_validate)
        density = {g: row[f"l0_{g}"] for g in gates.trainable}
        row.update({f"scale_{g}": s for g, s in targets.update_scales(config, scales, density).items()})
    run.hard = after  # the next step's "before" (the gates do not move between steps)
    return row


def _penalty_factor(config: PruningConfig, step: int) -> float:
    """How much of the L0 penalty applies at 0-based ``step``: none before ``penalty_start``, then the λ warm-up's
    linear ramp from there (full without one)."""
    if step < config.penalty_start:
        return 0.0
    ramp = config.lambda_warmup_steps
    return min(1.0, (step - config.penalty_start + 1) / ramp) if ramp else 1.0


def _batch_targets(model, run: _Run, data: _Data, batch) -> _BatchTargets:
    """The KL targets and corrupted activations of ``batch`` (on the CPU): looked up in the precomputed
    ones, or, with ``precompute="per_batch"``, computed now as :func:`_precompute_run` computes them."""
    with_cache = run.config.caches_corrupted
    if not run.streaming:
        return _BatchTargets(data.targets[batch.bucket], data.train.cache[batch.bucket] if with_cache else None,
                             batch.rows)
    with run.fast.suspended():
        pre = precompute(model, run.dims, PairSet([batch]), data.batch_size, with_cache,
                         corrupted_precision=run.fast.low_precision)
    return _BatchTargets(FullModelTarget.from_logits(pre.base[0], task_loss(run.task)), pre.cache[0] if with_cache else None,
                         torch.arange(len(batch)))


def _kl_backward(model, interp: Interpolator, masks: dict[str, torch.Tensor], batch, inputs: _BatchTargets,
                 config: PruningConfig, fast: TrainingSpeedups) -> float:
    """Mean KL(full ‖ masked model) (or the task's other loss, :mod:`mgnp_lens.losses`) over ``batch``,
    back-propagated into the gates behind ``masks``.

    The batch runs in micro-batches of ``config.micro_batch_size`` (all of it when None). The masks
    enter each pass as detached leaves; their gradients are summed over the micro-batches and pushed
    through the gate sampling once, so peak activation memory is that of one micro-batch and the
    gradient equals the full-batch one. The masked passes run under ``fast.autocast()``; the KL itself
    is taken in float32 against the full model's answer distributions.
    """
    leaves = {g: m.detach().requires_grad_(m.requires_grad) for g, m in masks.items()}
    n = len(batch)
    size = config.micro_batch_size or n
    kl_sum = 0.0
    for start in range(0, n, size):
        sl = slice(start, min(start + size, n))
        interp.set_masks({g: v[sl] for g, v in leaves.items()} if config.mask_per_example else leaves)
        if inputs.cache is not None:
            interp.set_corrupted(inputs.corrupted(sl))
        with fast.autocast():
            logits = masked_answer_logits(model, interp, batch.clean[sl], batch.corrupted[sl], batch.answer_pos[sl])
        kl = inputs.loss(sl, logits, batch).sum() / n
        kl.backward()
        kl_sum += float(kl.detach())
        interp.set_corrupted(None)
        del logits, kl
    grads = [(m, leaves[g].grad) for g, m in masks.items() if m.requires_grad and leaves[g].grad is not None]
    if grads:
        torch.autograd.backward([m for m, _ in grads], [gr for _, gr in grads])
    return kl_sum


def _validate(model, run: _Run, data: _Data, step: int) -> dict:
    """The current hard circuit's KL (the task's loss, if not KL), metric and λ-weighted size on the validation
    pairs (``val_kl``, ``val_metric``, ``val_penalty``; with ``target_kl``, ``circuit_key`` too, a checksum that tells whether the
    hard circuit changed); the run keeps it if it ranks first so far (:meth:`_Run.consider`)."""
    circuit = Circuit(run.dims, run.gates.binarize(), task=run.task.describe())
    ev = evaluate_cached(model, run.task, circuit, run.validation, data.validation, data.batch_size, "validation",
                         with_empty=False, replacement=data.replacement)
    row = {"val_kl": ev.objective, "val_metric": ev.circuit_metric,
           "val_penalty": run.consider(step, circuit, ev.objective)}
    config = run.config
    if config.target_kl is not None:
        row["circuit_key"] = targets.circuit_key(circuit.masks)
    if config.target_kl is not None and step % config.validation_interval == 0:  # not the extra check at the end:
        # a run lengthened with ``steps`` then trains as the uninterrupted longer run does
        scales = targets.scales_from_history(run.rows, run.gates.trainable, targets.initial_scale(config))
        row.update({f"scale_{g}": s for g, s in targets.rescale_on_check(config, scales, ev.objective).items()})
    return row


def _final_evaluations(model, task, circuit: Circuit, run: _Run, data: _Data
                       ) -> tuple[Evaluation, Evaluation | None, dict[str, Evaluation]]:
    """The circuit on the training pairs (from the loop's precomputed outputs in cache mode), on
    ``config.eval_split`` and (with ``eval_heldout``) on the task's held-out splits, each up to
    ``eval_max_examples`` pairs."""
    config, phases = run.config, run.phases
    cap = config.eval_max_examples
    if config.corruption == "cache" and not run.streaming:
        counts = run.train.head_counts(len(run.train) if cap is None else cap)  # every bucket's share of the cap
        pairs, pre = run.train.head(sum(counts)), data.train.head(counts)  # the same rows of the same buckets
        with phases("evaluate train", total=len(pairs), unit="pairs") as bar:
            train = evaluate_cached(model, task, circuit, pairs, pre, config.eval_batch_size,
                                    replacement=data.replacement, bar=bar, kl_se=config.eval_kl_se)
    else:
        train = _evaluate_split(model, task, circuit, "train", run, data)
    if config.eval_split is None:
        return train, None, {}
    held_out = _evaluate_split(model, task, circuit, config.eval_split, run, data)
    extra = task.heldout_splits() if config.eval_heldout and hasattr(task, "heldout_splits") else []
    return train, held_out, {s: _evaluate_split(model, task, circuit, s, run, data)
                             for s in extra if s != config.eval_split}


def _evaluate_split(model, task, circuit: Circuit, split: str, run: _Run, data: _Data) -> Evaluation:
    """One split's evaluation at the end of a run, up to ``eval_max_examples`` pairs or ``eval_kl_se``."""
    config = run.config
    return evaluate(model, task, circuit, split, config.eval_batch_size, config.eval_max_examples,
                    replacement=data.replacement, phases=run.phases, kl_se=config.eval_kl_se)


def _target_outcome(run: _Run, circuit: Circuit) -> dict | None:
    """Whether the returned ``circuit`` meets ``target_kl`` on the validation pairs or ``target_sparsity``'s
    size (a warning when not)."""
    outcome = targets.target_report(run.config, (run.selection() or {}).get("validation_kl"), circuit)
    if outcome is None:
        return None
    if run.config.target_kl is not None:
        outcome["stopped_early_at_step"] = run.meta.get("stopped_early_at_step")
    if not outcome["met"] and run.config.target_kl is not None:
        warnings.warn(f"target_kl={run.config.target_kl} was not met: the returned circuit's validation KL is "
                      f"{outcome['validation_kl']:.4f}; train longer (--steps), or ask for a looser target",
                      stacklevel=4)
    elif not outcome["met"]:
        reached = ", ".join(f"{g} {outcome['reached'][g]:.3f} (asked {p:g})" for g, p in
                            run.config.target_sparsity.items())
        warnings.warn(f"target_sparsity was not met: the returned circuit prunes {reached}; train longer "
                      "(--steps) or raise target_rate", stacklevel=4)
    return outcome


def _convergence(run: _Run, result: DiscoveryResult) -> dict:
    """Whether the run converged: its final hard circuit stable (:func:`mgnp_lens.targets.convergence`) and, with a
    target, meeting it (``target_kl``: the last validation check's KL; ``target_sparsity``: its size); which state
    it returns; a warning when it did not converge."""
    config, sel = run.config, result.selection or {}
    met = None
    if config.target_kl is not None:
        met = (_last_val_kl(run.rows) or math.inf) <= config.target_kl
    elif config.target_sparsity:
        final = Circuit(run.dims, run.gates.binarize())
        met = targets.sparsity_gap(config, final) <= targets.SPARSITY_TOLERANCE
    returned = sel.get("step") if sel.get("select") == "validation" else None
    out = targets.convergence(config, run.rows, run.step, met, returned)
    if run.meta.get("stopped_early_at_step") is not None:
        out["stopped_at_step"] = run.meta["stopped_early_at_step"]
    if "confirmation" in run.meta:  # repairs after training: the returned circuit is the gates' final state with them
        done = run.meta["confirmation"]
        out["repairs"] = list(done["repairs"])
        # how far the trained circuit was from the full model before the repairs (training + validation pairs)
        out["trained_loss_fraction"] = done["loss_before"] / done["loss_at_stake"] if done["loss_at_stake"] else 0.0
    if not out["converged"]:
        missed = " and its final circuit misses the target" if met is False else ""
        moving = targets.moving_text(out)
        warnings.warn(f"the run did not converge: its hard circuit was stable for the last {out['stable_steps']} of "
                      f"{run.step} steps ({out['stable_needed']} needed){missed}{'; ' + moving if moving else ''}; "
                      "train longer (--steps, or --resume DIR --steps N)", stacklevel=4)
    return out


def _confirm(model, task, run: _Run, data: _Data) -> None:
    """The confirmation phase (``confirm``, :mod:`mgnp_lens.confirm`): the binarised circuit repaired on the training
    and validation pairs (in the small-model regime pruned back when it misses the regime's target, the nodes tried
    least likely open first), the gates set to match (so the returned circuit is still the final state), what was
    done in ``meta["confirmation"]``. Ctrl-C skips it (the trained circuit is kept, unconfirmed, with a warning)."""
    config = run.config
    circuit = Circuit(run.dims, run.gates.binarize(), task=run.task.describe())
    target = run.meta["auto_target"]["fraction"] if "auto_target" in run.meta else None
    try:
        with run.phases("confirm"):
            fixed, record = confirm(model, task, circuit, data.replacement, config.validate_max_examples,
                                    config.eval_batch_size, target=target, order=_removal_order(run))
    except KeyboardInterrupt:
        warnings.warn("interrupted during the confirmation phase: the trained circuit is kept unconfirmed",
                      stacklevel=4)
        return
    if record.pruned_back:
        warnings.warn(f"the trained circuit misses the small-model regime's target (loss {record.loss_before:.3g} on "
                      f"the training and validation pairs, {record.loss_before / record.loss_at_stake:.0%} of the loss "
                      f"at stake; target {target:g}) and no single repair meets it, so the confirmation pruned back "
                      "from every node: the circuit returned is that discrete search's, not the gates'", stacklevel=4)
    open_gates(run.gates, fixed)
    run.meta["confirmation"] = record.to_dict()
    run.last = run.capture()  # the saved state is the confirmed one


def _removal_order(run: _Run) -> list[tuple]:
    """The heads and MLP blocks (:func:`mgnp_lens.confirm.nodes`) from the least to the most likely open by the
    trained gates: the order in which pruning back tries to remove them."""
    with torch.no_grad():
        p = {g: v.cpu() for g, v in run.gates.open_probability().items()}

    def score(node):
        return float(p["attn_head"][node[1], node[2]] if node[0] == "head" else p["mlp_block"][node[1]])
    return sorted(confirm_nodes(run.dims), key=score)


#: What the small-model regime sets besides λ (``auto_target_fraction``; the evidence is docs/tracr.md): the noise
#: warm-up on every granularity, gates initialised well open, the penalty from the end of the noise warm-up (before
#: it Adam closes every gate without a KL gradient together), the learning rate decaying to 1% (a gate balanced
#: at the threshold otherwise flips the hard circuit to the end, and the run never converges), and the
#: confirmation phase. Its λ are the paper's (their balance between granularities is what the tracr suite measured),
#: scaled; λ you set stay yours.
SMALL_MODEL_SETTINGS = {"noise_warmup_granularities": None, "hard_concrete": {"init_low": 3.0, "init_high": 4.0},
                        "lr_schedule": "cosine", "lr_final_fraction": 0.01, "confirm": True,
                        "lambdas": dict(PAPER_LAMBDAS)}


def _regime_lambdas(config: PruningConfig) -> dict[str, float]:
    """The λ the small-model regime is judged and scaled with: the paper's where ``config`` keeps the default λ (the
    regime is a test of the model's scale against the paper's price), else yours."""
    return dict(PAPER_LAMBDAS) if config.lambdas == DEFAULT_LAMBDAS else config.lambdas


def _one_head_cost(config: PruningConfig, dims: ModelDims, lambdas: dict[str, float]) -> float:
    """The penalty of keeping one working head alone in its layer at ``lambdas`` (× ``config.lambda_scale``): its
    gate, its attention neurons and its attention block's gate (each granularity's λ is spread over its node count),
    in loss units."""
    lam = {g: lambdas.get(g, 0.0) * config.lambda_scale if g in config.granularities else 0.0
           for g in ("attn_head", "attn_neuron", "attn_block")}
    return (lam["attn_head"] + lam["attn_neuron"]) / dims.count("attn_head") + lam["attn_block"] / dims.n_layers


def _auto_target(model, task, dims: ModelDims, config: PruningConfig) -> tuple[PruningConfig, dict | None]:
    """``config`` in the small-model regime where the configured λ can only prune everything (keeping one head costs
    more than the empty circuit's loss on the validation pairs): λ scaled so that keeping every node costs
    ``auto_target_fraction`` of that loss at stake, and :data:`SMALL_MODEL_SETTINGS`. Also returns what was measured
    and set (None when the config stays)."""
    fraction = config.auto_target_fraction
    if fraction is None or config.target_kl is not None or config.target_sparsity or \
            "attn_head" not in config.granularities:
        return config, None
    lambdas = _regime_lambdas(config)
    one_head = _one_head_cost(config, dims, lambdas)
    try:
        validation = task.split("validation")
    except ValueError:  # no validation split: nothing to measure the loss at stake on, λ stays
        return config, None
    n = min(len(validation), config.validate_max_examples, AUTO_TARGET_PAIRS)
    if one_head == 0 or n < targets.MIN_VALIDATION_PAIRS:
        return config, None
    with torch.no_grad():
        at_stake = evaluate(model, task, Circuit.empty(dims), "validation", batch_size=config.eval_batch_size,
                            max_examples=n, ablation=config.ablation).objective
    if not one_head > at_stake > 0:
        return config, None
    everything = sum(lambdas.get(g, 0.0) for g in config.granularities if g in dims.granularities)
    scale = fraction * at_stake / everything  # Σ_g λ_g · scale: the penalty of the whole model
    settings, kept = _regime_settings(config, {**SMALL_MODEL_SETTINGS, "penalty_start": config.noise_warmup_length,
                                               "select": "last"})
    settings.update(lambda_scale=scale, auto_target_fraction=None)  # applied once: a resumed run keeps these
    applied = ", ".join(f"{k}={v!r}" for k, v in settings.items() if k not in ("hard_concrete", "lambda_scale",
                                                                                   "auto_target_fraction", "lambdas"))
    priced = "the paper's λ" if lambdas == PAPER_LAMBDAS else "these λ"
    shape = {k: settings["hard_concrete"][k] for k in SMALL_MODEL_SETTINGS["hard_concrete"]
             if f"hard_concrete.{k}" not in kept}
    yours = f"; kept as you set them: {', '.join(kept)}" if kept else ""
    warnings.warn(f"at {priced} keeping one head costs {one_head:.3g} in the loss, more than the whole loss at stake "
                  f"({at_stake:.3g}, the empty circuit's on {n} validation pairs), so fixed λ would prune everything; "
                  f"using the small-model regime instead: {priced} × lambda_scale={scale:.3g} (keeping every node costs "
                  f"{fraction:g} of the loss at stake) and the settings measured on tracr's programs (docs/tracr.md): "
                  f"{applied}, hard_concrete {shape}{yours} (auto_target_fraction=None keeps λ)", stacklevel=4)
    config = PruningConfig.from_dict({**config.to_dict(), **settings})
    return config, {"loss_at_stake": at_stake, "one_head_cost": one_head, "fraction": fraction,
                    "set": {k: v for k, v in config.to_dict().items() if k in settings}, "kept": kept}


def _regime_settings(config: PruningConfig, regime: dict) -> tuple[dict, list[str]]:
    """The small-model regime's ``regime`` settings less those the user changed from their defaults (a field you set
    stays as you set it; ``hard_concrete`` key by key), and the names of the fields kept."""
    default, current = PruningConfig().to_dict(), config.to_dict()
    settings, kept = {}, []
    for key, value in regime.items():
        if key == "hard_concrete":
            mine = {k for k in value if current[key][k] != default[key][k]}
            settings[key] = {**current[key], **{k: v for k, v in value.items() if k not in mine}}
            kept += [f"hard_concrete.{k}" for k in sorted(mine)]
        elif current[key] != default[key]:
            kept.append(key)
        else:
            settings[key] = value
    return settings, kept


def _warn_if_empty(run: _Run, result: DiscoveryResult) -> None:
    """A warning when fixed λ pruned every head and MLP: on a small model the loss at stake is below the
    penalty of keeping a single node (each granularity's λ is spread over its node count)."""
    c, config = result.circuit, run.config
    if config.target_kl is not None or config.target_sparsity or c.active_heads() or c.active_mlps():
        return
    one_head = _one_head_cost(config, c.dims, config.lambdas)
    warnings.warn(f"the circuit is empty: at these λ keeping one head costs {one_head:.3g} in the loss, more than "
                  f"this task's loss can gain (the empty circuit's {result.train_evaluation.objective:.3g} on the "
                  "training pairs); ask for a faithfulness instead (target_kl=..., --target-kl) or lower "
                  "lambda_scale", stacklevel=4)


def _views(model, task, result: DiscoveryResult, run: _Run):
    """The finished circuit's edges and head views (:func:`mgnp_lens.views.run_views`); None, with a warning, if
    Ctrl-C stops them (the run itself is complete)."""
    config = run.config
    try:
        return run_views(model, task, result.circuit, config.eval_split or "train", config.ablation,
                         config.edge_examples, config.views, run.phases)
    except KeyboardInterrupt:
        warnings.warn("interrupted while scoring the circuit's edges and heads: the run is complete without them; "
                      "mgnp report DIR --views computes them", stacklevel=4)
        return None


def _save(result: DiscoveryResult, ckpt: Path | None) -> str | None:
    """Write the run directory; on an I/O error (a full disk, a lost mount) say what happened instead."""
    if ckpt is None:
        return None
    try:
        result.save(ckpt)
    except OSError as e:
        return (f"could not write the run directory {ckpt} ({e}); its files are still those of the last "
                "checkpoint that was written in full")
    return None


def _finish(model, task, run: _Run, data: _Data | None, error: Exception | None) -> DiscoveryResult:
    """Binarise the gates, save them before the (long) evaluations, evaluate a finished run, save it all.

    Ctrl-C during the evaluations keeps the trained circuit, unevaluated (``interrupted=True``: resuming
    evaluates it); an I/O error while saving raises :class:`DiscoveryError` naming it.
    """
    result = run.result(run.seconds())
    ckpt = run.checkpoint_dir
    try:
        problem = _save(result, ckpt)
        if error is None and problem is None and not run.interrupted:
            result.train_evaluation, result.evaluation, result.heldout_evaluations = _final_evaluations(
                model, task, result.circuit, run, data)
            result.target = _target_outcome(run, result.circuit)
            result.meta["convergence"] = _convergence(run, result)
            _warn_if_empty(run, result)
            problem = _save(result, ckpt)  # evaluated: what the views below add is not worth losing this for
            result.views = _views(model, task, result, run)
            problem = problem or _save(result, ckpt)
    except KeyboardInterrupt:  # the trained circuit is kept, labelled as not finished (resuming evaluates it)
        result.interrupted = True
        result.train_evaluation = result.evaluation = None
        result.heldout_evaluations, result.views = {}, None
        problem = _save(result, ckpt)
    if error is not None or problem is not None:
        where = f"; the last circuit is saved in {ckpt}" if ckpt and problem is None else f"; {problem}" if problem \
            else ""
        cause = f": {error!r}" if error is not None else ""
        raise DiscoveryError(f"discovery failed after {run.step} steps{cause}{where}", result) from error
    return result
