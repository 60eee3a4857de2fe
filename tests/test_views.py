"""Head views: direct logit attribution (exact against a direct-path ablation), attention patterns, examples."""

from __future__ import annotations

import pytest
import torch
from helpers import micro_model, random_pairs, with_heads

import mgnp_lens as mg
from mgnp_lens.tasks import PromptPairTask
from mgnp_lens.views import attention_patterns, example_answers, head_attribution


def _task(model, n=8):
    clean, corrupted = random_pairs(model, n=n)
    g = torch.Generator().manual_seed(1)
    correct, incorrect = torch.randint(0, model.cfg.d_vocab, (2, n), generator=g)
    return PromptPairTask.from_tokens(clean, corrupted, correct, incorrect, split_fractions={"train": 1.0})


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_dla_is_what_removing_the_heads_direct_path_changes_with_the_final_norm_scale_held(kind):
    model = micro_model(kind)
    task = _task(model)
    circuit = with_heads(mg.ModelDims.from_model(model), [(0, 1), (1, 3)])
    table = head_attribution(model, task, circuit, split="train", batch_size=3)
    assert set(table["head"]) == {"L0 H1", "L1 H3"} and (table["attention_neurons"] == 8).all()
    assert table["dla"].abs().is_monotonic_decreasing
    batch = task.split("train").head(8).batches(8).__next__()
    idx = torch.arange(8)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch.clean)
        full = (logits[idx, batch.answer_pos, batch.correct] - logits[idx, batch.answer_pos, batch.incorrect]).mean()
        for _, row in table.iterrows():
            l, h = int(row["layer"]), int(row["index"])
            out = cache[f"blocks.{l}.attn.hook_z"][:, :, h] @ model.blocks[l].attn.W_O[h]
            hooks = [(last, lambda act, hook, out=out: act - out),
                     ("ln_final.hook_scale", lambda act, hook: cache["ln_final.hook_scale"])]
            cut = model.run_with_hooks(batch.clean, fwd_hooks=hooks)
            without = (cut[idx, batch.answer_pos, batch.correct] - cut[idx, batch.answer_pos, batch.incorrect]).mean()
            assert float(full - without) == pytest.approx(row["dla"], abs=1e-4)


def test_attention_patterns_and_example_answers():
    model = micro_model("gpt2")
    task = _task(model)
    circuit = with_heads(mg.ModelDims.from_model(model), [(1, 2)], mlps=[0])
    views = attention_patterns(model, task, circuit, split="train", n_prompts=2)
    assert len(views["prompts"]) == 2 and list(views["heads"]) == ["L1 H2"]
    pattern = torch.tensor(views["heads"]["L1 H2"][0])
    assert pattern.shape == (7, 7) and torch.allclose(pattern.sum(-1), torch.ones(7), atol=1e-3)
    assert (pattern.triu(1) == 0).all()  # causal
    examples = example_answers(model, task, circuit, split="train", n=4)
    assert len(examples) == 4 and list(examples.columns) == ["clean", "corrupted", "correct", "incorrect", "full_top",
                                                            "circuit_top", "full_metric", "circuit_metric"]
    batch = next(task.split("train").head(4).batches(4))
    with torch.no_grad():
        logits = model(batch.clean)[torch.arange(4), batch.answer_pos]
    assert examples["full_top"].tolist() == [str(int(t)) for t in logits.argmax(-1)]  # no tokenizer: ids
    assert examples["full_metric"].tolist() == pytest.approx(task.metric(logits, batch).tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="circuit is for"):
        head_attribution(micro_model("gpt2", n_layers=3), task, circuit)
