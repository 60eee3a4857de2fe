"""Model families: which backend runs each, and HookedTransformer configs built from a checkpoint's own config.

TransformerLens 3.9 converts Gemma, Gemma 2, Gemma 3, OLMo and OLMo 2 weights, but builds their configs only
from a table of official model names (it never reads the checkpoint's config for them), so a local checkpoint
of these families could only run on the bridge; for Phi it reads a field transformers 5 moved.
:func:`hooked_config_dict` builds these configs from the checkpoint's config instead; TransformerLens's own
weight conversion does the rest. :data:`FAMILIES` is the table the README shows and ``tests/test_zoo.py`` asserts, one row per architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """How mgnp-lens runs one Hugging Face architecture.

    Attributes:
        architecture: the Hugging Face class name, e.g. ``"LlamaForCausalLM"``.
        backend: ``"hooked"`` (HookedTransformer, the default), ``"bridge"`` (TransformerBridge, chosen
            automatically) or ``"refused"`` (a clear error instead of a run).
        note: what a user should know (empty when nothing).
    """

    architecture: str
    backend: str
    note: str = ""


#: The mixture-of-experts families whose experts mgnp-lens gates (HookedTransformer's ``MoE`` block).
GATED_MOE = ("MixtralForCausalLM", "OlmoeForCausalLM")
#: Why another mixture-of-experts model is refused (at load, and when a hand-built one's dimensions are read).
MOE_REFUSAL = ("mgnp-lens gates mixture-of-experts blocks only as HookedTransformer's MoE block (Mixtral, OLMoE: "
               "softmax top-k routing, per-expert hook points); this model's experts would be gated on the routed "
               "block output instead, so it refuses to run rather than give a wrong circuit. Load Mixtral or "
               "OLMoE with backend=\"hooked\" (the default \"auto\" does), or use a dense model")
_MOE = "experts gated (mlp_expert); hooked backend only"
_MOE_REFUSED = "mixture of experts that only the bridge runs (no per-expert hook points): refused"

#: Every decoder-only family of transformers 5 that TransformerLens 3.9 runs, and how mgnp-lens runs it.
FAMILIES: tuple[Family, ...] = (
    Family("GPT2LMHeadModel", "hooked"),
    Family("GPTNeoForCausalLM", "hooked"),
    Family("GPTJForCausalLM", "hooked"),
    Family("GPTNeoXForCausalLM", "hooked"),
    Family("OPTForCausalLM", "hooked", "OPT-350m's layout (project_in/out, post-norm) goes to the bridge"),
    Family("BloomForCausalLM", "hooked"),
    Family("LlamaForCausalLM", "hooked"),
    Family("MistralForCausalLM", "hooked"),
    Family("Qwen2ForCausalLM", "hooked"),
    Family("Qwen3ForCausalLM", "hooked"),
    Family("PhiForCausalLM", "hooked", "config built from the checkpoint (transformers 5 moved partial_rotary_factor)"),
    Family("Phi3ForCausalLM", "hooked"),
    Family("GemmaForCausalLM", "hooked", "config built from the checkpoint (TransformerLens knows hub names only)"),
    Family("Gemma2ForCausalLM", "hooked", "config built from the checkpoint"),
    Family("Gemma3ForCausalLM", "hooked", "config built from the checkpoint"),
    Family("OlmoForCausalLM", "hooked", "config built from the checkpoint; with grouped-query attention: bridge"),
    Family("Olmo2ForCausalLM", "hooked", "config built from the checkpoint; with grouped-query attention: bridge"),
    Family("Olmo3ForCausalLM", "hooked"),
    Family("ApertusForCausalLM", "hooked"),
    Family("StableLmForCausalLM", "bridge"),
    Family("FalconForCausalLM", "bridge"),
    Family("GPTBigCodeForCausalLM", "bridge"),
    Family("Starcoder2ForCausalLM", "bridge"),
    Family("GraniteForCausalLM", "bridge"),
    Family("SmolLM3ForCausalLM", "bridge"),
    Family("MptForCausalLM", "bridge"),
    Family("NemotronForCausalLM", "bridge"),
    Family("CohereForCausalLM", "bridge", "TransformerLens's Cohere differs from Hugging Face's logits; "
                                          "load_model warns with the figure"),
    Family("MixtralForCausalLM", "hooked", _MOE),
    Family("OlmoeForCausalLM", "hooked", _MOE),
    Family("GptOssForCausalLM", "refused", _MOE_REFUSED),
    Family("Qwen2MoeForCausalLM", "refused", _MOE_REFUSED),
)

BY_ARCHITECTURE = {f.architecture: f for f in FAMILIES}


def is_mixture_of_experts(hf_config) -> bool:
    """Whether a Hugging Face config describes mixture-of-experts MLP blocks."""
    return any((getattr(hf_config, k, None) or 0) > 1 for k in ("num_local_experts", "num_experts", "n_routed_experts"))


def _rope_theta(hf_config, layer_type: str | None = None, default: float = 10000.0) -> float:
    """The rotary base, from ``rope_theta`` or transformers 5's ``rope_parameters`` (per layer type or not)."""
    if getattr(hf_config, "rope_theta", None) is not None:
        return hf_config.rope_theta
    params = getattr(hf_config, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return params.get("rope_theta", default)


def _attn_types(hf_config) -> list[str] | None:
    types = getattr(hf_config, "layer_types", None)
    return None if types is None else ["local" if t == "sliding_attention" else "global" for t in types]


def _common(hf_config, normalization: str) -> dict[str, Any]:
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    return {"d_model": hf_config.hidden_size, "d_head": d_head, "n_heads": n_heads,
            "n_key_value_heads": kv if kv != n_heads else None, "d_mlp": hf_config.intermediate_size,
            "n_layers": hf_config.num_hidden_layers, "n_ctx": min(hf_config.max_position_embeddings, 8192),
            "d_vocab": hf_config.vocab_size, "initializer_range": getattr(hf_config, "initializer_range", 0.02),
            "normalization_type": normalization, "positional_embedding_type": "rotary", "rotary_dim": d_head,
            "rotary_base": _rope_theta(hf_config), "gated_mlp": True}


def _gemma(hf_config, version: int) -> dict[str, Any]:
    d = {**_common(hf_config, "RMS"), "eps": hf_config.rms_norm_eps, "final_rms": True, "use_attn_scale": True,
         "act_fn": getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act}
    if version == 1:
        return d
    d.update(use_normalization_before_and_after=True, attn_scale=float(hf_config.query_pre_attn_scalar) ** 0.5)
    types = _attn_types(hf_config)
    if types and "local" in types:
        d.update(use_local_attn=True, window_size=hf_config.sliding_window, attn_types=types)
    if version == 2:
        d.update(attn_scores_soft_cap=hf_config.attn_logit_softcapping,
                 output_logits_soft_cap=hf_config.final_logit_softcapping)
    else:
        d.update(use_qk_norm=True, rotary_base=_rope_theta(hf_config, "full_attention"),
                 rotary_base_local=_rope_theta(hf_config, "sliding_attention"))
    return d


def _olmo(hf_config, version: int) -> dict[str, Any]:
    d = {**_common(hf_config, "LN" if version == 1 else "RMS"), "act_fn": hf_config.hidden_act,
         "eps": 1e-5 if version == 1 else hf_config.rms_norm_eps, "attn_types": ["global"] * hf_config.num_hidden_layers}
    if version == 1:
        d["clip_qkv"] = getattr(hf_config, "clip_qkv", None)
    return d


def _phi(hf_config) -> dict[str, Any]:
    d = _common(hf_config, "LN")
    rope = getattr(hf_config, "rope_parameters", None) or {}
    factor = getattr(hf_config, "partial_rotary_factor", None) or rope.get("partial_rotary_factor", 1.0)
    d.update(gated_mlp=False, eps=hf_config.layer_norm_eps, act_fn=hf_config.hidden_act, use_attn_scale=True,
             parallel_attn_mlp=True, rotary_dim=round(factor * d["d_head"]))
    return d


_BUILDERS = {"PhiForCausalLM": _phi, "GemmaForCausalLM": lambda c: _gemma(c, 1), "Gemma2ForCausalLM": lambda c: _gemma(c, 2),
             "Gemma3ForCausalLM": lambda c: _gemma(c, 3), "OlmoForCausalLM": lambda c: _olmo(c, 1),
             "Olmo2ForCausalLM": lambda c: _olmo(c, 2)}


def hooked_config_dict(architecture: str, hf_config) -> dict[str, Any] | None:
    """A HookedTransformerConfig dict for ``hf_config`` where TransformerLens knows the family by hub names only
    (None for every other family: TransformerLens reads their checkpoint config itself)."""
    build = _BUILDERS.get(architecture)
    if build is None:
        return None
    return {**build(hf_config), "original_architecture": architecture}


def short_name(architecture: str) -> str:
    """The family's name as the README's table gives it: ``"LlamaForCausalLM"`` -> ``"Llama"``."""
    return architecture.removesuffix("ForCausalLM").removesuffix("LMHeadModel")
