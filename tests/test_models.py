"""load_model: the embedded SmolLM2 default, its cache, local GPT-2 checkpoints, TransformerBridge."""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path

import pytest
import torch

import mgnp_lens as mg
from mgnp_lens import models

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_default_model_loads_offline_and_does_ioi(default_model_loads):
    first, second = default_model_loads
    assert first.mgnp_load_info["cache"] == "miss"
    assert second.mgnp_load_info["cache"] == "hit"  # the second load came from the cache
    check = first.mgnp_load_info["hf_logits"]  # the conversion matches Hugging Face's model, checked once
    assert check["matches"] and check["max_abs_diff"] < 1e-3 and second.mgnp_load_info["hf_logits"] == check
    assert first.mgnp_load_info["backend"] == second.mgnp_load_info["backend"] == "hooked"
    model = second
    assert type(model).__name__ == "HookedTransformer"
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_mlp) == (30, 576, 9, 3, 1536)
    assert cfg.normalization_type == "RMS" and cfg.gated_mlp and cfg.act_fn == "silu"
    assert cfg.positional_embedding_type == "rotary" and cfg.rotary_base == 100000
    tokens = model.to_tokens(IOI_PROMPT)
    with torch.no_grad():
        probs = model(tokens)[0, -1].softmax(-1)
    mary = model.to_single_token(" Mary")
    assert int(probs.argmax()) == mary
    assert float(probs[mary]) > 0.8
    # the cached model is the same model
    with torch.no_grad():
        assert (first(tokens) - model(tokens)).abs().max() < 1e-4
    # both loads (cache miss and hit) store the per-pass-copied weights transposed (fast_weight_layout)
    for m in (first, second):
        assert m.unembed.W_U.T.is_contiguous() and m.blocks[29].mlp.W_in.T.is_contiguous()
        assert m.blocks[0].attn.W_O.permute(2, 0, 1).is_contiguous()


def test_explicit_gguf_path_loads_through_the_cache(default_model_loads):
    path = models.default_gguf_path()
    model = mg.load_model(path)
    assert model.mgnp_load_info == {**default_model_loads[1].mgnp_load_info, "cache": "hit"}
    assert model.cfg.n_layers == 30


def test_the_cache_is_keyed_by_content_so_a_copy_elsewhere_shares_the_entry(default_model_loads, tmp_path):
    import shutil

    copy = tmp_path / "another_env" / models.default_gguf_path().name
    copy.parent.mkdir()
    shutil.copy(models.default_gguf_path(), copy)
    model = mg.load_model(copy)
    info = default_model_loads[0].mgnp_load_info
    assert model.mgnp_load_info["cache"] == "hit" and model.mgnp_load_info["cache_dir"] == info["cache_dir"]
    meta = json.loads((Path(info["cache_dir"]) / "meta.json").read_text())
    assert meta["gguf_sha256"] == models.file_digest(copy) and "source" not in meta
    assert meta["transformer_lens"] == importlib.metadata.version("transformer-lens") != "unknown"


def test_digit_level_tokenizer(default_model):
    assert len(default_model.to_str_tokens(" 1743", prepend_bos=False)) == 5  # ' ', '1', '7', '4', '3'


