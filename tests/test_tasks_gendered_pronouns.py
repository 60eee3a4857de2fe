"""The Gendered-Pronouns generator with the real GPT-2 tokenizer."""

from __future__ import annotations

import pandas as pd

from mgnp_lens.tasks import GenderedPronouns


def test_gendered_pronouns_with_gpt2_tokenizer(tok):
    assert len(tok.encode(" he")) == 1 and len(tok.encode(" she")) == 1
    task = GenderedPronouns(tok, n_heldout=100)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 1000, "validation": 150, "test": 378,
                                                            "test_templates": 100, "test_corruption": 100, "test_ood": 100}
    df = task.to_dataframe()
    for _, row in df.iterrows():
        assert len(tok.encode(row["clean"])) == len(tok.encode(row["corrupted"]))
        assert row["correct"] == (" he" if row["gender"] == "male" else " she")
    assert task.to_dataframe().query("split == 'test_ood'")["corrupted"].str.contains("That person|That other person|someone").all()
    neutral = GenderedPronouns(tok, corruption="neutral", templates="mathwin", n_test=20, n_heldout=0).to_dataframe()
    assert neutral["corrupted"].str.startswith("So someone ").all()  # Mathwin names are one token
    ep_neutral = GenderedPronouns(tok, corruption="neutral", n_test=20).to_dataframe()
    assert ep_neutral["corrupted"].str.contains("That person").any()
    for _, row in pd.concat([neutral, ep_neutral]).iterrows():
        assert len(tok.encode(row["clean"])) == len(tok.encode(row["corrupted"]))
