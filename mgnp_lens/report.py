"""One self-contained ``report.html`` per run directory (plotly.js embedded: opens offline).

A run directory is what :meth:`DiscoveryResult.save` and ``mgnp discover`` write:
``circuit.json``, ``history.csv``, ``evaluation.json``, ``config.json`` (and the CSV tables).
The report holds the Appendix D table and heatmap, the Table 1 summary, the Table 2 row, the
head grid, neuron strips, training curves, the run configuration and, when the task is one of
the paper's, the paper's GPT-2 numbers beside ours (and the reference-circuit comparison when
the model is GPT-2-small shaped).
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import targets
from .circuit import Circuit
from .rundir import EDGES_FILE, EXAMPLES_FILE, HEADS_FILE, PATTERNS_FILE, TIMINGS_FILE, check_consistent

REQUIRED = ("circuit.json",)
RUN_FILES = ("circuit.json", "per_layer.csv", "summary.csv", "evaluation.json", "history.csv", "config.json",
             EDGES_FILE, HEADS_FILE, PATTERNS_FILE, EXAMPLES_FILE, TIMINGS_FILE, "gates.pt", "state.pt", "report.html")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
table.tbl { border-collapse: collapse; font-size: 0.88rem; margin: 0.6rem 0; }
table.tbl th, table.tbl td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
table.tbl th { background: #f3f5f8; }
table.sortable th { cursor: pointer; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 0.8rem; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6rem 0.8rem; background: #fafbfc; }
.card b { display: block; font-size: 1.3rem; } .card span { color: #555; font-size: 0.85rem; }
.warn { background: #fff4e5; border: 1px solid #E69F00; padding: 0.5rem 0.8rem; border-radius: 6px; }
pre { background: #f6f8fa; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
"""


def _damaged(path: Path, problem) -> ValueError:
    intact = [p.name for p in sorted(path.parent.iterdir()) if p.name in RUN_FILES and p != path]
    way_out = {"circuit.json": "mgnp discover --resume DIR rewrites it from state.pt",
               "config.json": "the run's settings are lost: start a new run (its circuit.json is still readable "
                              "from Python with mgnp_lens.Circuit.load)",
               "evaluation.json": "mgnp evaluate DIR re-evaluates the circuit without it"}.get(
        path.name, "mgnp discover --resume DIR rewrites the run's files from state.pt")
    return ValueError(f"{path} is damaged ({problem}); the run's other files ({', '.join(intact) or 'none'}) are "
                      f"not affected; {way_out.replace('DIR', str(path.parent))}")


def _read_json(path: Path):
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _damaged(path, e) from None


def _read_csv(path: Path) -> pd.DataFrame | None:
    """A run's CSV (history.csv, edges.csv, ...), or None where there is none or it is empty (e.g. a run stopped
    before its first step)."""
    if not path.exists() or not path.read_text(encoding="utf-8", errors="replace").strip():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise _damaged(path, e) from None


