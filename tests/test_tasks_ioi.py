"""The IOI generator with the real GPT-2 tokenizer."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from mgnp_lens.tasks import IOI


def all_pairs(task):
    for split in ("train", "validation", "test"):
        for b in task.split(split).buckets:
            yield split, b


def test_ioi_with_gpt2_tokenizer(tok):
    task = IOI(tok, n_test=300, n_heldout=40)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 1000, "validation": 200, "test": 300,
                                                            "test_templates": 40, "test_corruption": 40, "test_ood": 40}
    assert len(task.names) >= 80
    for name in task.names:
        assert len(tok.encode(" " + name)) == 1
    df = task.to_dataframe()
    assert len(df) == 1000 + 200 + 300 + 3 * 40 and set(df["split"]) == set(task.splits)
    for _, row in df.iterrows():
        assert len(tok.encode(row["clean"])) == len(tok.encode(row["corrupted"]))
        clean_words, corrupted_words = re.findall(r"\w+", row["clean"]), set(re.findall(r"\w+", row["corrupted"]))
        assert clean_words.count(row["incorrect"].strip()) == 2  # S appears twice, IO once
        assert clean_words.count(row["correct"].strip()) == 1
        assert row["incorrect"].strip() not in corrupted_words and row["correct"].strip() not in corrupted_words
    for split, b in all_pairs(task):
        assert b.clean.shape == b.corrupted.shape
        assert all(len(tok.decode([int(t)]).strip()) > 0 for t in b.correct)
    # the templates alternate BABA and ABBA
    assert df["template"].iloc[0].startswith("Then, [B] and [A]") and df["template"].iloc[1].startswith("Then, [A] and [B]")


def test_ioi_abc_is_refused_because_it_equalled_four_names(tok):
    with pytest.raises(ValueError, match="same corrupted prompts as 'four_names'.*'fresh_names'"):
        IOI(tok, corruption="abc")


def test_ioi_corruptions_and_prepend_bos(tok):
    task = IOI(tok, n_train=10, n_validation=5, n_test=5, n_heldout=6, prepend_bos=True)
    df = task.to_dataframe()
    for _, row in df.iterrows():
        names_in_corrupted = [w for w in re.findall(r"\w+", row["corrupted"]) if w in task.names]
        if row["corruption"] == "four_names":  # three distinct fresh names: Wang's ABC
            assert len(set(names_in_corrupted)) == 3
        else:  # fresh_names: an IOI sentence of two fresh names, the subject's repeated
            assert len(set(names_in_corrupted)) == 2 and len(names_in_corrupted) == 3
        assert row["correct"].strip() not in names_in_corrupted and row["incorrect"].strip() not in names_in_corrupted
    assert set(df.loc[df.split.isin(["test_corruption", "test_ood"]), "corruption"]) == {"fresh_names"}
    assert set(df.loc[~df.split.isin(["test_corruption", "test_ood"]), "corruption"]) == {"four_names"}
    assert IOI(tok, n_train=4, n_validation=2, n_test=2, n_heldout=2, corruption="fresh_names") \
        .to_dataframe().query("split == 'test_corruption'")["corruption"].eq("four_names").all()
    b = task.split("train").buckets[0]
    assert (b.clean[:, 0] == tok.bos_token_id).all()


def test_ioi_holds_templates_out_of_training(tok):
    task = IOI(tok, n_train=60, n_validation=20, n_test=30, n_heldout=20)
    df = task.to_dataframe()
    by_split = {s: set(df.loc[df.split == s, "template"]) for s in task.splits}
    assert len(task.template_splits["validation"]) == len(task.template_splits["test"]) == 5  # 30 templates // 6
    assert by_split["train"] == set(task.template_splits["train"]) and len(by_split["train"]) == 20
    assert not by_split["validation"] & by_split["train"] and not by_split["test_templates"] & by_split["train"]
    assert not by_split["validation"] & by_split["test_templates"]
    assert by_split["test"] <= by_split["train"] and by_split["test_corruption"] <= by_split["train"]
    assert by_split["test_ood"] == by_split["test_templates"]
    assert task.heldout_splits() == ["test_templates", "test_corruption", "test_ood"]
    # every split draws from its own random stream: more held-out pairs leave the training pairs alone
    more = IOI(tok, n_train=60, n_validation=20, n_test=30, n_heldout=50).to_dataframe()
    pd.testing.assert_frame_equal(df[df.split == "train"], more[more.split == "train"])
    none = IOI(tok, n_train=8, n_validation=4, n_test=4, heldout_templates=0, n_heldout=4)
    assert none.heldout_splits() == ["test_corruption"]
    assert IOI(tok, n_train=8, n_validation=4, n_test=4, n_heldout=0).heldout_splits() == []
    with pytest.raises(ValueError, match="heldout_templates=15 holds out 30 of 30 templates"):
        IOI(tok, heldout_templates=15)
    with pytest.raises(ValueError, match="n_heldout must be a non-negative integer"):
        IOI(tok, n_heldout=-1)


def test_ioi_abc_templates(tok):
    task = IOI(tok, n_train=12, n_validation=4, n_test=4, templates="abc")
    for _, row in task.to_dataframe().iterrows():
        words = re.findall(r"\w+", row["clean"])
        assert len({w for w in words if w in task.names}) == 3
        assert words.count(row["correct"].strip()) == 1
        assert len(tok.encode(row["clean"])) == len(tok.encode(row["corrupted"]))


def test_ioi_is_seeded(tok):
    a = IOI(tok, n_test=20, seed=3).to_dataframe()
    b = IOI(tok, n_test=20, seed=3).to_dataframe()
    c = IOI(tok, n_test=20, seed=4).to_dataframe()
    pd.testing.assert_frame_equal(a, b)
    assert not a["clean"].equals(c["clean"])
