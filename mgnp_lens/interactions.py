"""Which kept nodes write into which: edge attribution patching restricted to a circuit.

Node pruning says which nodes a behaviour needs, not how they talk to each other (the paper's
stated limitation). This module estimates it afterwards. The circuit runs (pruned nodes patched
from the corrupted run) and, for every kept *writer* u (the embedding, a kept head's output
``attn.hook_result[:, :, h]``, a kept MLP's ``hook_mlp_out``) and every kept *reader* v
downstream of it (a kept head's query/key/value input, a kept MLP's input, the final residual
stream that the unembedding reads), the edge score is

    score(u → v) = mean over examples of  Σ_positions (u_clean − u_corrupted) · ∂metric/∂input_v

a first-order estimate of how much the metric changes when only the u → v path is corrupted.
Positive: the edge carries the behaviour; negative: it works against it. For grouped-query
attention the key/value inputs are shared by a group of query heads, and their gradient is split
evenly among the kept heads of that group.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch

from .circuit import Circuit
from .granularity import ModelDims
from .hooks import Interpolator, check_hook_points, logits_at
from .speedups import frozen_weights


def _node(l: int, h: int | None = None) -> str:
    return f"L{l} MLP" if h is None else f"L{l} H{h}"


@dataclass
class _Endpoints:
    """The circuit's writers ``(name, position, hook point, head or None)`` and readers ``(name, position,
    layer, head, None (an MLP) or "final")``, and the grouped-query-attention bookkeeping."""

    writers: list[tuple]
    readers: list[tuple]
    group: int
    kept_in_group: dict[tuple[int, int], int]


def _endpoints(model, dims: ModelDims, circuit: Circuit) -> _Endpoints:
    cfg = model.cfg
    heads, mlps = circuit.active_heads(), circuit.active_mlps()
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    n_kv = getattr(cfg, "n_key_value_heads", None) or dims.n_heads
    group = dims.n_heads // n_kv
    kept_in_group: dict[tuple[int, int], int] = {}
    for l, h in heads:
        kept_in_group[(l, h // group)] = kept_in_group.get((l, h // group), 0) + 1
    writers = [("embed", -1, "blocks.0.hook_resid_pre", None)]
    writers += [(_node(l, h), l, f"blocks.{l}.attn.hook_result", h) for l, h in heads]
    writers += [(_node(l), l + 0.5, f"blocks.{l}.hook_mlp_out", None) for l in mlps]
    readers = [(_node(l, h), l, l, h) for l, h in heads]
    readers += [(_node(l), l + (0.0 if parallel else 0.5), l, None) for l in mlps]
    readers.append(("logits", float(dims.n_layers), dims.n_layers - 1, "final"))
    return _Endpoints(writers, readers, group, kept_in_group)


@contextmanager
def _edge_hook_points(model):
    """Frozen weights and the per-head result, split q/k/v input and MLP input hook points for the ``with``;
    the model's settings are put back on exit."""
    cfg = model.cfg
    saved = (cfg.use_split_qkv_input, cfg.use_attn_result, cfg.use_hook_mlp_in)
    try:
        with frozen_weights(model):
            model.set_use_split_qkv_input(True)
            model.set_use_attn_result(True)
            model.set_use_hook_mlp_in(True)
            yield
    finally:
        model.set_use_split_qkv_input(saved[0])
        model.set_use_attn_result(saved[1])
        model.set_use_hook_mlp_in(saved[2])


def _reader_gradient(grads: dict, reader: tuple, ends: _Endpoints, B: int) -> torch.Tensor:
    """∂metric/∂(the reader's input) on the clean half, [B, pos, d_model]."""
    _, _, l, h = reader
    if h == "final":
        return grads[f"blocks.{l}.hook_resid_post"][:B]
    if h is None:
        return grads[f"blocks.{l}.hook_mlp_in"][:B]
    kv = h // ends.group
    share = ends.kept_in_group[(l, kv)]
    g = grads[f"blocks.{l}.hook_q_input"][:B, :, h]
    for x in "kv":
        gx = grads[f"blocks.{l}.hook_{x}_input"]
        if gx is not None:
            g = g + gx[:B, :, kv] / share
    return g


