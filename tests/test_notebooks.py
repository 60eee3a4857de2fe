"""The notebooks run top to bottom (fast setting: MGNP_NOTEBOOK_FAST=1) on the embedded default model."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # the edit loop skips it: pytest -m "not slow"

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "custom_task.ipynb", "compare_with_paper.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, default_model_loads, monkeypatch):
    # default_model_loads has converted the model into this session's MGNP_LENS_CACHE; the kernel inherits it
    monkeypatch.setenv("MGNP_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures and all("text/html" in o["data"] for o in figures)  # what nbconvert and the docs site show
    assert not any("IProgress not found" in o.get("text", "") for o in outputs)
    assert os.environ["MGNP_LENS_CACHE"]  # the kernel used the session cache, not the user's
    if path.stem == "quickstart":
        assert (tmp_path / "runs" / "quickstart" / "report.html").exists()
    if path.stem == "custom_task":
        assert (tmp_path / "runs" / "capitals" / "circuit.json").exists()


def test_the_committed_executed_quickstart_shows_a_real_circuit():
    nb = nbformat.read(NOTEBOOKS[0].parent / "executed" / "quickstart.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) >= 6 and all("text/html" in o["data"] for o in figures)
    summary = next(c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "result.circuit.summary()")
    heads = next(line for line in summary.outputs[0]["data"]["text/plain"].splitlines() if "attn_head" in line)
    kept, total = map(int, heads.split()[2:4])
    assert 0 < kept < total / 4  # pruned, not the fast setting's nearly full circuit
