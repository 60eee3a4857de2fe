"""The IOI generator with the real GPT-2 tokenizer."""

from __future__ import annotations

import re

import pandas as pd

from mgnp_lens.tasks import IOI


def all_pairs(task):
    for split in ("train", "validation", "test"):
        for b in task.split(split).buckets:
            yield split, b


def test_ioi_with_gpt2_tokenizer(tok):
    task = IOI(tok, n_test=300)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 200, "validation": 200, "test": 300}
    assert len(task.names) >= 80
    for name in task.names:
        assert len(tok.encode(" " + name)) == 1
    df = task.to_dataframe()
    assert len(df) == 700 and set(df["split"]) == {"train", "validation", "test"}
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


def test_ioi_abc_corruption_and_prepend_bos(tok):
    task = IOI(tok, n_train=10, n_validation=5, n_test=5, corruption="abc", prepend_bos=True)
    df = task.to_dataframe()
    for _, row in df.iterrows():
        names_in_corrupted = [w for w in re.findall(r"\w+", row["corrupted"]) if w in task.names]
        assert len(set(names_in_corrupted)) == 3
    b = task.split("train").buckets[0]
    assert (b.clean[:, 0] == tok.bos_token_id).all()


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
