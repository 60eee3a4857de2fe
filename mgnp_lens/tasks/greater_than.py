"""Greater-Than (Hanna et al. 2023), rebuilt offline from ``data/greater_than.json``.

``"The war lasted from 1743 to 17"`` → the model should continue with a year after 1743.

Two tokenizer families are supported, detected from how `` 1743`` tokenizes:

* **two-digit** (GPT-2: `` 17`` + ``43``). The answer is the next token, one of the 100 two-digit
  tokens ``00``..``99``. A year CCYY is *valid* iff `` CCYY`` is exactly `` CC`` + ``YY``; the first and
  last valid year of each century are dropped (``data/greater_than.json``). Metrics over the 100
  tokens at the last position, with YY the start year's last two digits:

  - ``plain``: Σ P(yy > YY) − Σ P(yy < YY);
  - ``window`` (paper Eq. 9): Σ_{YY < yy ≤ YY+10} P(yy) − Σ_{YY−10 ≤ yy < YY} P(yy).

* **digit-level** (SmolLM2, Llama-style: `` ``, ``1``, ``7``, ``4``, ``3``). The prompt ends with the
  end century's two digits (``… to 17``), so the next token is the *tens digit* of the end year.
  With T the tens digit of the start year, the metric is defined on the 10 digit tokens ``0``..``9``:

  - ``plain``: Σ_{d > T} P(d) − Σ_{d < T} P(d) (the tie d = T is ambiguous and left out);
  - ``window``: P(T + 1) − P(T − 1), the ±10-year window of Eq. 9 at tens-digit resolution.

  Start years have 1 ≤ T ≤ 8 so that both a larger and a smaller tens digit exist. The
  ``correct``/``incorrect`` answer ids are the digits T + 1 and T − 1.

Corruptions: ``random_century`` (default, Edge Pruning) replaces the start year by one of a random
century in range with last digits in 01..98 (a valid year of the same token length; for two-digit
tokenizers it must be a valid year); ``xx01`` (Hanna / ACDC) replaces it by CC01 of the same century.

Centuries: ``centuries_*`` in the data file are half-open ranges ``[lo, hi)`` of CC (EP/MGNP: 10..20,
i.e. years 1000–2099; Hanna: 10..17).
"""

from __future__ import annotations

import torch

from . import _data
from .pairs import PairBatch
from .prompt_pairs import PromptPairTask
from .task import DEFAULT_N_TRAIN, check_choice, generate, partition_templates, split_plan, split_sizes
from .tokens import default_prepend_bos, tokenizer_of

GT_CORRUPTIONS = ("random_century", "xx01")
GT_TEMPLATE_SETS = ("ep", "hanna")
GT_METRICS = ("window", "plain")


def tokenizer_family(model_or_tok) -> str:
    """``"two_digit"`` (GPT-2 style) or ``"digit"`` (one token per digit); ValueError otherwise."""
    tok = tokenizer_of(model_or_tok)
    pieces = [tok.decode([i]) for i in tok.encode(" 1743", add_special_tokens=False)]
    if pieces == [" 17", "43"]:
        return "two_digit"
    if "".join(pieces) == " 1743" and pieces[-4:] == ["1", "7", "4", "3"]:
        return "digit"
    raise ValueError(f"unsupported tokenizer for Greater-Than: ' 1743' tokenizes as {pieces}; expected "
                     "[' 17', '43'] (GPT-2 style) or single digits")


def two_digit_year_ok(model_or_tok, year: int) -> bool:
    """Whether `` CCYY`` tokenizes as exactly `` CC`` + ``YY`` (GPT-2 style)."""
    tok = tokenizer_of(model_or_tok)
    cc, yy = divmod(year, 100)
    ids = tok.encode(f" {year}", add_special_tokens=False)
    return len(ids) == 2 and tok.decode([ids[0]]) == f" {cc}" and tok.decode([ids[1]]) == f"{yy:02d}"


def valid_years_two_digit(model_or_tok, century: int) -> list[int]:
    """Valid years of a century for GPT-2-style tokenizers (first and last valid year dropped)."""
    return [y for y in range(century * 100, century * 100 + 100) if two_digit_year_ok(model_or_tok, y)][1:-1]


