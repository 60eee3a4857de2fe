"""Corruption modes: step time and peak memory of ``batch`` (clean and corrupted in one 2B pass)
vs ``cache`` (corrupted activations precomputed once), each in a fresh process.

    python benchmarks/corruption_modes.py [--device cpu] [--out results.json]

Set-ups: GPT-2 small's shape (random weights), batch 32 × 64 tokens, 32 training pairs; and the
embedded SmolLM2 on IOI (one template), batch 32 × 15 tokens, 200 training pairs.
Target: cache-mode step ≥ 1.6× faster than batch mode.
"""

from __future__ import annotations


from harness import child_main, in_subprocess, parser, print_table, write


def main() -> None:
    ap = parser(__doc__, "corruption_modes", device=True)
    args = ap.parse_args()
    setups = [{"model": "gpt2-small", "batch": 32, "seq": 64, "n_train": 32},
              {"model": "default", "batch": 32, "seq": 15, "n_train": 200}]
    rows = []
    for s in setups:
        for mode in ("batch", "cache"):
            rows.append(in_subprocess(__file__, {**s, "device": args.device, "config": {"corruption": mode}}))
            rows[-1]["mode"] = mode
        rows[-1]["cache_speedup"] = rows[-2]["median_step_s"] / rows[-1]["median_step_s"]
    print_table(rows, ["model", "mode", "batch", "seq", "n_train", "median_step_s", "peak_rss_mb", "model_rss_mb",
                       "cuda_peak_mb", "cache_speedup"])
    write("corruption_modes", {"target": "cache step >= 1.6x faster than batch", "results": rows}, args.out, args.tag)


if __name__ == "__main__":
    if not child_main():
        main()
