"""A circuit in formats other tools read: a unit table, EAP-IG's graph JSON, GraphML, DOT, and the hook list that
reproduces it with plain TransformerLens ``run_with_hooks``.

Node names follow EAP-IG (``input``, ``a{layer}.h{head}``, ``m{layer}``, ``logits``); the graph formats connect every
kept node to every kept node downstream of it in the residual stream (node pruning decides nodes, not edges; for
edge scores between them see :func:`mgnp_lens.interactions.interactions`).
"""

from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

import pandas as pd
import torch

from .circuit import Circuit
from .granularity import HOOK_TEMPLATES
from .hooks import site_masks

FORMATS = ("eap-ig", "graphml", "dot", "tl-hooks", "nodes-csv")
TL_HOOKS_FORMAT = "mgnp-tl-hooks/1"


def unit_table(circuit: Circuit) -> pd.DataFrame:
    """One row per kept unit of every granularity: ``granularity, layer, head, index, hook_point``
    (``head`` for heads and attention neurons, ``index`` the neuron or the expert; -1 where it does not apply; an
    expert's hidden neuron names its expert's ``hook_post``)."""
    rows = []
    for g, mask in circuit.masks.items():
        for idx in mask.nonzero().tolist():
            layer = idx[0] if g not in ("embedding",) else -1
            head = idx[1] if g in ("attn_head", "attn_neuron") else -1
            index = idx[-1] if g in ("attn_neuron", "mlp_hidden", "mlp_output", "mlp_expert") else -1
            hook = HOOK_TEMPLATES.get(g, "").format(l=layer) if g in HOOK_TEMPLATES else ""
            if g == "mlp_hidden" and circuit.dims.n_experts:  # mask index e·d_mlp + n: expert e's neuron n
                hook = f"blocks.{layer}.mlp.experts.{index // circuit.dims.d_mlp}.hook_post"
                index %= circuit.dims.d_mlp
            rows.append({"granularity": g, "layer": layer, "head": head, "index": index, "hook_point": hook})
    return pd.DataFrame(rows, columns=["granularity", "layer", "head", "index", "hook_point"])


def _nodes(circuit: Circuit) -> list[tuple[str, float, dict]]:
    """The kept nodes in EAP-IG names with their residual-stream position and attributes."""
    m = circuit.masks
    nodes = [("input", -1.0, {"kept": bool(m["embedding"].any())})]
    for l in range(circuit.dims.n_layers):
        for h in range(circuit.dims.n_heads):
            if m["attn_head"][l, h]:
                nodes.append((f"a{l}.h{h}", float(l), {"layer": l, "head": h,
                                                        "attn_neurons": int(m["attn_neuron"][l, h].sum())}))
        if m["mlp_block"][l]:
            nodes.append((f"m{l}", l + 0.5, {"layer": l, "mlp_hidden": int(m["mlp_hidden"][l].sum()),
                                             "mlp_output": int(m["mlp_output"][l].sum())}))
    nodes.append(("logits", float(circuit.dims.n_layers), {}))
    return [n for n in nodes if n[0] != "input" or n[2]["kept"]]


def _edges(nodes, parallel_attn_mlp: bool) -> list[tuple[str, str]]:
    """Writer → reader pairs: every node reads the residual stream written by the nodes before it (with
    ``parallel_attn_mlp`` a layer's MLP reads what its heads read)."""
    def reads(writer: float, reader: float) -> bool:
        if parallel_attn_mlp and reader % 1:
            return writer < reader - 0.5
        return writer < reader
    return [(a, b) for a, pa, _ in nodes for b, pb, _ in nodes if reads(pa, pb)]


