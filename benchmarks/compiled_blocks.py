"""Compiled blocks vs eager blocks: discovery step time, the one-off compile, and when it pays back.

    python benchmarks/compiled_blocks.py [--models default,gpt2-small] [--rounds 3] [--steps 12]
                                 [--set KEY=VALUE ...] [--tag NAME] [--device cpu] [--out results.json]

Each round runs two fresh processes, eager (``compile=False``) first, then compiled
(``compile=True``: :func:`mgnp_lens.speedups.compiled_blocks`), each ``--steps`` discovery steps with
the defaults otherwise (cache mode, batch 32, autocast "auto"). Models: ``default`` (SmolLM2 on the
``IOI`` default, all 30 templates, 200 training pairs: batches of several sizes and lengths, the
end-to-end benchmark's task) and ``gpt2-small`` (GPT-2 small's shape, random weights, 32 × 32).

Reported: the steady step time of each side (median after the first two steps), the speed-up
(median of the per-round ratios, and the ratio of each side's fastest round), and the compile cost
(the compiled run's first step minus the eager run's), with a cold TorchInductor cache in round 1
(a fresh ``TORCHINDUCTOR_CACHE_DIR``) and the warm one after; the break-even is the compile cost
divided by the time saved per step. The sampled-KL histories of the two sides are compared too.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
from harness import ab_speedup, child_main, in_subprocess, print_table, round_parser, settings_of, write


def child(payload: dict) -> dict:
    """In a fresh process: build the model and task, run the steps, return their times and KLs."""
    sys.path.insert(0, str(HERE.parent))
    import mgnp_lens as mg

    if payload["model"] == "default":
        model = mg.load_model(device=payload["device"])
        task = mg.tasks.IOI(model, n_train=200, n_validation=1, n_test=1)
    else:
        from hook_overhead import setup

        model, task = setup(payload["model"], payload["device"])
    r = mg.discover(model, task, steps=payload["steps"], batch_size=32, progress=False, eval_split=None,
                    compile=payload["compile"], **payload["overrides"])
    secs = r.history["seconds"].tolist()
    return {"first_s": secs[0], "step_s": statistics.median(secs[2:]), "all_s": secs,
            "kl": r.history["kl"].tolist(), "compiled": r.meta["compiled_blocks"]}


def measure(model: str, rounds: int, steps: int, overrides: dict, device: str) -> dict:
    runs: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache_dir:  # cold in round 1, warm after
        for _ in range(rounds):
            for compiled in (False, True):
                payload = {"model": model, "steps": steps, "compile": compiled, "overrides": overrides,
                           "device": device}
                runs[compiled].append(in_subprocess(__file__, payload, env={"TORCHINDUCTOR_CACHE_DIR": cache_dir}))
    if not all(r["compiled"] for r in runs[True]):
        raise RuntimeError("a compile=True run reports eager blocks")
    eager_s, comp_s = [r["step_s"] for r in runs[False]], [r["step_s"] for r in runs[True]]
    compile_cost = [c["first_s"] - e["first_s"] for e, c in zip(runs[False], runs[True])]
    up = ab_speedup(eager_s, comp_s)
    saved = statistics.median(eager_s) - statistics.median(comp_s)
    warm = statistics.median(compile_cost[1:]) if rounds > 1 else None
    diff = max(abs(a - b) for a, b in zip(runs[False][-1]["kl"], runs[True][-1]["kl"]))
    return {"model": model, "step_eager_s": statistics.median(eager_s), "step_compiled_s": statistics.median(comp_s),
            "speedup": up["median"], "speedup_of_best_rounds": up["best_rounds"],
            "compile_cold_s": compile_cost[0], "compile_warm_s": warm,
            "break_even_steps_cold": compile_cost[0] / saved if saved > 0 else None,
            "break_even_steps_warm": warm / saved if saved > 0 and warm is not None else None,
            "kl_history_max_abs_diff": diff, "rounds": {"eager": runs[False], "compiled": runs[True]}}


def main() -> None:
    if child_main(child):
        return
    ap = round_parser(__doc__, "compiled_blocks", rounds=3, steps=12)
    args = ap.parse_args()
    if args.steps < 4:
        raise SystemExit("--steps must be at least 4 (the steady time is the median after the first two steps)")

    overrides = settings_of(args)
    rows = [measure(m, args.rounds, args.steps, overrides, args.device) for m in args.models.split(",")]
    print_table(rows, ["model", "step_eager_s", "step_compiled_s", "speedup", "speedup_of_best_rounds",
                       "compile_cold_s", "compile_warm_s", "break_even_steps_cold", "break_even_steps_warm",
                       "kl_history_max_abs_diff"])
    write("compiled_blocks", {"overrides": overrides, "results": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
