"""Bucketing prompt pairs by length."""

from __future__ import annotations

import torch

from mgnp_lens.tasks import GenderedPronouns


def test_mixed_lengths_are_bucketed_without_padding(tok):
    task = GenderedPronouns(tok, n_train=150, n_test=50)
    pairs = task.split("train")
    assert len(pairs.buckets) > 1
    seen = 0
    for b in pairs.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert b.clean.shape == b.corrupted.shape
        assert (b.answer_pos == b.clean.shape[1] - 1).all()
        seen += len(b)
    assert seen == 150



def test_head_spreads_over_every_bucket_in_proportion(tok):
    """A capped set keeps each bucket's share (rounded, within one pair), each bucket's first rows, so a capped
    evaluation sees every prompt length; a cap at or above the size keeps everything."""
    pairs = GenderedPronouns(tok, n_train=150, n_test=50).split("train")
    sizes = [len(b) for b in pairs.buckets]
    assert len(sizes) > 1 and sum(sizes) == 150
    for n in (75, 149):  # every bucket's share is at least one pair
        got = pairs.head(n)
        assert len(got) == n and len(got.buckets) == len(sizes)
        for whole, part in zip(pairs.buckets, got.buckets):
            assert abs(len(part) - n * len(whole) / 150) < 1
            assert torch.equal(part.clean, whole.clean[: len(part)])  # the first rows
    one = pairs.head(1)
    assert len(one) == 1 and torch.equal(one.buckets[0].clean, pairs.buckets[sizes.index(max(sizes))].clean[:1])
    assert [len(b) for b in pairs.head(500).buckets] == sizes