def to_eap_ig(circuit: Circuit, parallel_attn_mlp: bool = False) -> dict:
    """EAP-IG's graph JSON (``Graph.from_json``): ``cfg``, ``nodes`` and ``edges`` with ``in_graph`` flags.

    Every node and edge of the full model's graph is listed; a node is in the graph if the circuit keeps it,
    an edge if it keeps both ends. An MLP's ``neurons`` are its kept output neurons (EAP-IG's neurons are the
    d_model dimensions a node writes); heads and the input keep all of theirs. MLP hidden neurons and
    attention neurons have no EAP-IG counterpart and are not exported.
    """
    d, m = circuit.dims, circuit.masks
    kept = {name for name, _, _ in _nodes(circuit)}
    full = Circuit.full(d)
    nodes = {}
    for name, _, _ in _nodes(full):
        node = {"in_graph": name in kept}
        if name.startswith("m"):
            node["neurons"] = (m["mlp_output"][int(name[1:])] & m["mlp_block"][int(name[1:])]).tolist()
        elif name != "logits":
            node["neurons"] = [True] * d.d_model
        nodes[name] = node
    edges = {}
    for a, b in _edges(_nodes(full), parallel_attn_mlp):
        for letter in ("qkv" if b.startswith("a") else [""]):
            suffix = f"<{letter}>" if letter else ""
            edges[f"{a}->{b}{suffix}"] = {"score": 0.0, "in_graph": a in kept and b in kept}
    cfg = {"n_layers": d.n_layers, "n_heads": d.n_heads, "parallel_attn_mlp": parallel_attn_mlp, "d_model": d.d_model}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def to_graphml(circuit: Circuit, parallel_attn_mlp: bool = False) -> str:
    """The kept nodes (with their layer, head and kept-neuron counts) and their residual-stream edges as GraphML."""
    nodes = _nodes(circuit)
    keys = sorted({k for _, _, attrs in nodes for k in attrs if k != "kept"})
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">']
    lines += [f'  <key id="{k}" for="node" attr.name="{k}" attr.type="int"/>' for k in keys]
    lines.append('  <graph id="circuit" edgedefault="directed">')
    for name, _, attrs in nodes:
        data = "".join(f'<data key="{k}">{int(v)}</data>' for k, v in attrs.items() if k != "kept")
        lines.append(f"    <node id={quoteattr(name)}>{data}</node>")
    lines += [f"    <edge source={quoteattr(a)} target={quoteattr(b)}/>" for a, b in _edges(nodes, parallel_attn_mlp)]
    lines += ["  </graph>", "</graphml>"]
    return "\n".join(lines) + "\n"


def to_dot(circuit: Circuit, parallel_attn_mlp: bool = False) -> str:
    """The kept nodes and their residual-stream edges in Graphviz DOT, one rank per layer."""
    nodes = _nodes(circuit)
    lines = ["digraph circuit {", "  rankdir=TB; node [shape=box, style=rounded];"]
    for name, _, attrs in nodes:
        counts = ", ".join(f"{k} {v}" for k, v in attrs.items() if k not in ("kept", "layer", "head"))
        label = f"{name}\\n{counts}" if counts else name
        lines.append(f'  "{name}" [label="{label}"];')
    lines += [f'  "{a}" -> "{b}";' for a, b in _edges(nodes, parallel_attn_mlp)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_tl_hooks(circuit: Circuit) -> dict:
    """For every gated hook point, the units the circuit keeps (a 0/1 list, row-major over ``shape``): with a
    corrupted run's cache, ``where(keep, activation, corrupted activation)`` at each hook point under plain
    ``model.run_with_hooks`` reproduces the circuit (see :func:`tl_hooks`). Not for a mixture of experts, whose
    experts' site is not one hook point (``Circuit.run`` runs it)."""
    if circuit.dims.n_experts:
        raise ValueError("the tl-hooks export patches hook points one by one, and a mixture-of-experts circuit's "
                         "experts are not one hook point (their rows are routed per token); run it with "
                         "Circuit.run, or export nodes-csv")
    sites = site_masks(circuit.masks, circuit.dims)
    return {"format": TL_HOOKS_FORMAT, "model": circuit.dims.to_dict(),
            "hook_points": {name: {"shape": list(m.shape), "keep": m.flatten().int().tolist()}
                            for name, m in sites.items()}}


def tl_hooks(spec: dict, corrupted_cache) -> list[tuple[str, object]]:
    """``[(hook_name, fn)]`` for ``model.run_with_hooks`` from a :func:`to_tl_hooks` export and the corrupted
    prompts' activations (``model.run_with_cache(corrupted)[1]``): kept units stay clean, the rest corrupted."""
    if spec.get("format") != TL_HOOKS_FORMAT:
        raise ValueError(f"not an mgnp TransformerLens hook list: format {spec.get('format')!r}")
    hooks = []
    for name, site in spec["hook_points"].items():
        keep = torch.tensor(site["keep"], dtype=torch.bool).view(site["shape"])

        def hook(act, hook, keep=keep, name=name):
            return torch.where(keep.to(act.device), act, corrupted_cache[name])
        hooks.append((name, hook))
    return hooks


def export(circuit: Circuit, fmt: str, parallel_attn_mlp: bool = False) -> str:
    """``circuit`` as the text of one of :data:`FORMATS`."""
    if fmt == "nodes-csv":
        return unit_table(circuit).to_csv(index=False)
    if fmt == "eap-ig":
        return json.dumps(to_eap_ig(circuit, parallel_attn_mlp))
    if fmt == "tl-hooks":
        return json.dumps(to_tl_hooks(circuit))
    if fmt == "graphml":
        return to_graphml(circuit, parallel_attn_mlp)
    if fmt == "dot":
        return to_dot(circuit, parallel_attn_mlp)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
