"""Guards of a run directory: writable before anything starts, one run at a time, an old run replaced only
once the new one has written its outputs.

Used by ``mgnp discover`` (``--out``, ``--overwrite``, ``--resume``); the run files themselves are written by
:func:`mgnp_lens.result.write_run`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".mgnp.lock"
#: A finished run's views (:class:`mgnp_lens.views.RunViews`): edge scores, the kept heads' attribution, their
#: attention patterns, example answers.
EDGES_FILE, HEADS_FILE, PATTERNS_FILE, EXAMPLES_FILE = "edges.csv", "heads.csv", "attention.json", "examples.csv"
#: The seconds of each phase of the last ``mgnp discover`` session (model load, training, evaluations, edges ...).
TIMINGS_FILE = "timings.json"
#: Files whose presence means a directory holds (the start of) a run.
RUN_MARKERS = ("config.json", "circuit.json", "state.pt", "evaluation.json")
#: Written last by every save of a run: the SHA-256 of each file that save wrote, so that a reader can tell a
#: complete set from one that a killed process left half switched.
MANIFEST = ".mgnp-files.json"
#: Every name a run directory's files may have: what ``mgnp discover`` writes, what ``mgnp evaluate``, ``compare``
#: and ``export`` add, and their temporary names while being written. Nothing else is ever moved or deleted.
RUN_FILE_PATTERNS = ("config.json", "circuit.json", "state.pt", "gates.pt", "evaluation.json", "history.csv",
                     "per_layer.csv", "summary.csv", EDGES_FILE, HEADS_FILE, PATTERNS_FILE, EXAMPLES_FILE,
                     "report.html", TIMINGS_FILE, "evaluation_*.json", "patching_effects.csv", "compare_*.csv",
                     "circuit.*", "*.tmp", LOCK_FILE, MANIFEST)
#: The files a save lists in the manifest (config.json is left out: the command line adds entries to it).
MANIFEST_FILES = ("circuit.json", "gates.pt", "history.csv", "per_layer.csv", "summary.csv", "evaluation.json",
                  "state.pt")
#: The folder an ``--overwrite`` moves the old run into until the new one has written its circuit (``.PID``).
BACKUP_PREFIX = ".mgnp-replaced-"


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_consistent(out: Path, ignore: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` when ``out``'s files (but those in ``ignore``) are not the set its last save wrote
    (:data:`MANIFEST`): a process killed while switching a checkpoint's files left some from two saves. Runs saved
    before manifests pass."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError(f"{out}: {MANIFEST} is damaged, so whether the run's files belong together cannot be "
                         f"checked; delete {MANIFEST} to read them anyway") from None
    stale = [name for name, digest in listed.items()
             if name not in ignore and (out / name).exists() and file_digest(out / name) != digest]
    if stale:
        raise ValueError(f"{', '.join(str(out / n) for n in stale)} {'is' if len(stale) == 1 else 'are'} damaged or "
                         "not from the run's last complete save (a process killed while switching a checkpoint's "
                         f"files leaves files of two saves); mgnp discover --resume {out} --steps N rewrites them all "
                         "from state.pt")


def is_run_file(name: str) -> bool:
    """Whether a file called ``name`` belongs to a run directory (:data:`RUN_FILE_PATTERNS`)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILE_PATTERNS)


def foreign_entries(out: Path) -> list[str]:
    """The entries of ``out`` that are not a run's files (folders included), sorted; a replacement backup is a
    run's."""
    return sorted(e.name + ("/" if e.is_dir() else "") for e in out.iterdir()
                  if not (e.is_file() and is_run_file(e.name)) and not e.name.startswith(BACKUP_PREFIX))


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


