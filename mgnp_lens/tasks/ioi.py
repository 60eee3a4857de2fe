"""Indirect Object Identification (Wang et al. 2022), rebuilt offline from ``data/ioi.json``.

Prompts stop right before the indirect object: ``"Then, John and Mary went to the store. John gave
a drink to"`` → `` Mary`` (IO, correct) vs `` John`` (S, incorrect). Metric: logit diff IO − S
(paper Eq. 10).

Corruptions:

* ``four_names`` (default; Edge Pruning / MGNP): the four name slots of the full sentence, first A,
  first B, second B and second A, get 4 fresh distinct names (none equal to A or B). In the
  prompt the answer slot (second A) is not present, so 3 fresh names appear there.
* ``abc`` (ACDC / Wang): the IO and both S occurrences become three fresh random names.

Template sets: ``mixed`` (BABA and ABBA alternating, the default), ``baba``, ``abba`` and ``abc``
(Wang's three-name templates ``[A], [B] and [C] ... [B] and [C] gave ... to [A]``; there the third
name C is also replaced by a fresh name in either corruption).

Only names that are one token (with their leading space) for the model's tokenizer are used,
so clean and corrupted prompts always have the same length.
"""

from __future__ import annotations

import random
import re

from . import _data
from .prompt_pairs import PromptPairTask
from .task import check_choice, split_sizes
from .tokens import default_prepend_bos, single_token_words

IOI_CORRUPTIONS = ("four_names", "abc")
IOI_TEMPLATE_SETS = ("mixed", "baba", "abba", "abc")
_SLOT = re.compile(r"\[(A|B|C|PLACE|OBJECT)\]")


class IOI(PromptPairTask):
    """The IOI task for one model's tokenizer.

    Args:
        model: a HookedTransformer/TransformerBridge (or a Hugging Face tokenizer).
        n_train, n_validation, n_test: split sizes (paper: 200 / 200 / 12,256).
        corruption: ``"four_names"`` (default) or ``"abc"``.
        templates: ``"mixed"`` (BABA and ABBA alternating, 15 each), ``"baba"``, ``"abba"`` or ``"abc"``;
            or an explicit list of template strings using [A], [B], [C], [PLACE], [OBJECT].
        seed: seeds everything.
        prepend_bos: default the model's ``cfg.default_prepend_bos``.
    """

    def __init__(self, model, n_train: int = 200, n_validation: int = 200, n_test: int = 12_256,
                 corruption: str = "four_names", templates="mixed", seed: int = 0,
                 prepend_bos: bool | None = None):
        check_choice("IOI corruption", corruption, IOI_CORRUPTIONS)
        data = _data.load("ioi")
        if isinstance(templates, str):
            check_choice("IOI template set", templates, IOI_TEMPLATE_SETS)
            if templates == "mixed":
                tpl = [t for pair in zip(data["templates_baba"], data["templates_abba"]) for t in pair]
            else:
                tpl = list(data[f"templates_{templates}"])
        else:
            tpl = list(templates)
        for t in tpl:
            if not t.endswith("[A]") or "[B]" not in t or t.count("[A]") != 2:
                raise ValueError(f"IOI template {t!r} must contain [A] twice and [B], and end with the answer slot [A]")
        sizes = split_sizes(n_train, n_validation, n_test)
        names = single_token_words(model, data["names"])
        if len(names) < 6:
            raise ValueError(f"only {len(names)} IOI names are single tokens for this tokenizer; need at least 6")
        self.names, self.templates, self.corruption, self.seed = names, tpl, corruption, seed
        prepend = default_prepend_bos(model, prepend_bos)
        rng = random.Random(seed)
        records = []
        total = sum(sizes.values())
        for i in range(total):
            t = tpl[i % len(tpl)]
            a, b, c, *fresh = rng.sample(names, 7)
            place, obj = rng.choice(data["places"]), rng.choice(data["objects"])
            clean_text = self._fill(t, {"A": [a, a], "B": [b, b], "C": [c, c]}, place, obj)
            if corruption == "four_names":  # first A, first B, second B, second A (+ C)
                subst = {"A": [fresh[0], fresh[3]], "B": [fresh[1], fresh[2]], "C": [fresh[3], fresh[3]]}
            else:  # abc: IO -> x, both S -> y, z (+ C)
                subst = {"A": [fresh[0], fresh[0]], "B": [fresh[1], fresh[2]], "C": [fresh[3], fresh[3]]}
            records.append({"clean": clean_text, "corrupted": self._fill(t, subst, place, obj), "correct": " " + a,
                            "incorrect": " " + b, "template": t, "io": a, "s": b})
        self.records = records
        splits = self.build_splits(model, records, sizes, prepend)
        super().__init__(splits, name="ioi", metric_name="logit diff (IO - S)")

    @staticmethod
    def _fill(template: str, names: dict[str, list[str]], place: str, obj: str) -> str:
        """Fill the template, dropping the final answer slot; the k-th [A]/[B]/[C] gets names[X][k]."""
        body = template[: -len("[A]")].rstrip()
        seen = {"A": 0, "B": 0, "C": 0}

        def repl(m):
            key = m.group(1)
            if key == "PLACE":
                return place
            if key == "OBJECT":
                return obj
            name = names[key][min(seen[key], len(names[key]) - 1)]
            seen[key] += 1
            return name

        return _SLOT.sub(repl, body)

    def describe(self) -> dict:
        return {**super().describe(), "corruption": self.corruption, "seed": self.seed,
                "n_templates": len(self.templates)}
