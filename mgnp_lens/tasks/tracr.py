"""tracr's compiled transformers, whose circuits are known by construction, as models and tasks.

:func:`from_program` takes any RASP program: it compiles it with tracr, converts the weights to a
``HookedTransformer`` (checked exact on every input), pairs every input with another as its corruption (every
position after BOS is an answer position) and derives the ground-truth node set from the compiled model
(:meth:`Program.truth`). :data:`LIBRARY` holds programs of ``tracr.compiler.lib`` with small vocabularies, among
them the two that ACDC and auto-circuit use (``reverse``: reverse 5 tokens from {1, 2, 3}; ``xproportion``: the
fraction of "x" so far, from {w, x, y, z}); :func:`load` builds one by name.

Needs the ``tracr`` extra: ``pip install -e ".[tracr]"`` (``tracr-pypi``, ``jax``, ``dm-haiku``, ``chex``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .prompt_pairs import PromptPairTask

BOS = "BOS"
#: Input length (without BOS) of reverse and xproportion, as in ACDC's and auto-circuit's tracr datasets.
SEQ_LEN = 5
#: Largest difference between tracr's outputs and the converted model's that counts as an exact conversion.
EXACT_TOLERANCE = 1e-4
#: A node is in the ground truth when ablating it alone moves some output by more than this.
TRUTH_TOLERANCE = 1e-4
#: The most input sequences a task enumerates (a random subset beyond).
MAX_INPUTS = 4096
#: The ablations a ground truth is derived for (:meth:`Program.truth`).
TRUTH_ABLATIONS = ("corrupted", "zero")


@dataclass
class Compiled:
    """A RASP program compiled by tracr and converted to TransformerLens.

    Attributes:
        name: the program's name.
        model: the ``HookedTransformer`` (float32, eval mode).
        tracr_model: tracr's ``AssembledTransformerModel``.
        unembed: [d_model, d_vocab_out] the 0/1 projection of the residual stream onto the program's output.
        vocab: the input vocabulary.
        max_seq_len: the longest input (without BOS).
        numerical: whether the output is one number (else one of ``d_vocab_out`` categories).
    """

    name: str
    model: object
    tracr_model: object
    unembed: np.ndarray
    vocab: tuple = ()
    max_seq_len: int = SEQ_LEN
    numerical: bool = False

    def encode(self, sequence) -> list[int]:
        """Token ids of ``[BOS, *sequence]``."""
        return list(self.tracr_model.input_encoder.encode([BOS, *sequence]))

    def tracr_outputs(self, ids: torch.Tensor) -> np.ndarray:
        """[n, pos, d_vocab_out] tracr's own forward pass on ``ids`` [n, pos], projected on the output."""
        out = self.tracr_model.forward(self.tracr_model.params, np.asarray(ids.tolist()))
        return np.asarray(out.transformer_output.output) @ self.unembed


@dataclass(frozen=True)
class Truth:
    """A program's ground-truth node set under one ablation, derived from the compiled model.

    Attributes:
        heads: ``{(layer, head)}`` whose ablation alone changes an output.
        mlps: ``{layer}`` likewise for MLP blocks.
        ablation: ``"corrupted"`` or ``"zero"``.
        effects: ``{node name: the largest output change when that node alone is ablated}``.
        complement_effect: the largest output change with every node outside the truth ablated together
            (at most :data:`TRUTH_TOLERANCE`: the truth is sufficient).
    """

    heads: frozenset
    mlps: frozenset
    ablation: str
    effects: dict = field(default_factory=dict, compare=False)
    complement_effect: float = 0.0


@dataclass
class Program:
    """A compiled program with its task and ground truths (what :func:`from_program` returns).

    Attributes:
        compiled: the compiled and converted program.
        task: its :class:`~mgnp_lens.tasks.PromptPairTask`.
        inputs: the input sequences the task pairs (clean prompts, in order).
    """

    compiled: Compiled
    task: PromptPairTask
    inputs: list
    corrupted_inputs: list
    _truths: dict = field(default_factory=dict, repr=False)

    @property
    def model(self):
        return self.compiled.model

    @property
    def name(self) -> str:
        return self.compiled.name

    def truth(self, ablation: str = "corrupted") -> Truth:
        """The heads and MLP blocks the output depends on under ``ablation``: each node that changes some output
        when ablated alone (the others clean) on the task's pairs, confirmed by ablating all the other nodes
        together (no output may change). Plain TransformerLens hooks, not mgnp-lens's gates, do the ablating.

        Raises:
            ValueError: an ablation other than ``"corrupted"`` or ``"zero"``.
            RuntimeError: the nodes found are not sufficient together (the program has no exact node set).
        """
        if ablation not in TRUTH_ABLATIONS:
            raise ValueError(f"a tracr ground truth is derived for the ablations {', '.join(TRUTH_ABLATIONS)}; "
                             f"got {ablation!r}")
        if ablation not in self._truths:
            self._truths[ablation] = derive_truth(self.compiled, self.inputs, self.corrupted_inputs, ablation)
        return self._truths[ablation]