def check_new_out(out: Path) -> None:
    """Raise ``ValueError`` if ``out`` holds no run but files that a new run would overwrite (``report.html``,
    ``summary.csv``, ...: a run's names, someone else's files)."""
    if not out.is_dir() or holds_run(out):
        return
    clash = sorted(e.name for e in out.iterdir() if e.is_file() and is_run_file(e.name) and e.name != LOCK_FILE
                   and not e.name.endswith(".tmp"))
    if clash:
        raise ValueError(f"--out {out} holds {', '.join(clash)}, which a run would overwrite, but no run; choose "
                         "another --out, or move those files")


def announce_recovery(out: Path) -> None:
    """:func:`recover` ``out``, saying on stderr what was done."""
    import sys

    for line in recover(out):
        print(f"mgnp: {line}", file=sys.stderr)


def check_replaceable(out: Path) -> None:
    """Raise ``ValueError`` unless everything in ``out`` is a run's (what ``--overwrite`` may replace): a directory
    with other files or folders, or whose config.json is not a run's, is not a run directory, whatever
    ``--overwrite`` says."""
    foreign = foreign_entries(out)
    config = out / "config.json"
    not_ours = False
    if config.exists():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
            not_ours = not (isinstance(data, dict) and "config" in data)
        except (ValueError, UnicodeDecodeError):
            not_ours = False  # a run's config.json damaged by a crash: still a run directory
    if foreign or not_ours:
        what = f"holds files that are not a run's ({', '.join(foreign[:8])}{', ...' if len(foreign) > 8 else ''})" \
            if foreign else "has a config.json that is not a run's (no 'config' entry)"
        raise ValueError(f"--out {out} {what}, so it is not a run directory and --overwrite will not touch it; "
                         "choose a new or empty --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _lock_holder(lock: Path) -> int:
    """The PID written in a lock file (0: none, or unreadable)."""
    try:
        return int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


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
            holder = _lock_holder(lock)
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
    """With ``replace``, move the old run's files in ``out`` aside for the ``with`` (into ``.mgnp-replaced-PID/``)
    and delete them once the new run has written its circuit; if the new run wrote none (it failed at once), its
    files are removed and the old run is put back. Only run files (:func:`is_run_file`) are ever moved; a
    replacement that a killed process left half done is undone by :func:`recover` first."""
    backup = out / f"{BACKUP_PREFIX}{os.getpid()}"
    if replace:
        backup.mkdir()
        for entry in sorted(out.iterdir()):
            if entry.is_file() and is_run_file(entry.name) and entry.name != LOCK_FILE:
                entry.rename(backup / entry.name)
    try:
        yield
    finally:
        if replace:
            _settle(out, backup)


def _settle(out: Path, backup: Path) -> str:
    """End a replacement: keep the new run if it wrote its circuit (the backup goes), else put the old one back.
    Returns ``"replaced"`` or ``"restored"``."""
    if (out / "circuit.json").exists():
        shutil.rmtree(backup)
        return "replaced"
    for entry in out.iterdir():
        if entry.is_file() and is_run_file(entry.name) and entry.name != LOCK_FILE:
            entry.unlink()
    for entry in backup.iterdir():
        entry.rename(out / entry.name)
    backup.rmdir()
    return "restored"


def recover(out: Path) -> list[str]:
    """Finish the replacements in ``out`` that a killed ``--overwrite`` left half done (its process gone): the old
    run is put back unless the new one had written its circuit. Call it before reading or writing a run
    directory. Returns what was done, one line each (empty: nothing to recover)."""
    done = []
    if not out.is_dir():
        return done
    for backup in sorted(out.glob(f"{BACKUP_PREFIX}*")):
        pid = backup.name.removeprefix(BACKUP_PREFIX)
        if not backup.is_dir() or (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            continue  # a replacement still under way in another process
        outcome = _settle(out, backup)
        holder = _lock_holder(out / LOCK_FILE)
        if holder and holder != os.getpid() and not _alive(holder):
            (out / LOCK_FILE).unlink(missing_ok=True)  # the killed process's
        done.append(f"{out}: an interrupted --overwrite (PID {pid}) was "
                    + ("finished: the new run had written its circuit" if outcome == "replaced" else
                       "rolled back: the previous run is back in place"))
    return done
