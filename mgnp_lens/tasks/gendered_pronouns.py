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

from . import _data
from .prompt_pairs import PromptPairTask
from .task import DEFAULT_N_TRAIN, check_choice, generate, partition_templates, split_plan, split_sizes
from .tokens import answer_token_id, default_prepend_bos, n_tokens

GP_CORRUPTIONS = ("opposite_gender_name", "neutral")
GP_TEMPLATE_SETS = ("ep", "mathwin")
NEUTRALS = ("someone", "That person", "That other person")

class GenderedPronouns(PromptPairTask):
    """The Gendered-Pronoun task for one model's tokenizer.

    Args:
        model: a HookedTransformer/TransformerBridge (or a Hugging Face tokenizer).
        n_train, n_validation, n_test: split sizes (default 1,000 / 150 / 378; the paper's: 150 / 150 / 378).
        corruption: ``"opposite_gender_name"`` (default) or ``"neutral"``.
        templates: ``"ep"`` (30 templates, 1000 + 1000 names; default) or ``"mathwin"`` (5 templates, 10 + 10).
        heldout_templates: templates held out of training for the validation split, and as many again
            for the ``test_templates``/``test_ood`` splits (default: a sixth of the templates each; 0: none).
        n_heldout: pairs in each held-out split (``test_templates``, ``test_corruption`` under the other
            corruption, ``test_ood``).
        seed: seeds everything.
        prepend_bos: default the model's ``cfg.default_prepend_bos``.
    """

    #: the paper's training pairs (:data:`~mgnp_lens.tasks.task.DEFAULT_N_TRAIN` is the default)
    PAPER_N_TRAIN = 150

    def __init__(self, model, n_train: int = DEFAULT_N_TRAIN, n_validation: int = 150, n_test: int = 378,
                 corruption: str = "opposite_gender_name", templates: str = "ep",
                 heldout_templates: int | None = None, n_heldout: int = 1024, seed: int = 0,
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
        # names usable under each corruption, and for swaps the other gender's names by token count
        self.usable = {c: self._usable(names, length, neutral_by_len, c) for c in GP_CORRUPTIONS}
        if not self.usable[corruption]["male"] or not self.usable[corruption]["female"]:
            raise ValueError("no usable Gendered-Pronoun names for this tokenizer and corruption")
        self.by_len = {g: {} for g in names}
        for g, ns in names.items():
            for n in ns:
                self.by_len[g].setdefault(length[g][n], []).append(n)
        self.length, self.neutral_by_len, self.pronoun, self.answers = length, neutral_by_len, pronoun, data["answers"]
        self.corruption, self.templates_name, self.seed = corruption, templates, seed
        self.heldout_templates = len(tpl) // 6 if heldout_templates is None else heldout_templates
        self.template_splits = partition_templates(list(tpl), self.heldout_templates)
        other = next(c for c in GP_CORRUPTIONS if c != corruption)
        if not self.usable[other]["male"] or not self.usable[other]["female"]:
            other = None  # no names of the right length: no other-corruption splits
        records = generate(split_plan(sizes, n_heldout, self.template_splits, corruption, other), seed, self._record)
        self.records = [r for recs in records.values() for r in recs]
        splits = self.build_splits(model, records, default_prepend_bos(model, prepend_bos))
        super().__init__(splits, name="gp", metric_name="logit diff (consistent - inconsistent pronoun)")

    @staticmethod
    def _usable(names, length, neutral_by_len, corruption) -> dict[str, list[str]]:
        """Names that ``corruption`` can replace keeping the token count (by a neutral phrase or a name)."""
        other_lengths = {g: {length[o][n] for n in names[o]} for g, o in (("male", "female"), ("female", "male"))}
        keep = (lambda g, n: length[g][n] in neutral_by_len) if corruption == "neutral" else \
            (lambda g, n: length[g][n] in other_lengths[g])
        return {g: [n for n in ns if keep(g, n)] for g, ns in names.items()}

    def _record(self, rng, i: int, t: str, corruption: str) -> dict:
        """One clean/corrupted pair from template ``t`` (even rows male, odd rows female)."""
        gender = "male" if i % 2 == 0 else "female"
        other = "female" if gender == "male" else "male"
        name = rng.choice(self.usable[corruption][gender])
        if corruption == "neutral":
            swap = self.neutral_by_len[self.length[gender][name]]
        else:
            swap = rng.choice(self.by_len[other][self.length[gender][name]])
        return {"clean": t.format(name=name), "corrupted": t.format(name=swap),
                "correct": self.answers[gender], "incorrect": self.answers[other],
                "correct_id": self.pronoun[gender], "incorrect_id": self.pronoun[other],
                "gender": gender, "name": name, "template": t, "corruption": corruption}

    def describe(self) -> dict:
        return {**super().describe(), "corruption": self.corruption, "templates": self.templates_name,
                "seed": self.seed, "heldout_templates": self.heldout_templates}
