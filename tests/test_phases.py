"""Every phase of a run is timed and shows what it is doing; evaluations carry standard errors."""

from __future__ import annotations

import json
import time

import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.cli import main
from mgnp_lens.evaluate import Evaluation, evaluate
from mgnp_lens.phases import Phases
from mgnp_lens.tasks import PromptPairTask

from helpers import micro_model, random_pairs

CLI_PHASES = ["load model", "build task", "precompute", "training", "evaluate train", "evaluate test",
              "edges", "views", "report"]


def test_phases_add_up_the_seconds_of_each_name_and_draw_only_when_asked(capsys):
    phases = Phases(progress=False)
    with phases("a"):
        time.sleep(0.02)
    with phases("a"), phases("b", total=3, unit="pairs") as bar:
        bar.update(3)
        time.sleep(0.02)
    assert list(phases.seconds) == ["a", "b"] and phases.seconds["a"] >= 0.04 and phases.seconds["b"] >= 0.02
    assert capsys.readouterr().err == ""
    shown = Phases(progress=True)
    with shown("evaluate test", total=2, unit="pairs") as bar:
        bar.update(2)
    with shown("training", show=False):  # a phase that draws its own bar
        pass
    err = capsys.readouterr().err
    assert "evaluate test" in err and "training" not in err and set(shown.seconds) == {"evaluate test", "training"}


def _run(path, out, *extra):
    return main(["discover", "--task", "ioi", "--model", str(path), "--steps", "3", "--batch-size", "4", "--n-test",
                 "8", "--autocast", "float32", "--edge-examples", "4", "--out", str(out), *extra])


def test_a_cli_run_times_every_phase_shows_them_and_the_report_lists_them(tiny_gpt2_checkpoint, tmp_path, capsys):
    path, _, _ = tiny_gpt2_checkpoint
    assert _run(path, tmp_path / "run") == 0
    captured = capsys.readouterr()
    for name in ("load model", "precompute", "evaluate test", "evaluate test_ood", "edges", "views", "report"):
        assert name in captured.err, name  # each phase says what it is doing while it runs
    assert "time: " in captured.out and "evaluate test_ood" in captured.out
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    phases = timings["phases"]
    assert [p for p in CLI_PHASES if p in phases] == CLI_PHASES  # all of them, in the order they ran
    assert {"evaluate test_templates", "evaluate test_corruption", "evaluate test_ood"} <= set(phases)
    assert all(v >= 0 for v in phases.values()) and timings["total"] == pytest.approx(sum(phases.values()))
    own = json.loads((tmp_path / "run" / "evaluation.json").read_text())["timings"]
    assert "training" in own and "load model" not in own  # the run's own phases, also saved from Python
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Where the time went" in page and "evaluate test_ood" in page and "kl_se" in page


def test_quiet_silences_every_phase_and_the_loaders(tiny_gpt2_checkpoint, tmp_path, capsys):
    path, _, _ = tiny_gpt2_checkpoint
    assert _run(path, tmp_path / "run", "--quiet") == 0
    captured = capsys.readouterr()
    assert "evaluate test" not in captured.err and "load model" not in captured.err and "it/s" not in captured.err
    assert "Moving model to device" not in captured.out
    assert (tmp_path / "run" / "timings.json").exists()


def test_evaluations_carry_the_standard_errors_of_their_means():
    """The KL and metric standard errors equal std/√n of the per-pair values computed here from plain runs; the
    empty circuit's metric (taken from the corrupted half of the circuit's pass) is the corrupted run's."""
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=6)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0], split_fractions={"train": 1.0})
    ev = evaluate(model, task, mg.Circuit.empty(model), "train")  # the empty circuit: the corrupted run
    batch = task.split("train").buckets[0]  # the pairs in the split's order
    with torch.no_grad():
        base, corr = model(batch.clean)[:, -1].log_softmax(-1), model(batch.corrupted)[:, -1].log_softmax(-1)
        metric = task.metric(model(batch.corrupted)[:, -1], batch).double()
    kl = (base.exp() * (base - corr)).sum(-1).double()
    assert ev.n_examples == 6 and ev.kl == pytest.approx(float(kl.mean()), rel=1e-4)
    assert ev.kl_se == pytest.approx(float(kl.std() / 6 ** 0.5), rel=1e-3) and ev.kl_se > 0
    assert ev.circuit_metric_se == pytest.approx(float(metric.std() / 6 ** 0.5), rel=1e-3, abs=1e-6)
    assert ev.empty_metric == pytest.approx(ev.circuit_metric, abs=1e-5)
    full = evaluate(model, task, mg.Circuit.full(model), "train")
    assert full.kl == pytest.approx(0.0, abs=1e-6) and full.empty_metric == pytest.approx(ev.empty_metric, abs=1e-5)
    assert Evaluation.from_dict({k: v for k, v in ev.to_dict().items() if "_se" not in k}).kl_se is None


def test_interleaved_batches_spread_every_prefix_over_the_buckets():
    from mgnp_lens.tasks.pairs import PairSet

    model = micro_model("gpt2")
    long = PromptPairTask.from_tokens(*random_pairs(model, n=96, pos=7), torch.zeros(96, dtype=torch.long),
                                      torch.ones(96, dtype=torch.long), split_fractions={"train": 1.0})
    short = PromptPairTask.from_tokens(*random_pairs(model, n=32, pos=5, seed=1), torch.zeros(32, dtype=torch.long),
                                       torch.ones(32, dtype=torch.long), split_fractions={"train": 1.0})
    pairs = PairSet([*long.split("train").buckets, *short.split("train").buckets])
    plain = [b.clean.shape[1] for b in pairs.batches(32)]
    mixed = [b.clean.shape[1] for b in pairs.batches(32, interleave=True)]
    assert plain == [7, 7, 7, 5] and mixed == [7, 7, 5, 7]  # the short bucket's turn comes in proportion
    assert sorted(mixed) == sorted(plain)


def test_an_evaluation_stops_once_its_kl_is_precise_enough_and_not_before_the_minimum():
    from mgnp_lens.evaluate import MIN_PAIRS_FOR_SE

    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=300)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0], split_fractions={"train": 1.0})
    full = evaluate(model, task, mg.Circuit.full(model), "train", kl_se=0.01)
    assert full.n_examples == MIN_PAIRS_FOR_SE and full.kl == pytest.approx(0.0, abs=1e-6)
    empty = evaluate(model, task, mg.Circuit.empty(model), "train", kl_se=1e-4)
    assert empty.n_examples == 300 and empty.kl_se > 1e-4  # never precise enough: every pair
    capped = evaluate(model, task, mg.Circuit.empty(model), "train", kl_se=1e-4, max_examples=200)
    everything = evaluate(model, task, mg.Circuit.empty(model), "train")
    assert capped.n_examples == 200 and everything.n_examples == 300
    assert empty.kl == pytest.approx(everything.kl, rel=1e-5)  # the same pairs, in another order
    loose = evaluate(model, task, mg.Circuit.empty(model), "train", kl_se=10.0)
    assert loose.n_examples == MIN_PAIRS_FOR_SE and abs(loose.kl - everything.kl) < 3 * loose.kl_se
