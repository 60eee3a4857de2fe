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
        correct: [B] id of the correct answer token.
        incorrect: [B] id of the incorrect (contrast) answer token.
        answer_pos: [B] position whose next-token prediction is the answer.
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

        Raises:
            ValueError: if the lists disagree in length, a clean/corrupted pair differs in token
                length (the row is named), or an answer position is out of range.
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
        for i in range(n):
            lc, lx = len(clean[i]), len(corrupted[i])
            if lc != lx:
                label = f" ({labels[i]!r})" if labels is not None else ""
                raise ValueError(
                    f"row {i}{label}: clean prompt has {lc} tokens but corrupted prompt has {lx}; "
                    "clean and corrupted prompts must tokenize to the same length")
            if lc == 0:
                raise ValueError(f"row {i}: empty prompt")
            pos = lc - 1 if answer_pos is None else int(answer_pos[i])
            if not -lc <= pos < lc:
                raise ValueError(f"row {i}: answer position {pos} is outside a {lc}-token prompt")
            by_len.setdefault(lc, []).append(i)
        buckets = []
        for length in sorted(by_len):
            idx = by_len[length]
            pos = [(length - 1 if answer_pos is None else int(answer_pos[i])) % length for i in idx]
            buckets.append(PairBatch(
                clean=torch.tensor([list(clean[i]) for i in idx], dtype=torch.long),
                corrupted=torch.tensor([list(corrupted[i]) for i in idx], dtype=torch.long),
                correct=torch.tensor([int(correct[i]) for i in idx], dtype=torch.long),
                incorrect=torch.tensor([int(incorrect[i]) for i in idx], dtype=torch.long),
                answer_pos=torch.tensor(pos, dtype=torch.long),
                meta={k: torch.as_tensor([v[i] for i in idx]) for k, v in meta.items()},
            ))
        return cls(buckets)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[PairBatch]:
        """Yield batches of at most ``batch_size`` pairs, each from a single bucket."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = []
        for b in self.buckets:
            rows = torch.randperm(len(b), generator=generator) if shuffle else torch.arange(len(b))
            order += [(b, rows[i:i + batch_size]) for i in range(0, len(b), batch_size)]
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

    def head(self, n: int) -> "PairSet":
        """The first ``n`` examples (bucket by bucket), for quick evaluations."""
        out, left = [], n
        for b in self.buckets:
            if left <= 0:
                break
            take = min(left, len(b))
            out.append(b.select(torch.arange(take)))
            left -= take
        return PairSet(out)

