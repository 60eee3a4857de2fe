"""``PromptPairTask``: a task from the user's own clean/corrupted prompt pairs (tokens, text, records,
a DataFrame, CSV or JSON lines), and the split builder the paper's task generators share."""

from __future__ import annotations

import json
import math
import warnings
from typing import Callable, Sequence

import pandas as pd
import torch

from .pairs import SPLITS, PairBatch, PairSet
from .readers import COLUMNS, read_csv, read_jsonl
from ..losses import METRICS, check_loss
from .task import HELDOUT_SPLITS, Task
from .tokens import answer_token_id, default_prepend_bos, encode, tokenizer_of


class PromptPairTask(Task):
    """A task from user-given clean/corrupted prompt pairs with correct/incorrect answers.

    Args:
        splits: ``{"train": PairSet, "validation": PairSet, "test": PairSet}`` (at least train).
        name: task name stored with circuits.
        metric: the task metric: ``"logit_diff"`` (correct − incorrect logit, the default), ``"prob_diff"``
            (:data:`mgnp_lens.losses.METRICS`), or ``f(logits [B, (P,) d_vocab], batch) -> [B]``.
        metric_name: label for the metric (default: the named metric's).
        loss: what discovery trains on: ``"kl"`` (default), ``"logit_diff"``, ``"prob_diff"`` or ``"mse"``
            (:mod:`mgnp_lens.losses`).
    """

    def __init__(self, splits: dict[str, PairSet], name: str = "custom",
                 metric: str | Callable[[torch.Tensor, PairBatch], torch.Tensor] | None = None,
                 metric_name: str | None = None, loss: str = "kl"):
        if "train" not in splits:
            raise ValueError("a task needs at least a 'train' split")
        if isinstance(metric, str) and metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)} or a function")
        named = METRICS[metric or "logit_diff"] if not callable(metric) else (metric, "metric")
        self.splits = dict(splits)
        self.name = name
        self.metric_name = metric_name or named[1]
        self._metric = named[0]
        self.loss = check_loss(loss)

    def split(self, name: str) -> PairSet:
        if name not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    def heldout_splits(self) -> list[str]:
        return [s for s in HELDOUT_SPLITS if s in self.splits]

    def metric(self, logits, batch):
        return self._metric(logits, batch)

    def describe(self) -> dict:
        return {**super().describe(), "sizes": {k: len(v) for k, v in self.splits.items()}}

    def to_dataframe(self):
        """One row per pair: split, clean/corrupted text, answers and generator fields."""
        records = getattr(self, "records", None)
        if records is None:
            rows = []
            for split, pairs in self.splits.items():
                for b in pairs.buckets:
                    for i in range(len(b)):
                        rows.append({"split": split, "clean_ids": b.clean[i].tolist(),
                                     "corrupted_ids": b.corrupted[i].tolist(), "correct_id": b.correct[i].tolist(),
                                     "incorrect_id": b.incorrect[i].tolist(), "answer_pos": b.answer_pos[i].tolist()})
            return pd.DataFrame(rows)
        return pd.DataFrame(records)

    @staticmethod
    def build_splits(model, records: dict[str, list[dict]], prepend_bos: bool,
                     meta_keys: Sequence[str] = ()) -> dict[str, PairSet]:
        """Tokenize generated records, ``{split: [record, ...]}``, into one :class:`PairSet` per split.

        Each record has ``clean``, ``corrupted``, ``correct``, ``incorrect`` (answer strings, or token
        ids as ``correct_id``/``incorrect_id``) and the ``meta_keys``; a ``split`` field is added.
        """
        tok = tokenizer_of(model)
        splits = {}
        for split, recs in records.items():
            for r in recs:
                r["split"] = split
            splits[split] = PairSet.from_examples(
                [encode(model, r["clean"], prepend_bos) for r in recs],
                [encode(model, r["corrupted"], prepend_bos) for r in recs],
                [r["correct_id"] if "correct_id" in r else answer_token_id(tok, r["correct"], i)
                 for i, r in enumerate(recs)],
                [r["incorrect_id"] if "incorrect_id" in r else answer_token_id(tok, r["incorrect"], i)
                 for i, r in enumerate(recs)],
                meta={m: [r[m] for r in recs] for m in meta_keys}, labels=[r["clean"] for r in recs])
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
        missing = [k for k in SPLITS if k not in out]
        fallback = "test" if "test" in out else "train"
        for k in missing:  # an unnamed split falls back to the test/train pairs
            out[k] = out[fallback]
        if missing:
            warnings.warn(f"split_fractions names no {' or '.join(repr(k) for k in missing)} split: "
                          f"{'it uses' if len(missing) == 1 else 'they use'} the {fallback} pairs, so what is measured "
                          f"there is not independent of them (name every split in split_fractions to keep them apart)",
                          stacklevel=3)
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
        metric_name: str | None = None,
        loss: str = "kl",
    ) -> "PromptPairTask":
        """Build a task from token ids (for models without a tokenizer).

        Args:
            clean_tokens: [N, pos] tensor or N lists of ids.
            corrupted_tokens: same shape as ``clean_tokens`` row by row.
            correct_ids: [N] correct answer token ids ([N, P] or N lists, with several answer positions).
            incorrect_ids: [N] incorrect answer token ids (likewise).
            answer_pos: optional [N] answer positions (default: each prompt's last token), or [N, P] (N lists)
                for several answer positions per prompt, e.g. every position of a sequence-to-sequence task.
            split_fractions: e.g. ``{"train": 0.6, "validation": 0.2, "test": 0.2}`` (the default).
            metric, metric_name, loss: as in :class:`PromptPairTask`.
        """
        to_list = lambda x: x.tolist() if isinstance(x, torch.Tensor) else list(x)  # noqa: E731
        clean, corrupted = to_list(clean_tokens), to_list(corrupted_tokens)
        correct, incorrect = to_list(correct_ids), to_list(incorrect_ids)
        pos = None if answer_pos is None else to_list(answer_pos)
        PairSet.from_examples(clean, corrupted, correct, incorrect, pos)  # validate everything once
        fractions = split_fractions or {"train": 0.6, "validation": 0.2, "test": 0.2}
        parts = cls._split_indices(len(clean), fractions, seed)
        _warn_duplicates(parts, clean, corrupted, correct, incorrect)
        pick = lambda seq, idx: None if seq is None else [seq[i] for i in idx]  # noqa: E731
        splits = {k: PairSet.from_examples(pick(clean, idx), pick(corrupted, idx), pick(correct, idx),
                                           pick(incorrect, idx), pick(pos, idx)) for k, idx in parts.items()}
        return cls(splits, name=name, metric=metric, metric_name=metric_name, loss=loss)

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
        row_labels: Sequence[str] | None = None,
        **kwargs,
    ) -> "PromptPairTask":
        """Build a task from text. Answers must be single tokens (e.g. ``" Mary"``).

        Warns about likely mistakes (rows whose correct and incorrect answers are the same, answers without
        the leading space the prompt needs, pairs in both the training and a held-out split).

        Args:
            tokenizer_or_model: a HookedTransformer/TransformerBridge or a Hugging Face tokenizer.
            prepend_bos: prepend the BOS token; default the model's ``cfg.default_prepend_bos``
                (False for a bare tokenizer).
            row_labels: how errors and warnings name each row (default ``"row i"``, 0-based), e.g. file lines.
            **kwargs: passed to :meth:`from_tokens` (split_fractions, seed, name, metric).

        Raises:
            ValueError: lists of different lengths, a pair that tokenizes to different lengths, a prompt
                longer than the model's context, or an answer that is not one token (the row named).
        """
        prepend_bos = default_prepend_bos(tokenizer_or_model, prepend_bos)
        n = len(clean)
        for nm, seq in (("corrupted", corrupted), ("correct", correct), ("incorrect", incorrect)):
            if len(seq) != n:
                raise ValueError(f"{n} clean prompts but {len(seq)} {nm} entries")
        labels = list(row_labels) if row_labels is not None else [f"row {i}" for i in range(n)]
        clean_ids = [encode(tokenizer_or_model, t, prepend_bos) for t in clean]
        corr_ids = [encode(tokenizer_or_model, t, prepend_bos) for t in corrupted]
        n_ctx = getattr(getattr(tokenizer_or_model, "cfg", None), "n_ctx", None)
        for i, (a, b) in enumerate(zip(clean_ids, corr_ids)):
            if len(a) != len(b):
                raise ValueError(f"{labels[i]}: clean prompt {clean[i]!r} is {len(a)} tokens but corrupted prompt "
                                 f"{corrupted[i]!r} is {len(b)}; they must tokenize to the same length")
            if n_ctx is not None and len(a) > n_ctx:
                raise ValueError(f"{labels[i]}: the prompt is {len(a):,} tokens, longer than the model's context of "
                                 f"{n_ctx:,} tokens; shorten it")
        good = [answer_token_id(tokenizer_or_model, a, labels[i]) for i, a in enumerate(correct)]
        bad = [answer_token_id(tokenizer_or_model, a, labels[i]) for i, a in enumerate(incorrect)]
        _warn_answer_mistakes(clean, correct, incorrect, good, bad, labels)
        return cls.from_tokens(clean_ids, corr_ids, good, bad, **kwargs)

    COLUMNS = COLUMNS

    @classmethod
    def from_records(cls, tokenizer_or_model, records: Sequence[dict], row_labels: Sequence[str] | None = None,
                     **kwargs) -> "PromptPairTask":
        """Build a task from dicts with keys ``clean, corrupted, correct, incorrect`` (text; numbers are
        written out, a missing or null value is an error naming the row)."""
        records = list(records)
        labels = list(row_labels) if row_labels is not None else [f"record {i}" for i in range(len(records))]
        for label, r in zip(labels, records):
            missing = [c for c in cls.COLUMNS if c not in r]
            if missing:
                raise ValueError(f"{label} is missing column(s) {missing}; need {list(cls.COLUMNS)}")
            for c in cls.COLUMNS:
                if r[c] is None or isinstance(r[c], (bool, list, dict)):
                    raise ValueError(f"{label}: {c} is {json_repr(r[c])}; expected text")
        cols = {c: [str(r[c]) for r in records] for c in cls.COLUMNS}
        return cls.from_strings(tokenizer_or_model, cols["clean"], cols["corrupted"], cols["correct"],
                                cols["incorrect"], row_labels=labels, **kwargs)

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
        records, labels = read_csv(path)
        return cls.from_records(tokenizer_or_model, records, row_labels=labels, **kwargs)

    @classmethod
    def from_jsonl(cls, tokenizer_or_model, path, **kwargs) -> "PromptPairTask":
        """Build a task from a JSON-lines file, one ``{clean, corrupted, correct, incorrect}`` object a line."""
        records, labels = read_jsonl(path)
        return cls.from_records(tokenizer_or_model, records, row_labels=labels, **kwargs)