# ------------------------------------------------------------------------------------------- compiling
def _import_tracr():
    try:
        from tracr.compiler import compiling, lib
        from tracr.rasp import rasp
    except ImportError as e:
        raise ImportError("the tracr tasks need the tracr extra: pip install -e \".[tracr]\" (tracr-pypi, jax, "
                          f"dm-haiku, chex): {e}") from None
    return compiling, lib, rasp


@contextmanager
def _numbered_from_one(program, rasp) -> Iterator[None]:
    """tracr labels each expression with a process-wide counter and lays out the residual stream by label, so the
    same program compiles to a differently ordered model depending on what was compiled before it (and a run on it
    then differs). Inside, ``program``'s expressions are numbered from 1, unless some already carry a number (then
    nothing changes: renumbering could give two of them one label); afterwards the counter goes on above both."""
    seen, stack, fresh = set(), [program], True
    while stack:
        expr = stack.pop()
        if id(expr) in seen:
            continue
        seen.add(id(expr))
        fresh = fresh and "unique_id" not in vars(expr)
        stack.extend(expr.children)
    if not fresh:
        yield
        return
    before = next(rasp.RASPExpr._ids)
    rasp.RASPExpr._ids = counter = itertools.count(1)
    try:
        yield
    finally:
        rasp.RASPExpr._ids = itertools.count(max(before, next(counter)))


def _output_labels(program, tracr_model) -> list[str]:
    """The residual-stream labels of the program's output, in output-id order."""
    enc = tracr_model.output_encoder
    if enc is None or not getattr(enc, "encoding_map", None):  # numerical output: one direction
        return [program.label]
    return [f"{program.label}:{v}" for v, _ in sorted(enc.encoding_map.items(), key=lambda kv: kv[1])]


