"""Faithfulness over circuit sizes on held-out pairs: mgnp-lens against coarse, attribution and random circuits.

    python benchmarks/faithfulness_curves.py [--task ioi] [--scales 0.125 0.25 0.5 1 2]
                                             [--coarse-scales 0.125 0.25 0.5 1 2 8 32] [--steps 120]
                                             [--splits test test_ood] [--max-examples 512] [--runs DIR] [--tag T]

mgnp-lens and coarse pruning (heads + MLP blocks) each run a λ sweep on the task's training pairs; attribution
patching and random circuits are built at each mgnp circuit's per-granularity counts. Every circuit is scored
on the same held-out pairs (MIB's recovered fraction and the KL), and the curves' CPR / CMD areas are written
to ``results/faithfulness_curves_TASK.json`` with the interpolated faithfulness of each method at mgnp's sizes
(the paper's claim: at equal parameters, multi-granular at least as faithful as coarse). The run directories
and the comparison's ``report.html`` go to ``--runs`` (default ``runs/faithfulness_TASK``); a second call
resumes the sweeps. ``docs/faithfulness.md`` (tables) and ``docs/faithfulness_TASK.png`` (the curves; needs
matplotlib, the ``bench`` extra) are rendered from every task's JSON; ``--md-only`` renders them alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import curves_setting, parser, peak_rss_mb, RESULTS, write

DOCS = Path(__file__).resolve().parents[1] / "docs"
METHOD_ORDER = ("mgnp", "mgnp_one_run", "coarse", "attribution", "attribution_ig", "random")
#: Okabe-Ito colours and distinct markers, one per method (colour-blind safe).
STYLE = {"mgnp": ("#0072B2", "o"), "mgnp_one_run": ("#56B4E9", "P"), "coarse": ("#E69F00", "s"),
         "attribution": ("#009E73", "D"),
         "attribution_ig": ("#D55E00", "v"), "random": ("#CC79A7", "^")}


def main() -> None:
    ap = parser(__doc__, "faithfulness_curves", device=True)
    ap.add_argument("--task", default="ioi", choices=["ioi", "gt", "gp"])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--coarse-scales", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0, 2.0, 8.0, 32.0],
                    help="coarse pruning's λ scales: beyond mgnp's, because at the paper's λ coarse pruning drops no "
                         "MLP block and its circuits stay above ~55%% of the parameters (8-32× meet mgnp's sizes)")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--splits", nargs="+", default=["test", "test_ood"])
    ap.add_argument("--max-examples", type=int, default=512)
    ap.add_argument("--runs", default=None, help="run directories (default runs/faithfulness_TASK)")
    ap.add_argument("--md-only", action="store_true", help="only re-render docs/faithfulness.md and its figures")
    args = ap.parse_args()
    if args.md_only:
        render_docs()
        return

    import mgnp_lens as mg
    from mgnp_lens import faithfulness as ff, methods
    from mgnp_lens.report import build_comparison_report

    runs = Path(args.runs or f"runs/faithfulness_{args.task}")
    model = mg.load_model(args.model, device=args.device)
    task = mg.tasks.get_task(args.task, model, n_test=args.max_examples, n_heldout=args.max_examples)  # as the CLI
    t0 = time.perf_counter()
    comp = methods.compare_methods(model, task, args.scales, args.coarse_scales, args.splits, out_dir=runs,
                              max_examples=args.max_examples, steps=args.steps, eval_split=None, progress=False)
    seconds = time.perf_counter() - t0
    report = build_comparison_report(runs)
    mgnp_sizes = sorted(comp.curve[comp.curve.method == "mgnp"]["param_fraction"].unique())
    matched = ff.at_sizes(comp.curve, mgnp_sizes)
    matched_kl = ff.at_sizes(comp.curve, mgnp_sizes, faithfulness="kl")
    matched["kl"] = matched_kl["kl"].to_numpy()
    print(comp.areas.to_string(index=False))
    print(matched.to_string(index=False))
    write(f"faithfulness_curves_{args.task}", {
        "task": args.task, "model": args.model or "smollm2-135m", "steps": args.steps, "scales": args.scales,
        "n_train": len(task.split("train")), "lambdas": mg.PruningConfig().lambdas,
        "coarse_scales": args.coarse_scales or args.scales, "splits": args.splits, "max_examples": args.max_examples,
        "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "report": str(report),
        "areas": comp.areas.to_dict(orient="records"), "at_mgnp_sizes": matched.to_dict(orient="records"),
        "curve": comp.curve.to_dict(orient="records")}, args.out, args.tag)
    if args.tag is None:
        render_docs()


#: The parameter fractions labelled on the figures' log axes.
TICKS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _figure(data: dict, path: Path) -> Path | None:
    """The curves of one task, a panel per split, recovered against the parameter fraction (log axis)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no figure")
        return None
    import pandas as pd

    curve = pd.DataFrame(data["curve"])
    splits = list(dict.fromkeys(curve["split"]))
    fig, axes = plt.subplots(2, len(splits), figsize=(5.2 * len(splits), 7.2), sharex=True, squeeze=False)
    for col, split in enumerate(splits):
        for row, (y, label) in enumerate([("recovered", "recovered (m(C) − m(∅)) / (m(N) − m(∅))"),
                                          ("kl", "KL(full ‖ circuit), nats (lower is better)")]):
            ax = axes[row][col]
            for method in METHOD_ORDER:
                part = curve[(curve.split == split) & (curve.method == method)].sort_values("param_fraction")
                if len(part):
                    colour, marker = STYLE[method]
                    ax.plot(part.param_fraction, part[y], marker=marker, color=colour, label=method)
            if y == "recovered":
                ax.axhline(1.0, color="#555555", linestyle=":", linewidth=1)
                ax.set_title(f"{data['task']}: {split} pairs")
            else:
                ax.set_yscale("log")
                ax.set_xlabel("fraction of the gated parameters kept (log)")
            ax.set_xscale("log")
            ax.set_xticks(TICKS, [f"{t:.0%}" for t in TICKS])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled minor ticks overlap
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
    axes[0][-1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _md_table(frame, floats: str = "{:.3f}") -> list[str]:
    cols = list(frame.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        out.append("| " + " | ".join(floats.format(v) if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                                     else str(v) for v in row) + " |")
    return out


def render_docs() -> Path:
    """``docs/faithfulness.md`` and one figure per task from every ``results/faithfulness_curves_*.json``."""
    import json

    import pandas as pd

    lines = ["# Faithfulness over circuit sizes: mgnp-lens beside its baselines", "",
             "Generated by `benchmarks/faithfulness_curves.py` from `benchmarks/results/faithfulness_curves_*.json`"
             " (re-render with `--md-only`). Every circuit of every method is scored on the same held-out pairs: "
             "`test` (training templates, new pairs) and `test_ood` (templates never seen, and the other "
             "corruption). *recovered* is MIB's `(m(C) − m(∅)) / (m(N) − m(∅))` of the task's logit difference; "
             "CPR is the area under it and CMD the area between it and 1, over the fraction of parameters (or "
             "nodes) kept, from the empty circuit (0, 0) to the full model (1, 1), trapezoid rule on a linear "
             "axis (`mgnp_lens.faithfulness`). mgnp = multi-granular pruning; coarse = heads and MLP blocks only "
             "(the same loop); attribution = node attribution patching (first order), attribution_ig = its "
             "integrated-gradients version (EAP-IG's scoring on nodes, 5 points) and random = random nodes, all "
             "three at each mgnp circuit's per-granularity counts; mgnp_one_run = circuits of 0.25-4× the size of "
             "the λ×1 run's, filled by its gate scores (no sweep). Runs before attribution_ig and mgnp_one_run "
             "existed lack them. What the curves say, and where mgnp-lens loses: "
             "[heldout.md](heldout.md), \"Faithfulness over sizes\".", ""]
    for path in sorted(RESULTS.glob("faithfulness_curves_*.json")):
        data = json.loads(path.read_text())
        task = data["task"]
        curve, areas = pd.DataFrame(data["curve"]), pd.DataFrame(data["areas"])
        lines += [f"## {task}", "", curves_setting(data) + " " +
                  f"{data['model']}, {data['steps']} steps per pruning run, λ scales {data['scales']} (coarse "
                  f"{data['coarse_scales']}), {data['max_examples']} pairs per split; {data['seconds']:.0f} s on "
                  f"{data['machine'].get('cpus')} CPUs ({data['when'][:10]}).", ""]
        fig = _figure(data, DOCS / f"faithfulness_{task}.png")
        if fig is not None or (DOCS / f"faithfulness_{task}.png").exists():  # without matplotlib: the last figure
            lines += [f"![faithfulness curves, {task}](faithfulness_{task}.png)", ""]
        a = areas[areas["size"] == "param_fraction"].pivot(index="method", columns="split", values=["cpr", "cmd"])
        a.columns = [f"{m.upper()} {s}" for m, s in a.columns]
        a = a.reindex([m for m in METHOD_ORDER if m in a.index]).reset_index()
        lines += ["Areas against the fraction of parameters kept (higher CPR, lower CMD is better):", "",
                  *_md_table(a), ""]
        pts = curve.sort_values(["method", "split", "param_fraction"])[
            ["method", "split", "attn_head", "param_fraction", "node_fraction", "kl", "recovered"]]
        pts = pts.assign(method=pd.Categorical(pts.method, METHOD_ORDER)).sort_values(["split", "method",
                                                                                       "param_fraction"])
        lines += ["Every circuit:", "", *_md_table(pts.astype({"method": str}), "{:.4f}"), ""]
    out = DOCS / "faithfulness.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