def _warn(rows: list[int], labels: Sequence[str], what: str) -> None:
    if rows:
        examples = ", ".join(labels[i] for i in rows[:3])
        warnings.warn(f"{len(rows)} of {len(labels)} rows {what} (e.g. {examples})", stacklevel=4)


def _warn_answer_mistakes(clean, correct, incorrect, good, bad, labels) -> None:
    """Warnings for answers that make a row meaningless or likely wrong."""
    _warn([i for i in range(len(good)) if good[i] == bad[i]], labels,
          "have the same correct and incorrect answer token: their logit difference is 0 by construction")
    _warn([i for i, (p, a) in enumerate(zip(clean, correct)) if p and not p[-1].isspace() and a and not a[0].isspace()],
          labels, "have an answer without a leading space after a prompt that ends in a word: most tokenizers "
          "spell the next word with its space (' Mary', not 'Mary')")


def _warn_duplicates(parts: dict[str, list[int]], clean, corrupted, correct, incorrect) -> None:
    """A warning when held-out pairs are copies of training pairs (duplicate rows in the data)."""
    key = lambda i: (tuple(clean[i]), tuple(corrupted[i]), repr(correct[i]), repr(incorrect[i]))  # noqa: E731
    train = set(parts["train"])
    seen = {key(i) for i in train}
    for split in ("validation", "test"):
        held_out = [i for i in parts[split] if i not in train]
        copies = sum(key(i) in seen for i in held_out)
        if copies:
            warnings.warn(f"{copies} of the {len(held_out)} {split} pairs are copies of training pairs (duplicate "
                          f"rows in the data): held-out figures will look better than they are", stacklevel=3)


def json_repr(value) -> str:
    """``value`` as the file spelled it (``null``, ``true``, ``[...]``)."""
    return json.dumps(value)
