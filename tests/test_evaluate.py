"""Evaluation: the KL target and evaluations from precomputed outputs."""

from __future__ import annotations

import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.tasks import PairSet, PromptPairTask


def test_full_model_target_kl_equals_the_direct_formula():
    from mgnp_lens.evaluate import FullModelTarget, kl_full_circuit

    g = torch.Generator().manual_seed(0)
    base, circ = torch.randn(6, 50, generator=g) * 3, torch.randn(6, 50, generator=g) * 3
    def direct(b, c):  # torch's own KL, independent of the library's formula
        return torch.nn.functional.kl_div(torch.log_softmax(c, -1), torch.log_softmax(b, -1), log_target=True,
                                          reduction="none").sum(-1)

    target = FullModelTarget.from_logits(base)
    ref = direct(base, circ)
    assert torch.allclose(target.kl(circ), ref, atol=1e-5) and ref.min() > 0.1
    assert torch.allclose(kl_full_circuit(torch.log_softmax(base, -1), circ), ref, atol=1e-5)
    assert target.kl(base).abs().max() <= 1e-5  # the full model against itself
    rows = torch.tensor([4, 1])
    assert torch.allclose(target.rows(rows).kl(circ[rows]), ref[rows], atol=1e-5)
    assert torch.allclose(target.rows(rows).kl(circ[rows].bfloat16()),  # taken in float32
                          direct(base[rows], circ[rows].bfloat16().float()), atol=1e-5)


