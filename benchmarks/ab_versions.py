"""Before/after of a code change: discovery steps of two checkouts of mgnp-lens, in alternating rounds.

    python benchmarks/ab_versions.py --before PATH [--after .] [--models default,gpt2-small] [--rounds 5]
                                     [--steps 4] [--set KEY=VALUE ...] [--tag NAME] [--device cpu] [--out results.json]

``--before`` is another checkout of the repository (e.g. ``git worktree add /tmp/before HEAD~1``).
Each round runs one fresh process per checkout, ``before`` first: it builds the model and task
(``hook_overhead.setup``: SmolLM2 IOI on the guide's template, or GPT-2 small's shape with random
weights), runs ``--steps`` discovery steps with the defaults (cache mode, batch 32, autocast "auto";
``--set`` overrides any field) and reports the median step time after the first step. The
speed-up is the median of the per-round ratios, and the ratio of each side's fastest round. The
sampled-KL histories of the two versions are compared as well (equal, or their largest difference).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
from harness import ab_speedup, child_main, in_subprocess, print_table, round_parser, settings_of, write


def child(payload: dict) -> dict:
    """In a fresh process, with ``payload["repo"]`` first on the path: time discovery steps."""
    sys.path.insert(0, payload["repo"])
    import mgnp_lens as mg
    from hook_overhead import setup

    if not mg.__file__.startswith(str(Path(payload["repo"]).resolve())):
        raise RuntimeError(f"imported {mg.__file__}, not the checkout {payload['repo']}")
    model, task = setup(payload["model"], payload["device"])
    r = mg.discover(model, task, steps=payload["steps"], batch_size=32, progress=False, eval_split=None,
                    **payload["overrides"])
    secs = r.history["seconds"].tolist()
    return {"step_s": statistics.median(secs[1:]), "all_s": secs, "kl": r.history["kl"].tolist()}


def measure(model: str, before: str, after: str, rounds: int, steps: int, overrides: dict, device: str) -> dict:
    times: dict[str, list[float]] = {"before": [], "after": []}
    kls: dict[str, list[float]] = {}
    for _ in range(rounds):
        for side, repo in (("before", before), ("after", after)):
            out = in_subprocess(__file__, {"repo": repo, "model": model, "steps": steps, "overrides": overrides, "device": device})
            times[side].append(out["step_s"])
            kls[side] = out["kl"]
    up = ab_speedup(times["before"], times["after"])
    diff = max(abs(a - b) for a, b in zip(kls["before"], kls["after"]))
    return {"model": model, "step_before_s": statistics.median(times["before"]),
            "step_after_s": statistics.median(times["after"]), "speedup": up["median"],
            "speedup_of_best_rounds": up["best_rounds"], "kl_history_max_abs_diff": diff,
            "kl_before": kls["before"], "kl_after": kls["after"], "rounds": times}


def main() -> None:
    if child_main(child):
        return
    ap = round_parser(__doc__, "ab_versions", rounds=5, steps=4)
    ap.add_argument("--before", required=True, help="path of the 'before' checkout")
    ap.add_argument("--after", default=str(HERE.parent), help="path of the 'after' checkout (default: this one)")
    args = ap.parse_args()

    overrides = settings_of(args)
    before, after = str(Path(args.before).resolve()), str(Path(args.after).resolve())
    for path in (before, after):
        if not (Path(path) / "mgnp_lens" / "__init__.py").exists():
            raise SystemExit(f"{path} is not an mgnp-lens checkout (no mgnp_lens/__init__.py)")
    rows = [measure(m, before, after, args.rounds, args.steps, overrides, args.device)
            for m in args.models.split(",")]
    print_table(rows, ["model", "step_before_s", "step_after_s", "speedup", "speedup_of_best_rounds",
                       "kl_history_max_abs_diff"])
    write("ab_versions", {"before": before, "after": after, "overrides": overrides, "results": rows},
          args.out, args.tag)


if __name__ == "__main__":
    main()
