"""End to end: IOI discovery on the embedded default model with the default protocol.

    python benchmarks/end_to_end.py --demo [--against-paper ROUNDS] [--run-dir runs/e2e_demo]
    python benchmarks/end_to_end.py --demo --against-commit REV [--rounds 2]
    python benchmarks/end_to_end.py --three-step
    python benchmarks/end_to_end.py [--templates mixed|guide] [--set KEY=VALUE ...] [--run-dir runs/e2e]
                                    [--tag NAME] [--device cpu] [--n-devices 1] [--out results.json]

``--demo`` times exactly what ``make demo`` runs (``mgnp discover --task ioi --n-test 512``, all splits, edges,
views, report) in a fresh process, and writes ``results/end_to_end_demo.json``: the wall time, each phase's
seconds from the run's ``timings.json``, the share outside training, and the figures with their standard errors.
``--demo --against-paper N`` alternates it N times with the same command under ``--paper`` and records the ratio
of the wall times (the last default round's figures are the result). ``--demo --against-commit REV`` alternates
it with the same command run by the package as it was at commit ``REV`` (``git archive`` of ``mgnp_lens`` and
``data`` into a temporary directory, imported ahead of the installed one, same environment) and writes
``results/end_to_end_demo_vs_SHA.json`` (the commit's first 8 hex digits). ``--three-step`` does the same for ``mgnp
discover --task gp --steps 3 --batch-size 8 --seed 0`` (a run that is all evaluation, edges, views and report)
and writes ``results/end_to_end_three_step.json``.
Without it:

Wall time of the whole job (task build, precompute, the optimisation loop, evaluation on the
training pairs and on 512 test pairs), steps, the hard circuit's KL, and the first step at which
the run met the quality bar while training: expected sparsity ≥ 85% on heads, attention neurons
and MLP hidden neurons with the sampled KL (mean of the last 10 steps) ≤ 0.15; and the first steps
at which each half of the bar (the KL alone, the sparsity alone) was met.
The run directory (with report.html) is kept.
Targets: ≤ 3 minutes on the 2-core machine; ≥ 85% sparsity on heads, attention neurons and MLP
hidden; hard-circuit KL ≤ 0.15 on the training pairs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harness import ab_speedup, parser, settings_of, write
from calibrate_ioi import GUIDE, trace

TARGET = {"seconds": 180, "sparsity_pct": 85.0, "train_kl": 0.15}


def steps_to_bar(history, dims, kl: bool = True, sparsity: bool = True) -> int | None:
    """First training step meeting the bar: sampled KL (mean of the last 10 steps) and/or expected sparsity."""
    ok = history["step"].notna()  # every step, until a condition below rules it out
    if kl:
        ok &= history["kl"].rolling(10, min_periods=10).mean() <= TARGET["train_kl"]
    if sparsity:
        for g in ("attn_head", "attn_neuron", "mlp_hidden"):
            ok &= history[f"active_{g}"] <= (1 - TARGET["sparsity_pct"] / 100) * dims.count(g)
    hits = history["step"][ok]
    return int(hits.iloc[0]) if len(hits) else None


#: The timed commands (``mgnp`` arguments besides ``--out``), their result names and targets: ``make demo``'s,
#: and the issue's three-step run (all evaluation, edges, views and report; it shows its progress bars).
COMMANDS = {"demo": (["discover", "--task", "ioi", "--n-test", "512", "--quiet"], "end_to_end_demo",
                     {"seconds_wall": 120, "share_outside_training": 0.25}),
            "three_step": (["discover", "--task", "gp", "--steps", "3", "--batch-size", "8", "--seed", "0"],
                           "end_to_end_three_step", {"seconds_wall": 60})}


def _snapshot(rev: str) -> tuple[list[str], str, Path]:
    """The package and its data as they were at commit ``rev``, in a temporary directory: the command prefix
    that runs that version's ``mgnp`` with this environment's packages, the full commit name and the directory."""
    import subprocess
    import sysconfig
    import tempfile

    root = Path(__file__).resolve().parent.parent
    sha = subprocess.run(["git", "rev-parse", rev], cwd=root, check=True, capture_output=True, text=True).stdout.strip()
    snap = Path(tempfile.mkdtemp(prefix=f"mgnp_{sha[:8]}_"))
    archive = subprocess.run(["git", "archive", sha, "mgnp_lens", "data"], cwd=root, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(snap)], input=archive, check=True)
    # -S skips the site hooks, so the editable install of today's package cannot shadow the snapshot; checked
    boot = (f"import sys; sys.argv[0] = 'mgnp'; sys.path[:0] = [{str(snap)!r}, {sysconfig.get_paths()['purelib']!r}]; "
            f"import mgnp_lens; mgnp_lens.__file__.startswith({str(snap)!r}) or sys.exit('imported ' + mgnp_lens.__file__); "
            "from mgnp_lens.cli import main; sys.exit(main())")
    return [sys.executable, "-S", "-c", boot], sha, snap


def _one_timed_run(args: list[str], run: Path, prefix: list[str] | None = None) -> dict:
    """``mgnp ARGS --out RUN`` in a fresh process: the wall time, each phase's seconds and every split's figures
    (``prefix`` replaces the installed ``mgnp``; a version that wrote no ``timings.json`` gives no phases)."""
    import json
    import shutil
    import subprocess

    shutil.rmtree(run, ignore_errors=True)
    command = [*(prefix or [str(Path(sys.executable).parent / "mgnp")]), *args, "--out", str(run)]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ev = json.loads((run / "evaluation.json").read_text())
    splits = [ev["train_evaluation"], ev["evaluation"], *ev["heldout_evaluations"].values()]
    figures = {"command": command[-len(args) - 2:], "seconds_wall": wall, "steps": ev["steps_completed"],
               "splits": {e["split"]: {k: e.get(k) for k in ("n_examples", "kl", "kl_se", "circuit_metric",
                                                             "circuit_metric_se", "recovered")} for e in splits}}
    if not (run / "timings.json").exists():
        return figures
    phases = json.loads((run / "timings.json").read_text())["phases"]
    outside = sum(v for k, v in phases.items() if k != "training")
    return {**figures, "phases": phases, "seconds_outside_training": outside,
            "share_outside_training": outside / sum(phases.values())}


def timed_command(which: str, run_dir: str, out: str | None, against_paper: int = 0) -> None:
    """One of :data:`COMMANDS`, timed from outside in a fresh process, with its phase breakdown; with
    ``against_paper`` rounds, alternately with the same command under ``--paper`` (the defaults until 2026-12-07),
    and the ratio of the two wall times (median of the rounds' ratios, and of the fastest rounds)."""
    import json

    args, name, target = COMMANDS[which]
    run = Path(run_dir)
    walls: dict[str, list[float]] = {"default": [], "paper": []}
    for _ in range(max(1, against_paper)):
        r = _one_timed_run(args, run)
        walls["default"].append(r["seconds_wall"])
        if against_paper:
            walls["paper"].append(_one_timed_run([*args, "--paper"], run.with_name(run.name + "_paper"))["seconds_wall"])
    print(json.dumps({k: r[k] for k in ("seconds_wall", "phases", "share_outside_training")}, indent=1))
    extra = {"against_paper": {"seconds_wall": walls, "default_over_paper": ab_speedup(walls["default"],
                                                                                      walls["paper"])}} \
        if against_paper else {}
    write(name, {"target": target, "result": r, **extra}, out)


def against_commit(which: str, run_dir: str, out: str | None, rev: str, rounds: int) -> None:
    """One of :data:`COMMANDS` alternated ``rounds`` times with the same command run by the package at commit
    ``rev``: both sides' wall times and phases, and the ratio (median of the rounds' ratios, and of the fastest
    rounds; above 1 means today's code is faster)."""
    import shutil

    args, name, target = COMMANDS[which]
    prefix, sha, snap = _snapshot(rev)
    run = Path(run_dir)
    sides: dict[str, list[dict]] = {"now": [], sha[:8]: []}
    try:
        for _ in range(rounds):
            sides["now"].append(_one_timed_run(args, run))
            sides[sha[:8]].append(_one_timed_run(args, run.with_name(f"{run.name}_{sha[:8]}"), prefix))
    finally:
        shutil.rmtree(snap, ignore_errors=True)
    walls = {k: [r["seconds_wall"] for r in v] for k, v in sides.items()}
    print({k: [round(w) for w in v] for k, v in walls.items()})
    write(f"{name}_vs_{sha[:8]}", {"target": target, "against_commit": sha, "rounds": sides, "seconds_wall": walls,
                                   "then_over_now": ab_speedup(walls[sha[:8]], walls["now"])}, out)


def main() -> None:
    ap = parser(__doc__, "end_to_end", device=True, settings=True)
    ap.add_argument("--demo", action="store_true", help="time make demo's command, phase by phase")
    ap.add_argument("--three-step", action="store_true", help="time a three-step Gendered Pronouns run, phase by phase")
    ap.add_argument("--against-paper", type=int, default=0, metavar="ROUNDS",
                    help="with --demo: alternate ROUNDS times with the same command under --paper, and give the ratio")
    ap.add_argument("--against-commit", metavar="REV",
                    help="with --demo: alternate with the same command run by the package as it was at commit REV")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each side for --against-commit")
    ap.add_argument("--templates", choices=["mixed", "guide"], default="mixed")
    ap.add_argument("--run-dir", default="runs/end_to_end")
    ap.add_argument("--n-devices", type=int, default=1, help="spread the model over N CUDA devices")
    args = ap.parse_args()
    if args.demo or args.three_step:
        which = "demo" if args.demo else "three_step"
        if args.against_commit:
            return against_commit(which, f"runs/end_to_end_{which}_ab", args.out, args.against_commit, args.rounds)
        return timed_command(which, args.run_dir if args.run_dir != "runs/end_to_end" else f"runs/end_to_end_{which}",
                             args.out, args.against_paper)
    import mgnp_lens as mg

    t0 = time.perf_counter()
    model = mg.load_model(device=args.device, n_devices=args.n_devices)
    t_model = time.perf_counter() - t0
    task = mg.tasks.IOI(model, n_test=512, templates="mixed" if args.templates == "mixed" else [GUIDE])
    t_task = time.perf_counter() - t0 - t_model
    overrides = {"eval_max_examples": 512, **settings_of(args)}
    result = mg.discover(model, task, **overrides)
    t_total = time.perf_counter() - t0
    report = mg.write_report(result, args.run_dir)
    c, dims = result.circuit, result.circuit.dims
    sparsity = {g: 100 * (1 - c.count(g) / dims.count(g)) for g in mg.GRANULARITIES}
    r = {"templates": args.templates, "overrides": overrides, "n_devices": args.n_devices, "seconds_total": t_total, "seconds_model_load": t_model,
         "seconds_loop": result.seconds, "s_per_step": float(result.history["seconds"].median()),
         # where the rest goes: task building, the precompute before the loop (with the little bookkeeping
         # between timed steps), the two evaluations after it
         "seconds_task_build": t_task, "seconds_precompute": result.seconds - float(result.history["seconds"].sum()),
         "seconds_evaluation": t_total - t_model - t_task - result.seconds,
         "steps": result.steps_completed, "counts": c.counts(), "sparsity_pct": sparsity,
         "train_kl": result.train_evaluation.kl, "test_kl": result.evaluation.kl,
         "test_metric": [result.evaluation.base_metric, result.evaluation.circuit_metric],
         "sampled_kl_last10": float(result.history["kl"].tail(10).mean()),
         "first_step_meeting_bar_in_training": steps_to_bar(result.history, dims),
         "first_step_kl_target_in_training": steps_to_bar(result.history, dims, sparsity=False),
         "first_step_sparsity_bar_in_training": steps_to_bar(result.history, dims, kl=False),
         "trace": trace(result.history, every=20), "report": str(report)}
    r["meets"] = {"time": t_total <= TARGET["seconds"],
                  "sparsity": all(sparsity[g] >= TARGET["sparsity_pct"] for g in ("attn_head", "attn_neuron",
                                                                                   "mlp_hidden")),
                  "train_kl": r["train_kl"] <= TARGET["train_kl"]}
    for k in ("seconds_total", "seconds_model_load", "seconds_task_build", "seconds_precompute", "seconds_loop",
              "seconds_evaluation", "s_per_step", "steps", "train_kl", "test_kl",
              "first_step_meeting_bar_in_training", "first_step_kl_target_in_training",
              "first_step_sparsity_bar_in_training"):
        print(f"{k:>36}: {r[k]}")
    print(f"{'sparsity %':>36}: " + ", ".join(f"{g} {sparsity[g]:.1f}" for g in ("attn_head", "attn_neuron",
                                                                                 "mlp_hidden", "mlp_output")))
    print(f"{'meets':>36}: {r['meets']}")
    tag = f"{args.templates}_{args.tag.lstrip('_')}" if args.tag else None
    write("end_to_end", {"templates": args.templates, "target": TARGET, "result": r}, args.out, tag)


if __name__ == "__main__":
    main()
