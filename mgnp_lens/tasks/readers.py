"""Readers of prompt-pair files (CSV with a header line, JSON lines): records, each labelled by its file line."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def _text(path) -> tuple[Path, str]:
    """The file's text; ``FileNotFoundError`` or a ``ValueError`` that names an empty or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt-pair file at {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty; expected prompt pairs with clean, corrupted, correct, "
                         "incorrect")
    return path, text


COLUMNS = ("clean", "corrupted", "correct", "incorrect")


def read_csv(path) -> tuple[list[dict], list[str]]:
    """A prompt-pair CSV's rows as dicts of strings, cells verbatim (answers keep their leading space), and
    each row's label (``"pairs.csv line 7"``: the file line the row starts on, the header being line 1).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an empty or non-UTF-8 file, or a header without the :data:`COLUMNS`.
    """
    path, text = _text(path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} in the header line {reader.fieldnames}; need "
                         f"{','.join(COLUMNS)}")
    records, labels, line = [], [], 2
    for row in reader:
        records.append(row)
        labels.append(f"{path.name} line {line}")
        line = reader.line_num + 1
    if not records:
        raise ValueError(f"{path}: a header line but no prompt pairs")
    return records, labels


def read_jsonl(path) -> tuple[list[dict], list[str]]:
    """The objects of a JSON-lines file, one a line (blank lines skipped), and each one's label
    (``"pairs.jsonl line 3"``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an empty or non-UTF-8 file, a line that is not a JSON object, or one whose clean, corrupted,
            correct or incorrect is missing, null, a number or NaN (each named by its line).
    """
    path, text = _text(path)
    records, labels = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line, parse_constant=_no_constant)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            except ValueError as e:
                raise ValueError(f"{path.name} line {n}: {e}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object with clean, corrupted, correct, incorrect")
            _check_fields(record, f"{path.name} line {n}")
            records.append(record)
            labels.append(f"{path.name} line {n}")
    return records, labels


def _no_constant(name: str):
    raise ValueError(f"{name} is not text; every field of a prompt pair is a string")


def _check_fields(record: dict, label: str) -> None:
    """``ValueError`` naming ``label`` when a field of :data:`COLUMNS` is missing, null or not text (a number is
    text written out, as ``PromptPairTask.from_records`` reads it; NaN never gets here)."""
    for column in COLUMNS:
        if column not in record:
            raise ValueError(f"{label}: {column} is missing; each line needs {', '.join(COLUMNS)}")
        value = record[column]
        if value is None or isinstance(value, (bool, list, dict)):
            kind = "null" if value is None else json.dumps(value)
            raise ValueError(f"{label}: {column} is {kind}; expected text")
