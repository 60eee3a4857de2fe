"""What a circuit's heads do, in numbers a person can read: direct logit attribution, attention patterns and
example answers of the full model and of the circuit.

    heads = head_attribution(model, task, circuit)        # one row per kept head: neurons kept, DLA
    patterns = attention_patterns(model, task, circuit)   # each kept head's attention on a few prompts
    examples = example_answers(model, task, circuit)      # prompts with the full model's and the circuit's answers

All three read the *full* model's clean run (what the heads do in the model the circuit explains), except the
circuit's answers in :func:`example_answers`. HookedTransformer only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from .ablation import Ablation
from .circuit import Circuit
from .hooks import at_positions
from .rundir import EDGES_FILE, EXAMPLES_FILE, HEADS_FILE, PATTERNS_FILE


def _check(model, circuit: Circuit) -> None:
    from .granularity import ModelDims

    if not hasattr(model, "W_O") or not hasattr(model, "run_with_cache"):
        raise ValueError(f"head views need a HookedTransformer, got {type(model).__name__}")
    if ModelDims.from_model(model) != circuit.dims:
        raise ValueError(f"the circuit is for {circuit.dims}, the model is {ModelDims.from_model(model)}")


def _first_answer(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B] answer positions, correct and incorrect ids (the first of several answer positions)."""
    pick = (lambda t: t) if batch.answer_pos.dim() == 1 else (lambda t: t[:, 0])
    return pick(batch.answer_pos), pick(batch.correct), pick(batch.incorrect)


