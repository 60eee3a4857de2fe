"""The returned circuit is chosen on validation pairs (``select``), with the rule recorded, and resumes exactly."""

from __future__ import annotations

import json

import pytest
from helpers import micro_model, random_pairs

import mgnp_lens as mg
from mgnp_lens import targets
from mgnp_lens.report import build_report
from mgnp_lens.tasks import PairSet, PromptPairTask

KW = dict(batch_size=16, progress=False, autocast="float32", validate_every=5, noise_warmup_steps=0, steps=40,
          lambda_scale=0.3, lambdas=mg.PAPER_LAMBDAS, eval_split="validation")  # sizes measured at the paper's λ


class _StopAt(PairSet):
    """Training pairs whose ``sample`` raises Ctrl-C after ``after`` calls."""

    def __init__(self, inner, after):
        super().__init__(inner.buckets)
        self.calls, self.after = 0, after

    def sample(self, batch_size, generator=None):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return super().sample(batch_size, generator)


def _task(model):
    clean, corrupted = random_pairs(model, n=96, pos=6)
    return PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0],
                                      split_fractions={"train": 0.5, "validation": 0.25, "test": 0.25})


@pytest.fixture(scope="module")
def runs():
    model = micro_model("gpt2")
    task = _task(model)
    return model, task, mg.discover(model, task, **KW), mg.discover(model, task, select="last", **KW)


def _best_check(history, config) -> int:
    checks = history.dropna(subset=["val_kl"])
    keys = {int(r.step): targets.selection_key(config, int(r.step), r.val_kl, r.val_penalty)
            for r in checks.itertuples()}
    return min(keys, key=keys.get)


def test_the_returned_circuit_is_the_best_validation_check(runs):
    model, task, chosen, last = runs
    sel = chosen.selection
    assert sel["select"] == "validation" and sel["of_steps"] == 40 and sel["validation_checks"] == 8
    assert sel["step"] == _best_check(chosen.history, chosen.config)
    # it is that check's circuit: scored again on the same validation pairs it gives the recorded KL
    again = mg.evaluate(model, task, chosen.circuit, "validation", max_examples=KW.get("validate_max_examples", 128))
    assert again.kl == pytest.approx(sel["validation_kl"], rel=1e-5)
    assert chosen.evaluation.kl == pytest.approx(sel["validation_kl"], rel=1e-5)  # eval_split="validation"
    # the objective it minimises: no check has a lower validation KL + λ-weighted size
    checks = chosen.history.dropna(subset=["val_kl"])
    assert (checks.val_kl + checks.val_penalty).min() == pytest.approx(
        float(checks.loc[checks.step == sel["step"], "val_kl"].iloc[0] +
              checks.loc[checks.step == sel["step"], "val_penalty"].iloc[0]))


def test_selection_does_not_change_training_and_last_returns_the_final_gates(runs):
    model, task, chosen, last = runs
    assert chosen.history[["loss", "kl", "val_kl"]].equals(last.history[["loss", "kl", "val_kl"]])
    assert last.circuit == mg.Circuit(chosen.circuit.dims, last.gates.binarize())
    assert last.selection["select"] == "last" and last.selection["step"] == 40
    if chosen.selection["step"] != 40:  # then the chosen circuit is an earlier one
        assert chosen.circuit != last.circuit


def test_the_rule_is_in_evaluation_json_and_the_report(runs, tmp_path):
    model, task, chosen, _ = runs
    chosen.save(tmp_path)
    saved = json.loads((tmp_path / "evaluation.json").read_text())["selection"]
    assert saved["step"] == chosen.selection["step"] and "validation pairs" in saved["rule"]
    page = build_report(tmp_path).read_text()
    assert f"step {saved['step']} of 40" in page and "validation checks" in page


def test_without_validation_checks_the_last_step_is_returned():
    model = micro_model("gpt2")
    r = mg.discover(model, _task(model), **{**KW, "validate_every": None, "steps": 5})
    assert r.selection is None and r.circuit == mg.Circuit(r.circuit.dims, r.gates.binarize())


def test_an_interrupted_run_resumes_to_the_same_choice(runs):
    model, task, chosen, _ = runs
    stopping = _task(model)
    stopping.splits["train"] = _StopAt(stopping.splits["train"], 17)
    stopped = mg.discover(model, stopping, **KW)
    assert stopped.interrupted and stopped.steps_completed == 17
    assert stopped.selection["step"] <= 15
    resumed = mg.discover(model, task, resume_from=stopped)
    assert resumed.selection == chosen.selection and resumed.circuit == chosen.circuit


def test_selection_key_with_a_target():
    cfg = mg.PruningConfig(target_kl=0.1)
    met_big, met_small = (targets.selection_key(cfg, 10, 0.05, p) for p in (2.0, 1.0))
    unmet_small = targets.selection_key(cfg, 20, 0.2, 0.1)
    assert met_small < met_big < unmet_small  # the smallest circuit that meets the target comes first
    assert targets.selection_key(cfg, 30, 0.15, 9.0) < unmet_small  # unmet: the lowest validation KL
    plain = mg.PruningConfig()
    assert targets.selection_key(plain, 5, 0.1, 0.3) < targets.selection_key(plain, 6, 0.3, 0.2)  # KL + size
    assert targets.selection_key(plain, 6, 0.1, 0.3) < targets.selection_key(plain, 5, 0.1, 0.3)  # ties: later
    with pytest.raises(ValueError, match="select"):
        mg.PruningConfig(select="best")


def test_a_target_returns_the_smallest_circuit_that_met_it(runs):
    model, task, *_ = runs
    eps = 0.005  # met by the early checks only: the later, smaller circuits miss it
    # a multiplier held at its start (target_rate ~ 0), times 6, trains like the plain runs at λ×0.3
    r = mg.discover(model, task, **{**KW, "target_kl": eps, "target_rate": 1e-6,
                                    "lambda_scale": 0.3 / targets.TARGET_KL_START_SCALE})
    checks = r.history.dropna(subset=["val_kl"])
    met = checks[checks.val_kl <= eps]
    smallest = met[met.val_penalty == met.val_penalty.min()]
    assert r.selection["step"] == int(smallest.step.max()) < r.steps_completed
    assert checks.val_kl.iloc[-1] > eps  # the last step's circuit would have missed the target
    assert r.target["met"] and r.target["validation_kl"] <= eps
    again = mg.evaluate(model, task, r.circuit, "validation")
    assert again.kl == pytest.approx(r.selection["validation_kl"], rel=1e-5)
    # the untouched circuit of the first checks meets the target and does not change, but does not stop the run
    assert r.target["stopped_early_at_step"] is None and r.steps_completed == 40


def test_the_cli_says_which_step_it_returns(tiny_gpt2_checkpoint, tmp_path, capsys):
    from mgnp_lens.cli import main

    path, _, _ = tiny_gpt2_checkpoint
    out = tmp_path / "run"
    assert main(["discover", "--task", "ioi", "--model", str(path), "--steps", "4", "--batch-size", "4", "--n-test", "8",
                 "--autocast", "float32", "--out", str(out), "--set", "validate_every=2", "--set",
                 "validate_max_examples=8"]) == 0
    said = capsys.readouterr().out
    saved = json.loads((out / "evaluation.json").read_text())["selection"]
    assert f"returned: step {saved['step']} of 4's circuit, chosen over 2 validation checks" in said
