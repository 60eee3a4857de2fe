"""First load (GGUF de-quantisation + conversion) vs cached load of the embedded default model.

    python benchmarks/load_model.py [--repeats 3] [--out results.json]

Each load runs in a fresh cache directory (first) or the warmed one (cached), in this process.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from harness import parser, write


def main() -> None:
    ap = parser(__doc__, "load_model", device=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from mgnp_lens import load_model

    first, cached = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            os.environ["MGNP_LENS_CACHE"] = d
            t = time.perf_counter()
            m = load_model(device=args.device)
            first.append(time.perf_counter() - t)
            assert m.mgnp_load_info["cache"] == "miss"
            del m
            t = time.perf_counter()
            m = load_model(device=args.device)
            cached.append(time.perf_counter() - t)
            assert m.mgnp_load_info["cache"] == "hit"
            del m
    f, c = statistics.median(first), statistics.median(cached)
    print(f"{'load':<10}{'median s':>10}  runs")
    print(f"{'first':<10}{f:>10.2f}  {', '.join(f'{x:.2f}' for x in first)}")
    print(f"{'cached':<10}{c:>10.2f}  {', '.join(f'{x:.2f}' for x in cached)}")
    print(f"cached load is {f / c:.1f}x faster (target >= 5x)")
    write("load_model", {"device": args.device, "first_load_s": first, "cached_load_s": cached,
                         "median_first_s": f, "median_cached_s": c, "speedup": f / c, "target_speedup": 5.0,
                         "target_met": f / c >= 5.0}, args.out, args.tag)


if __name__ == "__main__":
    main()