def load_run(directory: str | Path, need_evaluation: bool = True) -> dict:
    """Read a run directory: ``{"circuit", "history", "evaluation", "config"}`` (missing parts are None).

    Args:
        need_evaluation: whether a damaged ``evaluation.json`` stops the reading (False: it reads as empty, for
            commands that do not use it, such as ``mgnp evaluate``).

    Raises:
        FileNotFoundError: the directory or its ``circuit.json`` is missing.
        ValueError: a damaged file (named, with the files that are intact), or a circuit whose shape is not the
            model's recorded in config.json.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"no run directory at {d}")
    for name in REQUIRED:
        if not (d / name).exists():
            raise FileNotFoundError(f"{d} is not a run directory: {name} is missing (a run writes it at its first "
                                    "checkpoint; mgnp discover --resume DIR continues a run that has state.pt)")
    config = _read_json(d / "config.json") or {}
    if "config" not in config:  # a bare PruningConfig dict (older layout)
        config = {"config": config}
    circuit = Circuit.load(d / "circuit.json")
    dims = config.get("model_dims")
    if isinstance(dims, dict) and dims != circuit.dims.to_dict():
        raise ValueError(f"{d}: circuit.json is for a model shaped {circuit.dims.to_dict()}, but config.json "
                         f"records the run's model as {dims}")
    try:
        evaluation = _read_json(d / "evaluation.json") or {}
    except ValueError:
        if need_evaluation:
            raise
        evaluation = {}
    check_consistent(d, ignore=() if need_evaluation else ("evaluation.json",))  # no files of two saves mixed
    return {"circuit": circuit, "history": _read_csv(d / "history.csv"),
            "evaluation": evaluation, "config": config, "dir": d,
            "edges": _read_csv(d / EDGES_FILE), "heads": _read_csv(d / HEADS_FILE),
            "patterns": _read_json(d / PATTERNS_FILE), "examples": _read_csv(d / EXAMPLES_FILE),
            "timings": _timings(d, evaluation)}


def _timings(d: Path, evaluation: dict) -> dict[str, float]:
    """The seconds of each phase: ``timings.json`` (``mgnp discover``'s whole session) or else the run's own
    phases from ``evaluation.json`` (a run saved from Python); ``{}`` for runs that recorded none."""
    whole = _read_json(d / TIMINGS_FILE)
    phases = whole.get("phases") if isinstance(whole, dict) else None
    return phases if isinstance(phases, dict) else (evaluation.get("timings") or {})


def _table(frame: pd.DataFrame, float_format: str = "{:,.4g}") -> str:
    return frame.to_html(index=False, border=0, classes="tbl", na_rep="–",
                         float_format=lambda x: float_format.format(x), escape=True)


def _cards(items: list[tuple[str, str]]) -> str:
    return '<div class="grid">' + "".join(
        f'<div class="card"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>' for k, v in items) + "</div>"


#: What each evaluated split holds, for the faithfulness table.
SPLIT_DESCRIPTIONS = {"train": "train (the pairs it was trained on)", "validation": "validation (built-in tasks: templates held out of training)",
                      "test": "test (training templates, new pairs)",
                      "test_templates": "test_templates (templates never seen)",
                      "test_corruption": "test_corruption (the other corruption)",
                      "test_ood": "test_ood (unseen templates and the other corruption)"}


def _task_name(run: dict) -> str | None:
    task = run["config"].get("task") or run["circuit"].task or {}
    return task.get("name") if isinstance(task, dict) else None


def _model_label(model) -> str:
    """How the header names the model: the embedded default by name, a file by its name, else its source."""
    source = str(model.get("source", "unknown") if isinstance(model, dict) else model)
    from .models import SMOLLM2_PACKAGE

    if source.endswith(".gguf") and SMOLLM2_PACKAGE in source:
        return "SmolLM2-135M-Instruct (embedded)"
    return Path(source).name if source.startswith("/") else source


def _stop_text(conv: dict) -> str:
    """", and training stopped there, at step N" for a run that stopped when it converged ("" otherwise)."""
    return f", and training stopped there, at step {conv['stopped_at_step']}" if conv.get("stopped_at_step") else ""


def _header(run: dict, task: str | None) -> list[str]:
    """The title, the run line, the interrupted warning and the headline cards."""
    circuit: Circuit = run["circuit"]
    dims, ev = circuit.dims, run["evaluation"]
    model_name = _model_label(run["config"].get("model") or {})
    counts = circuit.counts()
    cards = [("attention heads kept", f"{counts['attn_head']}/{dims.count('attn_head')}"),
             ("attention neurons kept", f"{counts['attn_neuron']:,}/{dims.count('attn_neuron'):,}"),
             ("MLP hidden neurons kept", f"{counts['mlp_hidden']:,}/{dims.count('mlp_hidden'):,}"),
             ("MLP output neurons kept", f"{counts['mlp_output']:,}/{dims.count('mlp_output'):,}"),
             ("parameter compression", f"{circuit.compression_ratio():.1f}×")]
    test, train = ev.get("evaluation"), ev.get("train_evaluation")
    if test:
        cards.append((f"KL on {test['split']} ({test['n_examples']} pairs)", f"{test['kl']:.3f}"))
    if train:
        cards.append(("KL on train (hard circuit)", f"{train['kl']:.3f}"))
    target = ev.get("target")
    if target:
        cards.append(targets.outcome_text(target))
    ood = (ev.get("heldout_evaluations") or {}).get("test_ood")
    if ood:
        cards.append(("KL on unseen templates + other corruption", f"{ood['kl']:.3f}"))
    parts = [f"<h1>mgnp-lens circuit report: {html.escape(task or 'custom task')}</h1>",
             f'<p class="sub">model {html.escape(str(model_name))} · {dims.n_layers} layers × {dims.n_heads} heads'
             f' · {ev.get("steps_completed", "?")} steps · built '
             f'{datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}</p>']
    selection = ev.get("selection")
    if selection:
        parts.append(f'<p class="sub">The circuit shown is step {selection["step"]} of {selection["of_steps"]}\'s, '
                     f'chosen over {selection["validation_checks"]} validation checks: '
                     f'{html.escape(selection["rule"])}.</p>')
    conv = run["config"].get("convergence")
    if conv:
        verdict = "converged" if conv["converged"] else "did not converge"
        parts.append(f'<p class="{"sub" if conv["converged"] else "warn"}">The run {verdict}: its hard circuit was '
                     f'stable for the last {conv["stable_steps"]} steps ({conv["stable_needed"]} needed)'
                     f'{_stop_text(conv)}.</p>')
        moving = targets.moving_text(conv)
        if moving:
            parts.append(f'<p class="sub">{html.escape(moving[0].upper() + moving[1:])}.</p>')
        if conv.get("repairs"):
            from .confirm import repairs_text

            parts.append(f'<p class="sub">Repaired after training: {html.escape(repairs_text(conv["repairs"]))}.</p>')
    if ev.get("interrupted"):
        parts.append('<p class="warn">This run was interrupted: the circuit is the one of the last finished '
                     'step, and it was not evaluated.</p>')
    parts.append(_cards(cards))
    return parts


def _tables(run: dict, task: str | None, ref) -> list[str]:
    """Table 2 (faithfulness), Table 1 (sparsity, beside the paper's for its tasks) and the reference."""
    from .reference import PAPER_TASKS, compare, paper_comparison, paper_faithfulness

    circuit: Circuit = run["circuit"]
    ev = run["evaluation"]
    parts = ["<h2>Faithfulness (Table 2 row), on the training pairs and on pairs it never saw</h2>"]
    rows = [e for e in (ev.get("train_evaluation"), ev.get("evaluation"),
                        *(ev.get("heldout_evaluations") or {}).values()) if e]
    if rows:
        frame = pd.DataFrame(rows).reindex(columns=["split", "n_examples", "metric_name", "base_metric",
                                                    "circuit_metric", "empty_metric", "recovered", "kl", "kl_se"])
        frame.insert(1, "pairs", frame.pop("split").map(lambda s: SPLIT_DESCRIPTIONS.get(s, s)))
        parts.append(_table(frame))
        parts.append("<p><i>recovered</i> = (circuit − empty) / (full − empty): the fraction of the full model's "
                     "metric the circuit keeps, measured from the empty circuit's (every node ablated); "
                     "<i>kl_se</i>: the standard error of the KL over the pairs. Held-out "
                     "templates were used neither in training nor for validation.</p>")
    else:
        parts.append("<p>No evaluation in this run directory (run <code>mgnp evaluate DIR</code>).</p>")
    parts.append("<h2>Sparsity per granularity (Table 1)</h2>")
    if task in PAPER_TASKS:
        parts.append(_table(paper_comparison(circuit, task)))
        pf = paper_faithfulness(task)
        parts.append(f"<p>Paper, GPT-2 small, {task}: {html.escape(pf['metric'])} {pf['base_metric']:.3f} (full) → "
                     f"{pf['circuit_metric']:.3f} (circuit), KL {pf['kl']:.3f}. The paper's numbers are for "
                     "GPT-2 small, so they are a scale for comparison, not a target for another model.</p>")
    else:
        parts.append(_table(circuit.summary()))
    parts.append(f"<p>Parameters touching kept nodes: {circuit.n_params():,} "
                 f"(compression {circuit.compression_ratio():.1f}× over the gated weights).</p>")
    if ref is not None:
        parts.append(f"<h2>Against the reference circuit ({html.escape(ref.name)})</h2>")
        parts.append(f"<p>{html.escape(ref.source)}</p>")
        parts.append(_table(compare(circuit, ref)))
    return parts


#: Click a column header of a ``sortable`` table to sort by it (numbers as numbers); no library needed.
_SORT_JS = """<script>
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const key = r => { const t = r.cells[col].innerText.replace(/,/g, ""); return isNaN(t) ? t : parseFloat(t); };
  const dir = th.dataset.dir = th.dataset.dir === "asc" ? "desc" : "asc";
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (dir === "asc" ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}));
</script>"""


def _kept_heads(circuit: Circuit, attribution: pd.DataFrame | None = None) -> list[str]:
    """The kept heads by name with the attention neurons each keeps (and, from heads.csv, its direct logit
    attribution), as a table sortable by any column."""
    heads = circuit.active_heads()
    if not heads:
        return ["<h2>Kept attention heads</h2>", "<p>The circuit keeps no attention head.</p>"]
    neurons = circuit.masks["attn_neuron"].sum(-1)
    frame = pd.DataFrame([{"head": f"L{l} H{h}", "layer": l, "index": h, "attention neurons kept": int(neurons[l, h]),
                           "of": circuit.dims.d_head, "MLP of its layer kept": "yes" if l in circuit.active_mlps()
                           else "no"} for l, h in heads])
    note = "<p>Click a column to sort.</p>"
    if attribution is not None and "dla" in attribution:
        frame = frame.merge(attribution[["head", "dla"]].rename(columns={"dla": "direct logit attribution"}),
                            on="head", how="left")
        note = ("<p>Click a column to sort. <i>Direct logit attribution</i>: what the head's output, read straight "
                "through the final norm and the unembedding, adds to correct − incorrect at the answer (full "
                "model, clean prompts, mean over the evaluation pairs).</p>")
    table = frame.to_html(index=False, border=0, classes="tbl sortable", escape=True,
                          float_format=lambda x: f"{x:+.3f}")
    return [f"<h2>Kept attention heads ({len(heads)})</h2>", note, table, _SORT_JS]


def _examples(examples: pd.DataFrame | None) -> list[str]:
    """Example prompts with the full model's and the circuit's answers (examples.csv), if the run has them."""
    if examples is None:
        return []
    return ["<h2>Example prompts: the full model's and the circuit's answers</h2>",
            "<p>The top token at the answer position and the task metric, for the first evaluation pairs.</p>",
            _table(examples, "{:,.3f}")]


def _figures(run: dict, ref) -> list[str]:
    """The plotly figures, the first carrying plotly.js (so the page works offline)."""
    from . import plot

    circuit: Circuit = run["circuit"]
    figures = [("The circuit as a graph", plot.circuit_graph(circuit, run.get("edges"))),
               ("Retained fraction per layer (Appendix D as a picture)", plot.layer_heatmap(circuit)),
               ("Attention heads", plot.head_grid(circuit, reference=ref)),
               ("Surviving MLP neurons", plot.neuron_strips(circuit))]
    if run.get("patterns") and run["patterns"].get("heads"):
        figures.append(("Attention patterns of the kept heads", plot.attention_patterns(run["patterns"])))
    if run["history"] is not None and len(run["history"]):
        figures.append(("Training curves", plot.training_curves(run["history"])))
    parts = []
    for i, (title, fig) in enumerate(figures):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                 config={"displaylogo": False, "responsive": True}))
    return parts


