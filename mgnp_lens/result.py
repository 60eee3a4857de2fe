"""What a discovery run returns and writes: :class:`DiscoveryResult` and its run directory.

A run directory holds ``circuit.json``, ``gates.pt``, ``history.csv``, ``per_layer.csv``, ``summary.csv``,
``evaluation.json``, ``config.json`` and (for resuming) ``state.pt``, written all or nothing (see
:func:`write_run`).
"""

from __future__ import annotations

import json
import platform
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from . import checkpoint
from .rundir import MANIFEST, MANIFEST_FILES, check_consistent, file_digest
from .views import RunViews
from .circuit import Circuit, score_table
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
        heldout_evaluations: the same on each of the task's held-out splits (``test_templates``,
            ``test_corruption``, ``test_ood``: templates and a corruption the run never saw), by split.
        target: with ``target_kl``, ``{"target_kl", "validation_kl", "met", "stopped_early_at_step"}``.
        selection: with validation checks, which step's circuit is returned and by what rule: ``{"select",
            "rule", "step", "of_steps", "validation_checks", "validation_kl"}`` (None without checks).
        config: the run's configuration.
        gates: the trained gates.
        steps_completed: optimizer steps that finished.
        interrupted: True if the run stopped early (Ctrl-C or an error).
        seconds: wall time of the optimisation loop (summed over resumed sessions).
        views: the finished circuit's edges, head attribution, attention patterns and example answers
            (:class:`mgnp_lens.views.RunViews`; None for a run that stopped early or saved none).
        timings: wall seconds of each phase of this session's run (``precompute``, ``training``, ``evaluate
            SPLIT`` ...; :mod:`mgnp_lens.phases`), in the order they ran.
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
    heldout_evaluations: dict[str, Evaluation] = field(default_factory=dict)
    target: dict | None = None
    selection: dict | None = None
    scored_log_alpha: dict | None = field(default=None, repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    views: RunViews | None = field(default=None, repr=False)

    def scores(self) -> pd.DataFrame:
        """Each node's probability of being kept (:meth:`HardConcreteGates.open_probability`) from the same gate
        state as the returned circuit, with whether the circuit keeps it: one row per node of every granularity,
        columns ``granularity, layer, head, index, score, kept`` (:func:`mgnp_lens.circuit.score_table`). Ranking
        nodes by it gives circuits of every size from one run (``reference.roc(result.scores(), truth)``)."""
        return score_table(self.circuit, self.gates.open_probability(self.scored_log_alpha))

    def evaluations(self) -> pd.DataFrame:
        """Every evaluation side by side, one row per split: training pairs, ``eval_split``, then the
        held-out splits (KL, the task metric of full model / circuit / empty circuit, ``recovered``)."""
        rows = [e for e in (self.train_evaluation, self.evaluation, *self.heldout_evaluations.values()) if e]
        return pd.DataFrame([e.to_dict() for e in rows])

    def save(self, directory: str | Path) -> Path:
        """Write the run directory (see the module docstring) into ``directory``, views included; returns its
        path. ``mgnp discover`` writes the same files."""
        return write_run(Path(directory), self)

    @classmethod
    def load(cls, directory: str | Path) -> "DiscoveryResult":
        """Read back a run directory that :meth:`save` (or ``mgnp discover``) wrote.

        Raises:
            FileNotFoundError: no ``circuit.json`` or ``config.json`` there.
            ValueError: files of two saves mixed (:func:`mgnp_lens.rundir.check_consistent`) or a damaged file.
        """
        return read_run(Path(directory))

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
            "parallel_attn_mlp": bool(getattr(getattr(model, "cfg", None), "parallel_attn_mlp", False)),
            "versions": {"mgnp_lens": __version__, **library_versions(), "python": platform.python_version()}}


