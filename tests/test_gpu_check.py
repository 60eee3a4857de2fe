"""benchmarks/gpu_check.sh cannot rot: its dry run checks every command it would run on a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_parses_every_command():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=600, env={"PY": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    commands = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    scripts = [c.split()[2] for c in commands]
    assert scripts == ["benchmarks/end_to_end.py", "benchmarks/hook_overhead.py", "benchmarks/corruption_modes.py",
                       "benchmarks/paper_memory.py", "benchmarks/model_scaling.py", "benchmarks/end_to_end.py"]
    assert "--n-devices 2" in commands[-1]
    assert all("--device cuda" in c and "--out" in c for c in commands)
    assert "gpu check done" in proc.stdout
