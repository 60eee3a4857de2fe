"""Tasks that say what they measure: several answer positions per prompt, and a chosen training loss."""

from __future__ import annotations

import pytest
import torch
from helpers import micro_model, random_pairs

import mgnp_lens as mg
from mgnp_lens.losses import LOSSES, FullModelTarget, logit_diff, prob_diff
from mgnp_lens.tasks import PromptPairTask
from mgnp_lens.tasks.pairs import PairSet

POSITIONS = [2, 4, 6]
KW = dict(batch_size=16, progress=False, autocast="float32", lr_warmup_steps=0)


@pytest.fixture(scope="module")
def model():
    return micro_model("gpt2")


def _multi_task(model, n=48, loss="kl", metric=None):
    """Every prompt answered at three positions, each with its own correct/incorrect token."""
    clean, corrupted = random_pairs(model, n=n, pos=7)
    correct = clean[:, [p + 1 for p in POSITIONS[:-1]] + [0]]
    incorrect = corrupted[:, [p + 1 for p in POSITIONS[:-1]] + [0]]
    pos = torch.tensor(POSITIONS).expand(n, -1)
    return PromptPairTask.from_tokens(clean, corrupted, correct, incorrect, answer_pos=pos, loss=loss, metric=metric,
                                      split_fractions={"train": 0.5, "validation": 0.25, "test": 0.25})


def test_several_answer_positions_score_like_plain_forward_passes(model):
    task = _multi_task(model)
    batch = next(task.split("test").batches(64))
    assert batch.answer_pos.shape == batch.correct.shape == (len(batch), 3)
    with torch.no_grad():
        full = model(batch.clean)  # [B, pos, d_vocab], no hooks
        corrupted = model(batch.corrupted)
    rows = torch.arange(len(batch))[:, None]
    at = lambda logits: logits[rows, batch.answer_pos]  # noqa: E731
    ld = lambda logits: (logits.gather(-1, batch.correct[..., None]) - logits.gather(-1, batch.incorrect[..., None]))  # noqa: E731
    empty = mg.evaluate(model, task, mg.Circuit.empty(model))
    full_ev = mg.evaluate(model, task, mg.Circuit.full(model))
    assert full_ev.kl == pytest.approx(0, abs=1e-5)
    assert full_ev.base_metric == pytest.approx(float(ld(at(full)).mean()), abs=1e-4)
    assert empty.circuit_metric == pytest.approx(float(ld(at(corrupted)).mean()), abs=1e-4)
    # the KL is the mean over positions of each position's KL
    logp, logq = (torch.log_softmax(at(x), -1) for x in (full, corrupted))
    per_position = (logp.exp() * (logp - logq)).sum(-1)  # [B, 3]
    assert empty.kl == pytest.approx(float(per_position.mean()), rel=1e-4)


def test_each_loss_is_zero_for_the_full_model_and_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    full, circ = torch.randn(5, 3, 11, generator=g), torch.randn(5, 3, 11, generator=g)
    batch = PairSet.from_examples([[1, 2, 3, 4]] * 5, [[1, 2, 3, 4]] * 5, [[1, 2, 3]] * 5, [[4, 5, 6]] * 5,
                                  [[0, 1, 2]] * 5).buckets[0]
    expected = {"kl": (torch.softmax(full, -1) * (torch.log_softmax(full, -1) - torch.log_softmax(circ, -1))).sum(-1).mean(-1),
                "logit_diff": (logit_diff(circ, batch) - logit_diff(full, batch)).abs(),
                "prob_diff": (prob_diff(circ, batch) - prob_diff(full, batch)).abs(),
                "mse": (circ - full).pow(2).mean((1, 2))}
    assert set(expected) == set(LOSSES)
    for loss, want in expected.items():
        target = FullModelTarget.from_logits(full, loss)
        assert torch.allclose(target.loss_of(circ, batch), want, atol=1e-5), loss
        assert torch.allclose(target.loss_of(full, batch), torch.zeros(5), atol=1e-5), loss
    probs = torch.softmax(full, -1)
    assert torch.allclose(prob_diff(full, batch), (probs[:, :, 1:4].diagonal(dim1=1, dim2=2) -
                                                   probs[:, :, 4:7].diagonal(dim1=1, dim2=2)).mean(-1), atol=1e-6)


@pytest.mark.parametrize("loss", LOSSES)
def test_discovery_trains_on_the_chosen_loss_and_records_it(model, loss):
    task = _multi_task(model, loss=loss, metric="prob_diff" if loss == "prob_diff" else None)
    r = mg.discover(model, task, steps=6, validate_every=3, **KW)
    assert r.circuit.task["loss"] == loss if loss != "kl" else "loss" not in r.circuit.task
    ev = r.evaluation
    assert ev.loss_name == loss and (ev.loss is None) == (loss == "kl")
    if loss == "prob_diff":
        assert ev.metric_name == "prob diff"
    # the history's training and validation losses are that loss, measured as evaluate() measures it
    again = mg.evaluate(model, task, r.circuit, "test")
    assert again.objective == pytest.approx(ev.objective, rel=1e-5)
    empty = mg.evaluate(model, task, mg.Circuit.empty(model), "validation")
    assert 0 <= r.history["val_kl"].dropna().iloc[0] <= empty.objective + 1e-6
    assert empty.objective > 0


def test_target_kl_steers_on_the_chosen_loss(model):
    task = _multi_task(model, n=96, loss="logit_diff")
    empty = mg.evaluate(model, task, mg.Circuit.empty(model), "validation").objective
    r = mg.discover(model, task, steps=60, target_kl=0.3 * empty, validate_every=10, **KW)
    assert r.target["met"] and r.target["validation_kl"] <= 0.3 * empty


@pytest.mark.parametrize("kw, match", [
    (dict(answer_pos=[[1, 2]], correct=[[1]], incorrect=[[2, 3]]), r"row 0: 2 answer positions but 1 correct"),
    (dict(answer_pos=[[1, 9]], correct=[[1, 2]], incorrect=[[2, 3]]), r"row 0: answer position 9 is outside a 4-token"),
    (dict(answer_pos=[[1, 2]], correct=[1], incorrect=[2]), r"row 0: 2 answer position\(s\) need lists of token ids"),
])
def test_answers_that_do_not_match_their_positions_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        PairSet.from_examples([[1, 2, 3, 4]], [[1, 2, 3, 5]], kw["correct"], kw["incorrect"], kw["answer_pos"])


def test_prompts_of_one_length_need_equally_many_answers():
    with pytest.raises(ValueError, match="the 4-token prompts have different numbers of answer positions"):
        PairSet.from_examples([[1, 2, 3, 4]] * 2, [[1, 2, 3, 5]] * 2, [[1, 2], 3], [[2, 3], 4], [[1, 2], 3])


def test_unknown_loss_or_metric_is_named(model):
    with pytest.raises(ValueError, match="unknown loss 'l1'; expected one of kl, logit_diff, prob_diff, mse"):
        _multi_task(model, loss="l1")
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        _multi_task(model, metric="acc")
