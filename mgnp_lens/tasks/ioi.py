"""Indirect Object Identification (Wang et al. 2022), rebuilt offline from ``data/ioi.json``.

Prompts stop right before the indirect object: ``"Then, John and Mary went to the store. John gave
a drink to"`` → `` Mary`` (IO, correct) vs `` John`` (S, incorrect). Metric: logit diff IO − S
(paper Eq. 10).

Corruptions:

* ``four_names`` (default; Edge Pruning / MGNP): the four name slots of the full sentence, first A,
  first B, second B and second A, get 4 fresh distinct names (none equal to A or B). In the
  prompt the answer slot (second A) is not present, so 3 fresh names appear there, all distinct: in
  the prompt this is exactly Wang et al.'s and ACDC's "ABC" distribution.
* ``fresh_names``: A and B are replaced by two fresh names at every occurrence, so the corrupted
  sentence is still an IOI sentence (with its own answer) and only the names' identities are lost.
  The held-out ``test_corruption`` and ``test_ood`` splits use the corruption that is not the training one.

Template sets: ``mixed`` (BABA and ABBA alternating, the default), ``baba``, ``abba`` and ``abc``
(Wang's three-name templates ``[A], [B] and [C] ... [B] and [C] gave ... to [A]``; there the third
name C is also replaced by a fresh name in either corruption).

Only names that are one token (with their leading space) for the model's tokenizer are used,
so clean and corrupted prompts always have the same length.
"""

from __future__ import annotations

import re

from . import _data
from .prompt_pairs import PromptPairTask
from .task import DEFAULT_N_TRAIN, check_choice, generate, partition_templates, split_plan, split_sizes
from .tokens import default_prepend_bos, single_token_words

IOI_CORRUPTIONS = ("four_names", "fresh_names")
IOI_TEMPLATE_SETS = ("mixed", "baba", "abba", "abc")
_SLOT = re.compile(r"\[(A|B|C|PLACE|OBJECT)\]")


class IOI(PromptPairTask):
    """The IOI task for one model's tokenizer.

    Args:
        model: a HookedTransformer/TransformerBridge (or a Hugging Face tokenizer).
        n_train, n_validation, n_test: split sizes (default 1,000 / 200 / 12,256; the paper's: 200 / 200 / 12,256).
        corruption: ``"four_names"`` (default) or ``"fresh_names"``.
        templates: ``"mixed"`` (BABA and ABBA alternating, 15 each), ``"baba"``, ``"abba"`` or ``"abc"``;
            or an explicit list of template strings using [A], [B], [C], [PLACE], [OBJECT].
        heldout_templates: templates held out of training for the validation split, and as many again
            for the ``test_templates``/``test_ood`` splits (default: a sixth of the templates each; 0: none).
        n_heldout: pairs in each held-out split (``test_templates``, ``test_corruption``, ``test_ood``).
        seed: seeds everything.
        prepend_bos: default the model's ``cfg.default_prepend_bos``.
    """

    #: the paper's training pairs (:data:`~mgnp_lens.tasks.task.DEFAULT_N_TRAIN` is the default)
    PAPER_N_TRAIN = 200

    def __init__(self, model, n_train: int = DEFAULT_N_TRAIN, n_validation: int = 200, n_test: int = 12_256,
                 corruption: str = "four_names", templates="mixed", heldout_templates: int | None = None,
                 n_heldout: int = 1024, seed: int = 0, prepend_bos: bool | None = None):
        if corruption == "abc":
            raise ValueError("IOI corruption 'abc' gave the same corrupted prompts as 'four_names' (they differ only in "
                             "the answer slot, which the prompt cuts off); use 'four_names' for the ABC distribution "
                             "or 'fresh_names' for a different corruption")
        check_choice("IOI corruption", corruption, IOI_CORRUPTIONS)
        self.data = data = _data.load("ioi")
        tpl = self._templates(templates)
        sizes = split_sizes(n_train, n_validation, n_test)
        names = single_token_words(model, data["names"])
        if len(names) < 6:
            raise ValueError(f"only {len(names)} IOI names are single tokens for this tokenizer; need at least 6")
        self.names, self.templates, self.corruption, self.seed = names, tpl, corruption, seed
        self.heldout_templates = len(tpl) // 6 if heldout_templates is None else heldout_templates
        self.template_splits = partition_templates(tpl, self.heldout_templates)
        other = next(c for c in IOI_CORRUPTIONS if c != corruption)
        records = generate(split_plan(sizes, n_heldout, self.template_splits, corruption, other), seed, self._record)
        self.records = [r for recs in records.values() for r in recs]
        splits = self.build_splits(model, records, default_prepend_bos(model, prepend_bos))
        super().__init__(splits, name="ioi", metric_name="logit diff (IO - S)")

    def _templates(self, templates) -> list[str]:
        if isinstance(templates, str):
            check_choice("IOI template set", templates, IOI_TEMPLATE_SETS)
            if templates == "mixed":
                return [t for pair in zip(self.data["templates_baba"], self.data["templates_abba"]) for t in pair]
            return list(self.data[f"templates_{templates}"])
        tpl = list(templates)
        for t in tpl:
            if not t.endswith("[A]") or "[B]" not in t or t.count("[A]") != 2:
                raise ValueError(f"IOI template {t!r} must contain [A] twice and [B], and end with the answer slot [A]")
        return tpl

    def _record(self, rng, i: int, t: str, corruption: str) -> dict:
        """One clean/corrupted pair from template ``t``."""
        a, b, c, *fresh = rng.sample(self.names, 7)
        place, obj = rng.choice(self.data["places"]), rng.choice(self.data["objects"])
        clean_text = self._fill(t, {"A": [a, a], "B": [b, b], "C": [c, c]}, place, obj)
        if corruption == "four_names":  # first A, first B, second B, second A (+ C)
            subst = {"A": [fresh[0], fresh[3]], "B": [fresh[1], fresh[2]], "C": [fresh[3], fresh[3]]}
        else:  # fresh_names: A -> x and B -> y everywhere (+ C -> z)
            subst = {"A": [fresh[0], fresh[0]], "B": [fresh[1], fresh[1]], "C": [fresh[2], fresh[2]]}
        return {"clean": clean_text, "corrupted": self._fill(t, subst, place, obj), "correct": " " + a,
                "incorrect": " " + b, "template": t, "corruption": corruption, "io": a, "s": b}

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
                "n_templates": len(self.templates),
                "heldout_templates": self.heldout_templates}
