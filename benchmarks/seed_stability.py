"""Seed agreement of the default circuit on the embedded model: the CLI's defaults (``mgnp discover --task T
--n-test 512``) for each seed, then the pairwise Jaccard overlap of what the runs keep, per granularity, beside their
held-out KLs (the issue "Gates that converge" asks for heads Jaccard >= 0.85 over seeds 0-2 on IOI).

    python benchmarks/seed_stability.py [--task ioi] [--seeds 0 1 2] [--runs DIR ...] [--tag T]

``--runs`` reads finished run directories (one per seed, in ``--seeds`` order) instead of running them; each run
otherwise goes to ``runs/seed_stability/TASK_seedS``. With more than three seeds it also gives the heads Jaccard of
every three of them (how much a three-seed figure moves with the seeds). Writes ``results/seed_stability_TASK.json``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from harness import parser, write

GRANULARITIES = ("attn_head", "mlp_block", "attn_neuron", "mlp_hidden", "mlp_output")


def run_dir(task: str, seed: int, out: Path) -> Path:
    """One default run of ``task`` with ``seed`` (the CLI, as ``make default-runs`` does), into ``out``."""
    cmd = [str(Path(sys.executable).parent / "mgnp"), "discover", "--task", task, "--n-test", "512", "--quiet",
           "--overwrite", "--seed", str(seed), "--out", str(out)]
    subprocess.run(cmd, check=True)
    return out


def summary(directory: Path) -> dict:
    """A run's seed, kept counts, parameters and KL (with its standard error) on every evaluated split."""
    import mgnp_lens as mg

    circuit = mg.Circuit.load(directory / "circuit.json")
    ev = json.loads((directory / "evaluation.json").read_text())
    splits = {"test": ev["evaluation"], **ev.get("heldout_evaluations", {})}
    seed = json.loads((directory / "config.json").read_text())["config"]["seed"]
    return {"dir": str(directory), "seed": seed, "counts": circuit.counts(), "n_params": circuit.n_params(),
            "kl": {s: e["kl"] for s, e in splits.items()}, "kl_se": {s: e.get("kl_se") for s, e in splits.items()},
            "seconds": ev.get("seconds")}


def jaccard(a, b, granularity: str) -> float:
    """|A ∩ B| / |A ∪ B| of the units two circuits keep at ``granularity``."""
    x, y = a.masks[granularity].bool(), b.masks[granularity].bool()
    union = int((x | y).sum())
    return int((x & y).sum()) / union if union else 1.0


def main() -> None:
    import mgnp_lens as mg

    ap = parser(__doc__, "seed_stability")
    ap.add_argument("--task", default="ioi", choices=["ioi", "gt", "gp"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", nargs="+", default=None, help="finished run directories, one per seed")
    args = ap.parse_args()
    if args.runs and len(args.runs) != len(args.seeds):
        raise SystemExit(f"--runs gives {len(args.runs)} directories for {len(args.seeds)} seeds")
    dirs = [Path(d) for d in args.runs] if args.runs else [
        run_dir(args.task, s, Path("runs/seed_stability") / f"{args.task}_seed{s}") for s in args.seeds]
    runs = [summary(d) for d in dirs]
    for want, run in zip(args.seeds, runs):
        if run["seed"] != want:
            raise SystemExit(f"{run['dir']} was run with seed {run['seed']}, not {want}")
    circuits = [mg.Circuit.load(d / "circuit.json") for d in dirs]
    pairs = [{"seeds": [runs[i]["seed"], runs[j]["seed"]],
              **{g: jaccard(circuits[i], circuits[j], g) for g in GRANULARITIES}}
             for i, j in itertools.combinations(range(len(runs)), 2)]
    mean = {g: sum(p[g] for p in pairs) / len(pairs) if pairs else None for g in GRANULARITIES}  # one run: none
    triples = three_seed_means(pairs) if len(runs) > 3 else None
    print(json.dumps({"mean_jaccard": mean, "pairs": pairs, "three_seed_head_means": triples}, indent=1))
    write(f"seed_stability_{args.task}", {"task": args.task, "runs": runs, "pairs": pairs, "mean_jaccard": mean,
                                          "three_seed_head_means": triples, "goal": {"attn_head": 0.85}},
          args.out, args.tag)


def three_seed_means(pairs: list[dict]) -> dict:
    """The heads Jaccard a three-seed check would report, for every three of the seeds: how far one such figure
    (the goal's) moves with the choice of seeds. ``pairs``: the pairwise rows (``seeds``, ``attn_head``)."""
    by_pair = {tuple(sorted(p["seeds"])): p["attn_head"] for p in pairs}
    seeds = sorted({s for p in by_pair for s in p})
    means = {",".join(map(str, t)): sum(by_pair[p] for p in itertools.combinations(t, 2)) / 3
             for t in itertools.combinations(seeds, 3)}
    return {"min": min(means.values()), "max": max(means.values()),
            "at_least_goal": sum(v >= 0.85 for v in means.values()), "of": len(means), "means": means}


if __name__ == "__main__":
    main()
