"""tracr's compiled transformers, whose circuits are known by construction, as models and tasks.

``model, task = tracr.reverse()`` and ``tracr.xproportion()`` compile the RASP programs that ACDC and
auto-circuit use (tracr-reverse: reverse a sequence of 5 tokens from {1, 2, 3}; tracr-xproportion: at each
position, the fraction of the tokens so far that are "x", from {w, x, y, z}), convert the weights to a
``HookedTransformer`` (exactly: :func:`check_conversion`) and pair every input sequence with another as its
corruption. Every position after BOS is an answer position. The ground-truth node sets are in
:data:`mgnp_lens.reference.TRACR_TRUTH`.

Needs the ``tracr`` extra: ``pip install -e ".[tracr]"`` (``tracr-pypi``, ``jax``, ``dm-haiku``, ``chex``).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import torch

from .prompt_pairs import PromptPairTask

#: The tracr programs here: ``{name: (vocabulary, loss, metric)}``.
PROGRAMS = {"reverse": ((1, 2, 3), "kl", "logit_diff"), "xproportion": (("w", "x", "y", "z"), "mse", "answer_logit")}
#: Input length (without BOS) of every sequence, as in ACDC's and auto-circuit's tracr datasets.
SEQ_LEN = 5
BOS = "BOS"


@dataclass
class Compiled:
    """A tracr program compiled and converted.

    Attributes:
        name: ``"reverse"`` or ``"xproportion"``.
        model: the ``HookedTransformer`` (float32, eval mode).
        tracr_model: tracr's ``AssembledTransformerModel``.
        unembed: [d_model, d_vocab_out] the 0/1 projection of the residual stream onto the program's output.
    """

    name: str
    model: object
    tracr_model: object
    unembed: np.ndarray

    def encode(self, sequence) -> list[int]:
        """Token ids of ``[BOS, *sequence]``."""
        return list(self.tracr_model.input_encoder.encode([BOS, *sequence]))


def _import_tracr():
    try:
        from tracr.compiler import compiling, lib
        from tracr.rasp import rasp
    except ImportError as e:
        raise ImportError("the tracr tasks need the tracr extra: pip install -e \".[tracr]\" (tracr-pypi, jax, "
                          f"dm-haiku, chex): {e}") from None
    return compiling, lib, rasp


def _program(name: str):
    compiling, lib, rasp = _import_tracr()
    if name == "reverse":
        opp = (lib.make_length() - rasp.indices).named("opp_idx")
        opp = (opp - 1).named("opp_idx-1")
        program = rasp.Aggregate(rasp.Select(rasp.indices, opp, rasp.Comparison.EQ), rasp.tokens).named("reverse")
    elif name == "xproportion":
        program = lib.make_frac_prevs(rasp.tokens == "x")
    else:
        raise ValueError(f"unknown tracr program {name!r}; expected one of {', '.join(PROGRAMS)}")
    return compiling.compile_rasp_to_model(program, vocab=set(PROGRAMS[name][0]), max_seq_len=SEQ_LEN,
                                           compiler_bos=BOS), program


def _output_labels(program, tracr_model) -> list[str]:
    """The residual-stream labels of the program's output, in output-id order."""
    enc = tracr_model.output_encoder
    if enc is None or not getattr(enc, "encoding_map", None):  # numerical output: one direction
        return [program.label]
    return [f"{program.label}:{v}" for v, _ in sorted(enc.encoding_map.items(), key=lambda kv: kv[1])]


