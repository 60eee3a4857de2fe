"""The batch and bucketing types: :class:`PairBatch` (equal-length prompt pairs) and :class:`PairSet`
(one split, grouped by token length into buckets, so that batches never contain padding: no wasted
compute, no attention masks, the answer read at each example's own position)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import torch

#: The split names every task has.
SPLITS = ("train", "validation", "test")


@dataclass
class PairBatch:
    """A batch of equal-length prompt pairs.

    Attributes:
        clean: [B, pos] clean token ids.
        corrupted: [B, pos] corrupted token ids.
        correct: [B] id of the correct answer token ([B, P] with ``P`` answer positions per prompt).
        incorrect: [B] id of the incorrect (contrast) answer token ([B, P]).
        answer_pos: [B] position whose next-token prediction is the answer ([B, P]: several, each with its
            own correct and incorrect token).
        meta: per-example extras for task metrics, each a tensor with leading dim B.
        bucket: index of the bucket inside its :class:`PairSet`.
        rows: [B] row indices inside that bucket (used to look up cached activations).
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    correct: torch.Tensor
    incorrect: torch.Tensor
    answer_pos: torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)
    bucket: int = 0
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.clean.shape[0]

    def select(self, rows: torch.Tensor) -> "PairBatch":
        """Sub-batch of the given row indices (relative to this batch)."""
        base = self.rows if self.rows is not None else torch.arange(len(self))
        return PairBatch(self.clean[rows], self.corrupted[rows], self.correct[rows], self.incorrect[rows],
                         self.answer_pos[rows], {k: v[rows] for k, v in self.meta.items()},
                         self.bucket, base[rows])

    def to(self, device) -> "PairBatch":
        return replace(self, clean=self.clean.to(device), corrupted=self.corrupted.to(device),
                       correct=self.correct.to(device), incorrect=self.incorrect.to(device),
                       answer_pos=self.answer_pos.to(device),
                       meta={k: v.to(device) for k, v in self.meta.items()})


def _answers(i: int, label: str, length: int, pos, correct, incorrect):
    """Row ``i``'s (positions, correct ids, incorrect ids): ints for one answer, equal-length lists for several;
    positions default to the last token and are taken modulo ``length``."""
    several = isinstance(pos, (list, tuple)) or (isinstance(pos, torch.Tensor) and pos.dim() == 1)
    positions = [length - 1] if pos is None else [int(p) for p in pos] if several else [int(pos)]
    try:
        good = [int(c) for c in correct] if several else [int(correct)]
        bad = [int(c) for c in incorrect] if several else [int(incorrect)]
    except TypeError:
        raise ValueError(f"row {i}{label}: {len(positions)} answer position(s) need {'lists of ' if several else ''}"
                         f"token ids as its correct and incorrect answers") from None
    if not positions or len(good) != len(positions) or len(bad) != len(positions):
        raise ValueError(f"row {i}{label}: {len(positions)} answer positions but {len(good)} correct and {len(bad)} "
                         "incorrect answers; give one of each per position")
    for p in positions:
        if not -length <= p < length:
            raise ValueError(f"row {i}{label}: answer position {p} is outside a {length}-token prompt")
    positions = [p % length for p in positions]
    return (positions, good, bad) if several else (positions[0], good[0], bad[0])


