"""Which kept nodes write into which: edge attribution patching restricted to a circuit.

Node pruning says which nodes a behaviour needs, not how they talk to each other (the paper's
stated limitation). This module estimates it afterwards. The circuit runs (pruned nodes patched
from the corrupted run) and, for every kept *writer* u (the embedding, a kept head's output
``z_h · W_O[h]`` from ``attn.hook_z``, a kept MLP's ``hook_mlp_out``) and every kept *reader* v
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
    writers += [(_node(l, h), l, f"blocks.{l}.attn.hook_z", h) for l, h in heads]
    writers += [(_node(l), l + 0.5, f"blocks.{l}.hook_mlp_out", None) for l in mlps]
    readers = [(_node(l, h), l, l, h) for l, h in heads]
    readers += [(_node(l), l + (0.0 if parallel else 0.5), l, None) for l in mlps]
    readers.append(("logits", float(dims.n_layers), dims.n_layers - 1, "final"))
    return _Endpoints(writers, readers, group, kept_in_group)


@contextmanager
def _edge_hook_points(model):
    """Frozen weights and the MLP input hook point for the ``with``; the model's setting is put back on exit."""
    saved = model.cfg.use_hook_mlp_in
    try:
        with frozen_weights(model):
            model.set_use_hook_mlp_in(True)
            yield
    finally:
        model.set_use_hook_mlp_in(saved)


def _kv_weight(attn, x: str, n_heads: int) -> torch.Tensor:
    """The key or value weight [heads, d_model, d_head] matching ``hook_k``/``hook_v``'s head dimension (the
    grouped ``_W_K`` of a grouped-query attention that is not ungrouped)."""
    grouped = getattr(attn, f"_W_{x.upper()}", None)
    if grouped is not None and grouped.shape[0] == n_heads:
        return grouped
    return getattr(attn, f"W_{x.upper()}")