def write_json(path: Path, payload, indent: int | None = 2) -> None:
    """``payload`` as JSON at ``path`` (indented unless ``indent=None``), written to a temporary file and renamed
    (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=indent, default=str))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


#: The signals that stop a run as Ctrl-C does (save the last finished step, exit 130): SIGINT, and where the platform
#: has them SIGTERM (``kill``, ``timeout``, ``docker stop``, SLURM, Kubernetes) and SIGHUP (a closed terminal).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def stop_signals_interrupt():
    """Inside the ``with``, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` as Ctrl-C does, so every stop takes the
    path that keeps the finished work; the previous handlers come back on exit. Outside the main thread it does
    nothing. A signal that the process was started ignoring (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT and signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def deferred_interrupt():
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) inside the ``with`` is held back until its end (then raised as
    ``KeyboardInterrupt``), so that a group of renames is never cut in half. Outside the main thread (where no
    signal arrives) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda *a: caught.append(a)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            raise KeyboardInterrupt(signal.Signals(caught[0][0]).name)


def _torch_save(obj, path: Path) -> None:
    """``torch.save``, whose failures on a full disk (a ``RuntimeError`` about file positions) become an ``OSError``
    that says what was being written and how much space is left."""
    try:
        torch.save(obj, path)
    except RuntimeError as e:
        import errno
        import shutil

        free = shutil.disk_usage(path.parent).free
        name = path.name.removesuffix(".tmp")
        raise OSError(errno.ENOSPC if free < 2**20 else errno.EIO,
                      f"could not write {name} ({free / 2**20:.1f} MB free on that disk; is it full?): {e}") from e


def _staged_files(result: DiscoveryResult) -> dict[str, Callable[[Path], None]]:
    """Each file of the run directory and how to write it to a given path."""
    circuit, ev, train_ev = result.circuit, result.evaluation, result.train_evaluation
    files = {
        "circuit.json": circuit.save,
        "gates.pt": lambda p: _torch_save({g: v.detach().cpu() for g, v in result.gates.log_alpha.items()}, p),
        "history.csv": lambda p: result.history.to_csv(p, index=False),
        "per_layer.csv": lambda p: circuit.per_layer().to_csv(p, index=False),
        "summary.csv": lambda p: circuit.summary().to_csv(p, index=False),
        "evaluation.json": lambda p: p.write_text(json.dumps({
            "steps_completed": result.steps_completed, "interrupted": result.interrupted,
            "seconds": result.seconds, "evaluation": ev.to_dict() if ev else None,
            "train_evaluation": train_ev.to_dict() if train_ev else None,
            "heldout_evaluations": {k: e.to_dict() for k, e in result.heldout_evaluations.items()},
            "target": result.target, "selection": result.selection, "timings": result.timings},
            indent=2, default=str)),
    }
    if result.state is not None:
        files[checkpoint.STATE_FILE] = lambda p: _torch_save(checkpoint.to_cpu(result.state), p)
    if result.views is not None:
        files.update(result.views.files())
    return files


def read_run(d: Path) -> DiscoveryResult:
    """:meth:`DiscoveryResult.load`: every file of a run directory back into a result (the gates from
    ``gates.pt``, the resumable state and the returned check's gates from ``state.pt`` where there is one)."""
    for name in ("circuit.json", "config.json"):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d} holds no saved run: {name} is missing")
    check_consistent(d)
    try:
        saved = json.loads((d / "config.json").read_text())
        status = json.loads((d / "evaluation.json").read_text()) if (d / "evaluation.json").exists() else {}
    except ValueError as e:
        raise ValueError(f"{d}: a damaged JSON file ({e})") from None
    config = PruningConfig.from_dict(saved["config"])
    circuit = Circuit.load(d / "circuit.json")
    gates = HardConcreteGates(circuit.dims, config.hard_concrete, config.granularities)
    if (d / "gates.pt").exists():
        with torch.no_grad():
            for g, v in torch.load(d / "gates.pt", map_location="cpu", weights_only=True).items():
                gates.log_alpha[g].copy_(v)
    state = checkpoint.load_state(d) if (d / checkpoint.STATE_FILE).exists() else None
    chosen = (state or {}).get("selected") if config.select == "validation" else None

    def ev(row):
        return Evaluation.from_dict(row) if row else None
    return DiscoveryResult(
        circuit, pd.read_csv(d / "history.csv") if (d / "history.csv").exists() else pd.DataFrame(),
        ev(status.get("evaluation")), ev(status.get("train_evaluation")), config, gates,
        int(status.get("steps_completed", (state or {}).get("step", 0))), bool(status.get("interrupted", False)),
        float(status.get("seconds", 0.0)), {k: v for k, v in saved.items() if k not in ("config", "seed")}, state,
        {k: Evaluation.from_dict(v) for k, v in (status.get("heldout_evaluations") or {}).items()},
        status.get("target"), status.get("selection"), (chosen or {}).get("log_alpha"), status.get("timings") or {},
        RunViews.read(d))


def write_run(out: Path, result: DiscoveryResult) -> Path:
    """Write ``result``'s run directory into ``out`` (created if needed); returns ``out``.

    All or nothing: every file is written to a temporary name first (removed again if any write fails,
    e.g. on a full disk, leaving the previous files as they were), then all are renamed in one go with
    Ctrl-C held back. ``config.json`` keeps the entries an earlier write added beside the run's own
    (e.g. ``command``).
    """
    out.mkdir(parents=True, exist_ok=True)
    meta, config = result.meta, result.config
    try:
        previous = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    except ValueError:  # damaged: rewritten from the run's own entries
        previous = {}
    extra = {k: v for k, v in previous.items() if k not in ("config", "seed") and k not in meta} \
        if isinstance(previous, dict) and "config" in previous else {}
    payload = {"config": config.to_dict(), "seed": config.seed, **meta, **extra}
    files = {**_staged_files(result),
             "config.json": lambda p: p.write_text(json.dumps(payload, indent=2, default=str))}
    temps = {name: out / (name + ".tmp") for name in files}
    digests = {}
    files[MANIFEST] = lambda p: p.write_text(json.dumps({"step": result.steps_completed, "files": digests}, indent=1))
    temps[MANIFEST] = out / (MANIFEST + ".tmp")  # written and switched last
    try:
        for name, write in files.items():
            write(temps[name])
            if name in MANIFEST_FILES:
                digests[name] = file_digest(temps[name])
        with deferred_interrupt():
            for name, tmp in temps.items():
                tmp.replace(out / name)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return out
