"""``PruningConfig``: every setting of a discovery run, validated field by field from one table.

Why each default is what it is (the runs behind it) is in
`docs/calibration.md <../docs/calibration.md#why-each-default>`_; this module only says what a field does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any, Callable

from .gates import HardConcreteParams
from .granularity import ALL_GRANULARITIES, ATTENTION_GRANULARITIES, DEFAULT_LAMBDAS, check_granularity
from .names import ABLATIONS, CORRUPTION_MODES, EVAL_SPLITS

LR_SCHEDULES = ("constant", "cosine")
AUTOCAST_CHOICES = ("auto", "bfloat16", "float16", "float32")
L0_PENALTIES = ("gate", "path")
COMPILE_CHOICES = ("auto", True, False)
PRECOMPUTE_CHOICES = ("auto", "all", "per_batch")
#: What a run with validation checks returns (``PruningConfig.select``).
SELECT_CHOICES = ("validation", "last")
#: ``precompute="auto"`` precomputes everything when it fits in this fraction of the free memory.
PRECOMPUTE_MEMORY_FRACTION = 0.5
#: ``noise_warmup_steps="auto"`` warms the noise up over this fraction of the run (100 of the default 240 steps).
NOISE_WARMUP_FRACTION = 5 / 12
#: The behaviour of runs whose saved config predates a field (see :meth:`PruningConfig.from_dict`).
_BEFORE_FIELD_EXISTED = {"betas": [0.9, 0.999], "lr_warmup_steps": 0, "noise_warmup_steps": 0, "adam_eps": 1e-8,
                         "compile": False, "noise_warmup_granularities": None, "precompute": "all"}


#: The fields of :class:`PruningConfig` by concern: ``{concern: (what it decides, field names)}``, in the order the
#: class declares them (each field in exactly one).
CONCERNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "optimisation": ("how the gates are trained",
        ("steps", "lr", "lr_schedule", "lr_final_fraction", "lr_warmup_steps", "lr_scales", "batch_size", "seed",
         "weight_decay", "betas", "adam_eps", "log_alpha_clamp", "hard_concrete", "mask_per_example",
         "noise_warmup_steps", "noise_warmup_granularities", "neuron_start", "node_stop")),
    "objective": ("what is pruned, against what, at which price",
        ("granularities", "ablation", "lambdas", "lambda_scale", "lambda_warmup_steps", "penalty_start", "l0_penalty")),
    "targets": ("a faithfulness or size asked for, the validation checks, and which circuit is returned",
        ("target_kl", "target_sparsity", "auto_target_fraction", "target_rate", "validate_every",
         "validate_max_examples", "select", "confirm", "stop_when_converged")),
    "speed": ("how fast and in how much memory (the same circuit up to float rounding)",
        ("corruption", "precompute", "micro_batch_size", "autocast", "precast_weights", "skip_dead_sites", "compile")),
    "evaluation": ("what is measured at the end",
        ("eval_split", "eval_heldout", "eval_max_examples", "eval_batch_size", "eval_kl_se", "edge_examples", "views")),
    "output": ("where the run is written and what it shows while it runs",
        ("checkpoint_dir", "checkpoint_every", "progress")),
}


@dataclass
class PruningConfig:
    """Everything that defines a discovery run. Each field is checked by :data:`FIELD_RULES`.

    Why the defaults are what they are: `docs/calibration.md, "Why each default"
    <../docs/calibration.md#why-each-default>`_.

    The fields come in six concerns (:data:`CONCERNS`), in this order: optimisation, objective, targets, speed,
    evaluation, output. Every field is also a keyword of :func:`mgnp_lens.discover` and a ``--set KEY=VALUE`` of
    the CLI; ``config.json`` stores them flat, so a run saved by any version loads and resumes
    (:meth:`from_dict`). :meth:`settings` gives one concern's fields, :attr:`speed` the speed concern typed.

    Attributes:
        steps: optimizer steps (240).
        lr: AdamW learning rate on ``log α`` (0.2).
        lr_schedule: ``"constant"`` (default) or ``"cosine"`` (decays to ``lr_final_fraction·lr``).
        lr_final_fraction: the cosine schedule's end point, as a fraction of ``lr`` (0.1).
        lr_warmup_steps: the learning rate ramps linearly up to the schedule's value over this many steps (20).
        lr_scales: per-granularity learning-rate multipliers, e.g. ``{"mlp_hidden": 2.0}`` (others keep 1).
        batch_size: prompt pairs per step (32).
        seed: seeds gate initialisation, batch order and gate noise (0).
        weight_decay: AdamW weight decay on ``log α`` (0).
        betas: AdamW's ``(β1, β2)`` ((0.6, 0.95)).
        adam_eps: AdamW's ε (1e-8).
        log_alpha_clamp: clamp every ``log α`` after each step to ``[-c, c]`` or ``[low, high]`` (None: no clamp).
        hard_concrete: the Hard-Concrete shape parameters (the paper's).
        mask_per_example: an independent gate sample for every example (default) instead of one per batch.
        noise_warmup_steps: the Hard-Concrete noise of ``noise_warmup_granularities`` ramps linearly from 0
            to the full noise of Eq. 6 over this many steps; ``"auto"`` (default) is
            :data:`NOISE_WARMUP_FRACTION` of ``steps`` (100 of 240), ``0`` the paper's schedule.
        noise_warmup_granularities: whose noise warms up (default the attention gates, ``None``: all).
        neuron_start: a two-stage schedule: the neuron gates (attention neurons, MLP hidden and output neurons)
            stay open, unpenalised and untrained for this fraction of the steps, while the node gates (embedding,
            blocks, heads) train; then all train (None, default: all from the start).
        node_stop: the node gates (embedding, blocks, heads) train for this fraction of the steps, then stay fixed
            at their binarised state, unpenalised, while the neuron gates go on (None, default: they train
            throughout). With ``neuron_start`` equal to it: heads and blocks first, then neurons inside what is kept.
        granularities: which granularities are gated (all the model has; `mlp_expert` only exists in a mixture of
            experts); the others are always kept.
        ablation: what a pruned node outputs: ``"corrupted"`` (its activation on the paired corrupted prompt,
            default, the paper's), ``"zero"`` or ``"mean"`` (its mean over the training pairs' corrupted
            prompts and positions); see :mod:`mgnp_lens.ablation`. Evaluations of the circuit use the same.
        lambdas: per-granularity sparsity weights λ_g (:data:`~mgnp_lens.granularity.DEFAULT_LAMBDAS`: the
            paper's Appendix C with a lower price on heads and neurons; ``PAPER_LAMBDAS`` replicates the paper;
            missing names keep the defaults).
        lambda_scale: multiplies every λ (1.0; for sweeps).
        lambda_warmup_steps: λ ramps linearly from 0 to full over this many steps from ``penalty_start`` (0: none).
        penalty_start: no L0 penalty before this step (0). Adam moves a gate that gets no KL gradient (a saturated
            one, before the noise is up) at its full rate whatever the penalty's size, so a penalty that starts with
            the noise closes everything together; the small-model regime (``auto_target_fraction``) starts it
            after the noise warm-up.
        l0_penalty: ``"gate"`` (the paper: each gate's P(z > 0)) or ``"path"`` (times its ancestors').
        target_kl: ask for the smallest circuit whose KL stays within this many nats instead of fixed λ:
            the λ are scaled during training by dual ascent (see :mod:`mgnp_lens.targets`); validation
            checks (every ``validate_every`` steps, default 20) stop the run once the hard circuit has
            not changed for 3 checks and meets the target; the end reports met or not met (None: off).
        target_sparsity: ``{granularity: fraction of its nodes to prune}``, each λ_g scaled to reach it
            (None: off; not together with ``target_kl``).
        auto_target_fraction: the small-model regime. Where the configured λ can only prune everything (keeping
            one head would cost more than the whole loss at stake, the empty circuit's loss on the validation pairs,
            as on tracr's compiled models), scale λ so that keeping every node costs this fraction of the loss at
            stake, return the final state (the scaled λ are fixed, so the run can converge), and train as measured
            on the tracr suite: noise warm-up on every granularity, ``log α`` initialised in U(3, 4), the penalty
            from the end of the noise warm-up, the cosine decay to 1% and ``confirm``. A field you changed from its
            default stays as you set it; a warning lists what was set and what was kept (0.1; None: keep λ). Never
            applies with ``target_kl`` or ``target_sparsity`` set. See docs/tracr.md.
        target_rate: how fast the targets move the λ: the largest change of log-multiplier per step (0.05).
        validate_every: every this many steps (and after the last), the hard circuit's float32 KL and
            metric on ``validate_max_examples`` validation pairs go into the history (None: off).
        validate_max_examples: validation pairs per check (128).
        select: which circuit a run with validation checks returns: ``"validation"`` (default) the best
            check's by :func:`mgnp_lens.targets.selection_key` (the training objective, KL + Σ λ·kept
            fraction, on the validation pairs; with ``target_kl`` the smallest circuit that meets it), or
            ``"last"`` the last step's. Without validation checks it is always the last step's.
        corruption: ``"cache"`` (corrupted activations precomputed, default) or ``"batch"`` (one 2B pass).
        precompute: when the training pairs' full-model outputs (answer distributions and, in cache mode,
            corrupted activations) are computed: ``"all"`` once before the loop, ``"per_batch"`` for each
            batch when it is drawn (one extra no-gradient pass a step; memory does not grow with the
            dataset), or ``"auto"`` (default): ``"all"`` when it fits in :data:`PRECOMPUTE_MEMORY_FRACTION`
            of the free memory and the run draws at least as many pairs as it holds (``steps × batch_size``),
            else ``"per_batch"``. ``"all"`` that does not fit refuses to start.
        micro_batch_size: run each step in chunks of this many pairs, accumulating the gradient (same
            result, the peak memory of one chunk); ``None``: one chunk.
        autocast: precision of the training passes: ``"auto"`` (bfloat16 where the device multiplies in it
            natively and the model is float32), ``"bfloat16"``, ``"float16"`` or ``"float32"`` (none).
            Reference log-probs, the corrupted cache and every evaluation stay in the model's precision.
        precast_weights: under autocast, cast the matrix weights once per run instead of in every pass
            (bit-identical; see :func:`mgnp_lens.speedups.precast_weights`).
        skip_dead_sites: cut hook sites whose mask is exactly 0 out of the autograd graph (exact).
        compile: run the training passes' blocks under ``torch.compile`` (see
            :func:`mgnp_lens.speedups.use_compile`): ``"auto"`` (long runs where TorchInductor can build),
            ``True`` or ``False``.
        confirm: after training, check the binarised circuit against every single discrete repair (a kept node's
            pruned neurons restored, a pruned head or MLP added) on the training and validation pairs and apply the
            best while it lowers their loss by more than 1% of the loss at stake (:mod:`mgnp_lens.confirm`); in the
            small-model regime, a circuit that still misses the regime's target is pruned back from every node (and
            the run warns that its circuit is that search's). The gates are set to match, so the returned circuit
            stays the final state (False; the small-model regime sets it). A round costs one masked pass per
            candidate: seconds on a tracr model, minutes on SmolLM2.
        stop_when_converged: end training once the hard circuit has been unchanged, after every warm-up, for as
            many steps as a converged run needs (:func:`mgnp_lens.targets.stable_needed`: 20% of ``steps``) and
            meets ``target_sparsity`` if set; the run then reports converged at the step it stopped (True).
            ``target_kl`` runs have their own stop (above).
        eval_split: split evaluated at the end (``"test"``; ``None``: skip).
        eval_heldout: also evaluate the task's held-out splits (templates never trained or validated on,
            the other corruption, and both; see :mod:`mgnp_lens.tasks.task`) at the end (True).
        eval_max_examples: cap on the evaluated examples of each split evaluated at the end, the training
            pairs included (1024; ``None``: the whole split).
        eval_batch_size: batch size of the precompute and the evaluations (32).
        eval_kl_se: stop evaluating a split at the end once its KL's standard error is at most this (0.01),
            after at least :data:`mgnp_lens.evaluate.MIN_PAIRS_FOR_SE` pairs taken evenly from every length
            bucket (template), up to ``eval_max_examples``; ``None``: every pair up to the cap. A circuit close
            to the full model is measured in a few batches; an unfaithful one on the whole cap.
        edge_examples: at the end, score the circuit's edges on this many ``eval_split`` pairs for the report's
            graph (32; 0: none; HookedTransformer and the corrupted ablation only: :mod:`mgnp_lens.interactions`).
        views: at the end, the kept heads' attribution, attention patterns and example answers (True;
            :mod:`mgnp_lens.views`).
        checkpoint_dir: if set, outputs and the resumable state are written there every
            ``checkpoint_every`` steps, at the end, and after Ctrl-C or an error.
        checkpoint_every: steps between checkpoints (50).
        progress: show a progress bar.
    """

    # optimisation: how the gates are trained
    steps: int = 240
    lr: float = 0.2
    lr_schedule: str = "constant"
    lr_final_fraction: float = 0.1
    lr_warmup_steps: int = 20
    lr_scales: dict[str, float] = field(default_factory=dict)
    batch_size: int = 32
    seed: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.6, 0.95)
    adam_eps: float = 1e-8
    log_alpha_clamp: float | tuple[float, float] | None = None
    hard_concrete: HardConcreteParams = field(default_factory=HardConcreteParams)
    mask_per_example: bool = True
    noise_warmup_steps: int | str = "auto"
    noise_warmup_granularities: tuple[str, ...] | None = ATTENTION_GRANULARITIES
    neuron_start: float | None = None
    node_stop: float | None = None
    # objective: what is pruned, against what, at which price
    granularities: tuple[str, ...] = ALL_GRANULARITIES
    ablation: str = "corrupted"
    lambdas: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LAMBDAS))
    lambda_scale: float = 1.0
    lambda_warmup_steps: int = 0
    penalty_start: int = 0
    l0_penalty: str = "gate"
    # targets: a faithfulness or size asked for, the validation checks, and which circuit is returned
    target_kl: float | None = None
    target_sparsity: dict[str, float] | None = None
    auto_target_fraction: float | None = 0.1
    target_rate: float = 0.05
    validate_every: int | None = None
    validate_max_examples: int = 128
    select: str = "validation"
    confirm: bool = False
    stop_when_converged: bool = True
    # speed: how fast and in how much memory (the same circuit up to float rounding)
    corruption: str = "cache"
    precompute: str = "auto"
    micro_batch_size: int | None = None
    autocast: str = "auto"
    precast_weights: bool = True
    skip_dead_sites: bool = True
    compile: bool | str = "auto"
    # evaluation: what is measured at the end
    eval_split: str | None = "test"
    eval_heldout: bool = True
    eval_max_examples: int | None = 1024
    eval_batch_size: int = 32
    eval_kl_se: float | None = 0.01
    edge_examples: int = 32
    views: bool = True
    # output: where the run is written and what it shows while it runs
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    progress: bool = True

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, FIELD_RULES[f.name](f.name, getattr(self, f.name)))
        if self.target_kl is not None and self.target_sparsity:
            raise ValueError("target_kl and target_sparsity cannot both be set: the first chooses the size, "
                             "the second fixes it")

    def settings(self, concern: str) -> dict[str, Any]:
        """``{field: value}`` of one concern of :data:`CONCERNS` (``ValueError`` naming them for another name)."""
        if concern not in CONCERNS:
            raise ValueError(f"unknown concern {concern!r}; expected one of {', '.join(map(repr, CONCERNS))}")
        return {name: getattr(self, name) for name in CONCERNS[concern][1]}

    def by_concern(self) -> dict[str, dict[str, Any]]:
        """Every field, grouped: ``{concern: {field: value}}`` in :data:`CONCERNS`' order."""
        return {concern: self.settings(concern) for concern in CONCERNS}

    def changed(self) -> dict[str, Any]:
        """``{field: value}`` of the fields that differ from a default ``PruningConfig()``."""
        default = PruningConfig()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

    @property
    def speed(self) -> "SpeedSettings":
        """The speed concern as a :class:`SpeedSettings` (what :class:`mgnp_lens.speedups.TrainingSpeedups` reads)."""
        return SpeedSettings(**self.settings("speed"))

    @property
    def validation_interval(self) -> int | None:
        """Steps between validation checks: ``validate_every``, or 20 for a ``target_kl`` or ``target_sparsity``
        run."""
        from .targets import DEFAULT_TARGET_VALIDATE_EVERY

        if self.validate_every is None and (self.target_kl is not None or self.target_sparsity):
            return DEFAULT_TARGET_VALIDATE_EVERY
        return self.validate_every

    @property
    def warmup_end(self) -> int:
        """The step after which no warm-up (learning rate, λ, Hard-Concrete noise) is still ramping."""
        lambda_end = self.penalty_start + self.lambda_warmup_steps if self.lambda_warmup_steps else 0
        return max(self.lr_warmup_steps, lambda_end, self.noise_warmup_length)

    @property
    def noise_warmup_length(self) -> int:
        """``noise_warmup_steps`` in steps (``"auto"``: ``NOISE_WARMUP_FRACTION`` of ``steps``, rounded down)."""
        if self.noise_warmup_steps == "auto":
            return int(self.steps * NOISE_WARMUP_FRACTION)
        return self.noise_warmup_steps

    @property
    def caches_corrupted(self) -> bool:
        """Whether the run precomputes the corrupted activations (cache mode with the corrupted ablation)."""
        from .ablation import Ablation

        return self.corruption == "cache" and Ablation.of(self.ablation).uses_corrupted_run

    @property
    def log_alpha_range(self) -> tuple[float, float] | None:
        """``log_alpha_clamp`` as a ``(low, high)`` pair (None: no clamp)."""
        c = self.log_alpha_clamp
        return None if c is None else (-c, c) if isinstance(c, (int, float)) else c

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples as lists); :meth:`from_dict` inverts it."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningConfig":
        """Inverse of :meth:`to_dict`. A config saved before a field existed gets the value that the
        run actually used then (e.g. no lr warm-up and β2 0.999), not today's default."""
        return cls(**{**_BEFORE_FIELD_EXISTED, **d})


