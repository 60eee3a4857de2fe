"""How discovery's cost grows with the model: random-weight Llama-shaped models from 135M to 1.5B parameters.

    python benchmarks/model_scaling.py [--shapes smollm2-135m ...] [--steps 2] [--device cpu] [--out results.json]

Each row is a fresh process: a model with the shape of SmolLM2-135M, SmolLM2-360M or Llama-3.2-1B (GQA,
gated SiLU MLP, RMSNorm, rotary; TransformerLens keeps the unembedding apart from the embedding, so the
counts are a little above the checkpoints' own), random tokens, batch 32 × 64 tokens as in the paper,
one warm-up step then ``--steps`` timed steps, in both corruption modes, the whole batch in one pass and in
micro-batches of 4. Reported: seconds per step, peak RSS (and CUDA max allocated on a GPU), the corrupted
cache's size (what ``corruption="cache"`` holds for the 32 pairs) and the memory ratio to the paper's
6,270 MB for GPT-2 small. A row whose predicted peak exceeds the machine's memory is skipped and says so.
The fits are least-squares lines of log(cost) on log(parameters) per setting; the 8B row is a projection
from them (Llama-3.1-8B's shape, 8.03B parameters; memory as its float32 weights plus the fitted memory above the
weights), not a measurement. ``--resume`` keeps the rows already in the JSON and runs the others.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from harness import (child_main, cuda_peak_mb, in_subprocess, log_fit, PAPER_MEMORY_MB, parser, peak_rss_mb,
                     print_table, random_task, RESULTS, shaped_model, step_seconds, write)

#: HookedTransformerConfig fields of each shape (the Hugging Face checkpoints' config.json values).
SHAPES = {
    "smollm2-135m": dict(n_layers=30, d_model=576, n_heads=9, n_key_value_heads=3, d_head=64, d_mlp=1536,
                         d_vocab=49152),
    "smollm2-360m": dict(n_layers=32, d_model=960, n_heads=15, n_key_value_heads=5, d_head=64, d_mlp=2560,
                         d_vocab=49152),
    "llama-3.2-1b": dict(n_layers=16, d_model=2048, n_heads=32, n_key_value_heads=8, d_head=64, d_mlp=8192,
                         d_vocab=128256),
}
SETTINGS = {"cache, whole batch": {"corruption": "cache"},
            "cache, micro-batch 4": {"corruption": "cache", "micro_batch_size": 4},
            "batch, whole batch": {"corruption": "batch"},
            "batch, micro-batch 4": {"corruption": "batch", "micro_batch_size": 4}}
BATCH, SEQ = 32, 64
PROJECT_TO = {"shape": "llama-3.1-8b", "n_params": 8.03e9}


def child(payload: dict) -> dict:
    """In a fresh process: build the shape, time discovery steps, report memory and the cache's size."""
    import torch

    from mgnp_lens.granularity import ModelDims
    from mgnp_lens.precompute import precompute_bytes

    torch.manual_seed(0)
    model = shaped_model("llama", payload["device"], n_ctx=256, **SHAPES[payload["shape"]])
    task = random_task(model, BATCH, SEQ)
    model_rss = peak_rss_mb()
    cache = precompute_bytes(model, ModelDims.from_model(model), task.split("train"), True) - \
        precompute_bytes(model, ModelDims.from_model(model), task.split("train"), False)
    t = step_seconds(model, task, warmup=1, steps=payload["steps"], batch_size=BATCH, **payload["config"])
    return {"median_step_s": t["median_s"], "all_step_s": t["all_s"], "peak_rss_mb": peak_rss_mb(),
            "model_rss_mb": model_rss, "cuda_peak_mb": cuda_peak_mb(), "corrupted_cache_mb": cache / 2**20,
            "n_params": sum(p.numel() for p in model.parameters())}


def fits(rows: list[dict]) -> list[dict]:
    """Per setting: exponents in parameters of the step time, the peak memory and the memory above the weights,
    and the 8B projection: step time from its fit; peak memory as the 8B model's float32 weights plus the fitted
    memory above the weights (a fit of the whole peak would let the weights, linear in parameters, be
    under-projected)."""
    out = []
    for setting in SETTINGS:
        pts = [r for r in rows if r["setting"] == setting and r.get("median_step_s")]
        if len(pts) < 2:
            continue
        xs = [r["n_params"] for r in pts]
        t_slope, t_icpt = log_fit(xs, [r["median_step_s"] for r in pts])
        m_slope, _ = log_fit(xs, [r["peak_rss_mb"] for r in pts])
        a_slope, a_icpt = log_fit(xs, [r["peak_rss_mb"] - r["model_rss_mb"] for r in pts])
        x = math.log(PROJECT_TO["n_params"])
        out.append({"setting": setting, "time_exponent": t_slope, "memory_exponent": m_slope,
                    "above_weights_exponent": a_slope, "fitted_on": [r["shape"] for r in pts],
                    "projected_8b_step_s": math.exp(t_icpt + t_slope * x),
                    "projected_8b_peak_mb": PROJECT_TO["n_params"] * 4 / 2**20 + math.exp(a_icpt + a_slope * x)})
    return out