def _time_table(timings: dict[str, float] | None) -> list[str]:
    """Where the run's wall time went, phase by phase (nothing for runs that recorded no phases)."""
    if not timings:
        return []
    total = sum(timings.values())
    frame = pd.DataFrame({"phase": list(timings), "seconds": list(timings.values())})
    frame["share_pct"] = 100 * frame["seconds"] / total if total else 0.0
    return ["<h2>Where the time went</h2>", _table(frame, "{:,.1f}"),
            f"<p>{total:,.1f} s in all (this session of the run; the report itself is not included).</p>"]


def build_report(directory: str | Path, out: str | Path | None = None, reference: str | None = None) -> Path:
    """Build ``report.html`` for a run directory.

    Args:
        directory: a run directory (see module docstring).
        out: where to write (default ``directory/report.html``).
        reference: reference circuit to compare with (default: the task's, if the model is
            GPT-2-small shaped).

    Returns:
        the path of the written report.
    """
    from .reference import get_reference

    run = load_run(directory)
    circuit: Circuit = run["circuit"]
    task = _task_name(run)
    dims = circuit.dims
    gpt2_shaped = (dims.n_layers, dims.n_heads, dims.d_mlp, dims.d_model) == (12, 12, 3072, 768)
    if reference is None and gpt2_shaped and task in ("ioi", "gt"):
        reference = task
    ref = get_reference(reference) if reference else None
    parts = [*_header(run, task), *_tables(run, task, ref), *_kept_heads(circuit, run.get("heads")),
             *_examples(run.get("examples")), *_figures(run, ref),
             "<h2>Per-layer table (Appendix D)</h2>", _table(circuit.per_layer()), *_time_table(run.get("timings")),
             *_configuration(run["config"])]
    return _write_page(Path(out) if out else run["dir"] / "report.html", f"mgnp-lens report: {task or 'custom'}",
                       parts)


