"""The minimal `mgnp discover` command on a tiny GPT-2 checkpoint."""

from __future__ import annotations

import json

import pytest

import mgnp_lens as mg
from mgnp_lens.cli import main


def test_discover_writes_its_outputs(tiny_gpt2_checkpoint, tmp_path, capsys):
    path, _, _ = tiny_gpt2_checkpoint
    out = tmp_path / "run"
    code = main(["discover", "--task", "ioi", "--model", str(path), "--steps", "3", "--batch-size", "4",
                 "--n-test", "8", "--lambda", "attn_head=2.5", "--out", str(out), "--quiet"])
    assert code == 0
    for name in ("circuit.json", "per_layer.csv", "summary.csv", "evaluation.json", "history.csv", "config.json"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["lambdas"]["attn_head"] == 2.5 and config["config"]["steps"] == 3
    assert "torch" in config["versions"]
    circuit = mg.Circuit.load(out / "circuit.json")
    assert circuit.dims.n_layers == 2
    assert "Attn Heads" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["discover", "--task", "docstring"], "invalid choice"),
    (["discover", "--lambda", "heads=1"], "unknown granularity 'heads'"),
    (["discover", "--lambda", "attn_head"], "expected GRANULARITY=VALUE"),
    (["discover", "--steps", "0"], "out of range"),
])
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_negative_lambda_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["discover", "--lambda", "attn_head=-1"])
    assert "bad λ spec 'attn_head=-1': -1.0 is out of range" in capsys.readouterr().err
