"""The task interface the discovery loop consumes, and ``PromptPairTask`` for user-given pairs.

A task has named splits (``train``, ``validation``, ``test``). Each split is a :class:`PairSet`:
clean/corrupted prompt pairs grouped into *buckets* of equal token length, so that batches are
drawn from one bucket and never contain padding (no wasted compute, no attention masks, the
answer is read at each example's own position).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import torch

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


def logit_diff(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Logit of the correct answer minus logit of the incorrect one.

    Args:
        logits: [B, d_vocab] logits at the answer position.

    Returns:
        [B] logit differences.
    """
    idx = torch.arange(len(batch), device=logits.device)
    return logits[idx, batch.correct.to(logits.device)] - logits[idx, batch.incorrect.to(logits.device)]


class Task:
    """What :func:`mgnp_lens.discover` needs from a task.

    Subclasses provide ``name``, ``metric_name``, :meth:`split` and :meth:`metric`.
    """

    name: str = "task"
    metric_name: str = "logit diff"

    def split(self, name: str) -> PairSet:  # pragma: no cover - interface
        raise NotImplementedError

    def metric(self, logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
        """Per-example task metric from [B, d_vocab] answer-position logits; default logit diff."""
        return logit_diff(logits, batch)

    def describe(self) -> dict:
        """JSON-able description stored with circuits."""
        return {"name": self.name, "metric": self.metric_name}


def _encode(tokenizer_or_model, text: str, prepend_bos: bool) -> list[int]:
    if hasattr(tokenizer_or_model, "to_tokens"):  # HookedTransformer / TransformerBridge
        return tokenizer_or_model.to_tokens(text, prepend_bos=prepend_bos)[0].tolist()
    tok = tokenizer_or_model
    ids = tok.encode(text, add_special_tokens=False)
    if prepend_bos:
        if tok.bos_token_id is None:
            raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
        ids = [tok.bos_token_id] + ids
    return ids


def answer_token_id(tokenizer_or_model, answer: str, row: int | None = None) -> int:
    """The single token id of ``answer``; ``ValueError`` if it is not exactly one token."""
    tok = tokenizer_of(tokenizer_or_model)
    ids = tok.encode(answer, add_special_tokens=False)
    if len(ids) != 1:
        where = f"row {row}: " if row is not None else ""
        pieces = [tok.decode([i]) for i in ids]
        raise ValueError(f"{where}answer {answer!r} is {len(ids)} tokens {pieces}, but answers must be single tokens")
    return ids[0]


def tokenizer_of(model_or_tok):
    """The Hugging Face tokenizer of a model (or the tokenizer itself)."""
    tok = getattr(model_or_tok, "tokenizer", None) or model_or_tok
    if not hasattr(tok, "encode"):
        raise ValueError(f"{type(model_or_tok).__name__} has no tokenizer; build the task with from_tokens")
    return tok


def n_tokens(model_or_tok, text: str) -> int:
    """How many tokens ``text`` is, without special tokens."""
    return len(tokenizer_of(model_or_tok).encode(text, add_special_tokens=False))


def single_token_words(model_or_tok, words, prefix: str = " ") -> list[str]:
    """The words that are exactly one token when written with ``prefix`` (a leading space)."""
    return [w for w in words if n_tokens(model_or_tok, prefix + w) == 1]


def default_prepend_bos(model_or_tok, prepend_bos: bool | None) -> bool:
    """``prepend_bos`` if given, else the model's ``cfg.default_prepend_bos`` (False for a bare tokenizer)."""
    if prepend_bos is not None:
        return prepend_bos
    cfg = getattr(model_or_tok, "cfg", None)
    return bool(getattr(cfg, "default_prepend_bos", False)) if cfg is not None else False


def split_sizes(n_train, n_validation, n_test) -> dict[str, int]:
    """Validated ``{"train": .., "validation": .., "test": ..}``."""
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    for k, v in sizes.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"n_{k} must be a positive integer, got {v!r}")
    return sizes


def check_choice(kind: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(choices)}")
    return value


