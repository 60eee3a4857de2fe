"""Zero and mean ablation: what pruned nodes output, against plain TransformerLens hooks written here."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import micro_model, random_pairs, with_heads

import mgnp_lens as mg
from mgnp_lens.ablation import Ablation, Replacement
from mgnp_lens.hooks import Interpolator
from mgnp_lens.granularity import ModelDims
from mgnp_lens.tasks import PairSet, PromptPairTask


def reference_logits(model, circuit_heads, circuit_mlps, clean, values):
    """The model with every node outside the circuit set to ``values[site]`` by hand-written TL hooks
    (the embedding is outside every circuit built by ``with_heads``)."""
    cfg = model.cfg

    def const(site):
        return lambda act, hook: values[site].expand_as(act).clone()

    def heads(l):
        def hook(act, hook):
            out = act.clone()
            for h in range(cfg.n_heads):
                if (l, h) not in circuit_heads:
                    out[:, :, h] = values[f"blocks.{l}.attn.hook_z"][h]
            return out
        return hook

    hooks = [("blocks.0.hook_resid_pre", const("blocks.0.hook_resid_pre"))]
    for l in range(cfg.n_layers):
        hooks.append((f"blocks.{l}.attn.hook_z", heads(l)))
        if l not in circuit_mlps:
            hooks += [(f"blocks.{l}.mlp.hook_post", const(f"blocks.{l}.mlp.hook_post")),
                      (f"blocks.{l}.hook_mlp_out", const(f"blocks.{l}.hook_mlp_out"))]
    return model.run_with_hooks(clean, fwd_hooks=hooks)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_zero_and_mean_ablation_match_hand_written_hooks(kind):
    model = micro_model(kind)
    dims = ModelDims.from_model(model)
    clean, corrupted = random_pairs(model, n=5, pos=6)
    heads, mlps = {(0, 1), (1, 0)}, {1}
    circuit = with_heads(dims, heads, mlps)
    _, cache = model.run_with_cache(corrupted)
    means = {n: cache[n].mean(dim=(0, 1)) for n in Replacement.build("zero", model, dims).values}
    zeros = {n: torch.zeros_like(v) for n, v in means.items()}
    with torch.no_grad():
        for ablation, values in (("zero", zeros), ("mean", means)):
            ours = circuit.run(model, clean, corrupted, ablation=ablation)
            ref = reference_logits(model, heads, mlps, clean, values)
            assert torch.allclose(ours, ref, atol=1e-4), ablation
            assert not torch.allclose(ours, model(clean), atol=1e-2)  # the ablation did something
        # the full circuit is the clean model whatever the ablation; zero ablation needs no corrupted prompts
        assert torch.equal(mg.Circuit.full(model).run(model, clean, ablation="zero"), model(clean))
    with pytest.raises(ValueError, match="'mean' ablation needs corrupted_tokens"):
        circuit.run(model, clean, ablation="mean")


def test_mean_values_are_the_mean_over_prompts_and_positions_of_every_length():
    model = micro_model("gpt2")
    dims = ModelDims.from_model(model)
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randint(0, model.cfg.d_vocab, (n, p), generator=g) for n, p in ((3, 5), (2, 8)))
    pairs = PairSet.from_examples([r.tolist() for r in (*a, *b)], [r.tolist() for r in (*a, *b)],
                                  [0] * 5, [1] * 5)
    values = Replacement.build("mean", model, dims, pairs).values
    _, ca = model.run_with_cache(a)
    _, cb = model.run_with_cache(b)
    for name, v in values.items():
        want = torch.cat([ca[name].flatten(0, 1), cb[name].flatten(0, 1)]).mean(0)
        assert torch.allclose(v, want, atol=1e-5), name
    with pytest.raises(ValueError, match="unknown ablation 'resample'"):
        Replacement.build("resample", model, dims, pairs)


def test_a_replacement_carries_its_ablation_and_values_and_the_interpolator_never_switches_mode_itself():
    model = micro_model("gpt2")
    dims = ModelDims.from_model(model)
    clean, corrupted = random_pairs(model, n=4, pos=6)
    circuit = with_heads(dims, {(0, 1)}, {1})
    mean = Replacement.for_prompts("mean", model, dims, corrupted)
    assert mean.ablation is Ablation.MEAN and mean.is_constant and mean.interpolation_mode("batch") == "constant"
    corrupted_run = Replacement("corrupted")
    assert not corrupted_run.is_constant and corrupted_run.interpolation_mode("cache") == "cache"
    with torch.no_grad():  # given, it is what the circuit runs with: the same logits as building it there
        assert torch.equal(circuit.run(model, clean, replacement=mean), circuit.run(model, clean, corrupted, "mean"))
    with pytest.raises(ValueError, match="needs its constants"):
        Replacement("zero")
    with pytest.raises(ValueError, match="not constants"):
        Replacement("corrupted", mean.values)
    with pytest.raises(ValueError, match="use mode='constant', not 'batch'"):
        Interpolator(dims, "batch", replacement=mean)
    with pytest.raises(ValueError, match="mode='constant' needs"):
        Interpolator(dims, "constant", replacement=corrupted_run)
    with pytest.raises(ValueError, match="ablation='zero' but the replacement given is the 'mean'"):
        circuit.run(model, clean, ablation="zero", replacement=mean)


@pytest.mark.parametrize("corruption", ["cache", "batch"])
def test_discover_with_zero_and_mean_ablation_records_and_evaluates_it(corruption, tmp_path):
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=12, pos=6)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0],
                                      split_fractions={"train": 0.5, "validation": 0.25, "test": 0.25})
    for ablation in ("zero", "mean"):
        r = mg.discover(model, task, steps=4, batch_size=4, ablation=ablation, corruption=corruption, lr=1.0,
                        lr_warmup_steps=0, lambda_scale=200.0, validate_every=1, progress=False, autocast="float32",
                        checkpoint_dir=str(tmp_path / ablation))
        assert r.circuit != mg.Circuit.full(model) and r.circuit != mg.Circuit.empty(model)
        saved = json.loads((tmp_path / ablation / "circuit.json").read_text())
        assert saved["config"]["ablation"] == ablation
        assert json.loads((tmp_path / ablation / "config.json").read_text())["config"]["ablation"] == ablation
        fresh = mg.evaluate(model, task, mg.Circuit.load(tmp_path / ablation / "circuit.json"), "test")
        assert r.evaluation.kl == pytest.approx(fresh.kl, rel=1e-5)  # the saved circuit knows its ablation
        assert r.train_evaluation.kl == pytest.approx(mg.evaluate(model, task, r.circuit, "train").kl, rel=1e-4)
        corrupted_ev = mg.evaluate(model, task, r.circuit, "test", ablation="corrupted")
        assert corrupted_ev.kl != pytest.approx(fresh.kl)  # a different ablation is a different circuit model
        empty = mg.evaluate(model, task, mg.Circuit.empty(model), "test", ablation=ablation)
        assert empty.recovered == pytest.approx(0.0, abs=1e-4) and empty.empty_metric != corrupted_ev.empty_metric
    with pytest.raises(ValueError, match="ablation"):
        mg.PruningConfig(ablation="resample")


def test_the_ablation_type_names_its_behaviour_and_reads_where_it_is_recorded(gpt2_micro):
    from mgnp_lens.ablation import Ablation
    from mgnp_lens.config import PruningConfig
    from mgnp_lens.names import ABLATIONS

    assert tuple(a.value for a in Ablation) == ABLATIONS
    assert Ablation.of("zero") is Ablation.ZERO and Ablation.ZERO == "zero" and f"{Ablation.MEAN}" == "mean"
    assert Ablation.of(PruningConfig(ablation="mean")) is Ablation.MEAN and Ablation.of({}) is Ablation.CORRUPTED
    assert Ablation.of(mg.Circuit.full(gpt2_micro)) is Ablation.CORRUPTED  # a circuit that records none
    assert [a.uses_corrupted_run for a in Ablation] == [True, False, False]
    assert [a.needs_corrupted_prompts for a in Ablation] == [True, False, True]
    with pytest.raises(ValueError, match="unknown ablation 'blank'; expected one of corrupted, zero, mean"):
        Ablation.of("blank")
    assert json.dumps({"ablation": Ablation.ZERO}) == '{"ablation": "zero"}'  # files keep the plain name


def test_no_module_but_the_ablation_type_compares_ablation_names():
    """Behaviour that depends on the ablation lives in mgnp_lens.ablation (tracr's ground truth is an independent
    reference and keeps its own two cases)."""
    import re
    from pathlib import Path

    root = Path(mg.__file__).parent
    pattern = re.compile(r"""[!=]=\s*["'](corrupted|zero|mean)["']|["'](corrupted|zero|mean)["']\s*[!=]=""")
    found = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if p.name != "ablation.py"
             and p.relative_to(root).as_posix() != "tasks/tracr.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
