"""Every decoder-only family: a tiny random checkpoint of each (built here, offline) loads on the backend the family
table says, matches Hugging Face's logits, runs a 3-step discovery and keeps the three gate invariants, checked with
this file's own hooks; Mixtral and OLMoE get expert gates, other mixtures of experts are refused with a clear
error. The README's table is
:data:`mgnp_lens.families.FAMILIES`."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import transformers as tf

import mgnp_lens as mg
from mgnp_lens import export
from mgnp_lens.families import FAMILIES
from mgnp_lens.names import BACKENDS

from helpers import gpt2_tokenizer
from test_experts import moe_invariants
from test_export import _random_circuit

pytestmark = pytest.mark.slow  # the edit loop skips it: pytest -m "not slow"

V = 128  # vocabulary: the GPT-2 tokenizer is saved beside each checkpoint, the tests feed token ids below V
DENSE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=V, max_position_embeddings=64, pad_token_id=0)
MOE = dict(DENSE, num_experts_per_tok=2)
CONFIGS = {
    "GPT2LMHeadModel": lambda: tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=96, vocab_size=V, n_positions=64),
    "GPTNeoForCausalLM": lambda: tf.GPTNeoConfig(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=96,
                                                 vocab_size=V, max_position_embeddings=64, window_size=8,
                                                 attention_types=[[["global", "local"], 1]]),
    "GPTJForCausalLM": lambda: tf.GPTJConfig(n_layer=2, n_embd=64, n_head=4, n_inner=96, vocab_size=V, n_positions=64,
                                             rotary_dim=8),
    "GPTNeoXForCausalLM": lambda: tf.GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                   intermediate_size=96, vocab_size=V, max_position_embeddings=64),
    "OPTForCausalLM": lambda: tf.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=96,
                                           vocab_size=V, max_position_embeddings=64, word_embed_proj_dim=64),
    "BloomForCausalLM": lambda: tf.BloomConfig(n_layer=2, hidden_size=64, n_head=4, vocab_size=V),
    "LlamaForCausalLM": lambda: tf.LlamaConfig(**DENSE),
    "MistralForCausalLM": lambda: tf.MistralConfig(**DENSE),
    "Qwen2ForCausalLM": lambda: tf.Qwen2Config(**DENSE),
    "Qwen3ForCausalLM": lambda: tf.Qwen3Config(**DENSE, head_dim=16),
    "PhiForCausalLM": lambda: tf.PhiConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=96,
                                           num_attention_heads=4, vocab_size=V, max_position_embeddings=64,
                                           partial_rotary_factor=0.5),
    "Phi3ForCausalLM": lambda: tf.Phi3Config(**DENSE),
    "GemmaForCausalLM": lambda: tf.GemmaConfig(**DENSE, head_dim=16),
    "Gemma2ForCausalLM": lambda: tf.Gemma2Config(**DENSE, head_dim=16, sliding_window=4),
    "Gemma3ForCausalLM": lambda: tf.Gemma3TextConfig(**DENSE, head_dim=16, sliding_window=4),
    "OlmoForCausalLM": lambda: tf.OlmoConfig(**{**DENSE, "num_key_value_heads": 4}),
    "Olmo2ForCausalLM": lambda: tf.Olmo2Config(**{**DENSE, "num_key_value_heads": 4}),
    "Olmo3ForCausalLM": lambda: tf.Olmo3Config(**DENSE),
    "ApertusForCausalLM": lambda: tf.ApertusConfig(**DENSE),
    "StableLmForCausalLM": lambda: tf.StableLmConfig(**DENSE),
    "FalconForCausalLM": lambda: tf.FalconConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                 vocab_size=V),
    "GPTBigCodeForCausalLM": lambda: tf.GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, n_inner=96, vocab_size=V,
                                                         n_positions=64),
    "Starcoder2ForCausalLM": lambda: tf.Starcoder2Config(**DENSE),
    "GraniteForCausalLM": lambda: tf.GraniteConfig(**DENSE),
    "SmolLM3ForCausalLM": lambda: tf.SmolLM3Config(**DENSE),
    "MptForCausalLM": lambda: tf.MptConfig(n_layers=2, d_model=64, n_heads=4, vocab_size=V, max_seq_len=64),
    "NemotronForCausalLM": lambda: tf.NemotronConfig(**DENSE, head_dim=16),
    "CohereForCausalLM": lambda: tf.CohereConfig(**DENSE),
    "MixtralForCausalLM": lambda: tf.MixtralConfig(**MOE, num_local_experts=4),
    "OlmoeForCausalLM": lambda: tf.OlmoeConfig(**MOE, num_experts=4),
    "GptOssForCausalLM": lambda: tf.GptOssConfig(**MOE, head_dim=16, num_local_experts=4, sliding_window=8),
    "Qwen2MoeForCausalLM": lambda: tf.Qwen2MoeConfig(**MOE, num_experts=4, moe_intermediate_size=32,
                                                     shared_expert_intermediate_size=48),
}


@dataclass
class Case:
    architecture: str
    backend: str  # what backend="auto" picks, or "refused"
    config: object = None
    hf_differs: bool = False
    refusal: str = "only as HookedTransformer's MoE block"
    tag: str = ""
    kwargs: dict = field(default_factory=dict)


CASES = [Case(f.architecture, f.backend, CONFIGS[f.architecture], hf_differs=f.architecture == "CohereForCausalLM")
         for f in FAMILIES]
CASES += [  # variants of a family that HookedTransformer cannot represent: the bridge runs them
    Case("OPTForCausalLM", "bridge", lambda: tf.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                          ffn_dim=96, vocab_size=V, max_position_embeddings=64,
                                                          word_embed_proj_dim=32, do_layer_norm_before=False),
         refusal="OPT-350m's layout", tag="350m-layout"),
    Case("OlmoForCausalLM", "bridge", lambda: tf.OlmoConfig(**DENSE), refusal="no grouped-query attention",
         tag="gqa"),
]


def _checkpoint(case: Case, path: Path):
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(case.config()).eval()
    assert type(hf).__name__ == case.architecture
    hf.save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return hf


def _invariants(model):
    """all ones = the clean run and all zeros = the corrupted run, bit for bit; a random circuit = patching its
    pruned units to their corrupted activations with plain run_with_hooks (a mixture of experts: test_experts's
    own rebuilding of every expert's output)."""
    if mg.ModelDims.from_model(model).n_experts:
        return moe_invariants(model)
    g = torch.Generator().manual_seed(1)
    clean, corrupted = (torch.randint(1, V, (3, 7), generator=g) for _ in range(2))
    with torch.no_grad():
        assert torch.equal(mg.Circuit.full(model).run(model, clean, corrupted), model(clean))
        assert torch.equal(mg.Circuit.empty(model).run(model, clean, corrupted), model(corrupted))
        circuit = _random_circuit(model, seed=2)
        spec = json.loads(export.export(circuit, "tl-hooks"))
        _, cache = model.run_with_cache(corrupted, names_filter=lambda n: n in spec["hook_points"])

        def patch(name):  # by the name asked for: the bridge calls a hook by its own name for an alias
            site = spec["hook_points"][name]
            keep = torch.tensor(site["keep"], dtype=torch.bool).view(site["shape"])
            return lambda act, hook: torch.where(keep, act, cache[name])

        plain = model.run_with_hooks(clean, fwd_hooks=[(n, patch(n)) for n in spec["hook_points"]])
        torch.testing.assert_close(circuit.run(model, clean, corrupted), plain, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain, model(clean), atol=1e-4)  # the circuit does prune something


def _short_discovery(model):
    g = torch.Generator().manual_seed(3)
    clean, corrupted = (torch.randint(1, V, (8, 6), generator=g) for _ in range(2))
    task = mg.PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = mg.discover(model, task, steps=3, batch_size=4, compile=False, progress=False, eval_split=None)
    assert len(r.history) == 3 and torch.isfinite(torch.tensor(r.history["loss"].to_numpy())).all()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.architecture + (f"-{c.tag}" if c.tag else ""))
