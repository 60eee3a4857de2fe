"""Paper-setting memory: GPT-2 small's shape, batch 32, sequence 64, one discovery step's peak
process memory (RSS; and CUDA max allocated on a GPU), next to the paper's 6,270 / 33,354 / 72,794 MB.

    python benchmarks/paper_memory.py [--only SETTING ...] [--device cpu] [--out results.json]

Each row is a fresh process: the model alone, then discovery with the whole batch in one pass
and in micro-batches (gradient accumulation, same gradient), in cache and batch mode. The
training set is the one batch of 32 pairs (cache mode holds its corrupted activations:
32 × 64 × 12 × (768 + 3072 + 768) floats ≈ 453 MB).
Rows run in float32 unless they say bf16 autocast (the default on hardware with native bfloat16, where
discovery keeps bfloat16 copies of the matrix-product weights for the run, ``precast_weights``; the
"weights cast on every pass" row lets autocast cast them in each pass instead). ``--only`` keeps the rows whose setting contains one of
the given strings (e.g. ``--only "batch, micro-batch 2"``); their results replace those rows in the JSON.
Target: ≤ 2,000 MB on CPU.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from harness import child_main, in_subprocess, PAPER_MEMORY_MB, parser, print_table, result_path, write


def main() -> None:
    ap = parser(__doc__, "paper_memory", device=True)
    ap.add_argument("--only", nargs="+", default=None, metavar="SETTING")
    args = ap.parse_args()
    base = {"model": "gpt2-small", "batch": 32, "seq": 64, "n_train": 32, "device": args.device}
    configs = [("cache, whole batch", {"corruption": "cache"}),
               ("cache, micro-batch 8", {"corruption": "cache", "micro_batch_size": 8}),
               ("cache, micro-batch 4", {"corruption": "cache", "micro_batch_size": 4}),
               ("cache, micro-batch 2", {"corruption": "cache", "micro_batch_size": 2}),
               ("cache, micro-batch 1", {"corruption": "cache", "micro_batch_size": 1}),
               ("batch, whole batch", {"corruption": "batch"}),
               ("batch, micro-batch 4", {"corruption": "batch", "micro_batch_size": 4}),
               ("batch, micro-batch 2", {"corruption": "batch", "micro_batch_size": 2}),
               ("batch, micro-batch 2, bf16 autocast", {"corruption": "batch", "micro_batch_size": 2,
                                                        "autocast": "bfloat16"}),
               ("batch, micro-batch 2, bf16 autocast, weights cast on every pass",
                {"corruption": "batch", "micro_batch_size": 2, "autocast": "bfloat16", "precast_weights": False}),
               ("cache, micro-batch 1, bf16 autocast", {"corruption": "cache", "micro_batch_size": 1,
                                                        "autocast": "bfloat16"})]
    if args.only:
        configs = [(label, cfg) for label, cfg in configs if any(o in label for o in args.only)]
        if not configs:
            raise SystemExit(f"--only {args.only} matches no setting")
    rows = []
    for label, cfg in configs:
        r = in_subprocess(__file__, {**base, "config": cfg})
        r["setting"] = label
        r["measured"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        r["vs_paper_6270"] = r["peak_rss_mb"] / PAPER_MEMORY_MB["paper_mgnp_two_model_copies"]
        rows.append(r)
    print_table(rows, ["setting", "median_step_s", "model_rss_mb", "peak_rss_mb", "cuda_peak_mb", "vs_paper_6270"])
    print("paper (GPU, batch 32): " + ", ".join(f"{k} {v:,} MB" for k, v in PAPER_MEMORY_MB.items()))
    if args.only:  # keep the other rows of the last full run
        rows = merge_rows(result_path("paper_memory", args.out, args.tag), rows)
    write("paper_memory", {"target_mb": 2000, "paper_mb": PAPER_MEMORY_MB, "results": rows}, args.out, args.tag)


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """The rows of the JSON at ``path``, with those of the same setting replaced by ``rows`` (new ones appended)."""
    import json

    old = json.loads(path.read_text())["results"] if path.exists() else []
    new = {r["setting"]: r for r in rows}
    merged = [new.pop(r["setting"], r) for r in old]
    return merged + list(new.values())


if __name__ == "__main__":
    if not child_main():
        main()
