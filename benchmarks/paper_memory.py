"""Paper-setting memory: GPT-2 small's shape, batch 32, sequence 64, one discovery step's peak
process memory (RSS; and CUDA max allocated on a GPU), next to the paper's 6,270 / 33,354 / 72,794 MB.

    python benchmarks/paper_memory.py [--device cpu] [--out results.json]

Each row is a fresh process: the model alone, then discovery with the whole batch in one pass
and in micro-batches (gradient accumulation, same gradient), in cache and batch mode. The
training set is the one batch of 32 pairs (cache mode holds its corrupted activations:
32 × 64 × 12 × (768 + 3072 + 768) floats ≈ 453 MB).
Target: ≤ 2,000 MB on CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PAPER_MEMORY_MB, add_device_arg, child_main, in_subprocess, print_table, write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(ap)
    args = ap.parse_args()
    base = {"model": "gpt2-small", "batch": 32, "seq": 64, "n_train": 32, "device": args.device}
    configs = [("cache, whole batch", {"corruption": "cache"}),
               ("cache, micro-batch 8", {"corruption": "cache", "micro_batch_size": 8}),
               ("cache, micro-batch 4", {"corruption": "cache", "micro_batch_size": 4}),
               ("cache, micro-batch 2", {"corruption": "cache", "micro_batch_size": 2}),
               ("cache, micro-batch 1", {"corruption": "cache", "micro_batch_size": 1}),
               ("batch, whole batch", {"corruption": "batch"}),
               ("batch, micro-batch 4", {"corruption": "batch", "micro_batch_size": 4}),
               ("batch, micro-batch 2", {"corruption": "batch", "micro_batch_size": 2})]
    rows = []
    for label, cfg in configs:
        r = in_subprocess(__file__, {**base, "config": cfg})
        r["setting"] = label
        r["vs_paper_6270"] = r["peak_rss_mb"] / PAPER_MEMORY_MB["paper_mgnp_two_model_copies"]
        rows.append(r)
    print_table(rows, ["setting", "median_step_s", "model_rss_mb", "peak_rss_mb", "cuda_peak_mb", "vs_paper_6270"])
    print("paper (GPU, batch 32): " + ", ".join(f"{k} {v:,} MB" for k, v in PAPER_MEMORY_MB.items()))
    write("paper_memory", {"target_mb": 2000, "paper_mb": PAPER_MEMORY_MB, "results": rows}, args.out)


if __name__ == "__main__":
    if not child_main():
        main()