def _concern_class(concern: str, name: str, doc: str):
    """A frozen dataclass of one concern's fields, with :class:`PruningConfig`'s types and defaults."""
    wanted = CONCERNS[concern][1]
    cls = make_dataclass(name, [(f.name, f.type, field(default=f.default)) for f in fields(PruningConfig)
                                if f.name in wanted], frozen=True)
    cls.__doc__, cls.__module__ = doc, __name__
    return cls


SpeedSettings = _concern_class("speed", "SpeedSettings", "How a run's training passes run: the speed concern of a "
                               "PruningConfig (its fields, types and defaults); the circuit is the same up to float "
                               "rounding whatever these say.")


# ---------------------------------------------------------------- the validation table
Rule = Callable[[str, Any], Any]


def _fail(name: str, wanted: str, value) -> ValueError:
    return ValueError(f"{name} must be {wanted}, got {value!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(low: int) -> Rule:
    def rule(name, v):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise _fail(name, f"an integer >= {low}", v)
        return v
    return rule


def _number(low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> Rule:
    bounds = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
    wanted = "a finite number" + (f" in {bounds}" if high is not None else
                                  f" {'>' if low_open else '>='} {low}" if low is not None else "")

    def rule(name, v):
        ok = _is_number(v) and (low is None or (v > low if low_open else v >= low)) and \
            (high is None or (v < high if high_open else v <= high))
        if not ok:
            raise _fail(name, wanted, v)
        return v
    return rule


def _choice(choices, kind: str | None = None) -> Rule:
    def rule(name, v):
        if not any(v is c or (type(v) is type(c) and v == c) for c in choices):
            label = kind or name
            raise ValueError(f"unknown {label} {v!r}; expected one of {', '.join(map(repr, choices))}")
        return v
    return rule


def _boolean(name, v):
    if not isinstance(v, bool):
        raise _fail(name, "True or False", v)
    return v


def _optional(rule: Rule) -> Rule:
    return lambda name, v: None if v is None else rule(name, v)


def _either(first: Rule, second: Rule, wanted: str) -> Rule:
    def rule(name, v):
        for r in (first, second):
            try:
                return r(name, v)
            except ValueError:
                pass
        raise _fail(name, wanted, v)
    return rule


def _granularity_map(value_rule: Rule, defaults: Mapping[str, float] | None = None) -> Rule:
    def rule(name, v):
        if not isinstance(v, Mapping):
            raise _fail(name, "a mapping of granularity names to numbers", v)
        out = dict(defaults or {})
        for g, x in v.items():
            check_granularity(g)
            out[g] = float(value_rule(f"{name}[{g!r}]", x))
        return out
    return rule


def _granularities(allow_empty: bool) -> Rule:
    def rule(name, v):
        if isinstance(v, str) or not isinstance(v, (list, tuple)) or (not v and not allow_empty):
            raise _fail(name, "a list of granularity names" + ("" if allow_empty else " (at least one)"), v)
        return tuple(check_granularity(g) for g in v)
    return rule


def _pair(name, v, item: Rule, wanted: str) -> tuple[float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise _fail(name, wanted, v)
    try:
        return float(item(name, v[0])), float(item(name, v[1]))
    except ValueError:
        raise _fail(name, wanted, v) from None


def _betas(name, v):
    return _pair(name, v, _number(0, 1, high_open=True), "two numbers in [0, 1)")


def _clamp(name, v):
    wanted = "a number > 0, a pair (low, high) with low < high, or None"
    if _is_number(v):
        if v <= 0:
            raise _fail(name, wanted, v)
        return v
    low, high = _pair(name, v, _number(), wanted)
    if not low < high:
        raise _fail(name, wanted, v)
    return low, high


def _hard_concrete(name, v):
    if isinstance(v, HardConcreteParams):
        return v
    if not isinstance(v, Mapping):
        raise _fail(name, "HardConcreteParams or a mapping of its fields", v)
    known = {f.name for f in fields(HardConcreteParams)}
    unknown = sorted(set(v) - known)
    if unknown:
        raise ValueError(f"{name} has unknown field(s) {unknown}; fields: {', '.join(sorted(known))}")
    return HardConcreteParams(**{k: _number()(f"{name}.{k}", x) for k, x in v.items()})


def _path(name, v):
    if not isinstance(v, (str, os.PathLike)):
        raise _fail(name, "a directory path or None", v)
    return str(v)


def _positive_float(name, v):
    return float(_number(0, low_open=True)(name, v))


#: One validation (and normalisation) rule per ``PruningConfig`` field: ``rule(name, value) -> value``.
FIELD_RULES: dict[str, Rule] = {
    "steps": _integer(1), "lr": _number(0, low_open=True), "lr_schedule": _choice(LR_SCHEDULES, "lr_schedule"),
    "lr_final_fraction": _number(0, 1), "lr_warmup_steps": _integer(0),
    "lr_scales": _granularity_map(_number(0, low_open=True)), "batch_size": _integer(1),
    "micro_batch_size": _optional(_integer(1)),
    "lambdas": _granularity_map(_number(0), DEFAULT_LAMBDAS), "lambda_scale": _number(0),
    "lambda_warmup_steps": _integer(0), "penalty_start": _integer(0), "confirm": _boolean,
    "stop_when_converged": _boolean,
    "target_kl": _optional(_number(0, low_open=True)),
    "target_sparsity": _optional(_granularity_map(_number(0, 1, high_open=True))),
    "target_rate": _number(0, low_open=True),
    "auto_target_fraction": _optional(_number(0, 1, low_open=True, high_open=True)),
    "noise_warmup_steps": _either(_integer(0), _choice(("auto",)), "an integer >= 0 or 'auto'"),
    "noise_warmup_granularities": _optional(_granularities(allow_empty=True)),
    "neuron_start": _optional(_number(0, 1)), "node_stop": _optional(_number(0, 1)),
    "l0_penalty": _choice(L0_PENALTIES, "l0_penalty"), "corruption": _choice(CORRUPTION_MODES, "corruption mode"),
    "ablation": _choice(ABLATIONS, "ablation"),
    "precompute": _choice(PRECOMPUTE_CHOICES, "precompute"),
    "seed": _integer(0), "granularities": _granularities(allow_empty=False), "hard_concrete": _hard_concrete,
    "weight_decay": _number(0), "betas": _betas, "adam_eps": _positive_float,
    "log_alpha_clamp": _optional(_clamp), "mask_per_example": _boolean,
    "autocast": _choice(AUTOCAST_CHOICES, "autocast"), "precast_weights": _boolean, "skip_dead_sites": _boolean,
    "compile": _either(_choice(("auto",)), _boolean, "'auto', True or False"),
    "validate_every": _optional(_integer(1)), "validate_max_examples": _integer(1),
    "select": _choice(SELECT_CHOICES, "select"),
    "eval_split": _optional(_choice(EVAL_SPLITS, "eval_split")), "eval_max_examples": _optional(_integer(1)),
    "eval_heldout": _boolean, "eval_batch_size": _integer(1), "eval_kl_se": _optional(_positive_float),
    "edge_examples": _integer(0), "views": _boolean,
    "checkpoint_dir": _optional(_path), "checkpoint_every": _integer(1),
    "progress": _boolean,
}


def check_field_names(names, where: str) -> None:
    """``ValueError`` naming the ``names`` that are not ``PruningConfig`` fields (``where`` says where they came from)."""
    known = {f.name for f in fields(PruningConfig)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown PruningConfig field(s) {unknown} {where}; fields: {', '.join(sorted(known))}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` → ``{KEY: VALUE}`` for :class:`PruningConfig` fields (the CLI's ``--set``).

    Values are parsed as JSON when they can be (``lr=0.1``, ``'betas=[0.9,0.99]'``,
    ``'lr_scales={"mlp_hidden":2}'``) and kept as strings otherwise (``l0_penalty=path``).

    Raises:
        ValueError: an item without ``=``, or a key that is not a ``PruningConfig`` field.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        check_field_names([key], f"in {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
