"""DiscoveryResult.save / load: the Python path writes what `mgnp discover` writes, and reads it back whole."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.cli import EDGE_EXAMPLES
from mgnp_lens.config import PruningConfig
from mgnp_lens.tasks import PromptPairTask

from helpers import micro_model, random_pairs

SAME_BYTES = ("circuit.json", "per_layer.csv", "summary.csv", "evaluation.json", "history.csv", "edges.csv",
              "heads.csv", "attention.json", "examples.csv")


@pytest.fixture(scope="module")
def finished():
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=40, pos=6, seed=5)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    result = mg.discover(model, task, steps=30, batch_size=8, seed=2, lambda_scale=0.3, autocast="float32",
                         compile=False, progress=False, validate_every=10, validate_max_examples=8)
    return model, task, result


def test_a_saved_run_loads_back_whole(finished, tmp_path):
    _, _, result = finished
    result.save(tmp_path / "a")
    back = mg.DiscoveryResult.load(tmp_path / "a")
    assert back.circuit == result.circuit and back.config == result.config
    pd.testing.assert_frame_equal(back.history, result.history, check_dtype=False)
    pd.testing.assert_frame_equal(back.evaluations(), result.evaluations())
    assert back.steps_completed == result.steps_completed and back.selection == result.selection
    assert back.timings == pytest.approx(result.timings) and {"training", "edges", "views"} <= set(back.timings)
    for g, v in result.gates.log_alpha.items():
        assert torch.equal(back.gates.log_alpha[g].detach(), v.detach().cpu())
    pd.testing.assert_frame_equal(back.scores(), result.scores())  # the returned check's gates, from state.pt
    pd.testing.assert_frame_equal(back.views.edges, result.views.edges)
    assert back.views.patterns == json.loads(json.dumps(result.views.patterns))
    back.save(tmp_path / "b")  # and saved again, the same files
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert names == {p.name for p in (tmp_path / "b").iterdir()}
    for name in SAME_BYTES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    resumed = mg.discover(finished[0], finished[1], resume_from=tmp_path / "b", steps=32)
    assert resumed.steps_completed == 32  # the loaded state resumes


def test_a_report_made_from_python_has_the_graph_and_the_heads(finished, tmp_path):
    _, _, result = finished
    page = mg.write_report(result, tmp_path / "run").read_text()
    for name in ("The circuit as a graph", "Direct logit attribution", "Example prompts", "Where the time went"):
        assert name.lower() in page.lower(), name
    for name in ("edges.csv", "heads.csv", "attention.json", "examples.csv"):
        assert (tmp_path / "run" / name).exists(), name
    # the settings grouped by concern, the ones this run changed named and marked
    config = page[page.index("<h2>Run configuration</h2>"):]
    assert "differ from the defaults: steps, batch_size, seed, lambda_scale" in config
    assert config.index("optimisation") < config.index("objective") < config.index("speed") < config.index("output")
    assert "0.3 (changed)" in config and "Run record" in config


def test_the_views_follow_their_switches_and_the_cli_default_is_the_settings(finished):
    model, task, _ = finished
    r = mg.discover(model, task, steps=2, batch_size=8, autocast="float32", compile=False, progress=False,
                    edge_examples=0, views=False)
    assert r.views.edges is None and r.views.heads is None and "edges" not in r.timings
    assert EDGE_EXAMPLES == PruningConfig().edge_examples


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="circuit.json is missing"):
        mg.DiscoveryResult.load(tmp_path)