def predicted_peak_mb(rows: list[dict], setting: str, shape: str) -> float | None:
    """Peak memory of ``setting`` on ``shape`` from the first row measured in that setting: its weights plus
    that row's activation memory scaled by the per-token width of the gated sites (None before any row)."""
    pts = [r for r in rows if r["setting"] == setting and "peak_rss_mb" in r]
    if not pts:
        return None
    ref = pts[0]
    scale = _width(SHAPES[shape]) / _width(SHAPES[ref["shape"]])
    return n_params_of(SHAPES[shape]) * 4 / 2**20 + (ref["peak_rss_mb"] - ref["model_rss_mb"]) * scale


def _width(shape: dict) -> int:
    return shape["n_layers"] * (shape["n_heads"] * shape["d_head"] + shape["d_mlp"] + shape["d_model"])


def n_params_of(shape: dict) -> int:
    """Parameters of a Llama-shaped HookedTransformer (without the norms' few)."""
    d, h, kv, dh, m, v, n = (shape[k] for k in ("d_model", "n_heads", "n_key_value_heads", "d_head", "d_mlp",
                                                 "d_vocab", "n_layers"))
    return 2 * v * d + n * (2 * d * h * dh + 2 * d * kv * dh + 3 * d * m)


def main() -> None:
    ap = parser(__doc__, "model_scaling", device=True)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--steps", type=int, default=2,
                    help="timed steps after one warm-up step (1 for shapes over 1B parameters)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in the JSON (written after every row) and run only the others")
    ap.add_argument("--memory-mb", type=float, default=None,
                    help="skip a row predicted to peak above this (default: the machine's MemTotal × 0.8)")
    args = ap.parse_args()
    limit = args.memory_mb or _mem_total_mb() * 0.8
    out = Path(args.out) if args.out else RESULTS / "model_scaling.json"
    rows = json.loads(out.read_text())["rows"] if args.resume and out.exists() else []
    for shape in args.shapes:
        steps = args.steps if n_params_of(SHAPES[shape]) < 1e9 else 1
        for setting in args.settings:
            if any(r["shape"] == shape and r["setting"] == setting for r in rows):
                continue
            row = {"shape": shape, "setting": setting, **SETTINGS[setting], "batch": BATCH, "seq": SEQ,
                   "timed_steps": steps}
            predicted = predicted_peak_mb(rows, setting, shape)
            if args.device == "cpu" and predicted is not None and predicted > limit:
                row.update(skipped=f"predicted peak {predicted:,.0f} MB > {limit:,.0f} MB on this machine",
                           n_params=n_params_of(SHAPES[shape]))
            else:
                try:
                    row.update(in_subprocess(__file__, {"shape": shape, "device": args.device, "steps": steps,
                                                        "config": SETTINGS[setting]}, timeout=3600))
                    row["vs_paper_6270"] = row["peak_rss_mb"] / PAPER_MEMORY_MB["paper_mgnp_two_model_copies"]
                except RuntimeError as e:  # e.g. killed for memory: the row says so, the others still run
                    row.update(failed=str(e)[-500:], n_params=n_params_of(SHAPES[shape]))
            row["measured"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            rows.append(row)
            print({k: row.get(k) for k in ("shape", "setting", "median_step_s", "peak_rss_mb", "skipped")},
                  flush=True)
            _write(rows, args.steps, out)  # a finished row is never lost
    print_table(rows, ["shape", "setting", "n_params", "median_step_s", "peak_rss_mb", "corrupted_cache_mb",
                       "vs_paper_6270"])
    print_table(fits(rows), ["setting", "time_exponent", "memory_exponent", "projected_8b_step_s", "projected_8b_peak_mb"])
    _write(rows, args.steps, out)


def _write(rows: list[dict], steps: int, out: Path) -> None:
    write("model_scaling", {"batch": BATCH, "seq": SEQ, "shapes": SHAPES, "steps": steps, "rows": rows,
                            "fits": fits(rows), "projection": PROJECT_TO, "paper_mb": PAPER_MEMORY_MB}, str(out))


def _mem_total_mb() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 1024


if __name__ == "__main__":
    if not child_main(child):
        main()
