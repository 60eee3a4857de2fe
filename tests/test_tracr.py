"""tracr's compiled transformers: exact conversion, the gate invariants, and discovery recovering the circuits
known by construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens import reference
from mgnp_lens.reference import TRACR_TRUTH
from mgnp_lens.tasks import tracr


@pytest.fixture(scope="module", params=["reverse", "xproportion"])
def compiled(request):
    c = tracr.compile_program(request.param)
    return c, tracr.task(c)


def test_the_converted_model_computes_what_tracr_computes(compiled):
    c, task = compiled
    vocab = tracr.PROGRAMS[c.name][0]
    sequences = [list(s) for s in itertools.islice(itertools.product(vocab, repeat=tracr.SEQ_LEN), 0, None, 9)]
    assert tracr.check_conversion(c, sequences) < 1e-5
    if c.name == "reverse":  # and the program's answers are the argmax at every position
        batch = next(task.split("test").batches(1000))
        with torch.no_grad():
            logits = c.model(batch.clean)[torch.arange(len(batch))[:, None], batch.answer_pos]
        assert torch.equal(logits.argmax(-1), batch.correct)


def test_all_ones_is_the_clean_run_and_all_zeros_the_corrupted_run(compiled):
    c, task = compiled
    full = mg.evaluate(c.model, task, mg.Circuit.full(c.model))
    empty = mg.evaluate(c.model, task, mg.Circuit.empty(c.model))
    assert full.objective == 0.0 and full.circuit_metric == full.base_metric
    assert empty.objective > 0.05 and empty.circuit_metric == empty.empty_metric


def test_discovery_with_default_settings_recovers_the_known_circuit_exactly(compiled):
    """No λ, no target: the paper's λ cannot keep one head of these toys, so the run asks for 10% of the loss at
    stake instead, says so, and finds exactly the known node set."""
    c, task = compiled
    with pytest.warns(UserWarning, match=r"keeping one head costs .* asking for target_kl="):
        r = mg.discover(c.model, task, eval_heldout=False, progress=False)
    from mgnp_lens.discovery import AUTO_TARGET_PAIRS

    n = min(len(task.split("validation")), AUTO_TARGET_PAIRS)
    at_stake = mg.evaluate(c.model, task, mg.Circuit.empty(c.model), "validation", max_examples=n).objective
    assert r.meta["auto_target"]["target_kl"] == pytest.approx(0.1 * at_stake)
    assert r.target["target_kl"] == pytest.approx(0.1 * at_stake)
    truth = TRACR_TRUTH[f"tracr-{c.name}"]
    assert set(r.circuit.active_heads()) == truth.heads and set(r.circuit.active_mlps()) == truth.mlps
    assert r.target["met"] and r.evaluation.objective < 1e-6  # on the test pairs, exactly the full model
    scores = reference.compare(r.circuit, truth)
    assert (scores.loc[scores["class"] == "all", ["precision", "recall"]].to_numpy() == 1).all()


def test_roc_rules_and_mlps_against_a_reference_without_them():
    truth = TRACR_TRUTH["tracr-reverse"]  # {L3H0}, no MLPs
    dims = mg.Circuit.empty(tracr.compile_program("reverse").model).dims
    exact = mg.Circuit.empty(dims)
    exact.masks["attn_head"][3, 0] = 1
    with_mlp = mg.Circuit.empty(dims)
    with_mlp.masks["attn_head"][3, 0] = 1
    with_mlp.masks["mlp_block"][1] = 1
    # heads only: both circuits are exact
    assert reference.roc([with_mlp], truth).auc == pytest.approx(1.0)
    # heads + MLP layers: the kept MLP is one false positive of 4 + 3 negatives
    curve = reference.roc([with_mlp], truth, mlps=True)
    point = curve.points[curve.points["label"] == 0].iloc[0]
    assert point["tpr"] == 1 and point["fpr"] == pytest.approx(1 / 7)
    assert curve.auc == pytest.approx(1 - 0.5 / 7)  # trapezoid from (0, 0) to (1/7, 1)
    assert reference.roc([with_mlp], truth, mlps=True, rule="staircase").auc == pytest.approx(1 - 1 / 7)
    assert reference.roc([exact], truth, mlps=True, rule="staircase").auc == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown ROC rule 'simpson'"):
        reference.roc([exact], truth, rule="simpson")
    with pytest.raises(ValueError, match="is for tracr-reverse .4 layers × 1 heads."):
        reference.compare(mg.Circuit.empty(mg.Circuit.full(tracr.compile_program("xproportion").model).dims), truth)


def test_staircase_is_acdcs_pessimistic_area():
    """ACDC's rule on a sweep of two circuits: Σ (x_{i+1} − x_i) · y_i over the curve, a lower bound of the trapezoid."""
    truth = TRACR_TRUTH["tracr-xproportion"]  # {L1H0, MLP0} of 2 heads + 2 MLPs
    dims = mg.Circuit.empty(tracr.compile_program("xproportion").model).dims
    half = mg.Circuit.empty(dims)
    half.masks["attn_head"][1, 0] = 1  # tpr 1/2, fpr 0
    most = mg.Circuit.empty(dims)
    most.masks["attn_head"][:, 0] = 1
    most.masks["mlp_block"][0] = 1  # tpr 1, fpr 1/2
    xs, ys = np.array([0, 0, 0.5, 1]), np.array([0, 0.5, 1, 1])
    stair = reference.roc([half, most], truth, rule="staircase").auc
    trap = reference.roc([half, most], truth).auc
    assert stair == pytest.approx(float(np.sum(np.diff(xs) * ys[:-1]))) == pytest.approx(0.75)
    assert trap == pytest.approx(float(np.trapezoid(ys, xs))) and stair < trap


def test_the_paper_lambda_empties_a_tracr_circuit_and_says_what_to_do():
    c = tracr.compile_program("xproportion")
    task = tracr.task(c)
    with pytest.warns(UserWarning, match=r"the circuit is empty: at these λ keeping one head costs 1\.5 .*target_kl"):
        r = mg.discover(c.model, task, steps=60, auto_target_fraction=None, eval_heldout=False, progress=False)
    assert not r.circuit.active_heads() and not r.circuit.active_mlps()
