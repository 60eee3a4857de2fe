"""PromptPairTask from tokens, text, records, DataFrames and files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from mgnp_lens.tasks import PromptPairTask


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
