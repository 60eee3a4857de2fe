"""Guards of a run directory: writable before anything starts, one run at a time, an old run replaced only
once the new one has written its outputs.

Used by ``mgnp discover`` (``--out``, ``--overwrite``, ``--resume``); the run files themselves are written by
:func:`mgnp_lens.result.write_run`.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".mgnp.lock"
#: Files whose presence means a directory holds (the start of) a run.
RUN_MARKERS = ("config.json", "circuit.json", "state.pt", "evaluation.json")


def check_writable(out: Path) -> None:
    """Raise ``ValueError`` unless ``out`` is, or can be created as, a writable directory (nothing is created)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--out {out}: {probe} is a file, so no directory can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {probe} is not writable (read-only file system or no permission); "
                         "choose another --out")


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run, finished or not (its config.json is written when it starts)."""
    return any((out / name).exists() for name in RUN_MARKERS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def run_lock(out: Path):
    """Hold ``out/.mgnp.lock`` (this process's PID) for the ``with``; the directory is made if needed and
    removed again if it is left empty.

    Raises:
        ValueError: another live process holds the lock (its PID named). A lock left by a process that no
            longer runs is taken over.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _alive(holder):
                raise ValueError(f"another mgnp run (PID {holder}) is writing to {out}; wait for it to finish, "
                                 "or choose another --out") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()


@contextmanager
def replacing(out: Path, replace: bool):
    """With ``replace``, move the old run in ``out`` aside for the ``with`` (every file of it but the lock)
    and delete it once the new run has written its circuit; if the new run wrote none (it failed at
    once), its files are removed and the old run is put back."""
    backup = out / f".mgnp-replaced-{os.getpid()}"
    moved = []
    if replace:
        backup.mkdir()
        for entry in sorted(out.iterdir()):
            if entry.name not in (LOCK_FILE, backup.name):
                entry.rename(backup / entry.name)
                moved.append(entry.name)
    try:
        yield
    finally:
        if replace:
            if (out / "circuit.json").exists():
                shutil.rmtree(backup)
            else:
                for entry in out.iterdir():
                    if entry.name not in (LOCK_FILE, backup.name):
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                for name in moved:
                    (backup / name).rename(out / name)
                backup.rmdir()
