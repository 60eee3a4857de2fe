"""Scoring several circuits on the same pairs: the corrupted prompts run once per batch (what
``evaluate_many`` does) against once per circuit beside its clean prompts (``share_corrupted=False``, the way
before 2026-12-08).

    python benchmarks/evaluate_many.py [--circuits 5] [--pairs 128] [--rounds 3] [--device cpu] [--out PATH]

On the embedded SmolLM2-135M, IOI ``test`` pairs, ``--circuits`` random circuits with the committed default run's
per-granularity counts scaled by 0.5-2 (as a faithfulness curve scores them). The two ways alternate over
``--rounds`` rounds (median of the per-round ratios). Each circuit's KL under both is recorded: they compute the
same thing, up to float rounding.
"""

from __future__ import annotations

import time

from harness import ab_speedup, parser, RESULTS, write


def main() -> None:
    ap = parser(__doc__, "evaluate_many", device=True)
    ap.add_argument("--circuits", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import numpy as np

    import mgnp_lens as mg
    from mgnp_lens.baselines import random_circuit
    from mgnp_lens.evaluate import evaluate_many
    from mgnp_lens.methods import scaled_counts

    model = mg.load_model(None, device=args.device)
    task = mg.tasks.IOI(model, n_test=args.pairs)
    found = mg.Circuit.load(RESULTS / "ioi_default" / "circuit.json")
    circuits = [random_circuit(model, scaled_counts(found, f), seed=i)
                for i, f in enumerate(np.geomspace(0.5, 2.0, args.circuits))]
    seconds = {"shared": [], "per_circuit": []}
    kls = {}
    for _ in range(args.rounds):
        for side in ("per_circuit", "shared"):
            t0 = time.perf_counter()
            evs = evaluate_many(model, task, circuits, "test", share_corrupted=side == "shared")
            seconds[side].append(time.perf_counter() - t0)
            kls[side] = [e.kl for e in evs]
            print(side, f"{seconds[side][-1]:.1f} s", flush=True)
    speedup = ab_speedup(seconds["per_circuit"], seconds["shared"])
    diff = max(abs(a - b) for a, b in zip(kls["shared"], kls["per_circuit"]))
    print(f"speed-up {speedup['median']:.2f}x, largest KL difference {diff:.2e}")
    write("evaluate_many", {"circuits": args.circuits, "pairs": args.pairs, "rounds": args.rounds,
                            "seconds": seconds, "speedup": speedup, "kl": kls, "max_kl_difference": diff},
          args.out, args.tag)


if __name__ == "__main__":
    main()