def compile_rasp(program, vocab, max_seq_len: int, name: str | None = None, device: str = "cpu") -> Compiled:
    """Compile a RASP ``program`` with tracr and convert it to a ``HookedTransformer`` (weights copied head by head;
    the unembedding is the projection onto the program's output directions).

    Raises:
        ValueError: tracr cannot compile the program, or an empty vocabulary or length.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    compiling, _, rasp = _import_tracr()
    vocab = tuple(sorted(set(vocab), key=repr))
    if not vocab or max_seq_len < 1:
        raise ValueError(f"a tracr program needs a vocabulary and max_seq_len >= 1; got vocab={vocab!r}, "
                         f"max_seq_len={max_seq_len}")
    try:
        with _numbered_from_one(program, rasp):
            label = name or program.label
            tracr_model = compiling.compile_rasp_to_model(program, vocab=set(vocab), max_seq_len=max_seq_len,
                                                          compiler_bos=BOS)
    except Exception as e:  # tracr raises many kinds: unsupported operations, non-numerical MLP inputs, ...
        detail = " ".join(str(e).split())
        raise ValueError(f"tracr cannot compile the RASP program {name or program.label!r} ({type(e).__name__}: "
                         f"{detail}); only programs that tracr.compiler.compiling.compile_rasp_to_model accepts can "
                         "become tasks") from None
    c, params = tracr_model.model_config, tracr_model.params
    labels = list(tracr_model.residual_labels)
    outputs = _output_labels(program, tracr_model)
    unembed = np.zeros((len(labels), len(outputs)), dtype=np.float32)
    for j, lab in enumerate(outputs):
        unembed[labels.index(lab), j] = 1.0
    cfg = HookedTransformerConfig(
        model_name=f"tracr-{label}", n_layers=c.num_layers, d_model=len(labels), d_head=c.key_size,
        n_ctx=params["pos_embed"]["embeddings"].shape[0], d_vocab=params["token_embed"]["embeddings"].shape[0],
        d_vocab_out=len(outputs), d_mlp=c.mlp_hidden_size, n_heads=c.num_heads, act_fn="relu",
        attention_dir="causal" if c.causal else "bidirectional", normalization_type="LN" if c.layer_norm else None,
        device=device, seed=0)
    model = HookedTransformer(cfg)
    model.load_state_dict(_state_dict(params, c, unembed), strict=False)
    return Compiled(label, model.to(device).eval(), tracr_model, unembed, vocab, max_seq_len,
                    numerical=bool(rasp.is_numerical(program)))


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
        ours = compiled.model(ids)[:, 1:].numpy()  # [n, len, d_vocab_out]
    return float(np.abs(ours - compiled.tracr_outputs(ids)[:, 1:]).max())


# ------------------------------------------------------------------------------------------- the task
def all_inputs(vocab, length: int, max_inputs: int = MAX_INPUTS, seed: int = 0) -> list[list]:
    """Every sequence of ``length`` tokens from ``vocab`` (a random ``max_inputs`` of them if there are more)."""
    vocab = sorted(set(vocab), key=repr)
    if len(vocab) ** length <= max_inputs:
        return [list(s) for s in itertools.product(vocab, repeat=length)]
    rng = random.Random(seed)
    return [list(s) for s in sorted({tuple(rng.choice(vocab) for _ in range(length)) for _ in range(max_inputs)},
                                    key=repr)]


def _derangement(n: int, seed: int) -> list[int]:
    """A random permutation of ``range(n)`` that moves every index."""
    rng = random.Random(seed)
    order = list(range(n))
    while True:
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


def from_program(program, vocab, max_seq_len: int, *, name: str | None = None, inputs: Sequence | None = None,
                 loss: str | None = None, seed: int = 0, device: str = "cpu") -> Program:
    """Any RASP program as a task with known truth.

    Args:
        program: a ``tracr.rasp`` program (categorical or numerical output).
        vocab: its input vocabulary.
        max_seq_len: the longest input (without BOS); the task's inputs all have this length.
        name: the task's name (``tracr-NAME``); default the program's label.
        inputs: the input sequences (default every sequence of ``max_seq_len`` tokens, :func:`all_inputs`); each is
            paired with another of them (a random derangement) as its corruption.
        loss: ``"kl"`` (categorical outputs, the default there) or ``"mse"`` (numerical outputs, the default there).
        seed: seeds the pairing and the task's splits.
        device: where the model lives.

    Returns:
        a :class:`Program` (``.model``, ``.task``, ``.truth(ablation)``).

    Raises:
        ValueError: tracr cannot compile the program; the conversion is not exact; every pair gives the same
            outputs (nothing to find); a KL loss on a numerical output.
    """
    return pair(compile_rasp(program, vocab, max_seq_len, name, device), inputs, loss, seed)


def pair(compiled: Compiled, inputs: Sequence | None = None, loss: str | None = None, seed: int = 0) -> Program:
    """The task and truths of a compiled program (:func:`from_program` after compiling; same arguments)."""
    loss = loss or ("mse" if compiled.numerical else "kl")
    if compiled.numerical and loss == "kl":
        raise ValueError(f"tracr program {compiled.name!r} outputs a number, which has no distribution to take a KL "
                         "of; use loss='mse' (the default for numerical outputs)")
    length = compiled.max_seq_len
    clean = [list(s) for s in (inputs if inputs is not None else all_inputs(compiled.vocab, length, seed=seed))]
    if len(clean) < 2 or any(len(s) != len(clean[0]) for s in clean):
        raise ValueError(f"tracr program {compiled.name!r} needs at least two input sequences of one length; got "
                         f"{len(clean)} (lengths {sorted({len(s) for s in clean})})")
    corrupted = [clean[j] for j in _derangement(len(clean), seed)]
    ids = torch.tensor([compiled.encode(s) for s in clean])
    bad_ids = torch.tensor([compiled.encode(s) for s in corrupted])
    with torch.no_grad():
        out, bad_out = compiled.model(ids)[:, 1:], compiled.model(bad_ids)[:, 1:]
    gap = float(np.abs(out.numpy() - compiled.tracr_outputs(ids)[:, 1:]).max())
    if gap > EXACT_TOLERANCE:
        raise ValueError(f"the converted model of {compiled.name!r} differs from tracr's by {gap:.3g} on its inputs "
                         "(not an exact conversion); tracr programs with layer norm or non-ReLU MLPs are not supported")
    if float((out - bad_out).abs().max()) <= TRUTH_TOLERANCE:
        raise ValueError(f"every pair of tracr program {compiled.name!r} gives the same outputs on clean and corrupted "
                         f"inputs ({len(clean)} inputs of length {length} from {list(compiled.vocab)}), so there is "
                         "nothing to find; use a larger vocabulary or length, or inputs on which the output varies")
    return Program(compiled, _task(compiled, ids, bad_ids, out, bad_out, loss, seed), clean, corrupted)


def _task(compiled: Compiled, ids, bad_ids, out, bad_out, loss: str, seed: int) -> PromptPairTask:
    """Pairs answered at every position after BOS: the clean and corrupted inputs' output ids (0 for a number)."""
    n, length = out.shape[:2]
    correct = torch.zeros(n, length, dtype=torch.long) if compiled.numerical else out.argmax(-1)
    incorrect = torch.zeros(n, length, dtype=torch.long) if compiled.numerical else bad_out.argmax(-1)
    positions = [list(range(1, length + 1))] * n
    metric = "answer_logit" if compiled.numerical else "logit_diff"
    return PromptPairTask.from_tokens(ids, bad_ids, correct, incorrect, answer_pos=positions, seed=seed,
                                      name=f"tracr-{compiled.name}", loss=loss, metric=metric)


