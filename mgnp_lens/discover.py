"""The discovery loop: fit Hard-Concrete gates so the pruned model matches the full model.

loss = KL(full ‖ circuit) at the answer position + Σ_g λ_g · mean-L0_g

Only the gates' ``log α`` train (AdamW); the model's weights are frozen for the run and
restored afterwards. Base logits (and, in cache mode, corrupted activations) are computed
once per dataset without gradients.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import checkpoint
from .circuit import Circuit
from .evaluate import Evaluation, FullModelTarget, evaluate, summarize
from .gates import HardConcreteGates, HardConcreteParams
from .granularity import ATTENTION_GRANULARITIES, GRANULARITIES, PAPER_LAMBDAS, ModelDims, check_granularity
from .hooks import (
    Interpolator,
    check_hook_points,
    check_mode,
    compile_blocks,
    corrupted_activations,
    fast_weight_layout,
    freeze_weights,
    logits_at,
    masked_answer_logits,
    precast_weights,
)


LR_SCHEDULES = ("constant", "cosine")
AUTOCAST_CHOICES = ("auto", "bfloat16", "float16", "float32")
L0_PENALTIES = ("gate", "path")
#: The behaviour of runs whose saved config predates a field (see PruningConfig.from_dict).
_BEFORE_FIELD_EXISTED = {"betas": [0.9, 0.999], "lr_warmup_steps": 0, "noise_warmup_steps": 0, "adam_eps": 1e-8,
                         "compile": False, "noise_warmup_granularities": None}
#: ``noise_warmup_steps="auto"`` warms the noise up over this fraction of the run (100 of the default 240 steps).
NOISE_WARMUP_FRACTION = 5 / 12
COMPILE_CHOICES = ("auto", True, False)
#: ``compile="auto"`` compiles runs of at least this many steps, where the one-off compile is paid back
#: even with a cold TorchInductor cache: on a 2-core CPU it took 43 s cold (9 s warm) and saved 0.26 s
#: per SmolLM2 step, break-even after 169 steps cold, 36 warm (``benchmarks/compiled_blocks.py``); the
#: 240-step end-to-end run came out even with a cold cache (56 s compile) and 44 s faster with a warm one.
COMPILE_MIN_STEPS = 200
_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix multiplication (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_dtype(config: "PruningConfig", device: torch.device, model_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the gated forward/backward passes autocast to, or None for the model's own precision.

    ``"auto"`` picks bfloat16 when the model is float32 and the device multiplies in bfloat16 natively.
    """
    if config.autocast == "auto":
        return torch.bfloat16 if model_dtype == torch.float32 and bf16_is_fast(device) else None
    return _AUTOCAST_DTYPES[config.autocast]


