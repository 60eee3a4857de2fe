"""PruningConfig: validation of every field, old configs, derived settings."""

from __future__ import annotations

import pytest

import mgnp_lens as mg


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps"), (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size"),
    (dict(corruption="both"), "corruption mode"), (dict(lambdas={"heads": 1.0}), "unknown granularity"),
    (dict(lambdas={"attn_head": -1.0}), "lambda"), (dict(granularities=("attn_heads",)), "unknown granularity"),
    (dict(lr_schedule="step"), "unknown lr_schedule"), (dict(micro_batch_size=0), "micro_batch_size"),
    (dict(lr_final_fraction=2.0), "lr_final_fraction"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=0.9), "betas"), (dict(log_alpha_clamp=0), "log_alpha_clamp"),
    (dict(log_alpha_clamp=(2.0, 1.0)), "log_alpha_clamp"), (dict(autocast="half"), "unknown autocast"),
    (dict(lr_warmup_steps=-1), "lr_warmup_steps"), (dict(lr_scales={"mlp": 2.0}), "unknown granularity"),
    (dict(lr_scales={"mlp_hidden": 0.0}), "lr_scales"), (dict(lr_scales=2.0), "lr_scales"), (dict(l0_penalty="node"), "unknown l0_penalty"), (dict(lr_warmup_steps=2.5), "lr_warmup_steps"),
    (dict(noise_warmup_steps=-1), "noise_warmup_steps"), (dict(noise_warmup_steps=1.5), "noise_warmup_steps"),
    (dict(noise_warmup_steps="half"), "noise_warmup_steps"), (dict(noise_warmup_steps=True), "noise_warmup_steps"),
    (dict(noise_warmup_granularities=("heads",)), "unknown granularity"),
    (dict(noise_warmup_granularities="attn_head"), "noise_warmup_granularities"),
    (dict(noise_warmup_granularities=3), "noise_warmup_granularities"),
    (dict(adam_eps=0.0), "adam_eps"), (dict(adam_eps=float("inf")), "adam_eps"), (dict(adam_eps="1e-8"), "adam_eps"),
    (dict(compile="yes"), "compile must be"), (dict(compile=1), "compile must be"),
])
def test_bad_config_is_a_clear_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        mg.PruningConfig(**bad)


def test_a_config_saved_before_a_field_existed_loads_with_the_behaviour_it_ran_with():
    old = mg.PruningConfig().to_dict()
    del old["betas"], old["lr_warmup_steps"], old["noise_warmup_steps"], old["compile"]
    loaded = mg.PruningConfig.from_dict(old)
    assert loaded.betas == (0.9, 0.999) and loaded.lr_warmup_steps == 0 and loaded.noise_warmup_steps == 0
    assert loaded.compile is False  # those runs' blocks ran eager
    assert mg.PruningConfig.from_dict(mg.PruningConfig().to_dict()) == mg.PruningConfig()
    # saved with a noise warm-up but before noise_warmup_granularities existed: it warmed up every granularity
    between = {**mg.PruningConfig(noise_warmup_steps=100).to_dict()}
    del between["noise_warmup_granularities"]
    assert mg.PruningConfig.from_dict(between).noise_warmup_granularities is None
    # saved before the attention-only "auto" warm-up became the default: it kept its 0 (the paper's schedule)
    before = mg.PruningConfig.from_dict({**mg.PruningConfig().to_dict(), "noise_warmup_steps": 0,
                                         "noise_warmup_granularities": None})
    assert before.noise_warmup_length == 0


def test_auto_noise_warmup_is_five_twelfths_of_the_run():
    assert mg.PruningConfig().noise_warmup_steps == "auto"
    assert [mg.PruningConfig(steps=n).noise_warmup_length for n in (240, 120, 400, 1)] == [100, 50, 166, 0]
    assert mg.PruningConfig(steps=240, noise_warmup_steps=30).noise_warmup_length == 30
    assert mg.PruningConfig().noise_warmup_granularities == ("attn_block", "attn_head", "attn_neuron")


def test_every_field_belongs_to_one_concern_in_declaration_order():
    from dataclasses import fields

    from mgnp_lens.config import CONCERNS, SpeedSettings

    declared = [f.name for f in fields(mg.PruningConfig)]
    assert [name for _, names in CONCERNS.values() for name in names] == declared
    config = mg.PruningConfig(lr=0.1, autocast="float32", progress=False)
    assert config.settings("output") == {"checkpoint_dir": None, "checkpoint_every": 50, "progress": False}
    assert [f for group in config.by_concern().values() for f in group] == declared
    assert config.changed() == {"lr": 0.1, "autocast": "float32", "progress": False}
    assert config.speed == SpeedSettings(autocast="float32")
    assert [f.name for f in fields(SpeedSettings)] == list(CONCERNS["speed"][1])
    with pytest.raises(ValueError, match="unknown concern 'speeds'; expected one of 'optimisation'"):
        config.settings("speeds")
