"""The task word lists shipped with the package."""

from __future__ import annotations

import json

from helpers import SHARED


def test_task_data_is_a_copy_of_shared():
    from mgnp_lens.tasks._data import DATA_DIR

    for name in ("ioi", "greater_than", "gendered_pronouns", "reference_circuits", "paper_tables"):
        assert json.loads((DATA_DIR / f"{name}.json").read_text()) == json.loads(
            (SHARED / "data" / f"{name}.json").read_text())