def compile_backend_missing(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device`` here (None: it can)."""
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as e:  # no C++ compiler (or an unusable one): TorchInductor's CPU backend needs it
            return f"TorchInductor found no usable C++ compiler ({e})"
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "TorchInductor needs Triton for CUDA, and it is not installed"
    return f"no TorchInductor backend is set up for device {device.type!r}"


def use_compile(config: "PruningConfig", model, device: torch.device) -> bool:
    """Whether the training passes run through :func:`mgnp_lens.hooks.compile_blocks`.

    ``"auto"``: a ``HookedTransformer`` with at least two blocks, a device TorchInductor can build
    for, and a run of at least :data:`COMPILE_MIN_STEPS` steps (the whole run's ``steps``, so that a
    resumed run compiles like the uninterrupted one; a resume that lengthens a run past the threshold
    compiles only its new steps, which then differ from an uninterrupted run's by float rounding).
    ``True`` raises ``ValueError`` where the model or device cannot be compiled.
    """
    if config.compile is False:
        return False
    blocks = len(getattr(model, "blocks", [])) if type(model).__name__ == "HookedTransformer" else 0
    problem = (f"compile=True needs a HookedTransformer with at least two blocks, got {type(model).__name__}"
               if blocks < 2 else None)
    missing = compile_backend_missing(device)
    if config.compile is True:
        if problem or missing:
            raise ValueError(problem or f"compile=True: {missing}; use compile=False")
        return True
    return problem is None and missing is None and config.steps >= COMPILE_MIN_STEPS


def _lr_factor(config: "PruningConfig", step: int) -> float:
    """Multiplier of ``config.lr`` at 0-based ``step``: the linear warm-up times the schedule."""
    warm = min(1.0, (step + 1) / config.lr_warmup_steps) if config.lr_warmup_steps else 1.0
    if config.lr_schedule == "constant" or config.steps == 1:
        return warm
    end = config.lr_final_fraction
    return warm * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * step / (config.steps - 1))))


@dataclass
class PruningConfig:
    """Everything that defines a discovery run.

    Attributes:
        steps: optimizer steps.
        lr: AdamW learning rate on ``log α``.
        lr_schedule: ``"constant"``, or ``"cosine"`` (decays from ``lr`` to ``lr_final_fraction·lr``
            over the run, so late steps settle the gates instead of flipping them).
        lr_final_fraction: the cosine schedule's end point, as a fraction of ``lr``.
        lr_warmup_steps: the learning rate ramps linearly from ``lr/lr_warmup_steps`` to the schedule's
            value over this many steps (0: no warm-up). A warm-up softens the first steps, where only
            the L0 term has a gradient and Adam would lower every ``log α`` at the full rate at once.
            Default 20 steps.
        lr_scales: per-granularity multipliers of the learning rate, e.g. ``{"mlp_hidden": 2.0}``
            (granularities not named keep 1).
        batch_size: prompt pairs per step.
        micro_batch_size: run each step's batch in chunks of this many pairs, accumulating the
            gradient (same result, peak activation memory of one chunk); ``None``: one chunk.
        lambdas: per-granularity sparsity weights (paper Appendix C by default).
        lambda_scale: multiplies every λ (for sweeps).
        lambda_warmup_steps: λ ramps linearly from 0 to full over this many steps (0: no warm-up).
        noise_warmup_steps: the Hard-Concrete sampling noise of the gates in ``noise_warmup_granularities``
            ramps linearly from 0 (noise-free gates) to the full noise of Eq. 6 over this many steps.
            ``"auto"`` (the default): ``NOISE_WARMUP_FRACTION`` (5/12) of ``steps``, i.e. 100 of 240;
            ``0``: the paper's schedule, full noise on every gate from the first step. Noise-free steps
            give every gate inside (0, 1) a clean KL gradient, so the attention gates sort out which heads
            matter before the noise drives gates into saturation (``log α`` ≈ +5…10, where both gradients
            vanish and a gate stays). On SmolLM2 IOI and Greater-Than it kept 0-7 heads (mostly 3-7) and
            4-20% of the attention neurons fewer than the paper's schedule at about the same training
            KL, MLP counts −1…+5%, test KL 0.001-0.022 higher (docs/calibration.md). With ``"auto"``,
            a run resumed with a different ``steps`` before its warm-up ended ramps to the new length
            from then on.
        noise_warmup_granularities: the granularities whose noise warms up (default
            ``ATTENTION_GRANULARITIES``: ``("attn_block", "attn_head", "attn_neuron")``; ``None``: all of
            them); the others get the full noise from the first step.
        l0_penalty: ``"gate"`` (the paper: each gate's own probability of being non-zero) or ``"path"``
            (times its ancestors' probabilities, i.e. the expected number of nodes active in the circuit;
            a head then also carries the L0 of its neurons, an MLP block that of its neurons).
        corruption: ``"cache"`` (corrupted activations precomputed) or ``"batch"`` (one 2B pass).
        seed: seeds gate initialisation, batch order and gate noise.
        granularities: which granularities are gated (the others are always kept).
        hard_concrete: Hard-Concrete shape parameters.
        weight_decay: AdamW weight decay on ``log α`` (0: none).
        betas: AdamW's ``(β1, β2)`` (decay rates of the gradient's first and second moment averages).
            The default β2 0.95 (PyTorch's is 0.999) lets Adam forget the large gradients of the first
            steps: with a long memory, gates that stopped mattering keep a large second-moment estimate
            and drift down to their L0 optimum very slowly. On SmolLM2 IOI (guide template, 240 steps)
            it kept ~22% fewer MLP hidden neurons than 0.999 (two seeds each) at a training KL about 0.01
            higher, the same place that 0.999 reaches in about 320 steps. The default β1 0.6 (PyTorch's
            is 0.9) carries less momentum, so gates overshoot less far into saturation and follow the
            KL landscape as it changes while other gates leave: on the same runs MLP hidden −13%
            (5,018 / 4,940 vs 5,753 / 5,747, two seeds) and MLP output −10% at the same training KL
            (0.146 / 0.145 vs 0.149 / 0.145), with 1-2 more heads kept; β1 0.95 kept 25% more.
        adam_eps: AdamW's ε, added to the root of the second-moment average (PyTorch's 1e-8). The L0
            gradient of a saturated MLP gate is ~1e-9, under ε, so such a gate descends at a fraction of
            the learning rate; 1e-12 lets it descend at the full rate (on SmolLM2 IOI it left the circuit
            as it was: docs/calibration.md).
        log_alpha_clamp: if set, every ``log α`` is clamped after each step, to ``[-c, c]`` for a number ``c`` or
            to ``[low, high]`` for a pair, so no gate runs off to where it is (almost) always 0 or 1 and its
            gradients vanish (``None``: no clamp).
        mask_per_example: draw an independent gate sample for every example of a batch (the default:
            lower-variance gradients; on SmolLM2 IOI it halved the test KL of the hard circuit for ~10%
            more time per step) instead of one sample shared by the batch.
        autocast: precision of the gated forward/backward passes of training (``torch.autocast``: matrix
            products in the low precision, reductions such as norms and softmax in float32). ``"auto"`` (the
            default) uses bfloat16 when the device has native bfloat16 arithmetic and the model is float32,
            else the model's precision; ``"bfloat16"``, ``"float16"``, or ``"float32"`` (no autocast). The
            full model's reference log-probs, the corrupted-activation cache and every evaluation stay in the
            model's precision. On SmolLM2 IOI, bfloat16 autocast moves the full model's answer distribution by
            KL 4e-4 and makes a CPU step about 1.6× faster (``benchmarks/dtype.py``).
        precast_weights: under autocast, cast the matrix-product weights to the autocast dtype once for
            the training loop instead of in every pass (bit-identical training; 1.1-1.3× per step with
            micro-batches, a few percent without; see :func:`mgnp_lens.hooks.precast_weights`). The
            float32 weights are put back for the evaluations. ``False`` frees the copies' memory between
            steps (+31 MB peak in the paper-setting memory benchmark).
        skip_dead_sites: cut hook sites whose mask is exactly 0 out of the autograd graph (exact; saves
            backward compute once whole blocks are pruned). Not in compiled blocks (``compile``).
        compile: run the training passes' blocks (all but the first) under ``torch.compile``
            (:func:`mgnp_lens.hooks.compile_blocks`: one graph with fused element-wise kernels for every
            block). ``"auto"`` (the default) compiles a ``HookedTransformer`` when TorchInductor can build
            for the device (a C++ compiler on CPU, Triton on CUDA) and the run has at least
            ``COMPILE_MIN_STEPS`` (200) steps, and falls back to eager blocks if compiling fails; ``True``
            always (errors if it cannot); ``False`` never. The first step pays for the compile (43 s with a
            cold TorchInductor cache, 9 s warm, on a 2-core CPU); a SmolLM2 IOI step is then 1.25× faster
            (``benchmarks/compiled_blocks.py``).
            The circuit is the eager run's up to floating-point rounding; the precompute, validation and
            evaluation passes stay eager.
        validate_every: every this many steps (and after the last one), evaluate the current hard
            circuit in float32 on the first ``validate_max_examples`` pairs of the validation split and
            add ``val_kl`` and ``val_metric`` to that step's history row, a held-out curve that shows
            when more steps stop helping (``None``, the default: off; on SmolLM2 a check of 128 pairs
            takes ~4 s on 2 CPU cores). Training is unchanged by it.
        validate_max_examples: validation pairs per check.
        eval_split: split evaluated at the end (``None``: skip).
        eval_max_examples: cap on the evaluated examples (``None``: whole split).
        eval_batch_size: batch size of the final evaluations.
        checkpoint_dir: if set, the circuit, gates and history are written there every
            ``checkpoint_every`` steps and at the end (also after Ctrl-C or an error).
        checkpoint_every: steps between checkpoints.
        progress: show a tqdm progress bar.
    """

    steps: int = 240
    lr: float = 0.2
    lr_schedule: str = "constant"
    lr_final_fraction: float = 0.1
    lr_warmup_steps: int = 20
    lr_scales: dict[str, float] = field(default_factory=dict)
    batch_size: int = 32
    micro_batch_size: int | None = None
    lambdas: dict[str, float] = field(default_factory=lambda: dict(PAPER_LAMBDAS))
    lambda_scale: float = 1.0
    lambda_warmup_steps: int = 0
    noise_warmup_steps: int | str = "auto"
    noise_warmup_granularities: tuple[str, ...] | None = ATTENTION_GRANULARITIES
    l0_penalty: str = "gate"
    corruption: str = "cache"
    seed: int = 0
    granularities: tuple[str, ...] = GRANULARITIES
    hard_concrete: HardConcreteParams = field(default_factory=HardConcreteParams)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.6, 0.95)
    adam_eps: float = 1e-8
    log_alpha_clamp: float | tuple[float, float] | None = None
    mask_per_example: bool = True
    autocast: str = "auto"
    precast_weights: bool = True
    skip_dead_sites: bool = True
    compile: bool | str = "auto"
    validate_every: int | None = None
    validate_max_examples: int = 128
    eval_split: str | None = "test"
    eval_max_examples: int | None = 1024
    eval_batch_size: int = 32
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.lr_final_fraction <= 1:
            raise ValueError(f"lr_final_fraction must be in [0, 1], got {self.lr_final_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {self.micro_batch_size}")
        if not isinstance(self.lr_warmup_steps, int) or self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be an integer >= 0, got {self.lr_warmup_steps!r}")
        if not isinstance(self.lr_scales, Mapping):
            raise ValueError(f"lr_scales must map granularity names to numbers, got {self.lr_scales!r}")
        scales = dict(self.lr_scales)
        for g, v in scales.items():
            check_granularity(g)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"lr_scales[{g!r}] must be a finite number > 0, got {v!r}")
        self.lr_scales = {g: float(v) for g, v in scales.items()}
        if self.l0_penalty not in L0_PENALTIES:
            raise ValueError(f"unknown l0_penalty {self.l0_penalty!r}; expected one of {', '.join(L0_PENALTIES)}")
        if self.lambda_warmup_steps < 0:
            raise ValueError(f"lambda_warmup_steps must be >= 0, got {self.lambda_warmup_steps}")
        if self.noise_warmup_steps != "auto" and (not isinstance(self.noise_warmup_steps, int)
                                                  or isinstance(self.noise_warmup_steps, bool)
                                                  or self.noise_warmup_steps < 0):
            raise ValueError(f"noise_warmup_steps must be an integer >= 0 or 'auto', got {self.noise_warmup_steps!r}")
        if self.noise_warmup_granularities is not None:
            if not isinstance(self.noise_warmup_granularities, (list, tuple)):
                raise ValueError("noise_warmup_granularities must be a list of granularity names or None, "
                                 f"got {self.noise_warmup_granularities!r}")
            self.noise_warmup_granularities = tuple(check_granularity(g) for g in self.noise_warmup_granularities)
        if self.lambda_scale < 0:
            raise ValueError(f"lambda_scale must be >= 0, got {self.lambda_scale}")
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        if not (isinstance(self.adam_eps, (int, float)) and math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ValueError(f"adam_eps must be a finite number > 0, got {self.adam_eps!r}")
        self.adam_eps = float(self.adam_eps)
        if self.log_alpha_clamp is not None:
            c = self.log_alpha_clamp
            pair = (-c, c) if isinstance(c, (int, float)) else tuple(c) if isinstance(c, (list, tuple)) else ()
            if len(pair) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in pair) \
                    or not pair[0] < pair[1]:
                raise ValueError(f"log_alpha_clamp must be a number > 0, a pair (low, high) with low < high, or None; "
                                 f"got {c!r}")
            self.log_alpha_clamp = c if isinstance(c, (int, float)) else (float(pair[0]), float(pair[1]))
        if self.compile not in COMPILE_CHOICES or not isinstance(self.compile, (bool, str)):
            raise ValueError(f"compile must be 'auto', True or False, got {self.compile!r}")
        if self.autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"unknown autocast {self.autocast!r}; expected one of {', '.join(AUTOCAST_CHOICES)}")
        check_mode(self.corruption)
        self.granularities = tuple(check_granularity(g) for g in self.granularities)
        lambdas = dict(PAPER_LAMBDAS)
        for g, v in dict(self.lambdas).items():
            check_granularity(g)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"lambda for {g!r} must be a finite number >= 0, got {v!r}")
            lambdas[g] = float(v)
        self.lambdas = lambdas
        if isinstance(self.hard_concrete, dict):
            self.hard_concrete = HardConcreteParams(**self.hard_concrete)
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.validate_every is not None and (not isinstance(self.validate_every, int) or self.validate_every < 1):
            raise ValueError(f"validate_every must be a positive integer or None, got {self.validate_every!r}")
        if not isinstance(self.validate_max_examples, int) or self.validate_max_examples < 1:
            raise ValueError(f"validate_max_examples must be a positive integer, got {self.validate_max_examples!r}")

    @property
    def noise_warmup_length(self) -> int:
        """``noise_warmup_steps`` in steps (``"auto"``: ``NOISE_WARMUP_FRACTION`` of ``steps``, rounded down)."""
        if self.noise_warmup_steps == "auto":
            return int(self.steps * NOISE_WARMUP_FRACTION)
        return self.noise_warmup_steps

    @property
    def log_alpha_range(self) -> tuple[float, float] | None:
        """``log_alpha_clamp`` as a ``(low, high)`` pair (None: no clamp)."""
        c = self.log_alpha_clamp
        return None if c is None else (-c, c) if isinstance(c, (int, float)) else c

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["granularities"] = list(self.granularities)
        d["betas"] = list(self.betas)
        if self.noise_warmup_granularities is not None:
            d["noise_warmup_granularities"] = list(self.noise_warmup_granularities)
        if isinstance(self.log_alpha_clamp, tuple):
            d["log_alpha_clamp"] = list(self.log_alpha_clamp)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningConfig":
        """Inverse of :meth:`to_dict`. A config saved before a field existed gets the value that the
        run actually used then (e.g. no lr warm-up and β2 0.999), not today's default."""
        d = {**_BEFORE_FIELD_EXISTED, **d}
        if "granularities" in d:
            d["granularities"] = tuple(d["granularities"])
        return cls(**d)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` → ``{KEY: VALUE}`` for :class:`PruningConfig` fields (the CLI's ``--set``).

    Values are parsed as JSON when they can be (``lr=0.1``, ``'betas=[0.9,0.99]'``,
    ``'lr_scales={"mlp_hidden":2}'``) and kept as strings otherwise (``l0_penalty=path``).

    Raises:
        ValueError: an item without ``=``, or a key that is not a ``PruningConfig`` field.
    """
    names = {f.name for f in fields(PruningConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if key not in names:
            raise ValueError(f"unknown PruningConfig field {key!r} in {item!r}; fields: {', '.join(sorted(names))}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@dataclass
class DiscoveryResult:
    """What :func:`discover` returns.

    Attributes:
        circuit: the binarised, hierarchy-consistent circuit.
        history: one row per completed step (step, loss, kl, lambda_factor, lr, seconds (wall time of
            the step), l0_<g>, active_<g>; with ``validate_every``, val_kl and val_metric on the checked steps).
        evaluation: Table 2 row on ``config.eval_split`` (None if skipped or interrupted).
        train_evaluation: the same on the training pairs (the hard circuit's training KL).
        config: the run's configuration.
        gates: the trained gates.
        steps_completed: optimizer steps that finished.
        interrupted: True if the run stopped early (Ctrl-C or an error).
        seconds: wall time of the optimisation loop (summed over resumed sessions).
        meta: task description, model source and library versions (written to config.json).
        state: the training state after ``steps_completed`` steps (gates, AdamW moments, random
            generators, history): ``discover(..., resume_from=result)`` or a saved directory continues from it
            exactly as the uninterrupted run would have.
    """

    circuit: Circuit
    history: pd.DataFrame
    evaluation: Evaluation | None
    train_evaluation: Evaluation | None
    config: PruningConfig
    gates: HardConcreteGates
    steps_completed: int
    interrupted: bool = False
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    state: dict | None = field(default=None, repr=False)

    def save(self, directory: str | Path) -> Path:
        """Write circuit.json, gates.pt, history.csv, per_layer.csv, summary.csv, evaluation.json, config.json
        and (for resuming) state.pt."""
        return _write_outputs(Path(directory), self.circuit, self.gates, self.history, self.config,
                              self.evaluation, self.train_evaluation, self.steps_completed, self.interrupted,
                              self.meta, self.seconds, self.state)

    def report(self, directory: str | Path) -> Path:
        """Save the run into ``directory`` and build its ``report.html``; returns the report's path."""
        from .report import build_report

        self.save(directory)
        return build_report(directory)


class DiscoveryError(RuntimeError):
    """Raised when discovery fails mid-run; ``.result`` holds the circuit from the last finished step."""

    def __init__(self, message: str, result: DiscoveryResult):
        super().__init__(message)
        self.result = result


def _run_meta(model, task) -> dict:
    from . import __version__
    from .models import LOAD_INFO_ATTR, library_versions

    return {"task": task.describe(), "model": getattr(model, LOAD_INFO_ATTR, None) or {"class": type(model).__name__},
            "model_dims": ModelDims.from_model(model).to_dict(),
            "versions": {"mgnp_lens": __version__, **library_versions(), "python": platform.python_version()}}


def _write_json(path: Path, payload) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def _save_atomically(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _write_outputs(out: Path, circuit, gates, history, config, evaluation, train_evaluation,
                   steps_completed, interrupted, meta, seconds, state: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    circuit.save(out / "circuit.json")
    _save_atomically({g: v.detach().cpu() for g, v in gates.log_alpha.items()}, out / "gates.pt")
    if state is not None:
        _save_atomically(checkpoint.to_cpu(state), out / checkpoint.STATE_FILE)
    for name, frame in (("history.csv", history), ("per_layer.csv", circuit.per_layer()),
                        ("summary.csv", circuit.summary())):
        frame.to_csv(out / (name + ".tmp"), index=False)
        (out / (name + ".tmp")).replace(out / name)
    status = {"steps_completed": steps_completed, "interrupted": interrupted, "seconds": seconds,
              "evaluation": evaluation.to_dict() if evaluation else None,
              "train_evaluation": train_evaluation.to_dict() if train_evaluation else None}
    _write_json(out / "evaluation.json", status)
    previous = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    extra = {k: v for k, v in previous.items() if k not in ("config", "seed") and k not in meta} \
        if isinstance(previous, dict) and "config" in previous else {}
    _write_json(out / "config.json", {"config": config.to_dict(), "seed": config.seed, **meta, **extra})
    return out


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _chunks(pairs, batch_size: int, device):
    """``(bucket index, row indices [b] in the bucket, those rows on device)``, bucket by bucket, in order."""
    for i, bucket in enumerate(pairs.buckets):
        for start in range(0, len(bucket), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(bucket)))
            yield i, idx, bucket.select(idx).to(device)


@torch.inference_mode()
def _precompute(model, dims, pairs, batch_size, with_cache: bool):
    """Full-model answer logits [n, d_vocab] (float32) per bucket and, for cache mode, corrupted activations per bucket."""
    logits = [[] for _ in pairs.buckets]
    acts = [[] for _ in pairs.buckets]
    for i, _, b in _chunks(pairs, batch_size, _model_device(model)):
        logits[i].append(logits_at(model, b.clean, b.answer_pos, len(b)).float())
        if with_cache:
            acts[i].append(corrupted_activations(model, dims, b.corrupted))
    base = [torch.cat(chunks) for chunks in logits]
    cache = [{k: torch.cat([a[k] for a in chunks]) for k in chunks[0]} for chunks in acts] if with_cache else []
    return base, cache


def _kl_backward(model, interp: Interpolator, masks: dict[str, torch.Tensor], batch, rows: torch.Tensor,
                 targets: list[FullModelTarget], cache: list[dict], config: PruningConfig,
                 amp_dtype: torch.dtype | None = None) -> float:
    """Mean KL(full ‖ masked model) over ``batch``, back-propagated into the gates behind ``masks``.

    The batch runs in micro-batches of ``config.micro_batch_size`` (all of it when None). The
    masks enter each pass as detached leaves; their gradients are summed over the micro-batches
    and pushed through the gate sampling once, so peak activation memory is that of one
    micro-batch and the gradient equals the full-batch one. With ``amp_dtype`` the masked passes
    run under ``torch.autocast`` to that dtype; the KL itself is taken in float32 against
    ``targets`` (the full model's answer distributions, one per bucket).
    """
    leaves = {g: m.detach().requires_grad_(m.requires_grad) for g, m in masks.items()}
    n = len(batch)
    size = config.micro_batch_size or n
    per_example = config.mask_per_example
    device_type = _model_device(model).type
    kl_sum = 0.0
    for start in range(0, n, size):
        sl = slice(start, min(start + size, n))
        interp.set_masks({g: v[sl] for g, v in leaves.items()} if per_example else leaves)
        if config.corruption == "cache":
            idx = rows[sl]
            interp.set_corrupted({k: v[idx.to(v.device)] for k, v in cache[batch.bucket].items()})
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = masked_answer_logits(model, interp, batch.clean[sl], batch.corrupted[sl], batch.answer_pos[sl])
        kl = targets[batch.bucket].rows(rows[sl]).kl(logits).sum() / n
        kl.backward()
        kl_sum += float(kl.detach())
        interp.set_corrupted(None)
        del logits, kl
    grads = [(m, leaves[g].grad) for g, m in masks.items() if m.requires_grad and leaves[g].grad is not None]
    if grads:
        torch.autograd.backward([m for m, _ in grads], [gr for _, gr in grads])
    return kl_sum


def _update(model, interp: Interpolator, gates: HardConcreteGates, optimizer: torch.optim.Optimizer, train,
            generators: dict[str, torch.Generator], targets: list[FullModelTarget], cache: list[dict],
            config: PruningConfig, lambdas: dict[str, float], amp_dtype: torch.dtype | None, step: int) -> dict:
    """One optimizer update (step ``step``, 0-based) on a freshly sampled batch; returns its history row.

    loss = KL(full ‖ sampled circuit) + λ-warm-up factor · Σ_g λ_g · mean-L0_g. The KL part is
    back-propagated by :func:`_kl_backward`, the L0 part here; then AdamW steps ``log α``.
    """
    t_step = time.perf_counter()
    batch_cpu = train.sample(config.batch_size, generator=generators["batch"])
    batch = batch_cpu.to(_model_device(model))
    optimizer.zero_grad(set_to_none=True)
    warmup = config.noise_warmup_length
    noise = min(1.0, step / warmup) if warmup else 1.0
    warm = config.noise_warmup_granularities
    scales = noise if warm is None else {g: noise if g in warm else 1.0 for g in gates.trainable}
    masks = gates.sample(generator=generators["noise"],
                         batch_size=len(batch) if config.mask_per_example else None, noise_scale=scales)
    kl = _kl_backward(model, interp, masks, batch, batch_cpu.rows, targets, cache, config, amp_dtype)
    factor = min(1.0, (step + 1) / config.lambda_warmup_steps) if config.lambda_warmup_steps else 1.0
    # per-gate P(z > 0) (times its ancestors' with l0_penalty="path"), shared by the loss and the history
    expected_l0 = gates.expected_l0(path=config.l0_penalty == "path")
    l0 = {g: v.mean() for g, v in expected_l0.items()}
    sparsity = sum(lambdas[g] * l0[g] for g in gates.trainable)
    (factor * sparsity).backward()
    lr_now = config.lr * _lr_factor(config, step)
    for group in optimizer.param_groups:
        group["lr"] = lr_now * group["lr_scale"]
    optimizer.step()
    clamp = config.log_alpha_range
    if clamp is not None:
        with torch.no_grad():
            for la in gates.log_alpha.values():
                la.clamp_(*clamp)
    row = {"step": step + 1, "loss": kl + factor * float(sparsity.detach()), "kl": kl, "lambda_factor": factor,
           "lr": lr_now, "noise_scale": noise, "seconds": time.perf_counter() - t_step}
    with torch.no_grad():
        row.update({f"l0_{g}": float(l0[g]) for g in gates.trainable})
        row.update({f"active_{g}": float(expected_l0[g].sum()) for g in gates.trainable})
    return row


@torch.inference_mode()
def _evaluate_cached(model, task, circuit: Circuit, pairs, base: list[torch.Tensor], cache: list[dict],
                     batch_size: int, split: str = "train") -> Evaluation:
    """A split's evaluation from precomputed full-model logits and corrupted activations (the loop's,
    for the training pairs): one masked clean pass per batch instead of three (base, clean and corrupted)."""
    device = _model_device(model)
    interp = Interpolator(circuit.dims, "cache")
    interp.set_masks(circuit.masks)

    def passes():
        for i, idx, b in _chunks(pairs, batch_size, device):
            interp.set_corrupted({k: v[idx.to(v.device)] for k, v in cache[i].items()})
            circ = masked_answer_logits(model, interp, b.clean, b.corrupted, b.answer_pos)
            yield b, base[i][idx.to(base[i].device)], circ

    return summarize(task, split, passes())


def discover(model, task, config: PruningConfig | None = None, *, resume_from=None,
             **overrides) -> DiscoveryResult:
    """Find the nodes of ``model`` that ``task`` needs, at all seven granularities at once.

    Args:
        model: a ``HookedTransformer`` (or ``TransformerBridge``) with the gated hook points.
        task: a :class:`mgnp_lens.tasks.Task` (its ``train`` split is optimised on).
        config: a :class:`PruningConfig`; keyword ``overrides`` replace its fields. When resuming
            without a config, the saved run's config (with the overrides) is used.
        resume_from: continue a run from its training state: a :class:`DiscoveryResult` (e.g. one
            that Ctrl-C interrupted), a run or checkpoint directory, or its ``state.pt``. The gates,
            AdamW moments, random generators and history are restored, so the finished run equals
            the uninterrupted one bit for bit. Only ``steps`` (e.g. to train a finished run longer)
            and the fields in :data:`mgnp_lens.checkpoint.RESUMABLE_CHANGES` (checkpointing, progress,
            evaluation, validation, ``precast_weights``) may differ from the saved config; the model
            shape and the training pairs must be the same. A run lengthened with ``steps`` equals the
            uninterrupted longer run where no schedule depends on ``steps``: an integer
            ``noise_warmup_steps`` (``"auto"`` is 5/12 of the run) and a constant lr.

    Returns:
        a :class:`DiscoveryResult`. Ctrl-C stops the loop early and returns the circuit of the
        last finished step (``interrupted=True``); any other error raises :class:`DiscoveryError`
        whose ``.result`` holds that circuit (and, with ``checkpoint_dir``, it is on disk too).
        Either way ``.state`` (and ``state.pt`` in ``checkpoint_dir``) can resume the run.

    Raises:
        ValueError: a bad config, a model without the hook points, or a ``resume_from`` state that
            does not match this model, task or config (the message names the difference).
    """
    state = checkpoint.load_state(resume_from) if resume_from is not None else None
    if config is None:
        config = PruningConfig.from_dict({**state["config"], **overrides}) if state else PruningConfig(**overrides)
    elif overrides:
        config = PruningConfig.from_dict({**config.to_dict(), **overrides})
    dims = ModelDims.from_model(model)
    check_hook_points(model, dims)
    train = task.split("train")
    validation = task.split("validation").head(config.validate_max_examples) if config.validate_every else None
    identity = {"task": task.describe(), "train_fingerprint": checkpoint.train_fingerprint(train),
                "model_dims": dims.to_dict()}
    if state is not None:
        checkpoint.check_resumable(state, PruningConfig.from_dict(state["config"]).to_dict(), config.to_dict(),
                                   identity)
    device = _model_device(model)

    init_gen = torch.Generator().manual_seed(config.seed)
    batch_gen = torch.Generator().manual_seed(config.seed + 1)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 2)
    gates = HardConcreteGates(dims, config.hard_concrete, config.granularities, generator=init_gen).to(device)
    groups = [{"params": [gates.log_alpha[g]], "granularity": g, "lr_scale": config.lr_scales.get(g, 1.0)}
              for g in gates.trainable]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.adam_eps,
                                  weight_decay=config.weight_decay)
    lambdas = {g: config.lambdas[g] * config.lambda_scale for g in gates.trainable}
    generators = {"batch": batch_gen, "noise": noise_gen}
    rows: list[dict] = []
    start, seconds_before = 0, 0.0
    if state is not None:
        checkpoint.restore(state, gates, optimizer, generators)
        rows, start, seconds_before = list(state["history"]), int(state["step"]), float(state["seconds"])

    fast_weight_layout(model)  # no per-pass weight copies; numerically identical
    restore_weights = freeze_weights(model)
    compiled = use_compile(config, model, device)
    interp = Interpolator(dims, config.corruption, skip_dead_sites=config.skip_dead_sites, shared_hooks=compiled)
    steps_done, interrupted, error = start, False, None
    ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    meta = _run_meta(model, task)
    model_dtype = next(model.parameters()).dtype
    amp_dtype = autocast_dtype(config, device, model_dtype)
    meta["training_precision"] = str(amp_dtype or model_dtype).replace("torch.", "")
    meta["compiled_blocks"] = compiled
    if state is not None:
        meta["resumed_at_steps"] = [*state.get("resumed_at_steps", []), start]
    identity.update(config=config.to_dict(), resumed_at_steps=meta.get("resumed_at_steps", []))
    t0 = time.perf_counter()

    def capture(step: int) -> dict:  # when rows holds exactly the history of ``step`` finished steps
        return checkpoint.capture(step, gates, optimizer, generators, rows,
                                  seconds_before + time.perf_counter() - t0, identity)

    def snapshot() -> tuple[Circuit, pd.DataFrame]:
        circuit = Circuit(dims, gates.binarize(), task=task.describe(), config=config.to_dict())
        return circuit, pd.DataFrame(rows)

    last = capture(start)  # what Ctrl-C or an error mid-step goes back to
    restore_precision = restore_compiled = lambda: None  # noqa: E731
    # "auto" falls back to eager blocks if compiling fails (e.g. a broken compiler), True lets it raise;
    # a compiled graph is per model shape and precision, and the limit leaves room for many in one process
    fallback = torch._dynamo.config.patch(suppress_errors=config.compile == "auto", recompile_limit=64)
    try:
        fallback.__enter__()
        pre_batch = min(config.eval_batch_size, config.micro_batch_size or config.eval_batch_size)
        base, cache = _precompute(model, dims, train, pre_batch, config.corruption == "cache")
        targets = [FullModelTarget.from_logits(b) for b in base]  # once, not per step
        if validation is not None:  # the held-out curve's full-model logits and corrupted activations
            val_base, val_cache = _precompute(model, dims, validation, pre_batch, True)
        if config.precast_weights:  # after the float32 precompute; undone before the evaluations
            restore_precision = precast_weights(model, amp_dtype)
        if compiled:  # training passes only; undone before the evaluations
            restore_compiled = compile_blocks(model)

        def validate(row: dict) -> None:  # float32 and eager, like every evaluation
            nonlocal restore_precision, restore_compiled
            restore_precision()
            restore_compiled()
            circuit = Circuit(dims, gates.binarize(), task=task.describe())
            ev = _evaluate_cached(model, task, circuit, validation, val_base, val_cache, pre_batch, "validation")
            row.update(val_kl=ev.kl, val_metric=ev.circuit_metric)
            if config.precast_weights:
                restore_precision = precast_weights(model, amp_dtype)
            if compiled:
                restore_compiled = compile_blocks(model)

        val_kl = None
        bar = tqdm(range(start, config.steps), desc="mgnp discover", disable=not config.progress,
                   dynamic_ncols=True, initial=start, total=config.steps)
        for step in bar:
            if compiled and step == start:
                bar.set_description("mgnp discover (compiling the blocks)")
            elif compiled and step == start + 1:
                bar.set_description("mgnp discover")
            row = _update(model, interp, gates, optimizer, train, generators, targets, cache, config,
                          lambdas, amp_dtype, step)
            steps_done = step + 1
            if validation is not None and (steps_done % config.validate_every == 0 or steps_done == config.steps):
                validate(row)
            rows.append(row)
            last = capture(steps_done)
            val_kl = row.get("val_kl", val_kl)
            bar.set_postfix(kl=f"{row['kl']:.3f}", heads=f"{row.get('active_attn_head', 0):.0f}",
                            attn_n=f"{row.get('active_attn_neuron', 0):.0f}",
                            mlp_h=f"{row.get('active_mlp_hidden', 0):.0f}",
                            **({"val_kl": f"{val_kl:.3f}"} if val_kl is not None else {}), refresh=False)
            if ckpt is not None and steps_done % config.checkpoint_every == 0:
                c, h = snapshot()
                _write_outputs(ckpt, c, gates, h, config, None, None, steps_done, False, meta, last["seconds"], last)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as e:  # keep finished work, then re-raise with it attached
        interrupted, error = True, e
    finally:
        fallback.__exit__(None, None, None)
        restore_compiled()
        restore_precision()
        restore_weights()
    if interrupted:  # back to the last finished step, even if the stop came in the middle of an update
        checkpoint.restore(last, gates, optimizer, generators)
        rows, steps_done = list(last["history"]), last["step"]
    seconds = seconds_before + time.perf_counter() - t0

    circuit, history = snapshot()
    if ckpt is not None:  # the trained gates are on disk before the (long) evaluations start
        _write_outputs(ckpt, circuit, gates, history, config, None, None, steps_done, interrupted, meta, seconds, last)
    evaluation = train_evaluation = None
    if error is None and not interrupted:
        if config.corruption == "cache":  # reuse the loop's full-model logits and corrupted cache
            train_evaluation = _evaluate_cached(model, task, circuit, train, base, cache, config.eval_batch_size)
        else:
            train_evaluation = evaluate(model, task, circuit, "train", config.eval_batch_size)
        if config.eval_split is not None:
            evaluation = evaluate(model, task, circuit, config.eval_split, config.eval_batch_size,
                                  config.eval_max_examples)
    result = DiscoveryResult(circuit, history, evaluation, train_evaluation, config, gates, steps_done,
                             interrupted, seconds, meta, last)
    if ckpt is not None:
        result.save(ckpt)
    if error is not None:
        raise DiscoveryError(f"discovery failed after {steps_done} steps: {error!r}"
                             + (f"; the last circuit is saved in {ckpt}" if ckpt else ""), result) from error
    return result
