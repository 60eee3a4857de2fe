"""The benchmark harness: every script declares its arguments and writes its JSON one way, every result says how it
was made, and every committed result is cited by a page."""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "harness.py")
PAGES = ["README.md", "docs/**/*.md", "benchmarks/*.py", "notebooks/*.ipynb"]


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCH))
    try:
        import harness
        yield harness
    finally:
        sys.path.remove(str(BENCH))


def test_every_script_takes_its_options_and_writes_its_json_through_the_harness():
    for path in SCRIPTS:
        text = path.read_text()
        assert "ArgumentParser(" not in text, f"{path.name} builds its own parser (use harness.parser)"
        assert "sys.path.insert(0, str(Path(__file__)" not in text and "_common" not in text, path.name
        assert re.search(r"\b(round_)?parser\(__doc__, \"\w+\"", text), f"{path.name} has no harness.parser"
        assert re.search(r"\bwrite\(", text), f"{path.name} writes no result"


def test_a_result_records_the_command_the_code_and_the_versions(harness, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--tag", "t"])
    args = harness.parser("doc", "x", device=True, settings=True).parse_args(["--set", "lr=0.1", "--tag", "t"])
    assert harness.settings_of(args) == {"lr": 0.1} and args.device == "cpu"
    assert harness.result_path("x", None, args.tag) == BENCH / "results" / "archive" / "x_t.json"
    path = harness.write("x", {"value": 1}, str(tmp_path / "x.json"), args.tag)
    saved = json.loads(path.read_text())
    assert saved["benchmark"] == "x" and saved["value"] == 1 and saved["command"] == "python benchmarks/x.py --tag t"
    assert re.fullmatch(r"[0-9a-f]{40}", saved["code"]["commit"]) and isinstance(saved["code"]["dirty"], bool)
    assert saved["versions"]["mgnp-lens"] and saved["versions"]["torch"] and saved["machine"]["cpus"]
    with pytest.raises(SystemExit, match="--set: .*unknown PruningConfig field"):
        harness.settings_of(harness.parser(None, "x", settings=True).parse_args(["--set", "lrr=1"]))


def _expand(token: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", token)
    if not m:
        return [token]
    return list(itertools.chain.from_iterable(_expand(token[:m.start()] + alt + token[m.end():])
                                              for alt in m.group(1).split(",")))


def test_every_committed_result_is_cited_by_a_page():
    text = "\n".join(p.read_text() for pattern in PAGES for p in ROOT.glob(pattern))
    patterns = {e.split("/")[-1] for tok in re.findall(r"[\w./*{},-]+", text) if ("*" in tok or "{" in tok)
                for e in _expand(tok) if e.endswith(".json")}
    results = [*BENCH.glob("results/*.json"), *BENCH.glob("results/archive/*.json")]
    assert len(results) > 20
    uncited = [p.relative_to(ROOT).as_posix() for p in results if p.stem not in text and not any(
        fnmatch.fnmatch(p.name, pat) for pat in patterns if len(pat.replace("*", "")) > 8)]
    assert not uncited, f"results no page cites (cite them or delete them): {uncited}"


@pytest.mark.slow
def test_every_script_answers_help():
    for path in SCRIPTS:
        proc = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--out" in proc.stdout and "--tag" in proc.stdout, (path.name, proc.stderr)


def test_three_seed_means_cover_every_three_of_the_seeds(harness):
    import seed_stability

    pairs = [{"seeds": list(p), "attn_head": 0.9 if 3 not in p else 0.6} for p in itertools.combinations(range(4), 2)]
    out = seed_stability.three_seed_means(pairs)
    assert out["of"] == 4 and out["means"]["0,1,2"] == pytest.approx(0.9) and out["min"] == pytest.approx(0.7)
    assert out["at_least_goal"] == 1


def test_whole_nodes_scores_another_run_only_for_one_task():
    proc = subprocess.run([sys.executable, str(BENCH / "whole_nodes.py"), "--tasks", "ioi", "gt", "--run", "runs/x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--run scores one run" in proc.stderr, proc.stderr


def test_undecided_gates_keeps_or_prunes_exactly_the_gates_near_the_threshold(harness):
    import torch
    from helpers import micro_model

    import mgnp_lens as mg
    import undecided_gates

    dims = mg.ModelDims.from_model(micro_model("gpt2"))
    circuit = mg.Circuit.full(dims)
    log_alpha = {g: torch.full(dims.shape(g), 5.0) for g in dims.granularities}
    log_alpha["mlp_hidden"].view(-1)[:3] = torch.tensor([0.5, -0.5, -2.0])  # two undecided, one closed
    masks = dict(circuit.masks)
    masks["mlp_hidden"] = log_alpha["mlp_hidden"] > 0
    found = mg.Circuit(dims, masks)
    out = undecided_gates.variants(found, log_alpha, ["mlp_hidden"], band=1.0)
    n = dims.count("mlp_hidden")
    assert out["as found"] is found and found.count("mlp_hidden") == n - 2
    assert out["undecided kept"].count("mlp_hidden") == n - 1  # the one at −0.5 added; −2.0 stays out
    assert out["undecided pruned"].count("mlp_hidden") == n - 3  # the one at +0.5 dropped
    assert out["undecided kept"].count("attn_head") == found.count("attn_head")
