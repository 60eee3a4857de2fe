"""Every mistake and accident a user can make: a clear message, a documented exit code, nothing finished lost.

The numbers in the test names are the cases of the issue that asked for them (data lost 1-5, raw tracebacks or
nonsense accepted 6-12). Cases that need no model are checked to fail before the model would load.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import mgnp_lens as mg
from mgnp_lens import cli, result as result_module
from mgnp_lens.cli import main
from mgnp_lens.report import RUN_FILES
from mgnp_lens.rundir import LOCK_FILE, MANIFEST
from mgnp_lens.tasks import PromptPairTask

from helpers import gpt2_tokenizer, micro_model, random_pairs

COMMON = ["--task", "ioi", "--steps", "3", "--batch-size", "4", "--n-test", "8", "--autocast", "float32", "--quiet"]


def run_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and err.startswith("mgnp: ")


@pytest.fixture(scope="module")
def finished_once(tiny_gpt2_checkpoint, tmp_path_factory):
    """One finished run of the module, for :func:`finished` to copy."""
    path = tiny_gpt2_checkpoint[0]
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["discover", *COMMON, "--model", str(path), "--out", str(out)]) == 0
    return out, path


@pytest.fixture
def finished(finished_once, tmp_path):
    """A finished run of its own (a copy, its settings pointing at it; with an extra file an earlier
    `mgnp evaluate` left) and the tiny checkpoint's path."""
    template, path = finished_once
    out = tmp_path / "run"
    shutil.copytree(template, out)
    config = json.loads((out / "config.json").read_text())
    config["config"]["checkpoint_dir"] = str(out)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "evaluation_validation.json").write_text("{}")
    return out, path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the mistake must be caught before."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the mistake was found")
    monkeypatch.setattr(cli, "_load_model", refuse)


# ----------------------------------------------------------------- 1, 2, 12: --overwrite, concurrent runs, bad model
@pytest.mark.parametrize("extra, code", [(["--set", "steps=-1"], 2), (["--lr", "inf"], 2),
                                         (["--model", "/nope.gguf"], 3), (["--model", "/no/such/dir"], 3)])
def test_1_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(finished, extra, code, capsys):
    out, path = finished
    before = run_files(out)
    argv = ["discover", *COMMON, "--model", str(path), "--out", str(out), "--overwrite", *extra]
    assert main(argv) == code
    no_traceback(capsys.readouterr().err)
    assert run_files(out) == before


def test_1_overwrite_replaces_every_file_of_the_old_run(finished, capsys):
    out, path = finished
    assert main(["discover", *COMMON, "--model", str(path), "--out", str(out), "--overwrite", "--seed", "5"]) == 0
    assert not (out / "evaluation_validation.json").exists()  # the old run's extra file went with it
    assert json.loads((out / "config.json").read_text())["seed"] == 5
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, MANIFEST])


