"""Access to the task word lists and templates in the project's ``data/`` folder."""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

#: ``data/`` of a source checkout or editable install, else the copy a wheel installs under share/.
_CANDIDATES = (Path(__file__).resolve().parents[2] / "data", Path(sys.prefix) / "share" / "mgnp-lens" / "data")
DATA_DIR = next((p for p in _CANDIDATES if (p / "ioi.json").exists()), _CANDIDATES[0])


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """Read ``data/<name>.json`` (ioi, greater_than, gendered_pronouns, reference_circuits, paper_tables)."""
    path = DATA_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"task data file {path} is missing; reinstall mgnp-lens from its repository")
    return json.loads(path.read_text())
