"""Plotly figures of circuits and runs. Every function returns a ``plotly.graph_objects.Figure``.

Colours are colour-blind safe: the Okabe-Ito palette for categories, Cividis for retained
fractions. Layers are shown 0-indexed (hover text says ``L9 H6`` for layer 9, head 6).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .circuit import Circuit
from .faithfulness import pareto_frontier  # noqa: F401  (a metric; plot draws it)
from .granularity import GRANULARITIES

#: Okabe & Ito (2008) colour-blind-safe categorical palette.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
#: Sequential colour scale for retained fractions (perceptually uniform, colour-blind safe).
SEQUENTIAL = "Cividis"
#: Kept-head colours: Viridis is colour-blind safe and has no grey in its middle, so a kept head with half its
#: neurons cannot be mistaken for a pruned (blank, white) cell.
KEPT_SCALE = "Viridis"

LAYER_GRANULARITIES = ("attn_block", "attn_head", "attn_neuron", "mlp_block", "mlp_hidden", "mlp_output")
LABELS = {"embedding": "Embedding", "attn_block": "Attn block", "mlp_block": "MLP block", "attn_head": "Attn heads",
          "attn_neuron": "Attn neurons", "mlp_hidden": "MLP hidden", "mlp_output": "MLP output",
          "mlp_expert": "MLP experts"}
GRANULARITY_COLOURS = dict(zip(GRANULARITIES, OKABE_ITO[1:] + OKABE_ITO[:1]))


def _per_layer_counts(circuit: Circuit, g: str) -> tuple[np.ndarray, int]:
    """Kept units per layer [L] and units per layer for granularity ``g``."""
    m = circuit.masks[g]
    kept = m.reshape(circuit.dims.n_layers, -1).sum(-1).numpy()
    return kept, int(m[0].numel())


def layer_heatmap(circuit: Circuit, title: str | None = None) -> go.Figure:
    """Appendix D as a picture: layer × granularity heatmap of the retained fraction.

    Args:
        circuit: the circuit.

    Returns:
        a figure with one ``Heatmap`` trace; z is [n_layers, 6] in [0, 1] (7 with a mixture of experts' column),
        x the granularity labels.
    """
    L = circuit.dims.n_layers
    grans = LAYER_GRANULARITIES
    if circuit.dims.n_experts:
        grans = grans[:4] + ("mlp_expert",) + grans[4:]
    z = np.zeros((L, len(grans)))
    text = np.empty((L, len(grans)), dtype=object)
    for j, g in enumerate(grans):
        kept, per = _per_layer_counts(circuit, g)
        z[:, j] = kept / per
        for l in range(L):
            text[l, j] = f"L{l} · {LABELS[g]}: {int(kept[l])}/{per} kept ({100 * kept[l] / per:.1f}%)"
    fig = go.Figure(go.Heatmap(
        z=z, x=[LABELS[g] for g in grans], y=list(range(L)), zmin=0, zmax=1,
        colorscale=SEQUENTIAL, text=text, hovertemplate="%{text}<extra></extra>",
        colorbar={"title": "retained<br>fraction"}))
    emb = "kept" if bool(circuit.masks["embedding"].all()) else "pruned"
    fig.update_layout(title=title or f"Retained fraction per layer and granularity (embedding {emb})",
                      xaxis_title="granularity", yaxis_title="layer (0-indexed)",
                      yaxis={"autorange": "reversed", "dtick": 1 if L <= 32 else None},
                      height=max(320, 22 * L + 140), template="plotly_white")
    return fig


def _reference_heads(reference) -> set[tuple[int, int]]:
    if reference is None:
        return set()
    if isinstance(reference, str):
        from .reference import get_reference

        reference = get_reference(reference)
    heads = getattr(reference, "heads", reference)
    return {tuple(h) for h in heads}


def head_grid(circuit: Circuit, color_by_neurons: bool = True, reference=None,
              title: str | None = None) -> go.Figure:
    """Layer × head grid of retained heads.

    Args:
        circuit: the circuit.
        color_by_neurons: colour kept heads by the fraction of their ``d_head`` attention neurons
            that are kept (otherwise kept = 1, pruned = 0).
        reference: heads to outline: a reference-circuit name (``"ioi"``), a
            :class:`~mgnp_lens.reference.ReferenceCircuit` or an iterable of ``(layer, head)``.

    Returns:
        a figure with one ``Heatmap`` (z [n_layers, n_heads]: NaN for pruned heads, left blank on white, kept
        heads in :data:`KEPT_SCALE`, which has no grey) and one rectangle shape per reference head; a legend
        entry names the outline. Every layer is labelled.
    """
    d, m = circuit.dims, circuit.masks
    heads = m["attn_head"].float().numpy()
    neurons = m["attn_neuron"].float().mean(-1).numpy()  # [L, H]
    z = np.where(heads > 0, neurons if color_by_neurons else 1.0, np.nan)  # pruned heads: blank (grey) cells
    ref = _reference_heads(reference)
    text = np.empty(z.shape, dtype=object)
    for l in range(d.n_layers):
        for h in range(d.n_heads):
            state = "kept" if heads[l, h] else "pruned"
            extra = f", {int(round(neurons[l, h] * d.d_head))}/{d.d_head} neurons" if heads[l, h] else ""
            tag = " · in reference" if (l, h) in ref else ""
            text[l, h] = f"L{l} H{h}: {state}{extra}{tag}"
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(d.n_heads)), y=list(range(d.n_layers)), zmin=0, zmax=1, colorscale=KEPT_SCALE,
        text=text, hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1,
        colorbar={"title": "kept neuron<br>fraction" if color_by_neurons else "kept"}))
    for l, h in sorted(ref):
        if l < d.n_layers and h < d.n_heads:
            fig.add_shape(type="rect", x0=h - 0.5, x1=h + 0.5, y0=l - 0.5, y1=l + 0.5,
                          line={"color": OKABE_ITO[5], "width": 2.5})
    if ref:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="reference head",
                                 marker={"symbol": "square-open", "size": 12, "color": OKABE_ITO[5]}))
    n_kept = int(heads.sum())
    fig.update_layout(title=title or f"Attention heads: {n_kept}/{heads.size} kept (blank: pruned)",
                      plot_bgcolor="white",
                      xaxis_title="head", yaxis_title="layer (0-indexed)",
                      yaxis={"autorange": "reversed", "dtick": 1, "showgrid": False},
                      xaxis={"dtick": 1, "showgrid": False},
                      height=max(320, 22 * d.n_layers + 140), template="plotly_white",
                      legend={"orientation": "h", "y": -0.15})
    return fig


def neuron_strips(circuit: Circuit, granularities: Sequence[str] = ("mlp_hidden", "mlp_output"),
                  title: str | None = None) -> go.Figure:
    """Per-layer neuron strips: which MLP hidden / output neurons survive.

    Returns:
        a figure with one binary ``Heatmap`` (z [n_layers, units]) per granularity, stacked.
    """
    for g in granularities:
        if g not in ("mlp_hidden", "mlp_output", "attn_neuron"):
            raise ValueError(f"neuron_strips draws mlp_hidden, mlp_output or attn_neuron, not {g!r}")
    fig = make_subplots(rows=len(granularities), cols=1, vertical_spacing=0.12,
                        subplot_titles=[f"{LABELS[g]}: {circuit.count(g):,}/{circuit.dims.count(g):,} kept"
                                        for g in granularities])
    for i, g in enumerate(granularities, start=1):
        z = circuit.masks[g].reshape(circuit.dims.n_layers, -1).float().numpy()
        fig.add_trace(go.Heatmap(
            z=z, zmin=0, zmax=1, colorscale=[[0, "#f2f2f2"], [1, OKABE_ITO[0]]], showscale=False,
            name=LABELS[g], hovertemplate="L%{y} neuron %{x}: %{z}<extra>" + LABELS[g] + "</extra>"),
            row=i, col=1)
        fig.update_yaxes(title_text="layer", autorange="reversed", row=i, col=1)
        fig.update_xaxes(title_text="neuron index", row=i, col=1)
    fig.update_layout(title=title or "Surviving neurons per layer (blue = kept)", template="plotly_white",
                      height=max(360, (12 * circuit.dims.n_layers + 120) * len(granularities)))
    return fig


def training_curves(history: pd.DataFrame, title: str | None = None) -> go.Figure:
    """KL, loss and expected active nodes per granularity against the step.

    Args:
        history: :attr:`DiscoveryResult.history` (columns step, loss, kl, active_<g>, l0_<g>).

    Returns:
        a two-panel figure: KL on top (nats, left axis; the hard circuit's validation KL too when the run
        had ``validate_every``) with the loss on its own right axis (it is the KL plus the much larger
        λ·L0 term, so one axis would flatten the KL); expected active fraction per granularity (``l0_<g>``)
        below, one trace each. Histories with ``kept_<g>`` columns get a third panel: the units the hard
        circuit keeps per granularity (log axis; hover: how many the step changed), where a flat line is a
        granularity that has stopped changing.
    """
    for col in ("step", "loss", "kl"):
        if col not in history.columns:
            raise ValueError(f"history has no {col!r} column; pass DiscoveryResult.history or history.csv")
    hard = [g for g in GRANULARITIES if f"kept_{g}" in history.columns]
    titles = ["Objective", "Expected active fraction per granularity"] + (["Kept by the hard circuit"] if hard else [])
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=titles,
                        specs=[[{"secondary_y": True}]] + [[{}]] * (len(titles) - 1))
    fig.add_trace(go.Scatter(x=history["step"], y=history["kl"], name="KL(full ‖ circuit)",
                             line={"color": OKABE_ITO[0]}), row=1, col=1)
    fig.add_trace(go.Scatter(x=history["step"], y=history["loss"], name="loss (KL + λ·L0)",
                             line={"color": OKABE_ITO[1], "dash": "dash"}), row=1, col=1, secondary_y=True)
    if "val_kl" in history.columns:  # PruningConfig(validate_every=...): the hard circuit on held-out pairs
        val = history.dropna(subset=["val_kl"])
        fig.add_trace(go.Scatter(x=val["step"], y=val["val_kl"], name="hard circuit, validation KL",
                                 mode="lines+markers", line={"color": OKABE_ITO[2], "dash": "dot"}), row=1, col=1)
    for g in GRANULARITIES:
        if f"l0_{g}" not in history.columns:
            continue
        active = history.get(f"active_{g}")
        fig.add_trace(go.Scatter(
            x=history["step"], y=history[f"l0_{g}"], name=LABELS[g], line={"color": GRANULARITY_COLOURS[g]},
            customdata=active, hovertemplate=f"{LABELS[g]} step %{{x}}: %{{y:.3f}} (≈%{{customdata:.0f}} nodes)"
                                             "<extra></extra>"), row=2, col=1)
    for g in hard:
        fig.add_trace(go.Scatter(
            x=history["step"], y=history[f"kept_{g}"], name=f"{LABELS[g]} (hard)", showlegend=False,
            line={"color": GRANULARITY_COLOURS[g]}, customdata=history.get(f"changed_{g}"),
            hovertemplate=f"{LABELS[g]} step %{{x}}: %{{y:,}} kept (%{{customdata}} changed)<extra></extra>"),
            row=3, col=1)
    fig.update_yaxes(title_text="KL (nats)", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="loss", row=1, col=1, secondary_y=True, showgrid=False)
    fig.update_yaxes(title_text="E[active] / total", range=[0, 1.02], row=2, col=1)
    if hard:
        fig.update_yaxes(title_text="units kept", type="log", row=3, col=1)
    fig.update_xaxes(title_text="optimizer step", row=len(titles), col=1)
    fig.update_layout(title=title or "Training curves", template="plotly_white", height=620 + 260 * bool(hard))
    return fig


def size_vs_faithfulness(runs: pd.DataFrame | Iterable, size: str = "n_params", faithfulness: str = "kl",
                         label: str = "label", title: str | None = None) -> go.Figure:
    """Circuit size against faithfulness for several runs (a λ sweep), with the Pareto frontier.

    Args:
        runs: a DataFrame with columns ``size``, ``faithfulness`` and optionally ``label`` and
            ``method`` (one colour per method), e.g. :func:`mgnp_lens.sweep.sweep`'s table; or an
            iterable of :class:`~mgnp_lens.DiscoveryResult` (size = parameters, KL on the test split).
        size: column on the x axis (e.g. ``n_params``, ``attn_head``, ``n_nodes``).
        faithfulness: column on the y axis; lower is better (KL).

    Returns:
        a figure with one marker trace per method and a ``Pareto frontier`` line trace.
    """
    if not isinstance(runs, pd.DataFrame):
        rows = []
        for i, r in enumerate(runs):
            ev = r.evaluation or r.train_evaluation
            rows.append({"label": f"run {i} (λ×{r.config.lambda_scale:g})", "n_params": r.circuit.n_params(),
                         "kl": ev.kl if ev else float("nan"), **r.circuit.counts()})
        runs = pd.DataFrame(rows)
    for col in (size, faithfulness):
        if col not in runs.columns:
            raise ValueError(f"runs has no column {col!r} (columns: {', '.join(map(str, runs.columns))})")
    if runs.empty:
        raise ValueError("no runs to plot")
    runs = runs.copy()
    if label not in runs.columns:
        runs[label] = [str(i) for i in range(len(runs))]
    if "method" not in runs.columns:
        runs["method"] = "mgnp"
    fig = go.Figure()
    for i, (method, part) in enumerate(runs.groupby("method", sort=False)):
        fig.add_trace(go.Scatter(
            x=part[size], y=part[faithfulness], mode="markers", name=str(method),
            marker={"size": 10, "color": OKABE_ITO[i % len(OKABE_ITO)]}, text=part[label],
            hovertemplate="%{text}<br>" + size + " %{x:,}<br>" + faithfulness + " %{y:.4f}<extra></extra>"))
    front = pareto_frontier(runs, size, faithfulness)
    fig.add_trace(go.Scatter(x=front[size], y=front[faithfulness], mode="lines", name="Pareto frontier",
                             line={"color": "#555555", "dash": "dot", "shape": "hv"}))
    fig.update_layout(title=title or "Circuit size vs faithfulness", template="plotly_white",
                      xaxis_title=f"{size} (count)", yaxis_title=f"{faithfulness} (nats, lower is better)"
                      if faithfulness == "kl" else faithfulness)
    return fig


def faithfulness_curves(table: pd.DataFrame, split: str | None = None, size: str = "param_fraction",
                        faithfulness: str = "recovered", title: str | None = None) -> go.Figure:
    """Faithfulness against circuit size, one line per method (:func:`mgnp_lens.faithfulness.curve`'s table).

    Args:
        table: columns ``method``, ``split``, ``size`` and ``faithfulness``.
        split: which split to draw (default the table's first).
        size: ``param_fraction`` or ``node_fraction`` (a log axis: circuits span orders of magnitude).
        faithfulness: ``recovered`` (MIB's f; 1 = the full model, 0 = the empty circuit) or ``kl``.

    Returns:
        a figure with one line per method, its CPR/CMD in the legend when ``faithfulness`` is ``recovered``.
    """
    from .faithfulness import integrate

    for col in ("method", "split", size, faithfulness):
        if col not in table.columns:
            raise ValueError(f"the table has no column {col!r} (columns: {', '.join(map(str, table.columns))})")
    split = split if split is not None else table["split"].iloc[0]
    part = table[table["split"] == split]
    if part.empty:
        raise ValueError(f"the table has no rows for split {split!r} (splits: {', '.join(table['split'].unique())})")
    fig = go.Figure()
    for i, (method, rows) in enumerate(part.groupby("method", sort=False)):
        rows = rows.sort_values(size)
        name = str(method)
        if faithfulness == "recovered" and rows[faithfulness].notna().any():
            cpr, cmd = integrate(rows[size], rows[faithfulness])
            name = f"{method} (CPR {cpr:.3f}, CMD {cmd:.3f})"
        heads = rows["attn_head"] if "attn_head" in rows else [None] * len(rows)
        fig.add_trace(go.Scatter(
            x=rows[size], y=rows[faithfulness], mode="lines+markers", name=name, customdata=np.c_[heads, rows["kl"]]
            if "kl" in rows else None, line={"color": OKABE_ITO[i % len(OKABE_ITO)]},
            marker={"size": 9, "symbol": ["circle", "square", "diamond", "triangle-up", "x"][i % 5]},
            hovertemplate=f"{method}<br>{size} %{{x:.4f}}<br>{faithfulness} %{{y:.3f}}"
                          + ("<br>heads %{customdata[0]}<br>KL %{customdata[1]:.3f}" if "kl" in rows else "")
                          + "<extra></extra>"))
    if faithfulness == "recovered":
        fig.add_hline(y=1.0, line={"color": "#555555", "dash": "dot"}, annotation_text="full model")
    fig.update_layout(title=title or f"Faithfulness against circuit size ({split} pairs)", template="plotly_white",
                      xaxis={"title": f"{size.replace('_', ' ')} of the model (log)", "type": "log"},
                      yaxis_title="recovered = (m(C) − m(∅)) / (m(N) − m(∅))" if faithfulness == "recovered"
                      else f"{faithfulness} (nats, lower is better)" if faithfulness == "kl" else faithfulness)
    return fig


def roc_curve(curves: dict, title: str | None = None) -> go.Figure:
    """ROC curves from :func:`mgnp_lens.reference.roc`, ``{name: RocCurve}``, with AUC in the legend."""
    fig = go.Figure()
    for i, (name, c) in enumerate(curves.items()):
        pts = c.points[c.points["on_curve"]] if "on_curve" in c.points else c.points
        fig.add_trace(go.Scatter(x=pts["fpr"], y=pts["tpr"], mode="lines+markers",
                                 name=f"{name} (AUC {c.auc:.3f})", line={"color": OKABE_ITO[i % len(OKABE_ITO)]}))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": "#999", "dash": "dot"}))
    fig.update_layout(title=title or "Node ROC against the reference circuit", template="plotly_white",
                      xaxis_title="false positive rate", yaxis_title="true positive rate",
                      xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]})
    return fig


def interaction_graph(edges: pd.DataFrame, top: int = 40, title: str | None = None) -> go.Figure:
    """Draw an edge list (columns ``src``, ``dst``, ``score``; e.g. :func:`mgnp_lens.interactions.interactions`)
    between circuit nodes laid out by layer, top to bottom, with an arrow from writer to reader.

    Node names are ``embed``, ``L{l} H{h}``, ``L{l} MLP`` and ``logits`` (the readout, below the last layer);
    heads of a layer sit side by side with the layer's MLP half a row below, to their right. Line width ∝
    |score| (blue: helps the metric, vermillion: hurts it); the ``top`` strongest edges are drawn.
    """
    e = _strongest(edges, top)
    names = sorted(set(e["src"]) | set(e["dst"]), key=_node_sort_key)
    return _graph(names, e, {n: n for n in names},
                  title or "Interactions between kept nodes (blue: helps, vermillion: hurts)")


def circuit_graph(circuit: Circuit, edges: pd.DataFrame | None = None, top: int = 60,
                  title: str | None = None) -> go.Figure:
    """The circuit as a graph: every kept node laid out by layer (embedding at the top, then each layer's kept
    heads side by side with its MLP half a row below, the logits at the bottom), with the ``top`` strongest
    edges of ``edges`` (from :func:`mgnp_lens.interactions.interactions`) as arrows, width ∝ |score|, blue where
    the edge helps the metric and vermillion where it hurts. Hovering a node gives its kept neurons and its
    summed edge scores.

    Args:
        circuit: the circuit.
        edges: columns ``src``, ``dst``, ``score``; None draws the nodes alone.
    """
    names = (["embed"] if circuit.count("embedding") else []) + [f"L{l} H{h}" for l, h in circuit.active_heads()]
    names += [f"L{l} MLP" for l in circuit.active_mlps()] + ["logits"]
    names = sorted(names, key=_node_sort_key)
    e = _strongest(edges, top, keep=set(names)) if edges is not None else pd.DataFrame(columns=["src", "dst", "score"])
    hover = {n: _node_hover(circuit, n, edges) for n in names}
    drawn = f", the {len(e)} strongest edges" if len(e) else ", no edge scores"
    return _graph(names, e, hover, title or f"The circuit: {len(names) - 1} kept nodes{drawn} "
                                           "(blue: helps the metric, vermillion: hurts it)")


def attention_patterns(views: dict, title: str | None = None) -> go.Figure:
    """Kept heads' attention patterns (from :func:`mgnp_lens.views.attention_patterns`): one heatmap, query
    tokens down, key tokens across, and a menu to pick the head and prompt (each entry restyles the one heatmap
    with its own pattern, so the figure grows with the number of patterns, not with its square)."""
    prompts, heads = views["prompts"], views["heads"]
    if not heads:
        raise ValueError("no kept head has an attention pattern to show")
    labels = [[f"{j}: {t}" for j, t in enumerate(p)] for p in prompts]
    choices = [(name, i) for name in heads for i in range(len(prompts))]
    buttons = [{"label": f"{name} · prompt {i + 1}", "method": "restyle",
                "args": [{"z": [heads[name][i]], "x": [labels[i]], "y": [labels[i]]}, [0]]} for name, i in choices]
    first, i0 = choices[0]
    fig = go.Figure(go.Heatmap(z=heads[first][i0], x=labels[i0], y=labels[i0], zmin=0, zmax=1,
                               colorscale=SEQUENTIAL, colorbar={"title": "attention"},
                               hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or "Attention of the kept heads (full model, clean prompt; pick head and prompt)",
                      template="plotly_white", yaxis={"autorange": "reversed", "title": "query"},
                      xaxis={"title": "key", "tickangle": -45}, height=600,
                      updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.12, "xanchor": "right"}])
    return fig


def _strongest(edges: pd.DataFrame, top: int, keep: set | None = None) -> pd.DataFrame:
    """The ``top`` edges by |score| (only between ``keep`` nodes, if given)."""
    for col in ("src", "dst", "score"):
        if col not in edges.columns:
            raise ValueError(f"edges has no {col!r} column")
    if keep is not None:
        edges = edges[edges["src"].isin(keep) & edges["dst"].isin(keep)]
    return edges.reindex(edges["score"].abs().sort_values(ascending=False).index).head(top)


def _node_hover(circuit: Circuit, name: str, edges: pd.DataFrame | None) -> str:
    """A node's hover text: what it keeps, and the sums of its incoming and outgoing edge scores."""
    d = circuit.dims
    if name in ("embed", "logits"):
        text = "the token embedding" if name == "embed" else "the unembedding's input (the readout)"
    elif name.endswith("MLP"):
        l = int(name.split()[0][1:])
        text = (f"{name}: {int(circuit.masks['mlp_hidden'][l].sum())}/{d.hidden_width} hidden, "
                f"{int(circuit.masks['mlp_output'][l].sum())}/{d.d_model} output neurons kept")
    else:
        l, h = int(name.split()[0][1:]), int(name.split()[1][1:])
        text = f"{name}: {int(circuit.masks['attn_neuron'][l, h].sum())}/{d.d_head} attention neurons kept"
    if edges is not None and len(edges):
        text += (f"<br>edges in: {edges.loc[edges['dst'] == name, 'score'].sum():+.3g}, "
                 f"out: {edges.loc[edges['src'] == name, 'score'].sum():+.3g}")
    return text


def _graph(names: list[str], e: pd.DataFrame, hover: dict[str, str], title: str) -> go.Figure:
    """Nodes ``names`` at their layer positions, edges ``e`` as arrows (see :func:`interaction_graph`)."""
    last = max((_node_sort_key(n)[0] for n in names if n != "logits"), default=0.0)
    pos = _graph_positions(names, readout_row=float(int(last)) + 1.0)
    fig = go.Figure()
    smax = float(e["score"].abs().max()) if len(e) else 1.0
    for _, r in e.iterrows():
        (x0, y0), (x1, y1) = pos[r["src"]], pos[r["dst"]]
        color = OKABE_ITO[0] if r["score"] >= 0 else OKABE_ITO[5]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="text",
                                 text=f"{r['src']} → {r['dst']}: {r['score']:.3g}",
                                 line={"width": 1 + 5 * abs(r["score"]) / (smax or 1.0), "color": color}))
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=2, arrowsize=1.2, arrowwidth=1, arrowcolor=color, text="", standoff=7)
    kinds = {"embed": 2, "logits": 2}
    fig.add_trace(go.Scatter(x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text",
                             text=names, textposition="top center", name="circuit node", showlegend=False,
                             customdata=[hover[n] for n in names],
                             marker={"size": 11, "color": [OKABE_ITO[kinds.get(n, 3 if n.endswith("MLP") else 1)]
                                                           for n in names],
                                     "symbol": ["square" if n.endswith("MLP") else "circle" for n in names]},
                             hovertemplate="%{customdata}<extra></extra>"))
    rows = sorted({y for _, y in pos.values()})
    fig.update_layout(title=title, template="plotly_white", xaxis={"visible": False},
                      yaxis={"title": "layer", "autorange": "reversed", "tickvals": rows,
                             "ticktext": [_row_label(y, rows[-1] if "logits" in names else None) for y in rows]},
                      height=max(400, 40 * len(rows) + 150))
    return fig


def _graph_positions(names: list[str], readout_row: float) -> dict[str, tuple[float, float]]:
    """(x, y) of each node: y its layer (MLPs half a layer lower, the readout at ``readout_row``), x spread
    over the heads of the layer with its MLP to their right."""
    pos: dict[str, tuple[float, float]] = {}
    heads: dict[float, list[str]] = {}
    for n in names:
        layer, head = _node_sort_key(n)
        if n in ("embed", "logits"):
            pos[n] = (0.0, -1.0 if n == "embed" else readout_row)
        elif n.endswith("MLP"):
            pos[n] = (0.0, layer)  # x set below, once the layer's heads are known
        else:
            heads.setdefault(layer, []).append(n)
    for layer, ns in heads.items():
        for i, n in enumerate(ns):
            pos[n] = (i - (len(ns) - 1) / 2, layer)
    for n in names:
        if n.endswith("MLP"):
            width = len(heads.get(pos[n][1] - 0.5, []))
            pos[n] = ((width + 1) / 2, pos[n][1])
    return pos


def _row_label(y: float, readout: float | None) -> str:
    if y == -1.0:
        return "embed"
    if readout is not None and y == readout:
        return "logits"
    return f"L{int(y)}" + (" MLP" if y % 1 else "")


def _node_sort_key(name: str) -> tuple[float, int]:
    if name == "embed":
        return (-1.0, 0)
    if name == "logits":
        return (float("inf"), 0)
    parts = name.split()
    layer = float(parts[0][1:])
    if parts[1] == "MLP":
        return (layer + 0.5, 0)
    return (layer, int(parts[1][1:]))
