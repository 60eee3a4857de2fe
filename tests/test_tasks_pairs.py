"""Bucketing prompt pairs by length."""

from __future__ import annotations

import torch

from mgnp_lens.tasks import GenderedPronouns


def test_mixed_lengths_are_bucketed_without_padding(tok):
    task = GenderedPronouns(tok, n_test=50)
    pairs = task.split("train")
    assert len(pairs.buckets) > 1
    seen = 0
    for b in pairs.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert b.clean.shape == b.corrupted.shape
        assert (b.answer_pos == b.clean.shape[1] - 1).all()
        seen += len(b)
    assert seen == 150