def _configuration(saved: dict) -> list[str]:
    """The run's settings as one table, grouped by concern (:data:`mgnp_lens.config.CONCERNS`), with the settings
    that differ from the defaults marked; then the rest of ``config.json`` (model, versions, command) as JSON."""
    from .config import CONCERNS, PruningConfig

    try:
        config = PruningConfig.from_dict(saved.get("config") or {})
    except (TypeError, ValueError):  # settings this version does not know: show them as they are
        return ["<h2>Run configuration</h2>", f"<pre>{html.escape(json.dumps(saved, indent=2, default=str))}</pre>"]
    changed = config.changed()
    rows = [{"concern": concern if i == 0 else "", "setting": name,
             "value": json.dumps(value, default=str) + (" (changed)" if name in changed else "")}
            for concern, group in config.by_concern().items() for i, (name, value) in enumerate(group.items())]
    rest = {k: v for k, v in saved.items() if k != "config"}
    note = (f"<p>{len(changed)} setting(s) differ from the defaults: {', '.join(changed)}.</p>" if changed
            else "<p>Every setting is the default.</p>")
    concerns = "; ".join(f"<b>{c}</b>: {html.escape(what)}" for c, (what, _) in CONCERNS.items())
    return ["<h2>Run configuration</h2>", note, f"<p>{concerns}.</p>", _table(pd.DataFrame(rows)),
            "<h3>Run record</h3>", f"<pre>{html.escape(json.dumps(rest, indent=2, default=str))}</pre>"]