def _batch_scores(model, interp: Interpolator, batch, ends: _Endpoints, metric, n_layers: int,
                  scores: torch.Tensor) -> None:
    """Add one batch's ``Σ (u_clean − u_corrupted) · ∂metric/∂input_v`` to ``scores`` [writers, readers]."""
    B = len(batch)
    store: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(act, hook):
            store[name] = act
            return act
        return hook

    def leaf(act, hook):
        act = act.detach().requires_grad_(True)
        store["blocks.0.hook_resid_pre"] = act
        return act

    names = {w[2] for w in ends.writers[1:]}
    names |= {f"blocks.{l}.hook_{x}_input" for _, _, l, h in ends.readers if isinstance(h, int) for x in "qkv"}
    names |= {f"blocks.{l}.hook_mlp_in" for _, _, l, h in ends.readers if h is None}
    names.add(f"blocks.{n_layers - 1}.hook_resid_post")
    hooks = interp.fwd_hooks(model) + [("blocks.0.hook_resid_pre", leaf)] + [(nm, keep(nm)) for nm in sorted(names)]
    tokens = torch.cat([batch.clean, batch.corrupted])
    with model.hooks(fwd_hooks=hooks):
        logits = logits_at(model, tokens, batch.answer_pos, B)
    value = metric(logits, batch).sum()
    grad_names = sorted(n_ for n_ in names if "input" in n_ or "mlp_in" in n_ or "resid_post" in n_)
    grads = dict(zip(grad_names, torch.autograd.grad(value, [store[g] for g in grad_names], allow_unused=True)))
    deltas = []
    for _, _, site, h in ends.writers:
        d = store[site][:B] - store[site][B:]
        deltas.append(d[:, :, h] if h is not None else d)
    for j, reader in enumerate(ends.readers):
        g = _reader_gradient(grads, reader, ends, B)
        for i, d in enumerate(deltas):
            scores[i, j] += float((d * g).sum().detach())


def interactions(model, task, circuit: Circuit, split: str = "train", max_examples: int | None = 64,
                 batch_size: int = 8, metric=None) -> pd.DataFrame:
    """Edge scores between the kept nodes of ``circuit`` (see the module docstring).

    Args:
        model: a HookedTransformer (needs ``set_use_split_qkv_input``, ``set_use_attn_result``
            and ``set_use_hook_mlp_in``; they are restored afterwards).
        task: the task whose metric defines "the behaviour".
        circuit: a circuit of this model.
        metric: ``f(logits [B, d_vocab], batch) -> [B]``; default the task's metric.

    Returns:
        DataFrame with columns ``src, dst, src_layer, dst_layer, score`` sorted by ``|score|``;
        node names are ``embed``, ``L{l} H{h}``, ``L{l} MLP`` and ``logits``.
    """
    dims = ModelDims.from_model(model)
    if dims != circuit.dims:
        raise ValueError(f"circuit is for {circuit.dims}, model is {dims}")
    for setter in ("set_use_split_qkv_input", "set_use_attn_result", "set_use_hook_mlp_in"):
        if not hasattr(model, setter):
            raise ValueError(f"interactions needs a HookedTransformer ({type(model).__name__} lacks {setter})")
    check_hook_points(model, dims)
    pairs = task.split(split)
    if max_examples is not None:
        pairs = pairs.head(max_examples)
    ends = _endpoints(model, dims, circuit)
    device = next(model.parameters()).device
    interp = Interpolator(dims, "batch", skip_dead_sites=False)
    interp.set_masks(circuit.masks)
    scores = torch.zeros(len(ends.writers), len(ends.readers), dtype=torch.float64)
    n = 0
    with _edge_hook_points(model):
        for batch in pairs.batches(batch_size):
            _batch_scores(model, interp, batch.to(device), ends, metric or task.metric, dims.n_layers, scores)
            n += len(batch)
    rows = []
    for i, (wname, wpos, _, _) in enumerate(ends.writers):
        for j, (rname, rpos, _, _) in enumerate(ends.readers):
            if wpos < rpos:
                rows.append({"src": wname, "dst": rname, "src_layer": -1 if wpos < 0 else int(wpos),
                             "dst_layer": int(rpos) if rname != "logits" else dims.n_layers,
                             "score": scores[i, j].item() / max(n, 1)})
    edges = pd.DataFrame(rows, columns=["src", "dst", "src_layer", "dst_layer", "score"])
    return edges.reindex(edges["score"].abs().sort_values(ascending=False).index).reset_index(drop=True)