def test_stale_and_corrupted_cache_entries_are_detected(default_model_loads, model_cache_dir):
    path = models.default_gguf_path()
    name, meta = models._cache_key(path, torch.float32)
    entry = model_cache_dir / name
    assert models._read_cache(entry, meta, "cpu") is not None
    stale = {**meta, "transformers": "0.0.0"}
    assert models._read_cache(entry, stale, "cpu") is None
    weights = entry / "model.safetensors"
    original = weights.read_bytes()
    try:
        with open(weights, "r+b") as f:
            f.seek(len(original) // 2)
            f.write(b"\x00garbage\x00" * 8)
        assert models._read_cache(entry, meta, "cpu") is None
        rebuilt = mg.load_model()  # a damaged entry is rebuilt, not used
        assert rebuilt.mgnp_load_info["cache"] == "miss"
        assert models._read_cache(entry, meta, "cpu") is not None
    finally:
        if not (entry / "model.safetensors").exists():
            weights.write_bytes(original)


def test_short_discovery_on_the_default_model(default_model):
    model = default_model
    names = [("Mary", "John"), ("Anna", "Paul"), ("Sarah", "David"), ("Lisa", "Mark")]
    clean, corrupted, good, bad = [], [], [], []
    for a, b in names:
        clean.append(f"When {a} and {b} went to the store, {b} gave a drink to")
        corrupted.append("When Emma and Peter went to the store, Tom gave a drink to")
        good.append(f" {a}")
        bad.append(f" {b}")
    task = mg.PromptPairTask.from_strings(model, clean * 2, corrupted * 2, good * 2, bad * 2,
                                          split_fractions={"train": 0.5, "test": 0.5})
    result = mg.discover(model, task, steps=3, batch_size=4, progress=False)
    assert torch.isfinite(torch.tensor(result.train_evaluation.kl))
    assert torch.isfinite(torch.tensor(result.evaluation.kl))
    assert result.evaluation.base_metric > 0  # the model prefers the indirect object
    table = result.circuit.per_layer()
    assert len(table) == 30
    assert result.circuit.dims.total_gates() == 1 + 30 + 30 + 270 + 30 * 576 + 30 * 1536 + 30 * 576


def test_local_gpt2_checkpoint_matches_transformers(tiny_gpt2_checkpoint):
    path, hf, tok = tiny_gpt2_checkpoint
    model = mg.load_model(path)
    assert type(model).__name__ == "HookedTransformer"
    tokens = torch.tensor([tok.encode(IOI_PROMPT)])
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max()
    assert diff <= 1e-4
    assert model.mgnp_load_info["source"] == str(path)


def test_a_temporary_directory_named_like_a_model_family_does_not_change_the_model(tiny_gpt2_checkpoint, tmp_path,
                                                                                     monkeypatch):
    """TransformerLens picks Llama or Gemma from those words anywhere in the path it is given."""
    import tempfile

    path, hf, tok = tiny_gpt2_checkpoint
    for name in ("llama_tmp", "Gemma-scratch"):
        (tmp_path / name).mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / name))
        model = mg.load_model(path)
        tokens = torch.tensor([tok.encode(IOI_PROMPT)])
        with torch.no_grad():
            assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-4


@pytest.mark.slow  # TransformerBridge, a second backend
def test_bridge_and_hooked_give_the_same_circuit_results(tiny_gpt2_checkpoint):
    """Tolerance: 1e-4 on logits and on every step's KL."""
    path, hf, tok = tiny_gpt2_checkpoint
    hooked = mg.load_model(path)
    bridge = mg.load_model(path, backend="bridge")
    assert type(bridge).__name__ == "TransformerBridge"
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50000, (24, 8), generator=g)
    corrupted = torch.randint(0, 50000, (24, 8), generator=g)
    with torch.no_grad():
        assert (bridge(clean) - hf(clean).logits).abs().max() <= 1e-4
    for circuit in (mg.Circuit.full(hooked), mg.Circuit.empty(hooked)):
        a = circuit.run(hooked, clean, corrupted)
        b = circuit.run(bridge, clean, corrupted)
        assert (a - b).abs().max() <= 1e-4
    with torch.no_grad():
        assert (mg.Circuit.empty(bridge).run(bridge, clean, corrupted) - hf(corrupted).logits).abs().max() <= 1e-4
    task = mg.PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    for mode in ("cache", "batch"):
        ra = mg.discover(hooked, task, steps=8, batch_size=8, progress=False, corruption=mode)
        rb = mg.discover(bridge, task, steps=8, batch_size=8, progress=False, corruption=mode)
        assert ra.circuit == rb.circuit
        assert (ra.history["kl"] - rb.history["kl"]).abs().max() <= 1e-4
        assert abs(ra.evaluation.kl - rb.evaluation.kl) <= 1e-4