def test_2_a_second_run_on_the_same_out_is_refused_while_the_first_holds_it(tmp_path, no_model, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(str(holder.pid))
        assert main(["discover", *COMMON, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        no_traceback(err)
        assert f"another mgnp run (PID {holder.pid}) is writing to {out}" in err
    finally:
        holder.kill()
        holder.wait()


def test_2_a_started_run_counts_as_a_run_and_a_stale_lock_is_taken_over(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"config": {}, "cli": {}}')  # a run that has started (no circuit.json yet)
    (out / LOCK_FILE).write_text("999999999")  # its process is gone
    monkeypatch.setattr(cli, "_load_model", lambda *a: pytest.fail("loaded"))
    assert main(["discover", *COMMON, "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert not (out / LOCK_FILE).exists()  # released


def test_12_an_unknown_model_path_exits_3_and_leaves_no_out_behind(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["discover", *COMMON, "--model", str(tmp_path / "no-model-here"), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    no_traceback(err)
    assert "cannot load the model" in err and "no-model-here" in err
    assert not out.exists()


# ----------------------------------------------------------------- 3: big datasets
def _pairs(n=40):
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=n, pos=6, seed=5)
    return model, PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])


def test_3_a_precompute_that_will_not_fit_is_refused_with_the_figures_or_streamed(monkeypatch):
    from mgnp_lens import discovery

    model, task = _pairs()
    kw = dict(steps=4, batch_size=8, autocast="float32", progress=False, eval_split=None)
    monkeypatch.setattr(discovery, "available_bytes", lambda device: 1000)
    with pytest.raises(ValueError, match=r"needs 0\.0 GB but 0\.0 GB is free; use precompute='per_batch'.*"
                                         r"corruption='batch'.*--max-train N"):
        mg.discover(model, task, precompute="all", **kw)
    streamed = mg.discover(model, task, **kw)  # "auto": too big to precompute, so each batch's when drawn
    monkeypatch.undo()
    cached = mg.discover(model, task, precompute="all", **kw)
    assert streamed.meta["precompute"] == "per_batch" and cached.meta["precompute"] == "all"
    assert streamed.circuit == cached.circuit
    torch.testing.assert_close(torch.tensor(streamed.history.kl.values), torch.tensor(cached.history.kl.values))
    assert streamed.train_evaluation.kl == pytest.approx(cached.train_evaluation.kl, abs=1e-5)


def test_a_short_run_computes_each_batch_when_drawn_instead_of_every_pair():
    """"auto" precomputes the training pairs only for a run that draws at least as many pairs as there are."""
    model, task = _pairs(n=80)
    n = len(task.split("train"))
    kw = dict(batch_size=4, autocast="float32", progress=False, eval_split=None)
    short = mg.discover(model, task, steps=2, **kw)
    long = mg.discover(model, task, steps=n // 4 + 1, **kw)
    assert 2 * 4 < n <= (n // 4 + 1) * 4
    assert short.meta["precompute"] == "per_batch" and long.meta["precompute"] == "all"


def test_3_the_training_evaluation_is_capped_like_the_test_one():
    model, task = _pairs(60)
    r = mg.discover(model, task, steps=2, batch_size=8, autocast="float32", progress=False, eval_max_examples=10)
    assert r.train_evaluation.n_examples == 10 and r.evaluation.n_examples == 10


# ----------------------------------------------------------------- 4, 5: full disks, Ctrl-C at any moment
def test_4_a_full_disk_leaves_the_last_complete_checkpoint_and_no_temporaries(tmp_path, monkeypatch):
    model, task = _pairs()
    real, calls = torch.save, []

    def fill_disk(obj, path, *a, **k):  # the disk fills during the 2nd checkpoint (torch.save: gates, state)
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(result_module.torch, "save", fill_disk)
    with pytest.raises(mg.DiscoveryError, match="No space left on device.*could not write the run directory") as info:
        mg.discover(model, task, steps=6, batch_size=8, autocast="float32", progress=False,
                    checkpoint_dir=str(tmp_path), checkpoint_every=2)
    assert not list(tmp_path.glob("*.tmp"))
    status = json.loads((tmp_path / "evaluation.json").read_text())
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    history = (tmp_path / "history.csv").read_text().strip().splitlines()
    assert status["steps_completed"] == state["step"] == len(history) - 1 == 2  # one consistent checkpoint
    assert info.value.result.steps_completed == 4  # the in-memory result went on


def test_4_config_json_at_the_start_is_never_half_written(tmp_path, monkeypatch):
    def fail(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(OSError):
        result_module.write_json(tmp_path / "config.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_5_ctrl_c_during_the_final_save_leaves_a_consistent_run_labelled_interrupted(tmp_path, monkeypatch):
    model, task = _pairs()
    real, fired = mg.Circuit.per_layer, []

    def ctrl_c_while_saving(self, *a, **k):  # SIGINT arrives in the middle of writing the last step's files
        if not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)

    monkeypatch.setattr(mg.Circuit, "per_layer", ctrl_c_while_saving)
    # Python keeps SIGINT ignored when it was started ignoring it (a background job: nohup, &): make it Ctrl-C
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = mg.discover(model, task, steps=4, batch_size=8, autocast="float32", progress=False,
                        checkpoint_dir=str(tmp_path), checkpoint_every=100)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert r.interrupted and r.steps_completed == 4 and r.evaluation is None
    status = json.loads((tmp_path / "evaluation.json").read_text())
    assert status["interrupted"] is True and status["steps_completed"] == 4
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 4
    assert len((tmp_path / "history.csv").read_text().strip().splitlines()) == 5
    assert mg.Circuit.load(tmp_path / "circuit.json") == r.circuit


def test_5_ctrl_c_before_the_first_step_exits_130_with_the_resume_hint(tiny_gpt2_checkpoint, tmp_path, monkeypatch,
                                                                      capsys):
    from mgnp_lens import discovery

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(discovery, "_kl_backward", ctrl_c)
    out = tmp_path / "run"
    assert main(["discover", *COMMON, "--model", str(tiny_gpt2_checkpoint[0]), "--out", str(out)]) == 130
    assert f"continue with: mgnp discover --resume {out}" in capsys.readouterr().err
    assert main(["report", str(out)]) == 0


# ----------------------------------------------------------------- 6, 7: wrong types and nonsense, before the model
@pytest.mark.parametrize("setting, names", [
    ('seed="abc"', "seed"), ('batch_size="abc"', "batch_size"), ('lambda_warmup_steps="abc"', "lambda_warmup_steps"),
    ('micro_batch_size="abc"', "micro_batch_size"), ('checkpoint_every="abc"', "checkpoint_every"),
    ('hard_concrete={"foo":1}', "hard_concrete has unknown field"), ("lambdas=5", "lambdas"),
    ("weight_decay=NaN", "weight_decay"), ("weight_decay=-1", "weight_decay"), ("seed=1.5", "seed"),
    ("seed=-1", "seed"), ("eval_split=bogus", "unknown eval_split 'bogus'"), ("eval_batch_size=0", "eval_batch_size"),
    ("eval_max_examples=-1", "eval_max_examples"), ("steps=true", "steps"), ("checkpoint_every=1.5", "checkpoint_every"),
    ("batch_size=1e9", "batch_size"), ("granularities=[]", "granularities"), ("nonsense=1", "unknown PruningConfig"),
])
def test_6_7_bad_settings_exit_2_before_the_model_loads(setting, names, tmp_path, no_model, capsys):
    out = tmp_path / "run"
    assert main(["discover", *COMMON, "--set", setting, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert names in err
    assert not out.exists()


@pytest.mark.parametrize("flags, names", [(["--lr", "inf"], "lr must be a finite number"),
                                          (["--lambda-scale", "nan"], "lambda_scale must be a finite number"),
                                          (["--target-sparsity", "attn_head=1"],
                                           "target_sparsity['attn_head'] must be a finite number in [0, 1)")])
def test_7_non_finite_flags_exit_2(flags, names, tmp_path, no_model, capsys):
    assert main(["discover", *COMMON, *flags, "--out", str(tmp_path / "run")]) == 2
    assert names in capsys.readouterr().err


def test_7_a_batch_larger_than_the_data_warns():
    model, task = _pairs(20)
    with pytest.warns(UserWarning, match="batch_size 1,000,000 is larger than the 12 training pairs"):
        mg.discover(model, task, steps=1, batch_size=10**6, progress=False, eval_split=None)


# ----------------------------------------------------------------- 8: --out that cannot be written
def test_8_out_under_a_file_or_not_writable_exits_2(tmp_path, no_model, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["discover", *COMMON, "--out", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert "is a file, so no directory can be made under it" in err
    monkeypatch.setattr(os, "access", lambda *a: False)  # root ignores permission bits: pretend read-only
    assert main(["discover", *COMMON, "--out", str(tmp_path / "ro")]) == 2
    assert "is not writable" in capsys.readouterr().err


# ----------------------------------------------------------------- 9, 10: damaged and mismatched files
@pytest.mark.parametrize("name, content", [("circuit.json", b""), ("circuit.json", b"\xff\xfe{"),
                                           ("config.json", b"{oops"), ("evaluation.json", b"\xff"),
                                           ("history.csv", b'"a,b\n1,2,3,"\n\xff')])
def test_9_a_damaged_run_file_is_named_with_what_is_intact(finished, name, content, capsys):
    out, _ = finished
    (out / name).write_bytes(content)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert f"{out / name} is damaged" in err


def test_9_a_circuit_missing_a_mask_is_named(finished, capsys):
    out, _ = finished
    data = json.loads((out / "circuit.json").read_text())
    del data["masks"]["attn_head"]
    (out / "circuit.json").write_text(json.dumps(data))
    assert main(["report", str(out)]) == 2
    assert "the circuit lacks masks.attn_head" in capsys.readouterr().err


def test_9_a_damaged_state_is_refused_before_the_model_loads_and_changes_nothing(finished, no_model, capsys):
    out, _ = finished
    status = json.loads((out / "evaluation.json").read_text())
    (out / "evaluation.json").write_text(json.dumps({**status, "interrupted": True}))
    (out / "state.pt").write_bytes((out / "state.pt").read_bytes()[:100])
    config = (out / "config.json").read_bytes()
    assert main(["discover", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert "state.pt: the file is damaged" in err and "weights_only" not in err
    assert (out / "config.json").read_bytes() == config  # no "resumed" entry for a resume that never ran


@pytest.mark.parametrize("content, message", [(b"", "the file is empty"), (b"clean,corrupted\n\xff\xfe", "not UTF-8"),
                                              (b"a,b\n1,2\n", "missing column(s)")])
def test_9_a_bad_data_file_is_named_before_the_model_loads(tmp_path, no_model, content, message, capsys):
    data = tmp_path / "pairs.csv"
    data.write_bytes(content)
    assert main(["discover", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert str(data) in err and message in err


def test_10_a_circuit_of_another_shape_is_refused_with_both_shapes(finished, capsys):
    out, path = finished
    model = micro_model("gpt2")
    circuit = mg.Circuit.load(out / "circuit.json")
    clean, corrupted = random_pairs(model, n=6)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    with pytest.raises(ValueError, match=r"the circuit is for a model shaped .*'d_model': 64.* but this model is "
                                         r"shaped .*'d_model': 32"):
        mg.evaluate(model, task, circuit)
    config = json.loads((out / "config.json").read_text())
    config["model_dims"] = {**config["model_dims"], "n_layers": 5}
    (out / "config.json").write_text(json.dumps(config))
    assert main(["report", str(out)]) == 2
    assert "circuit.json is for a model shaped" in capsys.readouterr().err


# ----------------------------------------------------------------- 11: silent data mistakes
class _ShortContext:
    """The GPT-2 tokenizer behind a model whose context is 8 tokens."""

    def __init__(self):
        self.tokenizer = gpt2_tokenizer()
        self.cfg = type("Cfg", (), {"n_ctx": 8, "default_prepend_bos": False})()

    def to_tokens(self, text, prepend_bos=False):
        return torch.tensor([self.tokenizer.encode(text)])


def test_11_data_mistakes_warn_or_fail_naming_the_file_line(tmp_path):
    tok = gpt2_tokenizer()
    rows = ["clean,corrupted,correct,incorrect"]
    rows += [f"When Mary and John left{i},When Anne and John left{i}, Mary, Mary" for i in range(4)]
    rows += ["When Mary and John left,When Anne and John left,Mary, John"]
    (tmp_path / "same.csv").write_text("\n".join(rows + rows[1:]) + "\n")  # every row twice
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        PromptPairTask.from_csv(tok, tmp_path / "same.csv")
    text = " | ".join(str(w.message) for w in seen)
    assert "8 of 10 rows have the same correct and incorrect answer token" in text
    assert "2 of 10 rows have an answer without a leading space" in text and "same.csv line 6" in text
    assert "are copies of training pairs" in text

    (tmp_path / "null.jsonl").write_text('{"clean": "a b", "corrupted": "c d", "correct": " x", "incorrect": " y"}\n\n'
                                         '{"clean": "a b", "corrupted": "c d", "correct": null, "incorrect": " y"}\n')
    with pytest.raises(ValueError, match="null.jsonl line 3: correct is null; expected text"):
        PromptPairTask.from_jsonl(tok, tmp_path / "null.jsonl")
    (tmp_path / "bad.csv").write_text("clean,corrupted,correct,incorrect\na b,c d, x, y\na b,c d, Marylandia, y\n")
    with pytest.raises(ValueError, match="bad.csv line 3: answer ' Marylandia' is"):
        PromptPairTask.from_csv(tok, tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"row 0: the prompt is 11 tokens, longer than the model's context of 8"):
        PromptPairTask.from_strings(_ShortContext(), ["one two three four five six seven eight nine ten eleven"],
                                    ["one two three four five six seven eight nine ten twelve"], [" x"], [" y"])


# ------------------------------------------------------------ nothing lost, for real: --overwrite, recovery, inputs
def test_overwrite_refuses_a_directory_that_is_not_a_run_and_touches_nothing(tmp_path, no_model, capsys):
    project = tmp_path / "P"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "src" / "main.py").write_text("x")
    for extra in ([], ["--overwrite"]):
        assert main(["discover", *COMMON, "--out", str(project), *extra]) == 2
        err = capsys.readouterr().err
        no_traceback(err)
        assert "holds files that are not a run's (src/)" in err and "--overwrite will not touch it" in err
    assert (project / "src" / "main.py").read_text() == "x" and (project / "config.json").read_text() == "{}"


def test_overwrite_refuses_a_run_with_someone_elses_files_beside_it(finished, capsys):
    out, path = finished
    (out / "NOTES.md").write_text("mine")
    before = run_files(out)
    assert main(["discover", *COMMON, "--model", str(path), "--out", str(out), "--overwrite"]) == 2
    assert "(NOTES.md)" in capsys.readouterr().err and run_files(out) == before


def test_an_interrupted_overwrite_is_rolled_back_by_the_next_command(finished, capsys):
    """A killed --overwrite left the old run in .mgnp-replaced-PID/, a new config.json and a stale lock: the next
    command puts the old run back (it is never deleted)."""
    out, path = finished
    before = run_files(out)
    backup = out / ".mgnp-replaced-99999999"  # no such process
    backup.mkdir()
    for f in list(out.iterdir()):
        if f.is_file():
            f.rename(backup / f.name)
    (out / "config.json").write_text(json.dumps({"config": {}, "cli": {}}))
    (out / LOCK_FILE).write_text("99999999")
    assert main(["report", str(out)]) == 0
    assert "rolled back: the previous run is back in place" in capsys.readouterr().err
    assert not backup.exists()
    assert {k: v for k, v in run_files(out).items() if k != "report.html"} == \
        {k: v for k, v in before.items() if k != "report.html"}


def test_files_a_new_run_would_overwrite_are_refused(tmp_path, no_model, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("my report")
    (out / "summary.csv").write_text("a,b")
    assert main(["discover", *COMMON, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds report.html, summary.csv, which a run would overwrite, but no run" in err
    assert (out / "report.html").read_text() == "my report"


@pytest.mark.parametrize("value", [2, -1])
def test_a_mask_value_other_than_0_or_1_is_named(tmp_path, value):
    circuit = mg.Circuit.full(micro_model("gpt2"))
    data = circuit.to_dict()
    data["masks"]["attn_head"][0][1] = value
    (tmp_path / "circuit.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"masks.attn_head holds {value}; a mask value must be 0 \(pruned\) or 1"):
        mg.Circuit.load(tmp_path / "circuit.json")


@pytest.mark.parametrize("line, message", [
    ('{"clean": NaN, "corrupted": "c d", "correct": " x", "incorrect": " y"}', "line 2: NaN is not text"),
    ('{"clean": "a b", "corrupted": "c d", "correct": null, "incorrect": " y"}', "line 2: correct is null; expected"),
    ('{"clean": "a b", "corrupted": "c d", "correct": " x"}', "line 2: incorrect is missing"),
    ('{"clean": ["a"], "corrupted": "c d", "correct": " x", "incorrect": " y"}', 'line 2: clean is ["a"]; expected')])
def test_nan_null_and_missing_jsonl_fields_are_named_before_the_model_loads(tmp_path, no_model, capsys, line, message):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"clean": "a b", "corrupted": "c d", "correct": " x", "incorrect": " y"}\n' + line + "\n")
    assert main(["discover", "--data", str(data), "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert f"pairs.jsonl {message}" in err


@pytest.mark.parametrize("device, message", [("cuda", "no CUDA GPU that torch can use"),
                                             ("gpu0", "not a torch device"),
                                             ("mps", "MPS is not available here")])
def test_an_unavailable_device_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, device, message):
    from mgnp_lens import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["discover", *COMMON, "--device", device, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert f"--device {device}: " in err and message in err


def test_a_prompt_longer_than_the_context_is_refused_not_cut():
    model = micro_model("gpt2")  # n_ctx is small
    model.set_tokenizer(gpt2_tokenizer())
    long = " ".join(["word"] * (model.cfg.n_ctx + 5))
    with pytest.raises(ValueError, match=rf"row 0: the prompt is {model.cfg.n_ctx + 5 + 1} tokens, longer than the "
                                         rf"model's context of {model.cfg.n_ctx} tokens"):
        PromptPairTask.from_strings(model, [long], [long.replace("word", "term", 1)], [" x"], [" y"])


def test_torchs_full_disk_error_is_named_as_one(tmp_path, monkeypatch):
    model, task = _pairs()
    real, calls = torch.save, []

    def fill_disk(obj, path, *a, **k):  # what torch raises when the disk fills under its zip writer
        calls.append(path)
        if len(calls) > 2:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(result_module.torch, "save", fill_disk)
    with pytest.raises(mg.DiscoveryError, match=r"could not write gates.pt \(.* MB free on that disk; is it full\?\)"):
        mg.discover(model, task, steps=6, batch_size=8, autocast="float32", progress=False,
                    checkpoint_dir=str(tmp_path), checkpoint_every=2)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_report_that_cannot_be_written_leaves_no_temporary(finished, monkeypatch):
    out, _ = finished
    real = Path.write_text

    def full(self, *a, **k):
        if self.name == "report.html.tmp":
            real(self, "<half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    assert main(["report", str(out)]) == 1
    assert not (out / "report.html.tmp").exists()


def test_the_data_path_is_recorded_absolute(tmp_path, monkeypatch, no_model, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"clean": "a b", "corrupted": "c d", "correct": " x", "incorrect": " y"}\n')
    monkeypatch.chdir(tmp_path)
    assert cli._check_data_file("pairs.jsonl") == data.resolve()


def test_a_mixed_set_of_checkpoint_files_is_refused_with_the_way_out(tmp_path, capsys):
    """A process killed while switching a checkpoint's files (SIGKILL, power loss) can leave files of two saves:
    simulated by putting the step-2 checkpoint's gates.pt and state.pt beside the step-4 files."""
    model, task = _pairs()
    early, late = tmp_path / "early", tmp_path / "late"
    mg.discover(model, task, steps=2, batch_size=8, autocast="float32", progress=False, checkpoint_dir=str(early))
    mg.discover(model, task, steps=4, batch_size=8, autocast="float32", progress=False, checkpoint_dir=str(late))
    from mgnp_lens import report

    report.load_run(late)  # a complete set reads
    for name in ("gates.pt", "state.pt"):
        (late / name).write_bytes((early / name).read_bytes())
    with pytest.raises(ValueError, match=r"gates.pt, .*state.pt are damaged or not from the run's last complete "
                                         r"save .*mgnp discover --resume .* --steps N rewrites them"):
        report.load_run(late)
    capsys.readouterr()
    assert main(["report", str(late)]) == 2
    no_traceback(capsys.readouterr().err)


def test_evaluate_needs_no_evaluation_json_and_writes_elsewhere_when_the_run_is_read_only(finished, tmp_path,
                                                                                        monkeypatch, capsys):
    out, _ = finished
    (out / "evaluation.json").write_text("{damaged")
    assert main(["evaluate", str(out), "--split", "test", "--max-examples", "4"]) == 0
    assert json.loads((out / "evaluation_test.json").read_text())["n_examples"] == 4
    from mgnp_lens import rundir

    real = rundir.os.access
    monkeypatch.setattr(rundir.os, "access", lambda p, mode: False if Path(p) == out else real(p, mode))
    monkeypatch.setattr(cli, "_load_model", lambda *a, **k: pytest.fail("loaded before the write was checked"))
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test"]) == 2
    assert "pass --out FILE to write the evaluation elsewhere" in capsys.readouterr().err
    monkeypatch.undo()
    elsewhere = tmp_path / "ev.json"
    assert main(["evaluate", str(out), "--split", "test", "--max-examples", "4", "--out", str(elsewhere)]) == 0
    assert json.loads(elsewhere.read_text())["split"] == "test"


@pytest.mark.parametrize("name, way_out", [("circuit.json", "mgnp discover --resume"),
                                           ("config.json", "start a new run")])
def test_a_damaged_run_file_is_named_with_the_way_out(finished, capsys, name, way_out):
    out, _ = finished
    (out / name).write_text("{damaged")
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{name} is damaged" in err and way_out in err


def test_report_views_regenerates_the_files_a_stopped_run_did_not_write(finished, capsys):
    out, _ = finished
    for name in ("heads.csv", "attention.json", "examples.csv", "edges.csv"):
        (out / name).unlink(missing_ok=True)
    assert main(["report", str(out), "--views", "--edge-examples", "4"]) == 0
    assert all((out / n).exists() for n in ("heads.csv", "attention.json", "examples.csv", "edges.csv"))


def test_resuming_after_the_data_file_changed_says_so_once(tiny_gpt2_checkpoint, tmp_path, monkeypatch, capsys):
    names = ["Mary", "John", "Anne", "James", "Paul", "Lisa", "Mark", "Sarah"]
    rows = [{"clean": f"When {a} and {b} went out, {b} gave a book to", "corrupted":
             f"When {a} and {b} went out, {a} gave a book to", "correct": f" {a}", "incorrect": f" {b}"}
            for a in names for b in names if a != b]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows[:40]) + "\n")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert main(["discover", "--data", "pairs.jsonl", "--model", str(tiny_gpt2_checkpoint[0]), "--steps", "2",
                 "--batch-size", "4", "--quiet", "--edge-examples", "0", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["cli"]["data"] == str(data.resolve())
    data.write_text("\n".join(json.dumps(r) for r in rows[10:50]) + "\n")
    monkeypatch.chdir(out)  # from elsewhere: the recorded path is absolute
    capsys.readouterr()
    assert main(["discover", "--resume", str(out), "--steps", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the training pairs differ from the saved run's" in err and "restore the data" in err
    assert err.count("{") == 0  # no task descriptions printed twice
