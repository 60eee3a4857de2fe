"""Faithfulness and size targets: the λ multipliers move the circuit to the target, and say when they did not."""

from __future__ import annotations

import json
import math
import re

import pytest
from helpers import same_run, micro_model, random_pairs

import mgnp_lens as mg
from mgnp_lens import targets
from mgnp_lens.tasks import PromptPairTask

# the paper's λ: these runs test the targets' controllers from the price they were calibrated at
KW = dict(batch_size=16, progress=False, autocast="float32", validate_every=10, lambdas=mg.PAPER_LAMBDAS)


@pytest.fixture(scope="module")
def setup():
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=96, pos=6)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0],
                                      split_fractions={"train": 0.5, "validation": 0.25, "test": 0.25})
    return model, task, mg.evaluate(model, task, mg.Circuit.empty(model), "validation").kl


def test_the_paper_lambda_empties_a_micro_model_and_target_kl_brings_the_circuit_back(setup):
    """At the paper's λ the KL at stake on a tiny model is below the penalty; a target fixes the scale."""
    model, task, empty_kl = setup
    plain = mg.discover(model, task, steps=120, **KW)
    assert plain.evaluation.kl > 0.8 * empty_kl  # next to nothing is explained
    eps = 0.1 * empty_kl
    r = mg.discover(model, task, steps=120, target_kl=eps, **KW)
    assert r.target["met"] and r.target["validation_kl"] <= eps
    assert r.history["scale_attn_head"].iloc[-1] < 0.5  # settled well below the paper's λ, which empties it
    assert r.circuit.counts()["mlp_hidden"] > plain.circuit.counts()["mlp_hidden"]


def test_looser_targets_give_smaller_circuits_and_stop_early(setup):
    model, task, empty_kl = setup
    tight = mg.discover(model, task, steps=120, target_kl=0.1 * empty_kl, **KW)
    loose = mg.discover(model, task, steps=120, target_kl=0.6 * empty_kl, **KW)
    assert sum(loose.circuit.counts().values()) < sum(tight.circuit.counts().values())
    very_loose = mg.discover(model, task, steps=200, target_kl=10 * empty_kl, **KW)  # even empty meets it
    stop = very_loose.target["stopped_early_at_step"]
    assert very_loose.target["met"] and stop is not None and stop < 200 and very_loose.steps_completed == stop
    keys = very_loose.history["circuit_key"].dropna()
    assert len(set(keys.iloc[-targets.STABLE_CHECKS:])) == 1  # the last checks saw one circuit


def test_an_unmet_target_is_reported_not_hidden(setup, tmp_path):
    model, task, empty_kl = setup
    with pytest.warns(UserWarning, match="was not met"):
        r = mg.discover(model, task, steps=4, target_kl=1e-3 * empty_kl, lambda_scale=1e4, lr=2.0, lr_warmup_steps=0,
                        checkpoint_dir=str(tmp_path), **KW)
    assert r.target["met"] is False and r.target["validation_kl"] > r.target["target_kl"]
    assert json.loads((tmp_path / "evaluation.json").read_text())["target"]["met"] is False
    from mgnp_lens.report import build_report

    assert "not met (" in build_report(tmp_path).read_text()  # the report says so too


def test_target_sparsity_reaches_the_asked_density(setup):
    model, task, _ = setup
    r = mg.discover(model, task, steps=150, target_sparsity={"mlp_hidden": 0.5}, lambda_scale=0.01, **KW)
    assert abs(r.history["l0_mlp_hidden"].iloc[-10:].mean() - 0.5) < 0.1
    assert r.history["scale_mlp_hidden"].iloc[-1] > 10  # pushed up from a penalty too weak to prune
    # the returned circuit (chosen on validation among the checks of the right size) has the asked size
    reached = 1 - r.circuit.counts()["mlp_hidden"] / r.circuit.dims.count("mlp_hidden")
    assert r.target["met"] and r.target["reached"]["mlp_hidden"] == pytest.approx(reached)
    assert abs(reached - 0.5) <= targets.SPARSITY_TOLERANCE
    assert "target_sparsity" in r.selection["rule"]
    checks = r.history.dropna(subset=["val_kl"])
    assert r.selection["validation_kl"] == pytest.approx(checks.set_index("step").loc[r.selection["step"], "val_kl"])