class GreaterThan(PromptPairTask):
    """The Greater-Than task for one model's tokenizer.

    Args:
        model: a HookedTransformer/TransformerBridge (or a Hugging Face tokenizer).
        n_train, n_validation, n_test: split sizes (default 1,000 / 150 / 12,240; the paper's: 150 for training of
            12,540 in all).
        corruption: ``"random_century"`` (default) or ``"xx01"``.
        templates: ``"ep"`` (the 6 Edge-Pruning/MGNP templates, default) or ``"hanna"``.
        metric: ``"window"`` (paper Eq. 9, default) or ``"plain"``.
        heldout_templates: templates held out of training for the validation split, and as many again
            for the ``test_templates``/``test_ood`` splits (default: a sixth of the templates each; 0: none).
        n_heldout: pairs in each held-out split (``test_templates``, ``test_corruption`` under the other
            corruption, ``test_ood``).
        seed: seeds everything.
        prepend_bos: default the model's ``cfg.default_prepend_bos``.
    """

    #: the paper's training pairs (:data:`~mgnp_lens.tasks.task.DEFAULT_N_TRAIN` is the default)
    PAPER_N_TRAIN = 150

    def __init__(self, model, n_train: int = DEFAULT_N_TRAIN, n_validation: int = 150, n_test: int = 12_240,
                 corruption: str = "random_century", templates: str = "ep", metric: str = "window",
                 heldout_templates: int | None = None, n_heldout: int = 1024, seed: int = 0,
                 prepend_bos: bool | None = None):
        check_choice("Greater-Than corruption", corruption, GT_CORRUPTIONS)
        check_choice("Greater-Than template set", templates, GT_TEMPLATE_SETS)
        check_choice("Greater-Than metric", metric, GT_METRICS)
        data = _data.load("greater_than")
        sizes = split_sizes(n_train, n_validation, n_test)
        self.family = tokenizer_family(model)
        self.corruption, self.templates_name, self.metric_kind, self.seed = corruption, templates, metric, seed
        if templates == "ep":
            tpl, (lo, hi) = data["templates_ep_mgnp"], data["centuries_ep_mgnp"]
        else:
            tpl = [data["template_hanna"].replace("{century}", "{end_century}")]
            lo, hi = data["centuries_hanna"]
        tok = tokenizer_of(model)
        if self.family == "two_digit":
            by_century = {c: valid_years_two_digit(tok, c) for c in range(lo, hi)}
            self.answer_ids = torch.tensor([tok.encode(f"{yy:02d}", add_special_tokens=False)[0] for yy in range(100)])
        else:
            by_century = {c: [c * 100 + yy for yy in range(1, 99) if 1 <= yy // 10 <= 8] for c in range(lo, hi)}
            self.answer_ids = torch.tensor([tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)])
        by_century = {c: ys for c, ys in by_century.items() if ys}
        if not by_century:
            raise ValueError("no valid Greater-Than years for this tokenizer")
        self.tok, self.lo, self.hi, self.nouns = tok, lo, hi, data["nouns"]
        self.valid_years = sorted(y for ys in by_century.values() for y in ys)
        self.valid_set = set(self.valid_years)
        self.heldout_templates = len(tpl) // 6 if heldout_templates is None else heldout_templates
        self.template_splits = partition_templates(list(tpl), self.heldout_templates)
        other = next(c for c in GT_CORRUPTIONS if c != corruption)
        records = generate(split_plan(sizes, n_heldout, self.template_splits, corruption, other), seed, self._record)
        self.records = [r for recs in records.values() for r in recs]
        splits = self.build_splits(model, records, default_prepend_bos(model, prepend_bos), meta_keys=("threshold",))
        super().__init__(splits, name="gt", metric_name=f"prob diff ({metric})")

    def _xx01_years(self) -> list[int]:
        """Start years whose CC01 has as many tokens (GPT-2 writes ``2001`` as one token, ``2083`` as two)."""
        if not hasattr(self, "_xx01"):
            n = lambda y: len(self.tok.encode(f" {y}", add_special_tokens=False))  # noqa: E731
            self._xx01 = [y for y in self.valid_years if n(y) == n(y // 100 * 100 + 1)]
            if not self._xx01:
                raise ValueError("no start year keeps its token count under the 'xx01' corruption for this tokenizer")
        return self._xx01

    def _record(self, rng, i: int, t: str, corruption: str) -> dict:
        """One clean/corrupted pair from template ``t``."""
        noun = rng.choice(self.nouns)
        start = rng.choice(self.valid_years if corruption != "xx01" else self._xx01_years())
        cc, yy = divmod(start, 100)
        if corruption == "xx01":
            bad_start = cc * 100 + 1
        else:
            while True:
                bad_start = rng.randrange(self.lo, self.hi) * 100 + rng.randint(1, 98)
                if self.family == "digit" or bad_start in self.valid_set or two_digit_year_ok(self.tok, bad_start):
                    break
        fill = lambda s: t.format(noun=noun, start=s, end_century=cc)  # noqa: E731
        rec = {"clean": fill(start), "corrupted": fill(bad_start), "start_year": start, "start_yy": yy,
               "corrupted_start_year": bad_start, "template": t, "corruption": corruption}
        if self.family == "two_digit":
            rec["correct_id"] = int(self.answer_ids[min(yy + 1, 99)])
            rec["incorrect_id"] = int(self.answer_ids[max(yy - 1, 0)])
            rec["threshold"] = yy
        else:
            tens = yy // 10
            rec["correct_id"] = int(self.answer_ids[tens + 1])
            rec["incorrect_id"] = int(self.answer_ids[tens - 1])
            rec["threshold"] = tens
        rec["correct"] = self.tok.decode([rec["correct_id"]])
        rec["incorrect"] = self.tok.decode([rec["incorrect_id"]])
        return rec

    def metric(self, logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
        """Probability difference of later vs earlier answers, [B] (see the module docstring)."""
        probs = torch.softmax(logits.float(), dim=-1)[:, self.answer_ids.to(logits.device)]  # [B, 100 or 10]
        k = probs.shape[1]
        values = torch.arange(k, device=logits.device)[None, :]
        thr = batch.meta["threshold"].to(logits.device)[:, None]
        if self.metric_kind == "plain":
            up, down = values > thr, values < thr
        elif self.family == "two_digit":
            up = (values > thr) & (values <= thr + 10)
            down = (values < thr) & (values >= thr - 10)
        else:
            up, down = values == thr + 1, values == thr - 1
        return (probs * up).sum(-1) - (probs * down).sum(-1)

    def describe(self) -> dict:
        return {**super().describe(), "corruption": self.corruption, "templates": self.templates_name,
                "tokenizer_family": self.family, "seed": self.seed,
                "heldout_templates": self.heldout_templates}

