"""Pre-cast weights: a discovery step under bfloat16 autocast with autocast casting the float32 weights
on every pass vs ``PruningConfig(precast_weights=True)`` (the default: cast once per run).

    python benchmarks/precast_weights.py [--models default,gpt2-small] [--rounds 6] [--micro-batch N]
                                         [--device cpu] [--out results.json]

Each round times a discovery step (cache mode, batch 32, bfloat16 autocast, median of 3 steps after
one warm-up) first with ``precast_weights=False``, then with ``True``; the speed-up is the median of
the per-round ratios (and the ratio of each side's fastest round). Both settings must train
identically: the runs' KL histories and final gates are compared bit for bit. ``--micro-batch``
runs each step in micro-batches (autocast then casts every weight once per micro-batch).
"""

from __future__ import annotations

import statistics

from harness import ab_speedup, parser, print_table, write
from hook_overhead import setup


def measure(name: str, device: str, rounds: int, micro_batch: int | None) -> dict:
    import torch

    import mgnp_lens as mg

    model, task = setup(name, device)
    kw = dict(steps=4, batch_size=32, corruption="cache", autocast="bfloat16", micro_batch_size=micro_batch,
              progress=False, eval_split=None)
    times = {False: [], True: []}
    same = True
    for _ in range(rounds):
        runs = {}
        for precast in (False, True):
            runs[precast] = mg.discover(model, task, precast_weights=precast, **kw)
            times[precast].append(statistics.median(runs[precast].history["seconds"].tolist()[1:]))
        same &= runs[False].history["kl"].tolist() == runs[True].history["kl"].tolist() and all(
            torch.equal(runs[False].gates.log_alpha[g], runs[True].gates.log_alpha[g]) for g in runs[True].gates.log_alpha)
    up = ab_speedup(times[False], times[True])
    return {"model": name, "batch": 32, "micro_batch": micro_batch,
            "seq": int(task.split("train").buckets[0].clean.shape[1]),
            "step_cast_every_pass_s": statistics.median(times[False]),
            "step_precast_s": statistics.median(times[True]), "step_speedup": up["median"],
            "step_speedup_of_best_rounds": up["best_rounds"], "identical_training": same,
            "rounds": {"cast_every_pass": times[False], "precast": times[True]}}


def main() -> None:
    ap = parser(__doc__, "precast_weights", device=True)
    ap.add_argument("--models", default="default,gpt2-small")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--micro-batch", type=int, default=None)
    args = ap.parse_args()
    rows = [measure(m, args.device, args.rounds, args.micro_batch) for m in args.models.split(",")]
    print_table(rows, ["model", "micro_batch", "step_cast_every_pass_s", "step_precast_s", "step_speedup",
                       "step_speedup_of_best_rounds", "identical_training"])
    write("precast_weights", {"results": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
