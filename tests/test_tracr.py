"""tracr's compiled transformers: exact conversion, the gate invariants, and discovery recovering the circuits
known by construction."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens import reference
from mgnp_lens.reference import TRACR_TRUTH
from mgnp_lens.tasks import tracr

pytestmark = pytest.mark.slow  # the edit loop skips it: pytest -m "not slow"


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
    """No λ, no target: the paper's λ cannot keep one head of these toys, so the run scales λ until keeping every node
    costs 10% of the loss at stake (the small-model regime), says so, converges, and its final state is exactly the
    known node set, as faithful as the full model."""
    c, task = compiled
    with pytest.warns(UserWarning, match=r"keeping one head costs .* using the small-model regime"):
        r = mg.discover(c.model, task, eval_heldout=False, progress=False)
    from mgnp_lens.discovery import AUTO_TARGET_PAIRS
    from mgnp_lens.granularity import PAPER_LAMBDAS

    n = min(len(task.split("validation")), AUTO_TARGET_PAIRS)
    at_stake = mg.evaluate(c.model, task, mg.Circuit.empty(c.model), "validation", max_examples=n).objective
    everything = sum(PAPER_LAMBDAS[g] for g in r.circuit.dims.granularities)
    assert r.meta["auto_target"]["loss_at_stake"] == pytest.approx(at_stake)
    assert everything * r.config.lambda_scale == pytest.approx(0.1 * at_stake) and r.target is None
    truth = TRACR_TRUTH[f"tracr-{c.name}"]
    assert set(r.circuit.active_heads()) == truth.heads and set(r.circuit.active_mlps()) == truth.mlps
    assert r.evaluation.objective < 1e-6  # on the test pairs, exactly the full model
    conv = r.meta["convergence"]
    assert conv["converged"] and conv["final_state"] and conv["returned_step"] == r.steps_completed
    assert mg.Circuit(r.circuit.dims, r.gates.binarize()) == r.circuit  # the returned circuit is the gates' state
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
    with pytest.warns(UserWarning, match=r"the circuit is empty: at these λ keeping one head costs 2\.35 .*target_kl"):
        r = mg.discover(c.model, task, steps=60, auto_target_fraction=None, lambdas=mg.PAPER_LAMBDAS,
                        eval_heldout=False, progress=False)
    assert not r.circuit.active_heads() and not r.circuit.active_mlps()


# ------------------------------------------------------------------------ any RASP program, its derived truth
def test_the_library_is_what_the_cli_offers():
    from mgnp_lens import names

    assert tuple(tracr.LIBRARY) == names.TRACR_PROGRAMS
    assert {f"tracr-{n}" for n in tracr.LIBRARY} <= set(reference.reference_names())


def test_the_truth_is_derived_from_the_compiled_weights_by_plain_ablation():
    rev = tracr.load("reverse")
    corrupted, zero = rev.truth("corrupted"), rev.truth("zero")
    assert corrupted.heads == {(3, 0)} and corrupted.mlps == set()  # auto-circuit's official tracr-reverse nodes
    # zero-ablated, the length computation (MLPs 0-2) is no longer identical between the two runs
    assert zero.heads == {(3, 0)} and zero.mlps == {0, 1, 2}
    for truth in (corrupted, zero):
        assert truth.complement_effect <= tracr.TRUTH_TOLERANCE  # sufficient together
        kept = {f"L{l}H{h}" for l, h in truth.heads} | {f"MLP{m}" for m in truth.mlps}
        assert all((v > tracr.TRUTH_TOLERANCE) == (k in kept) for k, v in truth.effects.items())  # each one needed
    xprop = TRACR_TRUTH["tracr-xproportion"]  # the lazily derived reference
    assert xprop.heads == {(1, 0)} and xprop.mlps == {0}
    with pytest.raises(ValueError, match="derived for the ablations corrupted, zero; got 'mean'"):
        rev.truth("mean")


def test_from_program_takes_any_rasp_program_categorical_or_numerical():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    plus_one = rasp.categorical(rasp.Map(lambda x: (x + 1) % 4, rasp.tokens)).named("plus_one")
    p = tracr.from_program(plus_one, vocab={0, 1, 2, 3}, max_seq_len=3)
    assert p.task.loss == "kl" and len(p.inputs) == 4 ** 3 and p.model.cfg.d_vocab_out == 4
    assert tracr.check_conversion(p.compiled, p.inputs) < tracr.EXACT_TOLERANCE
    assert p.truth().heads == set() and p.truth().mlps == {0}  # a Map is one MLP
    frac = tracr.from_program(lib.make_frac_prevs(rasp.tokens == "b"), vocab={"a", "b"}, max_seq_len=4, name="fb")
    assert frac.compiled.numerical and frac.task.loss == "mse" and frac.task.name == "tracr-fb"
    assert frac.truth("zero").heads == {(1, 0)} and frac.truth("zero").mlps == {0}


def test_bad_programs_and_pairs_are_refused_with_the_way_out():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    numeric = rasp.numerical(rasp.Map(lambda x: x, rasp.tokens))
    bad = rasp.Aggregate(rasp.Select(numeric, rasp.tokens, rasp.Comparison.EQ), rasp.tokens)
    with pytest.raises(ValueError, match="tracr cannot compile the RASP program .*Select keys must be categorical"):
        tracr.from_program(bad, vocab={1, 2, 3}, max_seq_len=4)
    with pytest.raises(ValueError, match="gives the same outputs on clean and corrupted inputs .* nothing to find; use "
                                         "a larger vocabulary or length"):
        tracr.from_program(lib.make_length(), vocab={1, 2}, max_seq_len=3)  # every input has length 3
    with pytest.raises(ValueError, match="outputs a number, which has no distribution to take a KL of; use loss='mse'"):
        tracr.from_program(lib.make_frac_prevs(rasp.tokens == "b"), vocab={"a", "b"}, max_seq_len=4, loss="kl")
    with pytest.raises(ValueError, match="needs at least two input sequences of one length"):
        tracr.from_program(lib.make_hist(), vocab={1, 2}, max_seq_len=3, inputs=[[1, 2, 1]])
    with pytest.raises(ValueError, match="unknown tracr program 'sorted'; expected one of reverse, xproportion"):
        tracr.load("sorted")


def test_roc_refuses_a_reference_whose_every_node_is_in_the_truth():
    hist = TRACR_TRUTH["tracr-hist"]  # one layer: its only head and its only MLP are both needed
    assert hist.heads == {(0, 0)} and hist.mlps == {0}
    circuit = mg.Circuit.full(tracr.compile_program("hist").model)
    with pytest.raises(ValueError, match=r"every node of 'tracr-hist' is in its truth \(2 of 2\).*no false positive"):
        reference.roc([circuit], hist)


def test_one_runs_scores_draw_a_full_roc_curve_with_auc_one():
    """reverse under the zero ablation: {L3H0, MLP 0-2} of 4 heads and 4 MLPs, recovered, and ranked above every
    other node by the scores of the same state as the returned circuit."""
    p = tracr.load("reverse")
    ref = reference.tracr_reference(p, "zero")
    r = mg.discover(p.model, p.task, ablation="zero", eval_heldout=False, progress=False)
    assert set(r.circuit.active_heads()) == ref.heads and set(r.circuit.active_mlps()) == ref.mlps
    scores = r.scores()
    assert len(scores) == r.circuit.dims.total_gates() and scores["score"].between(0, 1).all()
    for g in r.circuit.dims.granularities:  # the kept column is the returned circuit
        rows = scores[scores["granularity"] == g]
        assert rows["kept"].to_numpy().tolist() == r.circuit.masks[g].flatten().tolist()
    heads = scores[scores["granularity"] == "attn_head"]
    assert heads[["layer", "head"]].astype(int).values.tolist() == [[l, 0] for l in range(4)]
    curve = reference.roc(scores, ref, mlps=True)
    assert curve.auc == pytest.approx(1.0) and len(curve.points) > 3  # a curve, not one point
    assert r.meta["convergence"]["returned_step"] <= r.steps_completed


def test_a_short_run_says_it_did_not_converge():
    p = tracr.load("shift_by")
    with pytest.warns(UserWarning, match=r"did not converge: its hard circuit was stable for the last \d+ of 5 steps "
                                         r"\(20 needed\)"):
        r = mg.discover(p.model, p.task, steps=5, eval_heldout=False, progress=False, auto_target_fraction=None)
    conv = r.meta["convergence"]
    assert conv["converged"] is False and conv["final_state"] and conv["returned_step"] == 5
    assert "hard_key" in r.history and r.history["hard_key"].notna().all()


# ------------------------------------------------------------------------ the suite, default settings
#: Found by the confirmation's pruning back, not by the gates (its heads are needed only together).
PRUNED_BACK = {"shuffle_dyck"}
SUITE = [(name, ablation, seed) for name in tracr.LIBRARY for ablation in tracr.TRUTH_ABLATIONS for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def library():
    return {}


def _suite_run(library, name, ablation, seed):
    """One default-settings run; the result carries the warnings it gave (``.warned``, their messages)."""
    p = library.setdefault(name, tracr.load(name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = mg.discover(p.model, p.task, seed=seed, ablation=ablation, eval_heldout=False, progress=False)
    r.warned = [str(w.message) for w in caught]
    return p, r


@pytest.mark.parametrize("name, ablation, seed", SUITE)
def test_default_settings_recover_the_library_programs_exactly(library, name, ablation, seed):
    p, r = _suite_run(library, name, ablation, seed)
    truth = p.truth(ablation)
    assert set(r.circuit.active_heads()) == truth.heads and set(r.circuit.active_mlps()) == truth.mlps
    conv = r.meta["convergence"]
    assert conv["final_state"] and conv["returned_step"] == r.steps_completed
    assert r.steps_completed == 240 or conv["stopped_at_step"] == r.steps_completed  # stopped where it converged
    assert mg.Circuit(r.circuit.dims, r.gates.binarize()) == r.circuit  # the returned circuit is the final state
    assert r.evaluation.objective <= 1e-6  # on the test pairs: the compiled program's output, exactly
    assert conv["converged"]  # the hard circuit stable for the last 20% of the steps (the learning rate decays)
    pruned_back = r.meta["confirmation"]["pruned_back"]
    assert name in PRUNED_BACK or not pruned_back  # the gates' own circuit everywhere else
    says = any("the circuit returned is that discrete search's, not the gates'" in w for w in r.warned)
    assert says == pruned_back == ("pruned back" in conv["repairs"])  # a pruned-back run says so
    assert not pruned_back or conv["trained_loss_fraction"] > 0.1  # only where the gates' circuit missed the target




def test_the_confirmation_restores_what_the_circuit_cannot_do_without_and_nothing_else():
    """reverse, corrupted ablation: truth {L3H0}. With L3H0 removed, and with its attention neurons cut, one repair each
    brings the circuit back to the truth; the truth itself needs none; the gates are opened to match."""
    from mgnp_lens.ablation import Replacement
    from mgnp_lens.confirm import candidates, confirm, open_gates
    from mgnp_lens.gates import HardConcreteGates

    p = tracr.load("reverse")
    dims = mg.Circuit.empty(p.model).dims
    truth = mg.Circuit.empty(dims)
    for g in ("embedding", "attn_neuron", "mlp_hidden", "mlp_output"):
        truth.masks[g][:] = True
    truth.masks["attn_block"][3] = truth.masks["attn_head"][3, 0] = True
    truth = mg.Circuit(dims, truth.masks)
    rep = Replacement("corrupted")
    fixed, record = confirm(p.model, p.task, truth, rep, None, 32)
    assert fixed == truth and record.repairs == [] and record.loss_before == 0
    no_head = mg.Circuit(dims, {**truth.masks, "attn_head": torch.zeros_like(truth.masks["attn_head"])})
    assert len(candidates(no_head)) == dims.n_layers * (dims.n_heads + 1)  # every head and MLP can be added
    fixed, record = confirm(p.model, p.task, no_head, rep, None, 32)
    assert record.repairs == ["head 3.0"] and record.loss_after == 0 < record.loss_before
    assert set(fixed.active_heads()) == {(3, 0)} and record.loss_at_stake > 0
    cut = {g: v.clone() for g, v in truth.masks.items()}
    cut["attn_neuron"][3, 0, : dims.d_head // 2] = False
    fixed, record = confirm(p.model, p.task, mg.Circuit(dims, cut), rep, None, 32)
    cost = mg.evaluate(p.model, p.task, mg.Circuit(dims, cut), "validation", ablation="corrupted").objective
    assert cost > 0.01 * record.loss_at_stake  # half of L3H0's dimensions matter, and one repair restores them
    assert record.repairs == ["neurons of head 3.0"] and fixed == truth
    gates = HardConcreteGates(dims, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for la in gates.log_alpha.values():
            la.fill_(-5.0)
    open_gates(gates, truth)
    assert mg.Circuit(dims, gates.binarize()) == truth


def test_pruning_back_recovers_heads_that_are_needed_only_together():
    """shuffle_dyck, corrupted ablation: with its six truth heads all removed, adding any one back changes nothing, so
    single repairs stall at the whole loss at stake; with a target, pruning back from every node finds the truth (and
    the record says the circuit is the search's); without one, the circuit stays as it was."""
    from mgnp_lens.ablation import Replacement
    from mgnp_lens.confirm import confirm, nodes, open_gates
    from mgnp_lens.gates import HardConcreteGates

    p = tracr.load("shuffle_dyck")
    truth, dims = p.truth("corrupted"), mg.Circuit.empty(p.model).dims
    masks = mg.Circuit.full(dims).masks
    masks["attn_head"][:] = False
    headless, rep = mg.Circuit(dims, masks), Replacement("corrupted")
    kept, record = confirm(p.model, p.task, headless, rep, None, 32)
    assert kept == headless and record.repairs == [] and not record.pruned_back
    assert record.loss_before == pytest.approx(record.loss_at_stake, rel=0.05)  # the heads are all of it
    fixed, record = confirm(p.model, p.task, headless, rep, None, 32, target=0.1, order=nodes(dims))
    assert record.pruned_back and record.repairs == ["pruned back"] and record.loss_after == 0
    assert set(fixed.active_heads()) == truth.heads and set(fixed.active_mlps()) == truth.mlps
    gates = HardConcreteGates(dims, generator=torch.Generator().manual_seed(0))  # every gate open
    open_gates(gates, fixed)  # pruning back closes gates too
    assert mg.Circuit(dims, gates.binarize()) == fixed