class PairSet:
    """The examples of one split, grouped by token length into buckets.

    Args:
        buckets: one :class:`PairBatch` per sequence length.
    """

    def __init__(self, buckets: Sequence[PairBatch]):
        self.buckets = [replace(b, bucket=i, rows=torch.arange(len(b))) for i, b in enumerate(buckets) if len(b)]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)

    @classmethod
    def from_examples(
        cls,
        clean: Sequence[Sequence[int]],
        corrupted: Sequence[Sequence[int]],
        correct: Sequence[int],
        incorrect: Sequence[int],
        answer_pos: Sequence[int] | None = None,
        meta: dict[str, Sequence] | None = None,
        labels: Sequence[str] | None = None,
    ) -> "PairSet":
        """Group token-id lists into equal-length buckets, validating every pair.

        ``answer_pos[i]`` may be a list of positions, one answer each; ``correct[i]`` and ``incorrect[i]`` are
        then lists of as many token ids (prompts of one token length must have equally many answers).

        Raises:
            ValueError: if the lists disagree in length, a clean/corrupted pair differs in token
                length (the row is named), an answer position is out of range, or a row's positions and
                answers disagree in number.
        """
        n = len(clean)
        for name, seq in (("corrupted", corrupted), ("correct", correct), ("incorrect", incorrect)):
            if len(seq) != n:
                raise ValueError(f"{n} clean prompts but {len(seq)} {name} entries")
        meta = meta or {}
        for k, v in meta.items():
            if len(v) != n:
                raise ValueError(f"meta field {k!r} has {len(v)} entries for {n} prompts")
        if n == 0:
            raise ValueError("no prompt pairs given")
        by_len: dict[int, list[int]] = {}
        rows = {}
        for i in range(n):
            label = f" ({labels[i]!r})" if labels is not None else ""
            lc, lx = len(clean[i]), len(corrupted[i])
            if lc != lx:
                raise ValueError(
                    f"row {i}{label}: clean prompt has {lc} tokens but corrupted prompt has {lx}; "
                    "clean and corrupted prompts must tokenize to the same length")
            if lc == 0:
                raise ValueError(f"row {i}: empty prompt")
            rows[i] = _answers(i, label, lc, None if answer_pos is None else answer_pos[i], correct[i], incorrect[i])
            by_len.setdefault(lc, []).append(i)
        buckets = []
        for length in sorted(by_len):
            idx = by_len[length]
            shapes = {len(rows[i][0]) if isinstance(rows[i][0], list) else None for i in idx}
            if len(shapes) > 1:
                raise ValueError(f"the {length}-token prompts have different numbers of answer positions "
                                 f"({sorted(shapes, key=str)}); give prompts of one length equally many")
            buckets.append(PairBatch(
                clean=torch.tensor([list(clean[i]) for i in idx], dtype=torch.long),
                corrupted=torch.tensor([list(corrupted[i]) for i in idx], dtype=torch.long),
                correct=torch.tensor([rows[i][1] for i in idx], dtype=torch.long),
                incorrect=torch.tensor([rows[i][2] for i in idx], dtype=torch.long),
                answer_pos=torch.tensor([rows[i][0] for i in idx], dtype=torch.long),
                meta={k: torch.as_tensor([v[i] for i in idx]) for k, v in meta.items()},
            ))
        return cls(buckets)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, interleave: bool = False) -> Iterator[PairBatch]:
        """Yield batches of at most ``batch_size`` pairs, each from a single bucket.

        Bucket by bucket; with ``shuffle`` in random order; with ``interleave`` the buckets' batches take turns in
        proportion to their sizes, so that the pairs of any first few batches are spread over every bucket
        (template) as the whole set is (for an evaluation that may stop early)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = []
        for b in self.buckets:
            rows = torch.randperm(len(b), generator=generator) if shuffle else torch.arange(len(b))
            n = -(-len(b) // batch_size)
            order += [((j + 0.5) / n, b, rows[i:i + batch_size]) for j, i in enumerate(range(0, len(b), batch_size))]
        order = [(b, rows) for _, b, rows in (sorted(order, key=lambda o: o[0]) if interleave else order)]
        if shuffle:
            perm = torch.randperm(len(order), generator=generator).tolist()
            order = [order[i] for i in perm]
        for b, rows in order:
            yield b.select(rows)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> PairBatch:
        """One random batch: a bucket chosen with probability ∝ its size, rows without replacement."""
        sizes = torch.tensor([len(b) for b in self.buckets], dtype=torch.float)
        k = int(torch.multinomial(sizes, 1, generator=generator))
        b = self.buckets[k]
        rows = torch.randperm(len(b), generator=generator)[: min(batch_size, len(b))]
        return b.select(rows)

    def head_counts(self, n: int) -> list[int]:
        """How many of each bucket's first rows :meth:`head` keeps: ``n`` spread over the buckets in proportion
        to their sizes (the largest remainders take what rounding down leaves; every row when ``n`` covers them)."""
        sizes, n = [len(b) for b in self.buckets], max(n, 0)
        total = sum(sizes)
        if n >= total:
            return sizes
        shares = [n * s / total for s in sizes]
        take = [int(x) for x in shares]
        by_remainder = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - take[i]), i))
        for i in by_remainder[: n - sum(take)]:
            take[i] += 1
        return take

    def head(self, n: int) -> "PairSet":
        """``n`` examples (all of them when the set has no more), each bucket's first rows in proportion to its
        size (:meth:`head_counts`), so that a capped evaluation or a capped set of pairs holds the prompt lengths in
        the whole set's proportions. Deterministic. A bucket whose share rounds to nothing is left out, so the buckets'
        positions can shift: slice anything stored per bucket with the same counts."""
        return PairSet([b.select(torch.arange(k)) for b, k in zip(self.buckets, self.head_counts(n)) if k > 0])

