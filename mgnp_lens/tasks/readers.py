"""Readers of prompt-pair files: CSV (a DataFrame) and JSON lines (a list of records)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def _existing(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no prompt-pair file at {path}")
    return path


def read_csv(path) -> pd.DataFrame:
    """A prompt-pair CSV as strings, cells verbatim (answers keep their leading space; empty cells stay '')."""
    return pd.read_csv(_existing(path), dtype=str, keep_default_na=False, skipinitialspace=False)


def read_jsonl(path) -> list[dict]:
    """The objects of a JSON-lines file, one a line (blank lines skipped).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a line that is not JSON, named by its line number.
    """
    path = _existing(path)
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return records