def test_an_unmet_size_target_is_reported(setup, tmp_path):
    model, task, _ = setup
    with pytest.warns(UserWarning, match=r"target_sparsity was not met: .*mlp_hidden 0\.0\d+ \(asked 0\.9\)"):
        r = mg.discover(model, task, steps=4, target_sparsity={"mlp_hidden": 0.9}, checkpoint_dir=str(tmp_path), **KW)
    assert r.target["met"] is False and r.target["reached"]["mlp_hidden"] < 0.1
    from mgnp_lens.report import build_report

    assert "target sparsity</" in build_report(tmp_path).read_text()


def test_a_target_run_resumes_exactly(setup, tmp_path):
    model, task, empty_kl = setup
    # no schedule tied to steps; select="last": the 12-step run's last check is one more to choose from
    kw = dict(target_kl=0.2 * empty_kl, noise_warmup_steps=0, select="last", **KW)
    full = mg.discover(model, task, steps=30, **kw)
    first = mg.discover(model, task, steps=30, checkpoint_dir=str(tmp_path), checkpoint_every=10, **kw)
    part = mg.discover(model, task, steps=12, **kw)
    same_run(mg.discover(model, task, steps=30, resume_from=part, **kw), full)
    assert math.isclose(first.history["scale_attn_head"].iloc[-1], full.history["scale_attn_head"].iloc[-1])


@pytest.mark.parametrize("kw, match", [
    (dict(target_kl=0.0), "target_kl must be a finite number > 0"),
    (dict(target_kl=float("nan")), "target_kl must be a finite number > 0"),
    (dict(target_kl=-1.0), "target_kl must be a finite number > 0"),
    (dict(target_sparsity={"attn_head": 1.0}), r"target_sparsity\['attn_head'\] must be a finite number in \[0, 1\)"),
    (dict(target_sparsity={"heads": 0.5}), "heads"),
    (dict(target_kl=0.1, target_sparsity={"attn_head": 0.5}), "cannot both be set"),
    (dict(target_rate=0), "target_rate"),
])
def test_bad_targets_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        mg.PruningConfig(**kw)


def test_target_kl_needs_enough_validation_pairs():
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=12)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    with pytest.raises(ValueError, match="at least 16 validation pairs.*has 2 "):
        mg.discover(model, task, steps=2, target_kl=0.1, progress=False)


# ------------------------------------------------------------------------ stopping when converged
def _rows(keys):
    return [{"step": i + 1, "hard_key": k} for i, k in enumerate(keys)]


def test_a_circuit_counts_as_stable_only_after_the_warm_ups_and_for_a_fifth_of_the_steps():
    config = mg.PruningConfig(steps=100, lr_warmup_steps=10, noise_warmup_steps=30)  # 20 steps needed
    assert targets.stable_needed(config) == 20
    assert not targets.stable_after_warmup(config, _rows([7] * 49))  # steps 31..49: 19 after the warm-ups
    assert targets.stable_after_warmup(config, _rows([7] * 50))  # steps 31..50: 20
    assert not targets.stable_after_warmup(config, _rows([7] * 40 + [8] * 19))  # the change at step 41
    assert targets.stable_after_warmup(config, _rows([7] * 40 + [8] * 20))
    late_penalty = mg.PruningConfig(steps=100, lr_warmup_steps=10, noise_warmup_steps=30, penalty_start=45)
    assert not targets.stable_after_warmup(late_penalty, _rows([7] * 60))
    assert targets.stable_after_warmup(late_penalty, _rows([7] * 65))


