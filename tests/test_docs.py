"""The documentation site builds with mkdocs --strict: every page, the API reference and the notebooks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the edit loop skips it: pytest -m "not slow"

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strictly_with_the_api_reference_and_the_notebooks(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    discovery = (tmp_path / "api" / "discovery" / "index.html").read_text()
    assert "mgnp_lens.discovery.discover" in discovery and "target_kl" in discovery
    assert "RayExecutor" in (tmp_path / "api" / "models" / "index.html").read_text()
    for nb in ("quickstart", "custom_task", "compare_with_paper"):
        assert "load_model" in (tmp_path / "notebooks" / nb / "index.html").read_text()