class PromptPairTask(Task):
    """A task from user-given clean/corrupted prompt pairs with correct/incorrect answers.

    Args:
        splits: ``{"train": PairSet, "validation": PairSet, "test": PairSet}`` (at least train).
        name: task name stored with circuits.
        metric: optional ``f(logits [B, d_vocab], batch) -> [B]``; default correct − incorrect logit.
        metric_name: label for the metric.
    """

    def __init__(self, splits: dict[str, PairSet], name: str = "custom",
                 metric: Callable[[torch.Tensor, PairBatch], torch.Tensor] | None = None,
                 metric_name: str = "logit diff"):
        if "train" not in splits:
            raise ValueError("a task needs at least a 'train' split")
        self.splits = dict(splits)
        self.name = name
        self.metric_name = metric_name
        self._metric = metric

    def split(self, name: str) -> PairSet:
        if name not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    def metric(self, logits, batch):
        return self._metric(logits, batch) if self._metric is not None else logit_diff(logits, batch)

    def describe(self) -> dict:
        return {"name": self.name, "metric": self.metric_name,
                "sizes": {k: len(v) for k, v in self.splits.items()}}

    def to_dataframe(self):
        """One row per pair: split, clean/corrupted text, answers and generator fields."""
        import pandas as pd

        records = getattr(self, "records", None)
        if records is None:
            rows = []
            for split, pairs in self.splits.items():
                for b in pairs.buckets:
                    for i in range(len(b)):
                        rows.append({"split": split, "clean_ids": b.clean[i].tolist(),
                                     "corrupted_ids": b.corrupted[i].tolist(), "correct_id": int(b.correct[i]),
                                     "incorrect_id": int(b.incorrect[i])})
            return pd.DataFrame(rows)
        return pd.DataFrame(records)

    @staticmethod
    def build_splits(model, records: list[dict], sizes: dict[str, int], prepend_bos: bool,
                     meta_keys: Sequence[str] = ()) -> dict[str, PairSet]:
        """Tokenize generated records into splits, in order (first ``sizes['train']`` are train, ...).

        Each record has ``clean``, ``corrupted``, ``correct``, ``incorrect`` (answer strings, or token
        ids as ``correct_id``/``incorrect_id``) and the ``meta_keys``; a ``split`` field is added.
        """
        tok = tokenizer_of(model)
        clean = [_encode(model, r["clean"], prepend_bos) for r in records]
        corrupted = [_encode(model, r["corrupted"], prepend_bos) for r in records]
        good = [r["correct_id"] if "correct_id" in r else answer_token_id(tok, r["correct"], i)
                for i, r in enumerate(records)]
        bad = [r["incorrect_id"] if "incorrect_id" in r else answer_token_id(tok, r["incorrect"], i)
               for i, r in enumerate(records)]
        splits, start = {}, 0
        for k in SPLITS:
            idx = list(range(start, start + sizes[k]))
            for i in idx:
                records[i]["split"] = k
            splits[k] = PairSet.from_examples(
                [clean[i] for i in idx], [corrupted[i] for i in idx], [good[i] for i in idx],
                [bad[i] for i in idx], meta={m: [records[i][m] for i in idx] for m in meta_keys},
                labels=[records[i]["clean"] for i in idx])
            start += sizes[k]
        return splits

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def _split_indices(n: int, fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
        for k, f in fractions.items():
            if k not in SPLITS:
                raise ValueError(f"unknown split {k!r}; expected some of {SPLITS}")
            if f < 0:
                raise ValueError(f"split fraction for {k!r} is negative")
        total = sum(fractions.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must sum to 1, got {total}")
        if n < 2 * len([f for f in fractions.values() if f > 0]):
            warnings.warn(f"only {n} pairs: every split uses all of them (no held-out evaluation)")
            return {k: list(range(n)) for k in SPLITS}
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        out, start = {}, 0
        names = [k for k in SPLITS if fractions.get(k, 0) > 0]
        for j, k in enumerate(names):
            size = n - start if j == len(names) - 1 else max(1, round(fractions[k] * n))
            out[k] = perm[start:start + size]
            start += size
        for k in SPLITS:  # an unnamed split falls back to the test/train pairs
            out.setdefault(k, out.get("test") or out["train"])
        return out

    @classmethod
    def from_tokens(
        cls,
        clean_tokens,
        corrupted_tokens,
        correct_ids,
        incorrect_ids,
        *,
        answer_pos=None,
        split_fractions: dict[str, float] | None = None,
        seed: int = 0,
        name: str = "custom",
        metric=None,
        metric_name: str = "logit diff",
    ) -> "PromptPairTask":
        """Build a task from token ids (for models without a tokenizer).

        Args:
            clean_tokens: [N, pos] tensor or N lists of ids.
            corrupted_tokens: same shape as ``clean_tokens`` row by row.
            correct_ids: [N] correct answer token ids.
            incorrect_ids: [N] incorrect answer token ids.
            answer_pos: optional [N] answer positions (default: each prompt's last token).
            split_fractions: e.g. ``{"train": 0.6, "validation": 0.2, "test": 0.2}`` (the default).
        """
        to_list = lambda x: x.tolist() if isinstance(x, torch.Tensor) else list(x)  # noqa: E731
        clean, corrupted = to_list(clean_tokens), to_list(corrupted_tokens)
        correct, incorrect = to_list(correct_ids), to_list(incorrect_ids)
        pos = None if answer_pos is None else to_list(answer_pos)
        PairSet.from_examples(clean, corrupted, correct, incorrect, pos)  # validate everything once
        fractions = split_fractions or {"train": 0.6, "validation": 0.2, "test": 0.2}
        parts = cls._split_indices(len(clean), fractions, seed)
        pick = lambda seq, idx: None if seq is None else [seq[i] for i in idx]  # noqa: E731
        splits = {k: PairSet.from_examples(pick(clean, idx), pick(corrupted, idx), pick(correct, idx),
                                           pick(incorrect, idx), pick(pos, idx)) for k, idx in parts.items()}
        return cls(splits, name=name, metric=metric, metric_name=metric_name)

    @classmethod
    def from_strings(
        cls,
        tokenizer_or_model,
        clean: Sequence[str],
        corrupted: Sequence[str],
        correct: Sequence[str],
        incorrect: Sequence[str],
        *,
        prepend_bos: bool | None = None,
        **kwargs,
    ) -> "PromptPairTask":
        """Build a task from text. Answers must be single tokens (e.g. ``" Mary"``).

        Args:
            tokenizer_or_model: a HookedTransformer/TransformerBridge or a Hugging Face tokenizer.
            prepend_bos: prepend the BOS token; default the model's ``cfg.default_prepend_bos``
                (False for a bare tokenizer).
            **kwargs: passed to :meth:`from_tokens` (split_fractions, seed, name, metric).
        """
        if prepend_bos is None:
            cfg = getattr(tokenizer_or_model, "cfg", None)
            prepend_bos = bool(getattr(cfg, "default_prepend_bos", False)) if cfg is not None else False
        n = len(clean)
        for nm, seq in (("corrupted", corrupted), ("correct", correct), ("incorrect", incorrect)):
            if len(seq) != n:
                raise ValueError(f"{n} clean prompts but {len(seq)} {nm} entries")
        clean_ids = [_encode(tokenizer_or_model, t, prepend_bos) for t in clean]
        corr_ids = [_encode(tokenizer_or_model, t, prepend_bos) for t in corrupted]
        for i, (a, b) in enumerate(zip(clean_ids, corr_ids)):
            if len(a) != len(b):
                raise ValueError(f"row {i}: clean prompt {clean[i]!r} is {len(a)} tokens but corrupted prompt "
                                 f"{corrupted[i]!r} is {len(b)}; they must tokenize to the same length")
        good = [answer_token_id(tokenizer_or_model, a, i) for i, a in enumerate(correct)]
        bad = [answer_token_id(tokenizer_or_model, a, i) for i, a in enumerate(incorrect)]
        return cls.from_tokens(clean_ids, corr_ids, good, bad, **kwargs)

    COLUMNS = ("clean", "corrupted", "correct", "incorrect")

    @classmethod
    def from_records(cls, tokenizer_or_model, records: Sequence[dict], **kwargs) -> "PromptPairTask":
        """Build a task from dicts with keys ``clean, corrupted, correct, incorrect`` (answers as text)."""
        records = list(records)
        for i, r in enumerate(records):
            missing = [c for c in cls.COLUMNS if c not in r]
            if missing:
                raise ValueError(f"record {i} is missing column(s) {missing}; need {list(cls.COLUMNS)}")
        cols = {c: [str(r[c]) for r in records] for c in cls.COLUMNS}
        return cls.from_strings(tokenizer_or_model, cols["clean"], cols["corrupted"], cols["correct"],
                                cols["incorrect"], **kwargs)

    @classmethod
    def from_dataframe(cls, tokenizer_or_model, frame, **kwargs) -> "PromptPairTask":
        """Build a task from a DataFrame with columns ``clean, corrupted, correct, incorrect``."""
        missing = [c for c in cls.COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"DataFrame is missing column(s) {missing}; need {list(cls.COLUMNS)}")
        return cls.from_records(tokenizer_or_model, frame[list(cls.COLUMNS)].to_dict("records"), **kwargs)

    @classmethod
    def from_csv(cls, tokenizer_or_model, path, **kwargs) -> "PromptPairTask":
        """Build a task from a CSV file with columns ``clean, corrupted, correct, incorrect``.

        Answers keep their leading space (CSV cells are read verbatim, not stripped).
        """
        import pandas as pd
        from pathlib import Path

        if not Path(path).exists():
            raise FileNotFoundError(f"no prompt-pair file at {path}")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=False)
        return cls.from_dataframe(tokenizer_or_model, frame, **kwargs)

    @classmethod
    def from_jsonl(cls, tokenizer_or_model, path, **kwargs) -> "PromptPairTask":
        """Build a task from a JSON-lines file, one ``{clean, corrupted, correct, incorrect}`` object a line."""
        import json
        from pathlib import Path

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no prompt-pair file at {path}")
        records = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        return cls.from_records(tokenizer_or_model, records, **kwargs)