def _head_input_gradients(model, store: dict, grads: dict, l: int, heads: list[int], ends: _Endpoints,
                          B: int) -> torch.Tensor:
    """∂metric/∂(each kept head's own copy of block ``l``'s attention input), [B, pos, len(heads), d_model].

    A head reads the residual stream through ``ln1`` and its query (and its group's key and value) weights; the
    gradient of its copy is the norm's vector-Jacobian product of ``Σ_x ∂metric/∂x_h · W_x[h]ᵀ``, with a key or
    value gradient shared evenly among the kept query heads of its group. The same as splitting the input per
    head (TransformerLens' ``use_split_qkv_input``) without that path's per-head products over ``d_model``."""
    attn = model.blocks[l].attn
    idx = torch.tensor(heads, device=grads[f"blocks.{l}.attn.hook_q"].device)
    cot = torch.einsum("bphk,hdk->bphd", grads[f"blocks.{l}.attn.hook_q"][:B, :, idx], attn.W_Q[idx])
    for x in "kv":
        g = grads[f"blocks.{l}.attn.hook_{x}"]
        if g is None:
            continue
        n_kv = g.shape[2]
        grouped = n_kv != model.cfg.n_heads
        kv = idx // ends.group if grouped else idx
        share = torch.tensor([ends.kept_in_group[(l, h // ends.group)] if grouped else 1 for h in heads],
                             device=g.device, dtype=g.dtype)
        cot = cot + torch.einsum("bphk,hdk->bphd", g[:B, :, kv], _kv_weight(attn, x, n_kv)[kv]) / share[:, None]
    resid = store[f"blocks.{l}.hook_resid_pre"][:B].detach()
    with torch.enable_grad():
        x_in = resid[:, :, None, :].expand(-1, -1, len(heads), -1).clone().requires_grad_(True)
        (g_in,) = torch.autograd.grad(model.blocks[l].ln1(x_in), x_in, cot)
    return g_in


def _reader_gradients(model, store: dict, grads: dict, ends: _Endpoints, B: int) -> list[torch.Tensor]:
    """∂metric/∂(each reader's input) on the clean half, each [B, pos, d_model], in ``ends.readers``' order."""
    heads_by_layer: dict[int, list[int]] = {}
    for _, _, l, h in ends.readers:
        if isinstance(h, int) and not isinstance(h, bool):
            heads_by_layer.setdefault(l, []).append(h)
    per_head = {l: _head_input_gradients(model, store, grads, l, hs, ends, B) for l, hs in heads_by_layer.items()}
    out = []
    for _, _, l, h in ends.readers:
        if h == "final":
            out.append(grads[f"blocks.{l}.hook_resid_post"][:B])
        elif h is None:
            out.append(grads[f"blocks.{l}.hook_mlp_in"][:B])
        else:
            out.append(per_head[l][:, :, heads_by_layer[l].index(h)])
    return out


def _writer_deltas(model, store: dict, ends: _Endpoints, B: int) -> list[torch.Tensor]:
    """Each writer's clean − corrupted output, [B, pos, d_model]: the embedding, a kept head's ``z_h · W_O[h]``
    (its share of the attention output) or a kept MLP's output."""
    out = []
    for _, _, site, h in ends.writers:
        d = store[site][:B] - store[site][B:]
        if h is not None:
            d = d[:, :, h] @ model.blocks[int(site.split(".")[1])].attn.W_O[h]
        out.append(d)
    return out


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

    head_layers = {l for _, _, l, h in ends.readers if isinstance(h, int) and not isinstance(h, bool)}
    grad_names = {f"blocks.{l}.attn.hook_{x}" for l in head_layers for x in "qkv"}
    grad_names |= {f"blocks.{l}.hook_mlp_in" for _, _, l, h in ends.readers if h is None}
    grad_names.add(f"blocks.{n_layers - 1}.hook_resid_post")
    names = grad_names | {w[2] for w in ends.writers[1:]} | {f"blocks.{l}.hook_resid_pre" for l in head_layers}
    names.discard("blocks.0.hook_resid_pre")
    hooks = interp.fwd_hooks(model) + [("blocks.0.hook_resid_pre", leaf)] + [(nm, keep(nm)) for nm in sorted(names)]
    tokens = torch.cat([batch.clean, batch.corrupted])
    with model.hooks(fwd_hooks=hooks):
        logits = logits_at(model, tokens, batch.answer_pos, B)
    value = metric(logits, batch).sum()
    ordered = sorted(grad_names)
    grads = dict(zip(ordered, torch.autograd.grad(value, [store[g] for g in ordered], allow_unused=True)))
    with torch.no_grad():
        deltas = [d.float().flatten() for d in _writer_deltas(model, store, ends, B)]
        readers = [g.float().flatten() for g in _reader_gradients(model, store, grads, ends, B)]
        # every writer × reader product at once: [W, B·pos·d_model] @ [B·pos·d_model, R]
        scores += (torch.stack(deltas) @ torch.stack(readers).T).double().cpu()


def interactions(model, task, circuit: Circuit, split: str = "train", max_examples: int | None = 64,
                 batch_size: int = 8, metric=None, bar=None) -> pd.DataFrame:
    """Edge scores between the kept nodes of ``circuit`` (see the module docstring).

    Args:
        model: a HookedTransformer (needs ``set_use_hook_mlp_in``; the setting is restored afterwards).
        task: the task whose metric defines "the behaviour".
        circuit: a circuit of this model.
        metric: ``f(logits [B, d_vocab], batch) -> [B]``; default the task's metric.
        bar: a progress bar to ``update`` with each batch's pairs (:class:`mgnp_lens.phases.Phases`).

    Returns:
        DataFrame with columns ``src, dst, src_layer, dst_layer, score`` sorted by ``|score|``;
        node names are ``embed``, ``L{l} H{h}``, ``L{l} MLP`` and ``logits``.
    """
    dims = ModelDims.from_model(model)
    if dims != circuit.dims:
        raise ValueError(f"circuit is for {circuit.dims}, model is {dims}")
    for setter in ("set_use_hook_mlp_in",):
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
            if bar is not None:
                bar.update(len(batch))
    rows = []
    for i, (wname, wpos, _, _) in enumerate(ends.writers):
        for j, (rname, rpos, _, _) in enumerate(ends.readers):
            if wpos < rpos:
                rows.append({"src": wname, "dst": rname, "src_layer": -1 if wpos < 0 else int(wpos),
                             "dst_layer": int(rpos) if rname != "logits" else dims.n_layers,
                             "score": scores[i, j].item() / max(n, 1)})
    edges = pd.DataFrame(rows, columns=["src", "dst", "src_layer", "dst_layer", "score"])
    return edges.reindex(edges["score"].abs().sort_values(ascending=False).index).reset_index(drop=True)
