"""Circuits of several sizes from one run, beside attribution patching (first order and integrated gradients) and
random circuits at the same per-granularity counts, all scored on the same held-out pairs.

    mgnp discover --task ioi --n-test 512 --seed 1 --out runs/ioi_seed1     # a default run (as make default-runs)
    python benchmarks/node_scores.py --run runs/ioi_seed1 [--task ioi] [--factors 0.25 0.5 1 2 4]
                                     [--ig-steps 5] [--splits test test_ood] [--max-examples 512] [--tag T]

``mgnp_one_run`` are ``methods.circuits_from_scores(run, factors)``: the run's per-granularity counts times each
factor, filled with the nodes its gates score highest (factor 1 is the run's own circuit). ``attribution`` and
``attribution_ig`` keep the nodes that node attribution patching scores highest (first order; integrated gradients
on ``--ig-steps`` points, on 256 training pairs) at the same counts; ``random`` random nodes. Writes
``results/node_scores_TASK.json``: every circuit's size, KL and recovered fraction on each split, each method's
CPR/CMD, the seconds each scoring took, and the rank correlation of the two attribution scores per granularity.
"""

from __future__ import annotations

import time

from harness import parser, write


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two score tensors of one shape."""
    import torch

    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    ap = parser(__doc__, "node_scores", device=True)
    ap.add_argument("--run", required=True, help="a finished run directory (mgnp discover --out DIR)")
    ap.add_argument("--task", default="ioi", choices=["ioi", "gt", "gp"])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--splits", nargs="+", default=["test", "test_ood"])
    ap.add_argument("--max-examples", type=int, default=512)
    args = ap.parse_args()

    import mgnp_lens as mg
    from mgnp_lens import baselines, faithfulness as ff, methods

    run = mg.DiscoveryResult.load(args.run)
    model = mg.load_model(args.model, device=args.device)
    task = mg.tasks.get_task(args.task, model, n_test=args.max_examples, n_heldout=args.max_examples)  # as the CLI
    one_run = methods.circuits_from_scores(run, args.factors)
    seconds, scores = {}, {}
    for name, kw in [("attribution", {}), ("attribution_ig", {"method": "ig", "steps": args.ig_steps})]:
        t0 = time.perf_counter()
        scores[name] = baselines.attribution_scores(model, task, **kw)
        seconds[name] = time.perf_counter() - t0
    circuits = {"mgnp_one_run": one_run,
                **{name: [baselines.select_nodes(c.dims, s, c.counts()) for c in one_run]
                   for name, s in scores.items()},
                "random": [baselines.random_circuit(c.dims, c, seed=i) for i, c in enumerate(one_run)]}
    t0 = time.perf_counter()
    table = ff.curve(model, task, circuits, args.splits, max_examples=args.max_examples)
    seconds["evaluation"] = time.perf_counter() - t0
    table["factor"] = [args.factors[p] for p in table["point"]]
    both = [ff.areas(table, s) for s in ff.SIZE_AXES]
    correlation = {g: rank_correlation(scores["attribution"][g], scores["attribution_ig"][g])
                   for g in scores["attribution"] if scores["attribution"][g].numel() > 1}  # not the one embedding
    print(table[["method", "split", "factor", "param_fraction", "kl", "recovered"]].to_string(index=False))
    print("first order vs IG, Spearman:", {g: round(v, 3) for g, v in correlation.items()})
    write(f"node_scores_{args.task}", {
        "task": args.task, "run": args.run, "run_seed": run.config.seed, "factors": args.factors,
        "ig_steps": args.ig_steps, "splits": args.splits, "max_examples": args.max_examples, "seconds": seconds,
        "attribution_rank_correlation": correlation,
        "areas": [row for a in both for row in a.to_dict(orient="records")],
        "curve": table.to_dict(orient="records")}, args.out, args.tag)


if __name__ == "__main__":
    main()
