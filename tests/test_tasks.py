"""The paper's task generators with the real GPT-2 tokenizer and the embedded SmolLM2 model."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.tasks import GenderedPronouns, GreaterThan, IOI, PromptPairTask, get_task
from mgnp_lens.tasks.greater_than import tokenizer_family, valid_years_two_digit

from conftest import SHARED, gpt2_tokenizer


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def all_pairs(task):
    for split in ("train", "validation", "test"):
        for b in task.split(split).buckets:
            yield split, b


def test_task_data_is_a_copy_of_shared():
    from mgnp_lens.tasks._data import DATA_DIR

    for name in ("ioi", "greater_than", "gendered_pronouns", "reference_circuits", "paper_tables"):
        assert json.loads((DATA_DIR / f"{name}.json").read_text()) == json.loads(
            (SHARED / "data" / f"{name}.json").read_text())


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


class _CharTokenizer:
    """A tokenizer with one token per character: every name is many tokens."""

    bos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [ord(ch) % 500 + 1 for ch in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_empty_result_after_filtering_is_an_error():
    with pytest.raises(ValueError, match="IOI names are single tokens"):
        IOI(_CharTokenizer())
    with pytest.raises(ValueError, match="unsupported tokenizer for Greater-Than"):
        GreaterThan(_CharTokenizer())


def test_ioi_is_seeded(tok):
    a = IOI(tok, n_test=20, seed=3).to_dataframe()
    b = IOI(tok, n_test=20, seed=3).to_dataframe()
    c = IOI(tok, n_test=20, seed=4).to_dataframe()
    pd.testing.assert_frame_equal(a, b)
    assert not a["clean"].equals(c["clean"])


def test_greater_than_years_follow_the_gpt2_rule(tok):
    assert tokenizer_family(tok) == "two_digit"
    assert [tok.decode([i]) for i in tok.encode(" 1743")] == [" 17", "43"]
    years = valid_years_two_digit(tok, 17)
    assert 1743 in years
    every = [y for y in range(1700, 1800) if [tok.decode([i]) for i in tok.encode(f" {y}")] == [" 17", f"{y % 100:02d}"]]
    assert years == every[1:-1]  # first and last valid year dropped
    task = GreaterThan(tok, n_test=200)
    df = task.to_dataframe()
    assert len(df) == 500
    for _, row in df.iterrows():
        assert row["start_year"] in valid_years_two_digit(tok, row["start_year"] // 100)
        assert len(tok.encode(row["clean"])) == len(tok.encode(row["corrupted"]))
        assert row["clean"].endswith(f" {row['start_year'] // 100}")
        assert 1 <= row["corrupted_start_year"] % 100 <= 98


def test_greater_than_metric_two_digit(tok):
    task = GreaterThan(tok, n_train=4, n_validation=2, n_test=2, metric="plain")
    batch = next(task.split("train").batches(4))
    logits = torch.full((len(batch), len(tok)), -1e4)
    later = torch.stack([task.answer_ids[min(int(t) + 1, 99)] for t in batch.meta["threshold"]])
    logits[torch.arange(len(batch)), later] = 10.0  # all mass on a later year
    assert torch.allclose(task.metric(logits, batch), torch.ones(len(batch)), atol=1e-4)
    window = GreaterThan(tok, n_train=4, n_validation=2, n_test=2, metric="window")
    far = torch.full((len(batch), len(tok)), -1e4)
    far[:, task.answer_ids[99]] = 10.0
    far_batch = window.split("train").buckets[0]
    thr = far_batch.meta["threshold"]
    expected = ((99 - thr) <= 10).float()  # only counts inside the +-10 window
    logits2 = torch.full((len(far_batch), len(tok)), -1e4)
    logits2[:, task.answer_ids[99]] = 10.0
    assert torch.allclose(window.metric(logits2, far_batch), expected, atol=1e-4)


def test_gendered_pronouns_with_gpt2_tokenizer(tok):
    assert len(tok.encode(" he")) == 1 and len(tok.encode(" she")) == 1
    task = GenderedPronouns(tok)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 150, "validation": 150, "test": 378}
    df = task.to_dataframe()
    for _, row in df.iterrows():
        assert len(tok.encode(row["clean"])) == len(tok.encode(row["corrupted"]))
        assert row["correct"] == (" he" if row["gender"] == "male" else " she")
    neutral = GenderedPronouns(tok, corruption="neutral", templates="mathwin", n_test=20).to_dataframe()
    assert neutral["corrupted"].str.startswith("So someone ").all()  # Mathwin names are one token
    ep_neutral = GenderedPronouns(tok, corruption="neutral", n_test=20).to_dataframe()
    assert ep_neutral["corrupted"].str.contains("That person").any()
    for _, row in pd.concat([neutral, ep_neutral]).iterrows():
        assert len(tok.encode(row["clean"])) == len(tok.encode(row["corrupted"]))


@pytest.mark.parametrize("make, match", [
    (lambda t: IOI(t, corruption="swap"), "unknown IOI corruption 'swap'"),
    (lambda t: GreaterThan(t, corruption="nope"), "unknown Greater-Than corruption"),
    (lambda t: GenderedPronouns(t, corruption="nope"), "unknown Gendered-Pronoun corruption"),
    (lambda t: GreaterThan(t, metric="nope"), "unknown Greater-Than metric"),
    (lambda t: IOI(t, n_train=0), "n_train must be a positive integer"),
    (lambda t: get_task("docstring", t), "unknown task 'docstring'"),
])
def test_bad_task_arguments(tok, make, match):
    with pytest.raises(ValueError, match=match):
        make(tok)


def test_custom_task_errors_name_the_problem(tok):
    with pytest.raises(ValueError, match=r"row 1: clean prompt .* is \d+ tokens but corrupted prompt"):
        PromptPairTask.from_strings(tok, ["a b", "John went home"], ["c d", "Alexandria Ocasio went home"],
                                    [" x", " y"], [" y", " x"])
    with pytest.raises(ValueError, match=r"row 0: answer ' Christopherson' is 2 tokens"):
        PromptPairTask.from_strings(tok, ["a b"], ["c d"], [" Christopherson"], [" x"])
    with pytest.raises(ValueError, match="no prompt pairs"):
        PromptPairTask.from_tokens([], [], [], [])


def test_custom_task_from_records_dataframe_csv_jsonl(tok, tmp_path):
    records = [{"clean": "When Mary and John went out, John thanked", "corrupted": "When Anna and Paul went out, Mark thanked",
                "correct": " Mary", "incorrect": " John"}] * 10
    a = PromptPairTask.from_records(tok, records, seed=1)
    pd.DataFrame(records).to_csv(tmp_path / "pairs.csv", index=False)
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    b = PromptPairTask.from_csv(tok, tmp_path / "pairs.csv", seed=1)
    c = PromptPairTask.from_jsonl(tok, tmp_path / "pairs.jsonl", seed=1)
    d = PromptPairTask.from_dataframe(tok, pd.DataFrame(records), seed=1)
    for t in (b, c, d):
        assert torch.equal(t.split("train").buckets[0].clean, a.split("train").buckets[0].clean)
    assert len(a.split("train")) + len(a.split("test")) + len(a.split("validation")) == 10
    with pytest.raises(ValueError, match="missing column.*incorrect"):
        PromptPairTask.from_records(tok, [{"clean": "a", "corrupted": "b", "correct": " x"}])
    with pytest.raises(FileNotFoundError):
        PromptPairTask.from_csv(tok, tmp_path / "none.csv")


def test_mixed_lengths_are_bucketed_without_padding(tok):
    task = GenderedPronouns(tok, n_test=50)
    pairs = task.split("train")
    assert len(pairs.buckets) > 1
    seen = 0
    for b in pairs.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert b.clean.shape == b.corrupted.shape
        assert (b.answer_pos == b.clean.shape[1] - 1).all()
        seen += len(b)
    assert seen == 150


# ----------------------------------------------------------------------------- the embedded SmolLM2 model
def test_digit_level_greater_than_end_to_end(default_model):
    model = default_model
    task = GreaterThan(model, n_train=16, n_validation=8, n_test=48)
    assert task.family == "digit"
    df = task.to_dataframe()
    row = df.iloc[0]
    tokens = model.to_str_tokens(row["clean"], prepend_bos=False)
    assert tokens[-2:] == list(str(row["start_year"] // 100))  # ends with the century's two digits
    assert 1 <= row["threshold"] <= 8 and row["threshold"] == (row["start_year"] % 100) // 10
    assert row["correct"] == str(row["threshold"] + 1) and row["incorrect"] == str(row["threshold"] - 1)
    full = mg.evaluate(model, task, mg.Circuit.full(model), "test")
    assert full.kl < 1e-6 and full.base_metric > 0
    result = mg.discover(model, task, steps=2, batch_size=8, progress=False)
    assert torch.isfinite(torch.tensor(result.train_evaluation.kl))


@pytest.mark.parametrize("make", [lambda m: IOI(m, n_test=64), lambda m: GenderedPronouns(m, n_test=64)])
def test_full_model_metric_is_positive_on_smollm2(default_model, make):
    task = make(default_model)
    full = mg.evaluate(default_model, task, mg.Circuit.full(default_model), "test")
    empty = mg.evaluate(default_model, task, mg.Circuit.empty(default_model), "test")
    assert full.base_metric > 0.5
    assert empty.circuit_metric < full.base_metric