# ------------------------------------------------------------------------------------------- ground truth
def _node_hooks(compiled: Compiled, nodes, ablation: str, cache) -> list:
    """TransformerLens forward hooks that ablate ``nodes`` (``("head", l, h)`` / ``("mlp", l)``): the head's
    ``hook_z`` or the block's ``hook_mlp_out`` replaced by the corrupted run's (``cache``) or by zeros."""
    def replace(head=None):
        def hook(act, hook):
            new = torch.zeros_like(act) if ablation == "zero" else cache[hook.name]
            if head is None:
                return new
            act = act.clone()
            act[:, :, head] = new[:, :, head]
            return act
        return hook

    hooks = []
    for node in nodes:
        if node[0] == "head":
            hooks.append((f"blocks.{node[1]}.attn.hook_z", replace(node[2])))
        else:
            hooks.append((f"blocks.{node[1]}.hook_mlp_out", replace()))
    return hooks


def derive_truth(compiled: Compiled, clean: list, corrupted: list, ablation: str) -> Truth:
    """The nodes whose ablation alone changes the output on ``clean`` (corrupted ablation: patched from the paired
    ``corrupted`` input), confirmed sufficient by ablating all the others together (:meth:`Program.truth`)."""
    model, cfg = compiled.model, compiled.model.cfg
    ids = torch.tensor([compiled.encode(s) for s in clean])
    bad_ids = torch.tensor([compiled.encode(s) for s in corrupted])
    nodes = [("head", l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)] + \
        [("mlp", l) for l in range(cfg.n_layers)]
    with torch.no_grad():
        base = model(ids)[:, 1:]
        _, cache = model.run_with_cache(bad_ids, names_filter=lambda n: n.endswith(("hook_z", "hook_mlp_out")))

        def effect(ablated) -> float:
            return float((model.run_with_hooks(ids, fwd_hooks=_node_hooks(compiled, ablated, ablation, cache))[:, 1:]
                          - base).abs().max())

        effects = {_node_name(n): effect([n]) for n in nodes}
        kept = [n for n in nodes if effects[_node_name(n)] > TRUTH_TOLERANCE]
        rest = effect([n for n in nodes if n not in kept])
    if rest > TRUTH_TOLERANCE:
        raise RuntimeError(f"tracr program {compiled.name!r} has no exact node set under the {ablation} ablation: with "
                           f"only {sorted(map(_node_name, kept))} kept the output still moves by {rest:.3g}")
    return Truth(frozenset((n[1], n[2]) for n in kept if n[0] == "head"),
                 frozenset(n[1] for n in kept if n[0] == "mlp"), ablation, effects, rest)


def _node_name(node) -> str:
    return f"L{node[1]}H{node[2]}" if node[0] == "head" else f"MLP{node[1]}"


# ------------------------------------------------------------------------------------------- the library
@dataclass(frozen=True)
class LibraryEntry:
    """A program of ``tracr.compiler.lib`` at a small vocabulary and length.

    Attributes:
        build: ``(lib, rasp) -> program``.
        vocab: the input vocabulary.
        max_seq_len: the input length.
        inputs: ``(vocab, max_seq_len) -> input sequences`` where not every sequence is a valid input (default:
            all of them).
        description: what the program computes.
    """

    build: Callable
    vocab: tuple
    max_seq_len: int
    description: str
    inputs: Callable | None = None


def _reverse(lib, rasp):  # lib.make_reverse, with the labels auto-circuit's tracr-reverse uses
    opp = (lib.make_length() - rasp.indices).named("opp_idx")
    opp = (opp - 1).named("opp_idx-1")
    return rasp.Aggregate(rasp.Select(rasp.indices, opp, rasp.Comparison.EQ), rasp.tokens).named("reverse")