def test_family_loads_gates_exactly_or_is_refused_clearly(case, tmp_path):
    _checkpoint(case, tmp_path)
    if case.backend == "refused":
        for backend in BACKENDS:
            with pytest.raises(mg.ModelLoadError, match=case.refusal):
                mg.load_model(tmp_path, backend=backend)
        return
    if case.hf_differs:
        with pytest.warns(UserWarning, match="differs from the Hugging Face checkpoint"):
            model = mg.load_model(tmp_path)
    else:
        model = mg.load_model(tmp_path)
    info = model.mgnp_load_info
    assert info["backend"] == case.backend
    assert info["hf_logits"]["matches"] is not case.hf_differs, info["hf_logits"]
    if case.backend == "bridge":  # insisting on the hooked backend names the problem and the way out
        with pytest.raises(mg.ModelLoadError, match=rf"{re.escape(case.refusal) if case.tag else ''}.*backend=\"bridge\""):
            mg.load_model(tmp_path, backend="hooked")
    _invariants(model)
    _short_discovery(model)


def _readme_table() -> dict[str, str]:
    """{family name: backend} from the README's family table."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| (hooked|bridge|refused)[^|]* \| ([^|]+) \|", text, flags=re.M)
    assert rows, "the README has no family table"
    return {name.strip(): backend for backend, names in rows for name in names.split(",")}


def test_the_readme_family_table_is_the_tested_one():
    from mgnp_lens.families import short_name

    assert _readme_table() == {short_name(f.architecture): f.backend for f in FAMILIES}