@pytest.mark.parametrize("offline_env", ["1", ""])
def test_hub_name_offline_fails_fast_with_instructions(monkeypatch, offline_env):
    """This machine cannot reach the Hub: with or without HF_HUB_OFFLINE the load fails fast."""
    monkeypatch.setenv("HF_HUB_OFFLINE", offline_env)
    if offline_env == "" and models.hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable from this machine")
    start = time.perf_counter()
    with pytest.raises(mg.ModelLoadError, match=r"load_model\('/path/to/checkpoint_dir'\)"):
        mg.load_model("gpt2")
    assert time.perf_counter() - start < 30


def test_bad_model_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        mg.load_model("no-such-model")
    with pytest.raises(ValueError, match="unknown backend"):
        mg.load_model(backend="onnx")
    with pytest.raises(mg.ModelLoadError, match="no config.json"):
        mg.load_model(tmp_path)
    with pytest.raises(mg.ModelLoadError, match="no GGUF file"):
        mg.load_model(tmp_path / "missing.gguf")


@pytest.mark.parametrize("family", ["gpt2", "gpt_neo", "gptj"])
def test_checkpoints_whose_mlp_is_not_four_times_d_model_load_exactly(family, tmp_path):
    """TransformerLens's GPT-2 / GPT-Neo / GPT-J configs assume d_mlp = 4·d_model; the checkpoint says otherwise."""
    import transformers as tf

    configs = {"gpt2": tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=96, vocab_size=100, n_positions=32),
               "gpt_neo": tf.GPTNeoConfig(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=96,
                                          vocab_size=100, max_position_embeddings=32,
                                          attention_types=[[["global", "local"], 1]], window_size=8),
               "gptj": tf.GPTJConfig(n_layer=2, n_embd=64, n_head=4, n_inner=96, vocab_size=100, n_positions=32,
                                     rotary_dim=8)}
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(configs[family]).eval()
    hf.save_pretrained(tmp_path)
    model = mg.load_model(tmp_path)
    assert model.cfg.d_mlp == 96
    tokens = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-4
    full = mg.Circuit.full(model)  # the gated sites have the checkpoint's shape
    assert full.dims.d_mlp == 96


# ----------------------------------------------------------------------------- several devices
def test_the_device_plan_follows_transformer_lens_s_forward_pass():
    from types import SimpleNamespace

    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    cfg = SimpleNamespace(n_layers=30)
    for n in (2, 3, 8):
        plan = models.device_plan(cfg, n)
        split = SimpleNamespace(device="cuda", n_devices=n, n_layers=30)
        blocks = [plan[f"blocks.{l}"] for l in range(30)]
        assert blocks == [get_device_for_block_index(l, split) for l in range(30)]  # where forward moves the residual
        assert sorted({d.index for d in blocks}) == list(range(n)) and blocks == sorted(blocks, key=lambda d: d.index)
        assert plan["embed"] == blocks[0] and plan["unembed"] == plan["ln_final"] == blocks[-1]


def test_several_devices_are_refused_clearly_where_there_are_not_enough(tiny_gpt2_checkpoint):
    from helpers import micro_model

    path = tiny_gpt2_checkpoint[0]
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    asked = max(2, seen + 1)
    with pytest.raises(ValueError, match=f"n_devices={asked} needs {asked} CUDA devices, but torch sees {seen}"):
        mg.load_model(path, n_devices=asked)
    with pytest.raises(ValueError, match="boot_transformers"):
        mg.load_model(path, backend="bridge", n_devices=2)
    model = micro_model("gpt2")
    assert models.spread_over_devices(model, 1) is model
    with pytest.raises(ValueError, match="between 1 and the model's 2 layers"):
        models.spread_over_devices(model, 3)