def _permutations(vocab, length):
    return [list(p) for p in itertools.permutations(sorted(vocab), length)]


#: The programs of ``tracr.compiler.lib`` with a non-trivial circuit under their pairs, at vocabularies and lengths
#: small enough to enumerate every input.
LIBRARY = {
    "reverse": LibraryEntry(_reverse, (1, 2, 3), 5, "reverse the sequence (ACDC's and auto-circuit's tracr-reverse)"),
    "xproportion": LibraryEntry(lambda lib, rasp: lib.make_frac_prevs(rasp.tokens == "x"), ("w", "x", "y", "z"), 5,
                                "fraction of the tokens so far that are x (ACDC's tracr-xproportion)"),
    "hist": LibraryEntry(lambda lib, rasp: lib.make_hist(), (1, 2, 3), 5, "how often each token occurs"),
    "sort_unique": LibraryEntry(lambda lib, rasp: lib.make_sort_unique(rasp.tokens, rasp.tokens), (1, 2, 3, 4, 5), 4,
                                "sort 4 distinct tokens from 5", inputs=_permutations),
    "sort": LibraryEntry(lambda lib, rasp: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=4, min_key=1),
                         (1, 2, 3, 4), 4, "sort tokens, repeats allowed"),
    "frac_prevs": LibraryEntry(lambda lib, rasp: lib.make_frac_prevs(rasp.tokens == "a"), ("a", "b", "c"), 5,
                               "fraction of the tokens so far that are a"),
    "pair_balance": LibraryEntry(lambda lib, rasp: lib.make_pair_balance(rasp.tokens, "(", ")"), ("(", ")", "x"), 5,
                                 "fraction of ( minus fraction of ) so far"),
    "shuffle_dyck": LibraryEntry(lambda lib, rasp: lib.make_shuffle_dyck(["()", "{}"]), ("(", ")", "{", "}"), 4,
                                 "whether two kinds of brackets are balanced (shuffle-Dyck-2)"),
    "shift_by": LibraryEntry(lambda lib, rasp: lib.shift_by(1, rasp.tokens), (1, 2, 3), 5,
                             "each token moved one position to the right"),
    "detect_pattern": LibraryEntry(lambda lib, rasp: lib.detect_pattern(rasp.tokens, "ab"), ("a", "b", "c"), 5,
                                   "whether the pattern ab ends at each position"),
}


def _entry(name: str) -> LibraryEntry:
    if name not in LIBRARY:
        raise ValueError(f"unknown tracr program {name!r}; expected one of {', '.join(LIBRARY)}")
    return LIBRARY[name]


def compile_program(name: str, device: str = "cpu") -> Compiled:
    """The :data:`LIBRARY` program ``name`` compiled and converted (no task; :func:`load` builds both).

    Raises:
        ValueError: an unknown name (the known ones listed).
    """
    entry = _entry(name)
    _, lib, rasp = _import_tracr()
    return compile_rasp(entry.build(lib, rasp), entry.vocab, entry.max_seq_len, name, device)


def task(compiled: Compiled, seed: int = 0) -> PromptPairTask:
    """The task of an already compiled :data:`LIBRARY` program (as :func:`load` builds it)."""
    entry = _entry(compiled.name)
    return pair(compiled, entry.inputs(entry.vocab, entry.max_seq_len) if entry.inputs else None, seed=seed).task


def load(name: str, seed: int = 0, device: str = "cpu") -> Program:
    """A :data:`LIBRARY` program compiled, converted, paired and ready to derive its truths (:func:`from_program`)."""
    entry = _entry(name)
    inputs = entry.inputs(entry.vocab, entry.max_seq_len) if entry.inputs else None
    return pair(compile_program(name, device), inputs, seed=seed)


#: Kept for code written for the first two programs: ``{name: (vocabulary, loss, metric)}``.
PROGRAMS = {"reverse": ((1, 2, 3), "kl", "logit_diff"), "xproportion": (("w", "x", "y", "z"), "mse", "answer_logit")}


def reverse(device: str = "cpu", seed: int = 0):
    """``(model, task)`` for tracr-reverse (4 layers × 1 head; output: the reversed token at each position)."""
    p = load("reverse", seed, device)
    return p.model, p.task


def xproportion(device: str = "cpu", seed: int = 0):
    """``(model, task)`` for tracr-xproportion (2 layers × 1 head; output: the fraction of "x" so far)."""
    p = load("xproportion", seed, device)
    return p.model, p.task
