"""Replication on the embedded SmolLM2 model: does multi-granular pruning find smaller circuits?

    python benchmarks/replicate.py [--tasks ioi,gp,gt] [--steps 120] [--n-test 128] [--device cpu]
                                   [--out benchmarks/results/replicate.json] [--md docs/results.md]
    python benchmarks/replicate.py --md-only            # re-render docs/results.md from the JSON

Per task, in the paper's setting (its λ and training pairs, not the library's defaults): multi-granular node
pruning (all seven granularities); coarse pruning (gates on heads and MLP blocks only, same λ and loop); node
attribution patching at the multi-granular circuit's node counts and at 2×, 4× and 8× them (to find the budget
that matches its faithfulness); random circuits with the multi-granular counts (3 seeds). Every circuit is
evaluated on the same held-out test pairs (KL to the full model and the task metric). The paper's
GPT-2 small numbers are printed beside ours for scale.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from harness import curves_setting, machine, parser, RESULTS, write

ROOT = Path(__file__).resolve().parents[1]
NEURON_SHARE = {"attn_neuron": ("attn_head", "d_head"), "mlp_hidden": ("mlp_block", "d_mlp"),
                "mlp_output": ("mlp_block", "d_model")}


def row(name, circuit, ev, **extra) -> dict:
    from mgnp_lens.sweep import circuit_row

    r = circuit_row(circuit, ev, method=name, **extra)
    dims = circuit.dims
    # how much of each kept component survives inside it
    for g, (parent, width) in NEURON_SHARE.items():
        kept_parents = circuit.count(parent)
        r[f"{g}_share_in_kept_parent"] = circuit.count(g) / (kept_parents * getattr(dims, width)) \
            if kept_parents else float("nan")
    return r


def run_task(name: str, steps: int, n_test: int, device: str) -> dict:
    import mgnp_lens as mg
    from mgnp_lens import baselines, reference
    from mgnp_lens.tasks import _data

    model = mg.load_model(device=device)
    task = mg.tasks.get_task(name, model, n_test=n_test, n_train=mg.tasks.TASKS[name].PAPER_N_TRAIN)  # the paper's
    common = dict(steps=steps, eval_max_examples=n_test, progress=False, lambdas=mg.PAPER_LAMBDAS)
    t0 = time.perf_counter()
    ours = mg.discover(model, task, **common)
    t_ours = time.perf_counter() - t0
    rows = [row("multi-granular", ours.circuit, ours.evaluation, seconds=t_ours,
                train_kl=ours.train_evaluation.kl)]
    t0 = time.perf_counter()
    coarse = baselines.coarse(model, task, **common)
    rows.append(row("coarse (heads + MLP blocks)", coarse.circuit, coarse.evaluation,
                    seconds=time.perf_counter() - t0, train_kl=coarse.train_evaluation.kl))
    t0 = time.perf_counter()
    scores = baselines.attribution_scores(model, task, batch_size=16, max_examples=128)
    t_attr = time.perf_counter() - t0
    counts = ours.circuit.counts()
    dims = ours.circuit.dims
    for mult in (1, 2, 4, 8):
        budget = {g: min(dims.count(g), max(counts[g], 1) * mult) if g != "embedding" else counts[g]
                  for g in counts}
        try:
            c = baselines.select_nodes(dims, scores, budget)
        except ValueError as e:  # budget the hierarchy cannot hold
            print(f"  attribution ×{mult}: {e}")
            continue
        ev = mg.evaluate(model, task, c, "test", max_examples=n_test)
        rows.append(row(f"attribution ×{mult}", c, ev, budget_multiple=mult, seconds=t_attr))
    for seed in range(3):
        c = baselines.random_circuit(dims, ours.circuit, seed=seed)
        rows.append(row(f"random (seed {seed})", c, mg.evaluate(model, task, c, "test", max_examples=n_test),
                        seed=seed))
    for r in rows:
        print(f"  {r['method']:<30} heads {r['attn_head']:>4} params {r['n_params']:>11,} KL {r['kl']:.3f} "
              f"metric {r['circuit_metric']:.3f}")
    paper = None
    if name in reference.PAPER_TASKS:
        paper = {"table1": reference.paper_summary(name).to_dict("records"),
                 "table2": reference.paper_faithfulness(name),
                 "table3": _data.load("paper_tables")["table3_baselines"].get(name)}
    return {"task": name, "task_description": task.describe(), "dims": dims.to_dict(), "rows": rows,
            "table1": ours.circuit.summary().to_dict("records"), "per_layer": ours.circuit.per_layer().to_dict("records"),
            "paper": paper, "config": ours.config.to_dict(),
            "training_precision": ours.meta.get("training_precision", "float32")}


def run_stability(name: str, seeds: list[int], steps: int, n_test: int, device: str) -> dict:
    """The multi-granular run repeated with several seeds: pairwise Jaccard overlap, and chance level."""
    import torch

    import mgnp_lens as mg
    from mgnp_lens.sweep import NEURON_GRANULARITIES, stability

    model = mg.load_model(device=device)
    task = mg.tasks.get_task(name, model, n_test=n_test)
    table, results = stability(model, task, seeds=seeds, steps=steps, eval_max_examples=n_test, progress=False)
    runs = [row(f"seed {s}", r.circuit, r.evaluation, seed=s, train_kl=r.train_evaluation.kl)
            for s, r in zip(seeds, results)]
    overlap = table.to_dict("records")
    for rec in overlap:  # what two random sets of the same sizes would share (expected Jaccard)
        a, b = (results[seeds.index(rec[k])].circuit for k in ("a", "b"))
        for g in ("attn_head", *NEURON_GRANULARITIES):
            n, ka, kb = a.masks[g].numel(), a.count(g), b.count(g)
            inter = ka * kb / n
            rec[f"{g}_chance"] = inter / (ka + kb - inter) if ka + kb - inter > 0 else 1.0
    in_all = {g: torch.stack([r.circuit.masks[g].bool() for r in results]).all(0)
              for g in ("attn_head", *NEURON_GRANULARITIES)}
    return {"task": name, "seeds": list(seeds), "steps": steps, "n_test": n_test, "runs": runs,
            "overlap": overlap, "kept_by_all": {g: int(m.sum()) for g, m in in_all.items()},
            "heads_kept_by_all": [f"L{l} H{h}" for l, h in in_all["attn_head"].nonzero().tolist()],
            "config": {k: v for k, v in results[0].config.to_dict().items() if k != "seed"}}


def render_stability(st: dict) -> list[str]:
    grans = ["attn_head", "attn_neuron", "mlp_hidden", "mlp_output"]
    parts = [f"## Seed stability ({st['task'].upper()})", "",
             f"The multi-granular run repeated with seeds {', '.join(map(str, st['seeds']))} ({st['steps']} steps, "
             f"{st['n_test']} test pairs); the seed sets gate initialisation, batch order and gate noise.", "",
             _md_table(st["runs"], ["method", *grans, "n_params", "train_kl", "kl", "circuit_metric"]), "",
             "Pairwise Jaccard overlap (|A ∩ B| / |A ∪ B|), with the overlap two random sets of the same sizes "
             "would have in brackets:", ""]
    recs = [{"pair": f"{r['a']} vs {r['b']}", **{g: f"{r[g]:.3f} ({r[g + '_chance']:.3f})" for g in grans}}
            for r in st["overlap"]]
    parts += [_md_table(recs, ["pair", *grans]), ""]
    mean = {g: sum(r[g] for r in st["overlap"]) / len(st["overlap"]) for g in grans}
    chance = {g: sum(r[g + "_chance"] for r in st["overlap"]) / len(st["overlap"]) for g in grans}
    parts += ["- Mean Jaccard: " + ", ".join(f"{g} {mean[g]:.2f} (chance {chance[g]:.2f})" for g in grans) + ".",
              "- Kept by every seed: " + ", ".join(f"{st['kept_by_all'][g]:,} {g}" for g in grans)
              + f"; heads: {', '.join(st['heads_kept_by_all']) or 'none'}.", ""]
    return parts


# ----------------------------------------------------------------------------------- markdown
def _md_table(records: list[dict], cols: list[str], fmt: dict | None = None) -> str:
    fmt = fmt or {}
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in records:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                cells.append(fmt.get(c, "{:.3f}").format(v))
            elif isinstance(v, int):
                cells.append(f"{v:,}")
            else:
                cells.append("" if v is None else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def verdict(task: dict) -> list[str]:
    rows = {r["method"]: r for r in task["rows"]}
    ours, coarse = rows["multi-granular"], rows["coarse (heads + MLP blocks)"]
    lines = []
    smaller = ours["n_params"] < coarse["n_params"]
    ratio = coarse["n_params"] / max(ours["n_params"], 1)
    kl_gap = ours["kl"] - coarse["kl"]
    keep = {k: r["circuit_metric"] / r["base_metric"] if r["base_metric"] else float("nan")
            for k, r in (("ours", ours), ("coarse", coarse))}
    if not smaller:
        claim = "**not supported here**"
    elif kl_gap > 0.1 + 0.25 * coarse["kl"]:
        claim = "**smaller, but less faithful**"
    elif keep["ours"] < 0.5:
        claim = ("**not supported**: the KL is close, but the multi-granular circuit loses the behaviour "
                 f"(it keeps {100 * keep['ours']:.0f}% of the full model's metric, coarse keeps "
                 f"{100 * keep['coarse']:.0f}%)")
    else:
        claim = "**supported**"
    lines.append(f"- Multi-granular vs coarse: {ours['n_params']:,} vs {coarse['n_params']:,} parameters "
                 f"({ratio:.1f}× {'smaller' if smaller else 'larger'}), test KL {ours['kl']:.3f} vs {coarse['kl']:.3f} "
                 f"({'+' if kl_gap >= 0 else ''}{kl_gap:.3f}), task metric {ours['circuit_metric']:.3f} vs "
                 f"{coarse['circuit_metric']:.3f} (full model {ours['base_metric']:.3f}). "
                 f"Claim (smaller at comparable faithfulness): {claim}.")
    share = ours["attn_neuron_share_in_kept_parent"], ours["mlp_hidden_share_in_kept_parent"]
    lines.append(f"- Inside kept components: {100 * share[0]:.1f}% of the attention neurons of kept heads and "
                 f"{100 * share[1]:.1f}% of the hidden neurons of kept MLP blocks survive, so "
                 f"{100 * (1 - share[0]):.0f}% / {100 * (1 - share[1]):.0f}% of the neurons inside \"important\" "
                 "components were not needed (claim: many are irrelevant).")
    attr = [r for m, r in rows.items() if m.startswith("attribution")]
    match = next((r for r in sorted(attr, key=lambda r: r["budget_multiple"]) if r["kl"] <= ours["kl"]), None)
    if match:
        lines.append(f"- Attribution patching reaches the multi-granular KL at {match['budget_multiple']}× the node "
                     f"budget ({match['n_params']:,} parameters, KL {match['kl']:.3f}).")
    elif attr:
        best = min(attr, key=lambda r: r["kl"])
        lines.append(f"- Attribution patching does not reach the multi-granular KL even at 8× its node budget "
                     f"(best KL {best['kl']:.3f} at {best['budget_multiple']}×).")
    rnd = [r for m, r in rows.items() if m.startswith("random")]
    if rnd:
        rkl = sum(r["kl"] for r in rnd) / len(rnd)
        lines.append(f"- Random circuits of the same size: mean KL {rkl:.3f} (multi-granular {ours['kl']:.3f})"
                     + (": KL barely separates them on this task, so read the task metric too." if
                        rkl < 1.5 * ours["kl"] else "."))
    return lines


def _optimizer_words(payload: dict) -> str:
    """How the gates were fitted, from the recorded config of the first task."""
    cfg = payload["tasks"][0].get("config", {}) if payload["tasks"] else {}
    sample = "one gate sample per example" if cfg.get("mask_per_example") else "one gate sample per batch"
    betas = cfg.get("betas", [0.9, 0.999])  # runs recorded before the field existed used PyTorch's default
    warm = cfg.get("lr_warmup_steps", 0)
    precision = payload["tasks"][0].get("training_precision", "float32") if payload["tasks"] else "float32"
    # the library resolves the warm-up ("auto" → steps) and the fields of configs saved before they existed
    from mgnp_lens.config import PruningConfig

    run_cfg = PruningConfig.from_dict(cfg) if cfg else None
    noise, on = (run_cfg.noise_warmup_length, run_cfg.noise_warmup_granularities) if run_cfg else (0, None)
    noise_words = ("full Hard-Concrete noise from the first step" if not noise else
                   f"Hard-Concrete noise ramped in over the first {noise} steps on "
                   f"{'every gate' if on is None else 'the ' + ', '.join(on) + ' gates'}")
    return (f"AdamW lr {cfg.get('lr', '?')} (betas {betas[0]}, {betas[1]}; "
            f"{f'{warm}-step lr warm-up' if warm else 'no lr warm-up'}), {sample}, {noise_words}, "
            f"training in {precision}")


def render_heldout() -> list[str]:
    """The committed default runs on every held-out split, and the faithfulness curves' areas (from their own
    files: ``results/*_default/evaluation.json``, ``results/faithfulness_curves_*.json``)."""
    lines = ["## Beyond the training prompts", "",
             "The committed default runs (`make default-runs`: the CLI's defaults, 240 steps; `docs/heldout.md` "
             "reads them) on every split: `train` the pairs optimised on, `test` new pairs of the training "
             "templates, `test_templates` templates never seen, `test_corruption` the other corruption, `test_ood` "
             "both. recovered = (m(C) − m(∅)) / (m(N) − m(∅)).", "",
             "| task | heads | split | pairs | KL | recovered |", "|---|---|---|---|---|---|"]
    for name in ("ioi", "gt", "gp"):
        path = RESULTS / f"{name}_default" / "evaluation.json"
        if not path.exists():
            continue
        ev = json.loads(path.read_text())
        heads = sum(sum(row) for row in json.loads((path.parent / "circuit.json").read_text())["masks"]["attn_head"])
        rows = [ev.get("train_evaluation"), ev.get("evaluation"), *(ev.get("heldout_evaluations") or {}).values()]
        for i, r in enumerate(r for r in rows if r):
            rec = "–" if r.get("recovered") is None else f"{100 * r['recovered']:.0f}%"
            lines.append(f"| {name if i == 0 else ''} | {heads if i == 0 else ''} | {r['split']} | {r['n_examples']} "
                         f"| {r['kl']:.3f} | {rec} |")
    curves = sorted(RESULTS.glob("faithfulness_curves_*.json"))
    if curves:
        lines += ["", "Faithfulness over circuit sizes on held-out pairs (λ sweeps; each task's setting above its "
                  "table), mgnp-lens beside coarse (heads and MLP "
                  "blocks), attribution-patching and random circuits at the same sizes "
                  "(`benchmarks/faithfulness_curves.py`; every circuit in [faithfulness.md](faithfulness.md)). "
                  "CPR: area under the recovered fraction over the fraction of parameters kept (higher is better); "
                  "CMD: area between it and 1 (lower is better). Read them with care: outside a method's measured "
                  "sizes its curve is the straight line to (0, 0) or (1, 1), and CPR counts a circuit that overshoots "
                  "the full model's metric (recovered > 1) as credit; `docs/heldout.md` (\"Faithfulness over sizes\") "
                  "compares the methods at equal size and in KL too.", ""]
    for path in curves:
        data = json.loads(path.read_text())
        lines += [f"**{data['task']}**: {curves_setting(data)}", "",
                  "| task | split | method | CPR | CMD | circuits |", "|---|---|---|---|---|---|"]
        lines += [f"| {data['task']} | {a['split']} | {a['method']} | {a['cpr']:.3f} | {a['cmd']:.3f} | {a['points']} |"
                  for a in data["areas"] if a["size"] == "param_fraction"]
        png = ROOT / "docs" / f"faithfulness_{data['task']}.png"
        lines += ["", f"![faithfulness curves, {data['task']}]({png.name})", ""] if png.exists() else [""]
    return lines + [""]


def render(payload: dict) -> str:
    parts = ["# Replication on SmolLM2-135M (embedded model)", "",
             f"Generated by `benchmarks/replicate.py` on {payload['when']} "
             f"({payload['machine'].get('cpus')} CPUs, torch {payload['machine'].get('torch')}); raw numbers in "
             "`benchmarks/results/replicate.json`. Regenerate with:", "",
             "```", *payload.get("commands", []),
             "python benchmarks/replicate.py --md-only   # re-render this page from the JSON",
             "```", "",
             "Protocol: " + ", ".join(f"{t['task']} {t['steps']} optimizer steps and {t['n_test']} test pairs"
                                      for t in payload["tasks"])
             + " per pruning run (the library default is 240 steps), paper λ, batch 32, " + _optimizer_words(payload)
             + ", cache corruption; within a "
             "task every circuit is evaluated on the same held-out test pairs. SmolLM2 has 30 layers × 9 heads (270 heads, 17,280 attention neurons, 46,080 MLP hidden, "
             "17,280 MLP output neurons); the paper's GPT-2 small has 12 × 12. The paper's numbers are a scale, "
             "not a target: different model, different step budget.", ""]
    missing = [t for t in ("ioi", "gp", "gt") if t not in {x["task"] for x in payload["tasks"]}]
    if missing:
        parts += [f"**Not run yet: {', '.join(missing)}.** Add them with "
                  f"`python benchmarks/replicate.py --tasks {','.join(missing)} --append`.", ""]
    for t in payload["tasks"]:
        name = t["task"]
        parts += [f"## {name.upper()}", "", "### Table 1 analogue (multi-granular circuit)", ""]
        t1 = [dict(r) for r in t["table1"]]
        if t.get("paper"):
            paper = {r["granularity"]: r for r in t["paper"]["table1"]}
            for r in t1:
                p = paper.get(r["granularity"])
                r["paper GPT-2 active"] = p["active"] if p else None
                r["paper GPT-2 sparsity %"] = p["sparsity_pct"] if p else None
        parts.append(_md_table(t1, list(t1[0].keys()), {"sparsity_pct": "{:.2f}", "paper GPT-2 sparsity %": "{:.1f}"}))
        parts += ["", "### Table 2 analogue and baselines (test split)", ""]
        cols = ["method", "attn_head", "attn_neuron", "mlp_block", "mlp_hidden", "mlp_output", "n_params",
                "base_metric", "circuit_metric", "kl"]
        parts.append(_md_table(t["rows"], cols))
        if t.get("paper"):
            p2 = t["paper"]["table2"]
            parts += ["", f"Paper, GPT-2 small: {p2['metric']} {p2['base_metric']:.3f} → {p2['circuit_metric']:.3f}, "
                          f"KL {p2['kl']:.3f}."]
            if t["paper"].get("table3"):
                parts.append("Paper Table 3 (GPT-2 small, same sparsity): " + "; ".join(
                    f"{k}: {v['heads']} heads, KL {v['kl']}" for k, v in t["paper"]["table3"].items()) + ".")
        parts += ["", "### Judgement", ""] + verdict(t) + [""]
    for st in payload.get("stability", []):
        parts += render_stability(st)
    parts += render_heldout()
    parts += ["## Caveats", "",
              "- One seed per pruning run in the task tables"
              + ("; the seed-stability section shows how much circuits move between seeds." if payload.get("stability")
                 else "; `mgnp_lens.sweep.stability` measures how much circuits move between seeds."),
              "- Faithfulness is KL(full ‖ circuit) at the answer position on held-out pairs; the task metric is "
              "shown beside it.",
              "- Attribution patching scores are first-order (gradient × activation difference) at the full model, "
              "so they can miss nodes that matter only together.", ""]
    return "\n".join(parts)


def main() -> None:
    ap = parser(__doc__, "replicate", device=True)
    ap.add_argument("--tasks", default="ioi,gp,gt")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--n-test", type=int, default=128)
    ap.add_argument("--md", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--md-only", action="store_true", help="only re-render --md from --out")
    ap.add_argument("--append", action="store_true", help="add/replace these tasks in an existing --out JSON")
    ap.add_argument("--stability", metavar="TASK", help="instead of the task tables, repeat TASK's multi-granular "
                    "run with --seeds and record the overlap (added to the existing --out JSON)")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    if args.stability:
        payload = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {"tasks": []}
        seeds = [int(s) for s in args.seeds.split(",")]
        print(f"== stability {args.stability} seeds {seeds}", flush=True)
        st = run_stability(args.stability, seeds, args.steps, args.n_test, args.device)
        payload["stability"] = [s for s in payload.get("stability", []) if s["task"] != args.stability] + [st]
        payload.setdefault("commands", []).append("python benchmarks/replicate.py " + " ".join(sys.argv[1:]))
        write("replicate", {k: v for k, v in payload.items() if k not in ("benchmark", "when", "machine")}, args.out)
        args.md_only = True
    if not args.md_only:
        old = json.loads(Path(args.out).read_text()) if args.append and Path(args.out).exists() else {}
        tasks = list(old.get("tasks", []))
        commands = list(old.get("commands", []))
        commands.append("python benchmarks/replicate.py " + " ".join(sys.argv[1:]))
        for name in args.tasks.split(","):
            print(f"== {name}", flush=True)
            result = run_task(name, args.steps, args.n_test, args.device)
            result.update(steps=args.steps, n_test=args.n_test)
            tasks = [t for t in tasks if t["task"] != name] + [result]
            # write after every task: a long run never loses finished work
            write("replicate", {"tasks": tasks, "commands": commands,
                                **({"stability": old["stability"]} if "stability" in old else {})}, args.out)
    payload = json.loads(Path(args.out).read_text())
    payload.setdefault("machine", machine())
    Path(args.md).parent.mkdir(parents=True, exist_ok=True)
    Path(args.md).write_text(render(payload))
    print(f"wrote {args.md}")


if __name__ == "__main__":
    main()
