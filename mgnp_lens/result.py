"""What a discovery run returns and writes: :class:`DiscoveryResult` and its run directory.

A run directory holds ``circuit.json``, ``gates.pt``, ``history.csv``, ``per_layer.csv``, ``summary.csv``,
``evaluation.json``, ``config.json`` and (for resuming) ``state.pt``; each file is written to a temporary
name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from . import checkpoint
from .circuit import Circuit
from .config import PruningConfig
from .evaluate import Evaluation
from .gates import HardConcreteGates
from .granularity import ModelDims


@dataclass
class DiscoveryResult:
    """What :func:`mgnp_lens.discover` returns.

    Attributes:
        circuit: the binarised, hierarchy-consistent circuit.
        history: one row per completed step (step, loss, kl, lambda_factor, lr, noise_scale, seconds (wall
            time of the step), l0_<g>, active_<g>; with ``validate_every``, val_kl and val_metric on the
            checked steps).
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
        """Write the run directory (see the module docstring) into ``directory``; returns its path."""
        return write_run(Path(directory), self)

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


def run_meta(model, task) -> dict:
    """Task description, model source, model shape and library versions of a run (for ``config.json``)."""
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


def write_run(out: Path, result: DiscoveryResult) -> Path:
    """Write ``result``'s run directory into ``out`` (created if needed); returns ``out``.

    ``config.json`` keeps the entries an earlier write added beside the run's own (e.g. ``command``).
    """
    out.mkdir(parents=True, exist_ok=True)
    circuit = result.circuit
    circuit.save(out / "circuit.json")
    _save_atomically({g: v.detach().cpu() for g, v in result.gates.log_alpha.items()}, out / "gates.pt")
    if result.state is not None:
        _save_atomically(checkpoint.to_cpu(result.state), out / checkpoint.STATE_FILE)
    for name, frame in (("history.csv", result.history), ("per_layer.csv", circuit.per_layer()),
                        ("summary.csv", circuit.summary())):
        frame.to_csv(out / (name + ".tmp"), index=False)
        (out / (name + ".tmp")).replace(out / name)
    ev, train_ev = result.evaluation, result.train_evaluation
    _write_json(out / "evaluation.json", {
        "steps_completed": result.steps_completed, "interrupted": result.interrupted, "seconds": result.seconds,
        "evaluation": ev.to_dict() if ev else None, "train_evaluation": train_ev.to_dict() if train_ev else None})
    meta, config = result.meta, result.config
    previous = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    extra = {k: v for k, v in previous.items() if k not in ("config", "seed") and k not in meta} \
        if isinstance(previous, dict) and "config" in previous else {}
    _write_json(out / "config.json", {"config": config.to_dict(), "seed": config.seed, **meta, **extra})
    return out