def _through_final_norm(model, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` [B, d_model] as the final norm passes it to the unembedding, with the clean run's ``scale`` [B, 1]
    held fixed (so that the readout is linear in ``x``: direct logit attribution)."""
    norm = model.cfg.normalization_type
    if norm in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    if norm is not None:
        x = x / scale
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    return x * weight if weight is not None else x


@torch.no_grad()
def head_attribution(model, task, circuit: Circuit, split: str = "test", max_examples: int = 32,
                     batch_size: int = 8) -> pd.DataFrame:
    """Each kept head's direct logit attribution: what its output, read straight through the final norm
    (its scale held at the clean run's) and the unembedding, adds to correct − incorrect at the answer position,
    mean over ``max_examples`` pairs of ``split`` (spread over its length buckets).

    Returns:
        One row per kept head, strongest |DLA| first: ``head`` (``L3 H2``), ``layer``, ``index``,
        ``attention_neurons`` kept, ``of`` (d_head), ``dla``.
    """
    _check(model, circuit)
    heads = circuit.active_heads()
    total, n = torch.zeros(len(heads), dtype=torch.float64), 0
    device = next(model.parameters()).device
    names = {f"blocks.{l}.attn.hook_z" for l, _ in heads} | {"ln_final.hook_scale"}
    for batch in task.split(split).head(max_examples).batches(batch_size):
        batch = batch.to(device)
        pos, correct, incorrect = _first_answer(batch)
        _, cache = model.run_with_cache(batch.clean, names_filter=lambda name: name in names)
        scale = at_positions(cache["ln_final.hook_scale"], pos) if "ln_final.hook_scale" in cache else None
        direction = (model.W_U[:, correct] - model.W_U[:, incorrect]).T  # [B, d_model]
        for i, (l, h) in enumerate(heads):
            out = at_positions(cache[f"blocks.{l}.attn.hook_z"][:, :, h], pos) @ model.blocks[l].attn.W_O[h]
            total[i] += (_through_final_norm(model, out, scale) * direction).sum().double().item()
        n += len(batch)
    neurons = circuit.masks["attn_neuron"].sum(-1)
    rows = [{"head": f"L{l} H{h}", "layer": l, "index": h, "attention_neurons": int(neurons[l, h]),
             "of": circuit.dims.d_head, "dla": float(total[i] / max(n, 1))} for i, (l, h) in enumerate(heads)]
    frame = pd.DataFrame(rows, columns=["head", "layer", "index", "attention_neurons", "of", "dla"])
    return frame.reindex(frame["dla"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def _str_tokens(model, tokens: torch.Tensor) -> list[str]:
    if getattr(model, "tokenizer", None) is None:
        return [str(int(t)) for t in tokens]
    return model.to_str_tokens(tokens)


@torch.no_grad()
def attention_patterns(model, task, circuit: Circuit, split: str = "test", n_prompts: int = 3) -> dict:
    """Each kept head's attention pattern on the first ``n_prompts`` clean prompts of ``split``, up to and
    including the answer position.

    Returns:
        ``{"prompts": [[token strings] per prompt], "heads": {"L3 H2": [[[query][key] weights] per prompt]}}``.
    """
    _check(model, circuit)
    heads = circuit.active_heads()
    names = {f"blocks.{l}.attn.hook_pattern" for l, _ in heads}
    prompts, patterns = [], {f"L{l} H{h}": [] for l, h in heads}
    for batch in task.split(split).head(n_prompts).batches(n_prompts):  # a batch per prompt length
        batch = batch.to(next(model.parameters()).device)
        _, cache = model.run_with_cache(batch.clean, names_filter=lambda name: name in names)
        for i, p in enumerate(_first_answer(batch)[0].tolist()):
            prompts.append(_str_tokens(model, batch.clean[i, :p + 1]))
            for l, h in heads:
                pattern = cache[f"blocks.{l}.attn.hook_pattern"][i, h, :p + 1, :p + 1]
                patterns[f"L{l} H{h}"].append(pattern.float().round(decimals=4).tolist())
    return {"prompts": prompts, "heads": patterns}


@torch.no_grad()
def example_answers(model, task, circuit: Circuit, split: str = "test", n: int = 8) -> pd.DataFrame:
    """The first ``n`` pairs of ``split``: prompts, answers, and the full model's and the circuit's top token and
    task metric at the answer position.

    Returns:
        Columns ``clean, corrupted, correct, incorrect, full_top, circuit_top, full_metric, circuit_metric``.
    """
    _check(model, circuit)
    rows = []
    for batch in task.split(split).head(n).batches(n):  # a batch per prompt length
        rows += _answer_rows(model, task, circuit, batch.to(next(model.parameters()).device))
    return pd.DataFrame(rows, columns=["clean", "corrupted", "correct", "incorrect", "full_top", "circuit_top",
                                       "full_metric", "circuit_metric"])


def _answer_rows(model, task, circuit: Circuit, batch) -> list[dict]:
    pos, correct, incorrect = _first_answer(batch)
    full = at_positions(model(batch.clean, return_type="logits"), batch.answer_pos)
    pruned = at_positions(circuit.run(model, batch.clean, batch.corrupted), batch.answer_pos)
    full_metric, circuit_metric = task.metric(full, batch), task.metric(pruned, batch)
    text = (lambda ids: "".join(_str_tokens(model, ids)))
    first = (lambda logits: logits if logits.dim() == 2 else logits[:, 0])
    return [{"clean": text(batch.clean[i, :int(pos[i]) + 1]), "corrupted": text(batch.corrupted[i, :int(pos[i]) + 1]),
             "correct": text(correct[i:i + 1]), "incorrect": text(incorrect[i:i + 1]),
             "full_top": text(first(full)[i].argmax()[None]), "circuit_top": text(first(pruned)[i].argmax()[None]),
             "full_metric": float(full_metric[i]), "circuit_metric": float(circuit_metric[i])}
            for i in range(len(batch))]


@dataclass
class RunViews:
    """What a finished run shows beside its circuit: the edges between kept nodes
    (:func:`mgnp_lens.interactions.interactions`), the kept heads' direct logit attribution, their attention
    patterns and example answers. Any may be None (not computed for this model, ablation or run)."""

    edges: pd.DataFrame | None = None
    heads: pd.DataFrame | None = None
    patterns: dict | None = None
    examples: pd.DataFrame | None = None

    def files(self) -> dict[str, Callable[[Path], None]]:
        """``{file name: how to write it to a path}`` for the parts this holds (:mod:`mgnp_lens.rundir`'s names)."""
        out: dict[str, Callable[[Path], None]] = {}
        for name, frame in ((EDGES_FILE, self.edges), (HEADS_FILE, self.heads), (EXAMPLES_FILE, self.examples)):
            if frame is not None:
                out[name] = lambda p, f=frame: f.to_csv(p, index=False)
        if self.patterns is not None:
            out[PATTERNS_FILE] = lambda p: p.write_text(json.dumps(self.patterns, default=str))
        return out

    def write(self, directory: Path) -> None:
        """Write the parts this holds into ``directory``, each to a temporary name first, then renamed (never half
        a file)."""
        for name, write in self.files().items():
            tmp = directory / (name + ".tmp")
            try:
                write(tmp)
                tmp.replace(directory / name)
            finally:
                tmp.unlink(missing_ok=True)

    @classmethod
    def read(cls, directory: Path) -> "RunViews":
        """The parts a run directory holds (missing files: None)."""
        def csv(name):
            return pd.read_csv(directory / name) if (directory / name).exists() else None
        patterns = json.loads((directory / PATTERNS_FILE).read_text()) if (directory / PATTERNS_FILE).exists() \
            else None
        return cls(csv(EDGES_FILE), csv(HEADS_FILE), patterns, csv(EXAMPLES_FILE))


def run_views(model, task, circuit: Circuit, split: str, ablation: str = "corrupted", edge_examples: int = 32,
              heads: bool = True, phases=None) -> RunViews:
    """A finished run's views of ``circuit`` on ``split``: edges scored on its first ``edge_examples`` pairs
    (a HookedTransformer, not a TransformerBridge, and the corrupted ablation only, the one the edge scores assume;
    0 skips them) and, with
    ``heads``, the kept heads' attribution, patterns and example answers (HookedTransformer only too); each a timed
    phase of ``phases`` (:class:`mgnp_lens.phases.Phases`)."""
    from .interactions import interactions
    from .phases import Phases

    phases = phases or Phases(progress=False)
    out = RunViews()
    hooked = type(model).__name__ == "HookedTransformer"
    if edge_examples and hooked and Ablation.of(ablation).uses_corrupted_run:
        with phases("edges", total=min(edge_examples, len(task.split(split))), unit="pairs") as bar:
            out.edges = interactions(model, task, circuit, split=split, max_examples=edge_examples, bar=bar)
    if heads and hooked:
        with phases("views"):
            out.heads = head_attribution(model, task, circuit, split=split)
            out.patterns = attention_patterns(model, task, circuit, split=split)
            out.examples = example_answers(model, task, circuit, split=split)
    return out
