"""The training pairs' precompute in float32 against the default under autocast: clean passes in float32 (the KL
targets), corrupted passes (the cached activations the training passes mix in) in bfloat16 with precast weights.

    python benchmarks/precompute_precision.py [--pairs 256] [--rounds 3] [--run benchmarks/results/ioi_default]

On the embedded model's IOI training pairs (seed 0), each round times the float32 precompute, then the
low-precision one (alternating, so a busy spell of the shared machine hits both); the speed-up is
:func:`harness.ab_speedup`'s. It also records the cache's bytes each way, whether the KL targets are bit-identical,
the largest relative difference of any cached site, and the committed default circuit's KL on those training
pairs scored from either cache (the training split's evaluation reads the cache). Writes
``results/precompute_precision.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import ab_speedup, parser, write


def _cache_bytes(pre) -> int:
    return sum(t.numel() * t.element_size() for bucket in pre.cache for t in bucket.values())


def _largest_relative_difference(a, b) -> dict:
    """Per site kind (``hook_z``, ``hook_post``, ...): the largest ‖a − b‖ / ‖a‖ over layers and buckets."""
    out: dict[str, float] = {}
    for x, y in zip(a.cache, b.cache):
        for name, t in x.items():
            kind = name.rsplit(".", 1)[-1]
            rel = float((t - y[name].float()).norm() / t.norm().clamp_min(1e-12))
            out[kind] = max(out.get(kind, 0.0), rel)
    return out


def main() -> None:
    import torch

    import mgnp_lens as mg
    from mgnp_lens.evaluate import evaluate_cached
    from mgnp_lens.precompute import precompute
    from mgnp_lens.speedups import TrainingSpeedups

    ap = parser(__doc__, "precompute_precision")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--run", default="benchmarks/results/ioi_default", help="a run directory whose circuit to score")
    args = ap.parse_args()
    model = mg.load_model()
    task = mg.tasks.get_task("ioi", model, seed=0)
    circuit = mg.Circuit.load(Path(args.run) / "circuit.json")
    pairs = task.split("train").head(args.pairs)
    fast = TrainingSpeedups(model, mg.PruningConfig(), steps=240)
    kinds = {"float32": {}, "low precision": {"corrupted_precision": fast.low_precision}}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    last = {}
    for r in range(args.rounds):
        for name, kw in kinds.items():
            t0 = time.perf_counter()
            last[name] = precompute(model, circuit.dims, pairs, 32, True, metric=task.metric, **kw)
            times[name].append(time.perf_counter() - t0)
            print(name, f"round {r}: {times[name][-1]:.1f} s", flush=True)
    full, low = last["float32"], last["low precision"]
    kl = {name: evaluate_cached(model, task, circuit, pairs, pre, 32).kl for name, pre in
          (("float32", full), ("low precision", low))}
    write("precompute_precision", {
        "model": "embedded SmolLM2-135M", "task": "ioi", "pairs": len(pairs), "training_precision":
            str(fast.amp_dtype).replace("torch.", ""), "seconds": times,
        "speedup_float32_over_low": ab_speedup(times["float32"], times["low precision"]),
        "cache_bytes": {"float32": _cache_bytes(full), "low precision": _cache_bytes(low)},
        "kl_targets_identical": all(torch.equal(a, b) for a, b in zip(full.base, low.base)),
        "largest_relative_difference": _largest_relative_difference(full, low),
        "circuit": args.run, "circuit_train_kl": kl}, args.out, args.tag)


if __name__ == "__main__":
    main()
