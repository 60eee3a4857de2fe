"""SIGTERM and SIGHUP stop a run as Ctrl-C does: the last finished step is saved, the exit code is 130 with the resume
hint, and a stop signal in the middle of writing a checkpoint waits until the files are switched (issue: nothing
lost, for real)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.cli import main
from mgnp_lens.result import stop_signals_interrupt
from mgnp_lens.rundir import LOCK_FILE

from helpers import micro_model, random_pairs

pytestmark = pytest.mark.slow  # the edit loop skips it: pytest -m "not slow"

COMMON = ["--task", "ioi", "--batch-size", "4", "--n-test", "8", "--autocast", "float32", "--quiet",
          "--edge-examples", "0"]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"mgnp exited ({proc.returncode}) before {path.name} appeared: "
                                 f"{proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path.name} did not appear within {seconds} s")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_training_saves_the_last_step_and_exits_130(sig, tiny_gpt2_checkpoint, model_cache_dir,
                                                                        tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "mgnp_lens.cli", "discover", *COMMON, "--steps", "100000", "--set",
            "checkpoint_every=5", "--model", str(tiny_gpt2_checkpoint[0]), "--out", str(out)]
    # the signal's default disposition in the child, even when the suite itself runs under nohup (SIGHUP ignored,
    # which the CLI rightly leaves ignored)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    _wait_for(out / "state.pt", proc)  # the first checkpoint (step 5) is on disk: training is under way
    time.sleep(2.0)  # a few more steps (ms each) even on a loaded machine, so the stop is not at the checkpoint
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"continue with: mgnp discover --resume {out}" in err and "Traceback" not in err
    status = json.loads((out / "evaluation.json").read_text())
    state = torch.load(out / "state.pt", weights_only=True)
    assert status["interrupted"] is True and state["step"] == status["steps_completed"] > 5  # not the last checkpoint
    assert len((out / "history.csv").read_text().strip().splitlines()) == state["step"] + 1
    assert not (out / LOCK_FILE).exists()
    assert main(["discover", "--resume", str(out), "--steps", str(state["step"] + 2), "--quiet",
                 "--edge-examples", "0"]) == 0


def test_a_sigterm_while_the_files_are_switched_waits_for_the_switch(tmp_path, monkeypatch):
    """SIGTERM arrives in the middle of writing the last step's files (under the CLI's handlers): the run's files are
    one consistent set, labelled interrupted, and resumable."""
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=16)
    task = mg.PromptPairTask.from_tokens(clean, corrupted, torch.zeros(16, dtype=torch.long),
                                         torch.ones(16, dtype=torch.long))
    real, fired = mg.Circuit.per_layer, []

    def sigterm_while_saving(self, *a, **k):
        if not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **k)

    monkeypatch.setattr(mg.Circuit, "per_layer", sigterm_while_saving)
    with stop_signals_interrupt():
        r = mg.discover(model, task, steps=4, batch_size=8, autocast="float32", progress=False,
                        checkpoint_dir=str(tmp_path), checkpoint_every=100)
    assert fired and r.interrupted and r.steps_completed == 4
    assert json.loads((tmp_path / "evaluation.json").read_text())["interrupted"] is True
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 4
    assert mg.Circuit.load(tmp_path / "circuit.json") == r.circuit
    assert not list(tmp_path.glob("*.tmp"))
    assert signal.getsignal(signal.SIGTERM) is not None  # the handlers are put back


def test_the_handlers_are_restored_and_an_ignored_signal_stays_ignored():
    before = signal.getsignal(signal.SIGTERM)
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stop_signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGHUP, previous_hup)


SWITCH_PAUSE = """
import pathlib, sys, time
real = pathlib.Path.replace
paused = []
def replace(self, target):  # pause inside the switch of the {which} save's files, and say so
    if self.name == "circuit.json.tmp" and not paused and (pathlib.Path(target).parent / "{marker}").exists():
        paused.append(1)
        print("SWITCHING", file=sys.stderr, flush=True)
        time.sleep(3)
    return real(self, target)
pathlib.Path.replace = replace
from mgnp_lens.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("which, marker, steps", [("checkpoint", "gates.pt", "100000"), ("final", "state.pt", "3")])
def test_a_sigterm_while_a_save_switches_its_files_leaves_one_consistent_set(which, marker, steps, tiny_gpt2_checkpoint,
                                                                            model_cache_dir, tmp_path):
    """A real mgnp discover, sent SIGTERM from outside while it renames a save's files into place (at the step-5
    checkpoint, or in the final writes): the switch completes, the run stops as on Ctrl-C, and every file is of one
    save."""
    from mgnp_lens import report

    out = tmp_path / "run"
    code = SWITCH_PAUSE.replace("{which}", which).replace("{marker}", marker)
    argv = [sys.executable, "-c", code, "discover", *COMMON, "--steps", steps, "--set", "checkpoint_every=5",
            "--model", str(tiny_gpt2_checkpoint[0]), "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while proc.stderr.readline().strip() != "SWITCHING":
        assert proc.poll() is None and time.monotonic() < end, "mgnp never reached the switch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    run = report.load_run(out)  # refuses a mixed set
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == run["evaluation"]["steps_completed"] == len(run["history"])
    assert not list(out.glob("*.tmp"))
