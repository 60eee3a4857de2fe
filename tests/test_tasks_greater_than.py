"""The Greater-Than generator: the valid-year rule, the metric, digit-level tokenizers."""

from __future__ import annotations

import torch

import mgnp_lens as mg
from mgnp_lens.tasks import GreaterThan
from mgnp_lens.tasks.greater_than import tokenizer_family, valid_years_two_digit


def test_greater_than_years_follow_the_gpt2_rule(tok):
    assert tokenizer_family(tok) == "two_digit"
    assert [tok.decode([i]) for i in tok.encode(" 1743")] == [" 17", "43"]
    years = valid_years_two_digit(tok, 17)
    assert 1743 in years
    every = [y for y in range(1700, 1800) if [tok.decode([i]) for i in tok.encode(f" {y}")] == [" 17", f"{y % 100:02d}"]]
    assert years == every[1:-1]  # first and last valid year dropped
    task = GreaterThan(tok, n_test=200, n_heldout=60)
    df = task.to_dataframe()
    assert len(df) == 1000 + 150 + 200 + 3 * 60  # train (the default 1,000) + validation + test + held out
    assert set(df.loc[df.split == "test_corruption", "corruption"]) == {"xx01"}
    assert not set(df.loc[df.split == "test_ood", "template"]) & set(df.loc[df.split == "train", "template"])
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


# ----------------------------------------------------------------------------- the embedded SmolLM2 model
def test_digit_level_greater_than_end_to_end(default_model):
    model = default_model
    task = GreaterThan(model, n_train=16, n_validation=8, n_test=48, n_heldout=48)
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