#: The file that marks a method-comparison directory (:func:`mgnp_lens.methods.compare_methods`).
CURVE_FILE = "curve.csv"


def write_report(result, directory: str | Path) -> Path:
    """Save ``result`` (a :class:`mgnp_lens.DiscoveryResult`) into ``directory`` with its views and build its
    ``report.html``, as ``mgnp discover`` does; returns the report's path."""
    result.save(directory)
    return build_report(directory)


def _write_page(path: Path, title: str, parts: list[str]) -> Path:
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>\n{chr(10).join(parts)}\n</body></html>\n")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half page behind
    return path


def build_comparison_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """``report.html`` of a method comparison (a directory with ``curve.csv``): per split, the CPR/CMD table
    and the faithfulness curves against parameters and against nodes.

    Raises:
        FileNotFoundError: ``directory`` has no ``curve.csv``.
        ValueError: ``curve.csv`` is damaged (named).
    """
    from . import plot
    from .faithfulness import SIZE_AXES, areas

    d = Path(directory)
    table = _read_csv(d / CURVE_FILE) if (d / CURVE_FILE).exists() else None
    if table is None:
        raise FileNotFoundError(f"{d} is not a method comparison: {CURVE_FILE} is missing or empty")
    parts = ["<h1>mgnp-lens: faithfulness over circuit sizes</h1>",
             '<p class="sub">Every circuit scored on the same pairs. <i>recovered</i> = (m(C) − m(∅)) / (m(N) − m(∅)); '
             "CPR is the area under it, CMD the area between it and 1, over the size fraction from 0 (the empty "
             "circuit) to 1 (the full model) by the trapezoid rule (MIB). coarse = heads and MLP blocks only; "
             "attribution (first order), attribution_ig (integrated gradients) and random are built at the counts of "
             "each mgnp circuit.</p>"]
    first = True
    for split in table["split"].unique():
        part = table[table["split"] == split]
        parts.append(f"<h2>{html.escape(SPLIT_DESCRIPTIONS.get(split, split))}</h2>")
        parts.append(_table(pd.concat([areas(part, s) for s in SIZE_AXES], ignore_index=True), "{:,.4f}"))
        for size in SIZE_AXES:
            fig = plot.faithfulness_curves(part, split=split, size=size)
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
            first = False
        cols = ["method", "point", "attn_head", "n_nodes", "node_fraction", "n_params", "param_fraction", "kl",
                "circuit_metric", "recovered"]
        parts.append(_table(part.reindex(columns=cols)))
    return _write_page(Path(out) if out else d / "report.html", "mgnp-lens: faithfulness curves", parts)