def test_training_evaluation_from_the_loop_cache_equals_a_fresh_evaluation(gpt2_micro):
    """Cache mode scores the training split from the loop's precomputed logits, corrupted activations and
    corrupted-run metric; it must agree with evaluate(), which recomputes them, over several buckets."""
    g = torch.Generator().manual_seed(3)
    lengths = [5] * 7 + [8] * 4
    clean = [torch.randint(0, gpt2_micro.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    corrupted = [torch.randint(0, gpt2_micro.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    pairs = PairSet.from_examples(clean, corrupted, [c[0] for c in clean], [c[0] for c in corrupted])
    task = PromptPairTask({"train": pairs})
    r = mg.discover(gpt2_micro, task, steps=6, batch_size=4, lr=0.5, lr_warmup_steps=0, progress=False,
                    eval_split=None, eval_batch_size=3, autocast="float32")
    assert len(pairs.buckets) == 2 and r.circuit != mg.Circuit.full(gpt2_micro)
    fresh = mg.evaluate(gpt2_micro, task, r.circuit, "train", batch_size=3)
    assert r.train_evaluation.n_examples == fresh.n_examples == 11
    assert r.train_evaluation.kl == pytest.approx(fresh.kl, rel=1e-4, abs=1e-6) and fresh.kl > 0
    assert r.train_evaluation.circuit_metric == pytest.approx(fresh.circuit_metric, rel=1e-4, abs=1e-5)
    assert r.train_evaluation.base_metric == pytest.approx(fresh.base_metric, rel=1e-4, abs=1e-5)
    # the empty circuit's metric comes from the corrupted pass of the precompute, not from a pass of its own
    assert r.train_evaluation.empty_metric == pytest.approx(fresh.empty_metric, rel=1e-4, abs=1e-5)


def test_a_capped_training_evaluation_takes_the_same_rows_from_the_loop_cache(gpt2_micro):
    """With ``eval_max_examples`` below the training split, the cached evaluation keeps each bucket's share; a
    bucket whose share rounds to nothing (here the middle one) drops out, and the precomputed outputs must be
    sliced the same way: the result equals a fresh evaluation of the same capped pairs."""
    g = torch.Generator().manual_seed(4)
    lengths = [5] * 7 + [6] + [8] * 4
    clean = [torch.randint(0, gpt2_micro.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    corrupted = [torch.randint(0, gpt2_micro.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    pairs = PairSet.from_examples(clean, corrupted, [c[0] for c in clean], [c[0] for c in corrupted])
    task = PromptPairTask({"train": pairs})
    assert pairs.head_counts(5) == [3, 0, 2]
    r = mg.discover(gpt2_micro, task, steps=6, batch_size=4, lr=0.5, lr_warmup_steps=0, progress=False,
                    eval_split=None, eval_batch_size=3, eval_max_examples=5, autocast="float32")
    fresh = mg.evaluate(gpt2_micro, task, r.circuit, "train", batch_size=3, max_examples=5)
    assert r.train_evaluation.n_examples == fresh.n_examples == 5 and fresh.kl > 0
    assert r.train_evaluation.kl == pytest.approx(fresh.kl, rel=1e-4, abs=1e-6)
    assert r.train_evaluation.empty_metric == pytest.approx(fresh.empty_metric, rel=1e-4, abs=1e-5)
    assert abs(fresh.empty_metric - fresh.base_metric) > 1e-3


def test_recovered_is_one_for_the_full_model_and_zero_for_the_empty_circuit(micro_task):
    """MIB's normalisation (m(C) - m(∅)) / (m(N) - m(∅)) from the empty circuit's metric, which is
    the corrupted run's: the full circuit recovers all of it, the empty circuit none."""
    model, task = micro_task
    full = mg.evaluate(model, task, mg.Circuit.full(model), "train")
    empty = mg.evaluate(model, task, mg.Circuit.empty(model), "train")
    assert full.empty_metric == pytest.approx(empty.circuit_metric, abs=1e-5)
    assert abs(full.base_metric - full.empty_metric) > 1e-3
    assert full.recovered == pytest.approx(1.0, abs=1e-5) and empty.recovered == pytest.approx(0.0, abs=1e-4)
    row = full.to_dict()
    assert row["recovered"] == full.recovered
    assert type(full).from_dict(row) == full  # evaluation.json entries round-trip
    flat = type(full)(split="x", n_examples=1, base_metric=1.0, circuit_metric=1.0, kl=0.0, empty_metric=1.0)
    assert flat.recovered is None  # no metric difference to recover


def test_discover_evaluates_the_held_out_splits_unless_told_not_to(gpt2_micro):
    from helpers import random_pairs

    def pairs(seed):
        clean, corrupted = random_pairs(gpt2_micro, n=6, seed=seed)
        return PairSet.from_examples(clean.tolist(), corrupted.tolist(), clean[:, 0].tolist(), corrupted[:, 0].tolist())

    task = PromptPairTask({"train": pairs(0), "validation": pairs(1), "test": pairs(2), "test_corruption": pairs(3),
                           "test_ood": pairs(4)})
    assert task.heldout_splits() == ["test_corruption", "test_ood"]
    kw = dict(steps=2, batch_size=4, progress=False, autocast="float32")
    r = mg.discover(gpt2_micro, task, **kw)
    assert list(r.heldout_evaluations) == ["test_corruption", "test_ood"]
    fresh = mg.evaluate(gpt2_micro, task, r.circuit, "test_ood")
    assert r.heldout_evaluations["test_ood"].kl == pytest.approx(fresh.kl, rel=1e-5)
    assert list(r.evaluations()["split"]) == ["train", "test", "test_corruption", "test_ood"]
    assert mg.discover(gpt2_micro, task, eval_heldout=False, **kw).heldout_evaluations == {}


def _two_bucket_pairs(model, n_short: int, n_long: int, seed: int) -> PairSet:
    g = torch.Generator().manual_seed(seed)
    lengths = [5] * n_short + [8] * n_long
    clean = [torch.randint(0, model.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    corrupted = [torch.randint(0, model.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    return PairSet.from_examples(clean, corrupted, [c[0] for c in clean], [c[0] for c in corrupted])


def test_the_corrupted_activations_are_cached_in_the_training_passes_precision(gpt2_micro):
    """Under autocast the corrupted passes run in bfloat16 (the precision the training passes mix them in); the
    clean answer logits, the KL targets, stay in the model's precision, bit for bit."""
    from mgnp_lens.granularity import ModelDims
    from mgnp_lens.hooks import corrupted_activations
    from mgnp_lens.precompute import precompute
    from mgnp_lens.speedups import TrainingSpeedups

    pairs, dims = _two_bucket_pairs(gpt2_micro, 5, 4, seed=6), ModelDims.from_model(gpt2_micro)
    metric = lambda logits, batch: logits[:, 0]  # noqa: E731
    plain = precompute(gpt2_micro, dims, pairs, 3, True, metric=metric)
    fast = TrainingSpeedups(gpt2_micro, mg.PruningConfig(autocast="bfloat16"), steps=10)
    low = precompute(gpt2_micro, dims, pairs, 3, True, metric=metric, corrupted_precision=fast.low_precision)
    assert all(torch.equal(a, b) for a, b in zip(plain.base, low.base))
    site = "blocks.1.attn.hook_z"
    assert plain.cache[0][site].dtype == torch.float32 and low.cache[0][site].dtype == torch.bfloat16
    first = corrupted_activations(gpt2_micro, dims, pairs.buckets[0].corrupted[:3])  # the first chunk
    assert torch.equal(plain.cache[0][site][:3], first[site])  # without a context: the model's precision, unchanged
    for a, b in zip(plain.cache, low.cache):
        for name in a:
            assert (a[name] - b[name].float()).norm() <= 0.02 * a[name].norm(), name
    assert next(gpt2_micro.parameters()).dtype == torch.float32 and gpt2_micro.blocks[0].attn.W_Q.dtype == torch.float32


def test_streamed_and_precomputed_training_pairs_agree_under_autocast(gpt2_micro):
    """Both ways of making a batch's corrupted activations (all at the start, or each batch when drawn) compute
    them in the training passes' precision: the same run either way."""
    task = PromptPairTask({"train": _two_bucket_pairs(gpt2_micro, 9, 7, seed=7)})
    kw = dict(steps=5, batch_size=4, lr=0.5, lr_warmup_steps=0, progress=False, eval_split=None, autocast="bfloat16",
              compile=False)
    streamed = mg.discover(gpt2_micro, task, precompute="per_batch", **kw)
    cached = mg.discover(gpt2_micro, task, precompute="all", **kw)
    assert streamed.meta["precompute"] == "per_batch" and cached.meta["precompute"] == "all"
    torch.testing.assert_close(torch.tensor(streamed.history.kl.values), torch.tensor(cached.history.kl.values),
                               rtol=1e-5, atol=1e-6)


def test_the_training_evaluation_stops_at_its_standard_error_target(gpt2_micro):
    """Like every other split, the training pairs' evaluation stops once its KL is known to ``eval_kl_se`` (after at
    least MIN_PAIRS_FOR_SE pairs, the buckets taking turns); without the target it scores them all."""
    from mgnp_lens.evaluate import MIN_PAIRS_FOR_SE

    task = PromptPairTask({"train": _two_bucket_pairs(gpt2_micro, 100, 60, seed=8)})
    kw = dict(steps=2, batch_size=4, lr=0.5, lr_warmup_steps=0, progress=False, eval_split=None, autocast="float32",
              precompute="all", eval_batch_size=16)
    loose = mg.discover(gpt2_micro, task, eval_kl_se=10.0, **kw)
    every = mg.discover(gpt2_micro, task, eval_kl_se=None, **kw)
    assert every.train_evaluation.n_examples == 160
    assert loose.train_evaluation.n_examples == MIN_PAIRS_FOR_SE
    assert loose.circuit == every.circuit  # the same run, scored on its first pairs, the buckets taking turns
    assert loose.train_evaluation.base_metric != every.train_evaluation.base_metric
