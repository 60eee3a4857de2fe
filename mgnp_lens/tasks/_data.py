"""Access to the task word lists and templates shipped in the package's ``data/`` folder."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """Read ``data/<name>.json`` (ioi, greater_than, gendered_pronouns, reference_circuits, paper_tables)."""
    path = DATA_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"task data file {path} is missing; reinstall mgnp-lens from its repository")
    return json.loads(path.read_text())
