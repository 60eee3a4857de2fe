"""Gendered Pronouns (Mathwin & Corlouer 2023; Edge Pruning/MGNP variant), from ``data/gendered_pronouns.json``.

``"So Mary is a really great friend, isn't"`` → `` she`` (consistent, correct) vs `` he`` (incorrect).
Metric: logit diff consistent − inconsistent pronoun (paper Eq. 11).

Corruptions:

* ``opposite_gender_name`` (default, EP/MGNP): the name becomes a random name of the other gender with
  the same token count, so the corrupted prompt's answer flips.
* ``neutral`` (ACDC): the name becomes a gender-neutral subject. ACDC uses ``That person``; to keep
  clean and corrupted prompts the same length we use the phrase of :data:`NEUTRALS` with the
  name's token count (``someone`` for one-token names, ``That person`` for two, ``That other person``
  for three); names matching none are not used with this corruption.
"""

from __future__ import annotations

import random

from . import _data
from .prompt_pairs import PromptPairTask
from .task import check_choice, split_sizes
from .tokens import answer_token_id, default_prepend_bos, n_tokens

GP_CORRUPTIONS = ("opposite_gender_name", "neutral")
GP_TEMPLATE_SETS = ("ep", "mathwin")
NEUTRALS = ("someone", "That person", "That other person")


class GenderedPronouns(PromptPairTask):
    """The Gendered-Pronoun task for one model's tokenizer.

    Args:
        model: a HookedTransformer/TransformerBridge (or a Hugging Face tokenizer).
        n_train, n_validation, n_test: split sizes (paper: 150 / 150 / 378).
        corruption: ``"opposite_gender_name"`` (default) or ``"neutral"``.
        templates: ``"ep"`` (30 templates, 1000 + 1000 names; default) or ``"mathwin"`` (5 templates, 10 + 10).
        seed: seeds everything.
        prepend_bos: default the model's ``cfg.default_prepend_bos``.
    """

    def __init__(self, model, n_train: int = 150, n_validation: int = 150, n_test: int = 378,
                 corruption: str = "opposite_gender_name", templates: str = "ep", seed: int = 0,
                 prepend_bos: bool | None = None):
        check_choice("Gendered-Pronoun corruption", corruption, GP_CORRUPTIONS)
        check_choice("Gendered-Pronoun template set", templates, GP_TEMPLATE_SETS)
        data = _data.load("gendered_pronouns")
        sizes = split_sizes(n_train, n_validation, n_test)
        suffix = "ep_mgnp" if templates == "ep" else "mathwin"
        tpl = data[f"templates_{suffix}"]
        names = {"male": data[f"male_names_{suffix}"], "female": data[f"female_names_{suffix}"]}
        pronoun = {g: answer_token_id(model, data["answers"][g]) for g in ("male", "female")}
        length = {g: {n: n_tokens(model, " " + n) for n in ns} for g, ns in names.items()}
        neutral_by_len = {}
        for phrase in NEUTRALS:
            neutral_by_len.setdefault(n_tokens(model, " " + phrase), phrase)
        if corruption == "neutral":
            names = {g: [n for n in ns if length[g][n] in neutral_by_len] for g, ns in names.items()}
        # names of the other gender grouped by token count, for length-preserving swaps
        by_len = {g: {} for g in names}
        for g, ns in names.items():
            for n in ns:
                by_len[g].setdefault(length[g][n], []).append(n)
        other = {"male": "female", "female": "male"}
        usable = {g: [n for n in ns if corruption == "neutral" or length[g][n] in by_len[other[g]]]
                  for g, ns in names.items()}
        if not usable["male"] or not usable["female"]:
            raise ValueError("no usable Gendered-Pronoun names for this tokenizer and corruption")
        self.corruption, self.templates_name, self.seed = corruption, templates, seed
        rng = random.Random(seed)
        records = []
        for i in range(sum(sizes.values())):
            t = tpl[i % len(tpl)]
            gender = "male" if i % 2 == 0 else "female"
            name = rng.choice(usable[gender])
            if corruption == "neutral":
                swap = neutral_by_len[length[gender][name]]
            else:
                swap = rng.choice(by_len[other[gender]][length[gender][name]])
            records.append({"clean": t.format(name=name), "corrupted": t.format(name=swap),
                            "correct": data["answers"][gender], "incorrect": data["answers"][other[gender]],
                            "correct_id": pronoun[gender], "incorrect_id": pronoun[other[gender]],
                            "gender": gender, "name": name, "template": t})
        self.records = records
        splits = self.build_splits(model, records, sizes, default_prepend_bos(model, prepend_bos))
        super().__init__(splits, name="gp", metric_name="logit diff (consistent - inconsistent pronoun)")

    def describe(self) -> dict:
        return {**super().describe(), "corruption": self.corruption, "templates": self.templates_name,
                "seed": self.seed}