def compile_program(name: str, device: str = "cpu") -> Compiled:
    """Compile the tracr program ``name`` and convert it to a ``HookedTransformer`` (its weights copied head by
    head; the unembedding is the projection onto the program's output directions)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tracr_model, program = _program(name)
    c, params = tracr_model.model_config, tracr_model.params
    labels = list(tracr_model.residual_labels)
    outputs = _output_labels(program, tracr_model)
    unembed = np.zeros((len(labels), len(outputs)), dtype=np.float32)
    for j, lab in enumerate(outputs):
        unembed[labels.index(lab), j] = 1.0
    cfg = HookedTransformerConfig(
        model_name=f"tracr-{name}", n_layers=c.num_layers, d_model=len(labels), d_head=c.key_size,
        n_ctx=params["pos_embed"]["embeddings"].shape[0], d_vocab=params["token_embed"]["embeddings"].shape[0],
        d_vocab_out=len(outputs), d_mlp=c.mlp_hidden_size, n_heads=c.num_heads, act_fn="relu",
        attention_dir="causal" if c.causal else "bidirectional", normalization_type="LN" if c.layer_norm else None,
        device=device, seed=0)
    model = HookedTransformer(cfg)
    model.load_state_dict(_state_dict(params, c, unembed), strict=False)
    return Compiled(name, model.to(device).eval(), tracr_model, unembed)


def _state_dict(params, c, unembed: np.ndarray) -> dict[str, torch.Tensor]:
    """tracr's haiku parameters in TransformerLens's names and [n_heads, ...] layouts."""
    t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    heads = lambda w: t(w).reshape(w.shape[0], c.num_heads, c.key_size).permute(1, 0, 2)  # noqa: E731
    sd = {"embed.W_E": t(params["token_embed"]["embeddings"]), "pos_embed.W_pos": t(params["pos_embed"]["embeddings"]),
          "unembed.W_U": t(unembed)}
    for l in range(c.num_layers):
        attn, mlp = f"transformer/layer_{l}/attn", f"transformer/layer_{l}/mlp"
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            sd[f"blocks.{l}.attn.W_{ours}"] = heads(params[f"{attn}/{theirs}"]["w"])
            sd[f"blocks.{l}.attn.b_{ours}"] = t(params[f"{attn}/{theirs}"]["b"]).reshape(c.num_heads, c.key_size)
        w_o = t(params[f"{attn}/linear"]["w"])
        sd[f"blocks.{l}.attn.W_O"] = w_o.reshape(c.num_heads, c.key_size, w_o.shape[-1])
        sd[f"blocks.{l}.attn.b_O"] = t(params[f"{attn}/linear"]["b"])
        sd[f"blocks.{l}.mlp.W_in"] = t(params[f"{mlp}/linear_1"]["w"])
        sd[f"blocks.{l}.mlp.b_in"] = t(params[f"{mlp}/linear_1"]["b"])
        sd[f"blocks.{l}.mlp.W_out"] = t(params[f"{mlp}/linear_2"]["w"])
        sd[f"blocks.{l}.mlp.b_out"] = t(params[f"{mlp}/linear_2"]["b"])
    return sd


def check_conversion(compiled: Compiled, sequences) -> float:
    """The largest difference between tracr's own output and the converted model's on ``sequences``
    (unembedded outputs at every position after BOS; 0 up to float rounding when the conversion is exact)."""
    ids = torch.tensor([compiled.encode(s) for s in sequences])
    with torch.no_grad():
        ours = compiled.model(ids)[:, 1:].numpy()  # [n, SEQ_LEN, d_vocab_out]
    theirs = np.stack([np.asarray(compiled.tracr_model.forward(compiled.tracr_model.params, np.array([row]))
                                  .transformer_output.output)[0] @ compiled.unembed for row in ids.tolist()])
    return float(np.abs(ours - theirs[:, 1:]).max())


def _pairs(compiled: Compiled, seed: int) -> tuple[list, list]:
    """Every input sequence, each with another sequence (a random derangement) as its corruption."""
    vocab = PROGRAMS[compiled.name][0]
    sequences = [list(s) for s in itertools.product(vocab, repeat=SEQ_LEN)]
    rng = random.Random(seed)
    order = list(range(len(sequences)))
    while True:
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            break
    return sequences, [sequences[j] for j in order]


def _answers(compiled: Compiled, clean: list, corrupted: list) -> tuple[list, list]:
    """Per position after BOS: the output id the clean sequence should give and the one the corrupted gives."""
    if compiled.name == "xproportion":
        return [0] * SEQ_LEN, [0] * SEQ_LEN
    enc = compiled.tracr_model.output_encoder.encoding_map
    return [enc[v] for v in reversed(clean)], [enc[v] for v in reversed(corrupted)]


def task(compiled: Compiled, seed: int = 0) -> PromptPairTask:
    """The program's task: all its input sequences paired with corruptions, answered at every position after
    BOS, with the program's loss (KL for reverse's categorical output, MSE for xproportion's number)."""
    clean, corrupted = _pairs(compiled, seed)
    answers = [_answers(compiled, a, b) for a, b in zip(clean, corrupted)]
    _, loss, metric = PROGRAMS[compiled.name]
    positions = [list(range(1, SEQ_LEN + 1))] * len(clean)
    return PromptPairTask.from_tokens([compiled.encode(s) for s in clean], [compiled.encode(s) for s in corrupted],
                                      [a for a, _ in answers], [b for _, b in answers], answer_pos=positions,
                                      seed=seed, name=f"tracr-{compiled.name}", loss=loss, metric=metric)


def reverse(device: str = "cpu", seed: int = 0):
    """``(model, task)`` for tracr-reverse (4 layers × 1 head; output: the reversed token at each position)."""
    compiled = compile_program("reverse", device)
    return compiled.model, task(compiled, seed)


def xproportion(device: str = "cpu", seed: int = 0):
    """``(model, task)`` for tracr-xproportion (2 layers × 1 head; output: the fraction of "x" so far)."""
    compiled = compile_program("xproportion", device)
    return compiled.model, task(compiled, seed)
