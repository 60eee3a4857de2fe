"""The resumable training state: resuming equals the uninterrupted run, and what may not resume."""

from __future__ import annotations

import json

import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.rundir import MANIFEST
from mgnp_lens.tasks import PromptPairTask

from helpers import pairs_task, same_run, task_that_stops, micro_model, random_pairs

# an integer noise warm-up: "auto" scales with ``steps``, so a 3-step run would not be the first 3 steps
# of an 8-step one
RESUME_KW = dict(batch_size=4, progress=False, eval_split=None, autocast="float32", noise_warmup_steps=3)


@pytest.fixture(scope="module")
def uninterrupted():
    model = micro_model("gpt2")
    return model, mg.discover(model, pairs_task(model), steps=8, **RESUME_KW)


def test_resuming_after_ctrl_c_equals_the_uninterrupted_run(uninterrupted):
    model, full = uninterrupted
    stopped = mg.discover(model, task_that_stops(model, 5, KeyboardInterrupt()), steps=8, **RESUME_KW)
    assert stopped.interrupted and stopped.steps_completed == 5 and stopped.state["step"] == 5
    resumed = mg.discover(model, pairs_task(model), resume_from=stopped)  # the saved config, 8 steps
    assert not resumed.interrupted and resumed.meta["resumed_at_steps"] == [5]
    same_run(resumed, full)
    assert resumed.train_evaluation.kl == full.train_evaluation.kl
    same_run(mg.discover(model, pairs_task(model), resume_from=stopped), full)  # its state was not used up


def test_an_error_inside_an_update_rolls_back_and_resumes_from_disk(uninterrupted, tmp_path, monkeypatch):
    model, full = uninterrupted
    real_step, calls = torch.optim.AdamW.step, []

    def failing_step(self, *a, **k):  # the 4th update changes the gates, then fails before the step finishes
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("power cut")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(mg.DiscoveryError, match="after 3 steps") as info:
        mg.discover(model, pairs_task(model), steps=8, checkpoint_dir=str(tmp_path), **RESUME_KW)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    three = mg.discover(model, pairs_task(model), steps=3, **RESUME_KW)
    same_run(info.value.result, three)  # the half-done 4th update is not in the saved circuit
    assert (tmp_path / "state.pt").exists() and mg.Circuit.load(tmp_path / "circuit.json") == three.circuit
    resumed = mg.discover(model, pairs_task(model), resume_from=tmp_path)
    same_run(resumed, full)
    assert json.loads((tmp_path / "evaluation.json").read_text())["steps_completed"] == 8  # it kept checkpointing


def test_a_finished_run_resumes_for_more_steps(uninterrupted, tmp_path):
    model, full = uninterrupted
    five = mg.discover(model, pairs_task(model), steps=5, checkpoint_dir=str(tmp_path), **RESUME_KW)
    assert five.steps_completed == 5 and (tmp_path / "state.pt").exists()
    longer = mg.discover(model, pairs_task(model), resume_from=tmp_path / "state.pt", steps=8)
    same_run(longer, full)


@pytest.mark.parametrize("change, match", [
    (dict(config=dict(lr=0.3)), r"lr \(0.2 → 0.3\)"),
    (dict(config=dict(steps=2)), "already taken 5 steps"),
    (dict(pairs_seed=9), "other pairs"),
    (dict(model=dict(n_layers=3)), "model shaped"),
])
def test_resuming_refuses_what_would_not_continue_the_run(tmp_path, change, match):
    from transformer_lens import HookedTransformer

    from helpers import micro_config

    model = micro_model("gpt2")
    saved = mg.discover(model, pairs_task(model), steps=5, checkpoint_dir=str(tmp_path), **RESUME_KW)
    other = HookedTransformer(micro_config("gpt2", **change["model"])) if "model" in change else model
    task = pairs_task(other)
    if "pairs_seed" in change:
        clean, corrupted = random_pairs(other, n=12, seed=change["pairs_seed"])
        task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    with pytest.raises(ValueError, match=match):
        mg.discover(other, task, saved.config, resume_from=tmp_path, **change.get("config", {}))


def test_resuming_without_a_state_is_a_clear_error(gpt2_micro, tmp_path):
    with pytest.raises(ValueError, match="no state.pt"):
        mg.discover(gpt2_micro, pairs_task(gpt2_micro), resume_from=tmp_path)
    (tmp_path / "state.pt").write_bytes(b"")
    torch.save({"format": "something else"}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="not a mgnp-state/1"):
        mg.discover(gpt2_micro, pairs_task(gpt2_micro), resume_from=tmp_path)


def test_resuming_with_other_held_out_splits_is_allowed(tmp_path):
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=20)
    first = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    mg.discover(model, first, steps=2, checkpoint_dir=str(tmp_path), **RESUME_KW)
    wider = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    wider.splits["test"] = first.splits["train"]  # a different test split, the same training pairs
    assert wider.describe() != first.describe()
    assert mg.discover(model, wider, resume_from=tmp_path, steps=3).steps_completed == 3


def test_a_dense_run_saved_before_expert_gates_existed_resumes(tmp_path):
    """State saved by a version without ``mlp_expert`` (seven granularities, seven λ) resumes on a dense model under
    today's config, whose defaults name ``mlp_expert`` too."""
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=20)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    mg.discover(model, task, steps=2, checkpoint_dir=str(tmp_path), **RESUME_KW)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    old = state["config"]
    assert "mlp_expert" in old["granularities"]
    old["granularities"] = [g for g in old["granularities"] if g != "mlp_expert"]
    old["lambdas"] = {g: v for g, v in old["lambdas"].items() if g != "mlp_expert"}
    torch.save(state, tmp_path / "state.pt")
    config = mg.PruningConfig(**{**RESUME_KW, "steps": 3})
    assert mg.discover(model, task, config, resume_from=tmp_path).steps_completed == 3
    with pytest.raises(ValueError, match="granularities"):  # a real difference is still refused
        mg.discover(model, task, mg.PruningConfig(**{**RESUME_KW, "steps": 3, "granularities": ["attn_head"]}),
                    resume_from=tmp_path)


def test_a_run_saved_before_the_config_was_grouped_by_concern_loads_and_resumes(uninterrupted, tmp_path):
    """config.json and the state store the fields flat; a run written when they were declared in another order (here
    alphabetical), and before ``neuron_start`` existed, loads and resumes to the uninterrupted run."""
    model, full = uninterrupted
    mg.discover(model, pairs_task(model), steps=5, checkpoint_dir=str(tmp_path), **RESUME_KW)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    old = {k: v for k, v in sorted(state["config"].items()) if k != "neuron_start"}
    state["config"] = old
    torch.save(state, tmp_path / "state.pt")
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["config"] = old
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / MANIFEST).unlink()  # so old that its files had no manifest either
    assert mg.DiscoveryResult.load(tmp_path).config == full.config.__class__.from_dict({**old, "steps": 5})
    resumed = mg.discover(model, pairs_task(model), resume_from=tmp_path, steps=8)
    same_run(resumed, full)