def test_a_run_stops_when_its_circuit_has_converged_and_says_so(setup, tmp_path, capsys):
    from mgnp_lens.cli import _print_result

    model, task, _ = setup
    kw = dict(KW, steps=200, seed=0, lambda_scale=50.0)  # would prune all: the small-model regime, whose λ is fixed
    with pytest.warns(UserWarning, match="small-model regime"):
        r = mg.discover(model, task, **kw)
    conv = r.meta["convergence"]
    assert r.steps_completed < 200 and conv["stopped_at_step"] == r.steps_completed
    assert conv["converged"] and conv["final_state"] and conv["stable_steps"] >= conv["stable_needed"] == 40
    page = mg.write_report(r, tmp_path / "run").read_text()
    assert f"training stopped there, at step {r.steps_completed}" in page
    _print_result(r)
    assert re.search(r"converged: yes \(.*; training stopped there\)", capsys.readouterr().out)
    assert conv["trained_loss_fraction"] >= 0 and "pruned_back" in r.meta["confirmation"]
    conv["repairs"] = ["head 1.0", "pruned back"]  # how a pruned-back run reads (shuffle_dyck's: test_tracr.py)
    page = mg.write_report(r, tmp_path / "pruned").read_text()
    assert "Repaired after training: head 1.0, pruned back (pruned back: the trained gates&#x27; circuit" in page
    _print_result(r)
    assert "repaired after training: head 1.0, pruned back (pruned back: the trained gates' circuit missed the " \
           "target" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="small-model regime"):
        full = mg.discover(model, task, **kw, stop_when_converged=False)
    assert full.steps_completed == 200 and "stopped_at_step" not in full.meta["convergence"]
    assert full.history["hard_key"].iloc[r.steps_completed - 1] == r.history["hard_key"].iloc[-1]  # same training


def test_what_still_changes_is_counted_per_granularity_over_the_stability_window():
    rows = [{"step": i + 1, "hard_key": i % 2, "changed_attn_head": int(i == 5), "kept_attn_head": 3,
             "changed_mlp_hidden": int(i % 2 == 0), "kept_mlp_hidden": 100} for i in range(30)]
    moving = targets.still_moving(rows, 20)
    assert moving == {"attn_head": {"kept": 3, "changed": 0, "stable_steps": 24},
                      "mlp_hidden": {"kept": 100, "changed": 10, "stable_steps": 1}}
    text = targets.moving_text({"granularities": moving, "stable_needed": 20})
    assert text == "still changing over the last 20 steps: mlp_hidden (10 changes; 100 kept); unchanged: attn_head"
    assert targets.moving_text({"granularities": {"attn_head": moving["attn_head"]}, "stable_needed": 20}) == ""
    assert targets.still_moving([{"step": 1, "hard_key": 0}], 20) == {}  # a history from before the columns


def test_a_run_that_has_not_converged_says_which_granularities_still_change(setup, tmp_path, capsys):
    from mgnp_lens.cli import _print_result

    model, task, _ = setup
    with pytest.warns(UserWarning, match=r"did not converge.*; still changing over the last 20 steps: .*; train longer"):
        r = mg.discover(model, task, **dict(KW, steps=30, seed=0, validate_every=None, confirm=False))
    h, conv = r.history, r.meta["convergence"]
    assert not conv["converged"]
    for g in r.circuit.dims.granularities:
        kept, changed = h[f"kept_{g}"], h[f"changed_{g}"]
        assert int(kept.iloc[-1]) == r.circuit.count(g)  # the returned circuit is the last step's hard circuit
        assert (changed.iloc[1:].to_numpy() >= kept.diff().abs().iloc[1:].to_numpy()).all()
        assert conv["granularities"][g]["changed"] == int(changed.tail(conv["stable_needed"]).sum())
    moving = [g for g, m in conv["granularities"].items() if m["changed"]]
    assert moving and conv["stable_steps"] < conv["stable_needed"]
    _print_result(r)
    assert f"still changing over the last {conv['stable_needed']} steps: {moving[0]} (" in capsys.readouterr().out
    page = mg.write_report(r, tmp_path / "run").read_text()
    assert f"Still changing over the last {conv['stable_needed']} steps" in page
