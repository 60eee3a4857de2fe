"""Weight layout: a discovery step with TransformerLens' row-major weights vs ``fast_weight_layout``.

    python benchmarks/weight_layout.py [--models gpt2-small,default] [--rounds 6] [--device cpu] [--out results.json]

TransformerLens computes ``F.linear(x, W.T.contiguous())`` (or a rearranged copy) for the
unembedding, ``W_O``, ``W_Q``/``W_K``/``W_V`` and the gated-MLP weights, so a row-major weight is
copied on every pass. ``fast_weight_layout`` (applied by
``load_model`` and ``discover``) stores those weights in the copy's layout. Each round times a
discovery step (cache mode, batch 32, training precision as the defaults pick it) and a float32
forward pass (as in the evaluations) first with the row-major layout, then with the fast one;
the speed-up is the median of the per-round ratios (and, less sensitive to a busy spell of a
shared machine, the ratio of each side's fastest round). The results of both layouts are compared too
(they must be identical).
"""

from __future__ import annotations

import statistics
import time

from harness import ab_speedup, parser, print_table, step_seconds, write
from hook_overhead import setup


def row_major(model) -> None:
    """Undo ``fast_weight_layout``: every parameter back to a plain contiguous tensor."""
    for p in model.parameters():
        p.data = p.data.contiguous()


def forward_seconds(model, task, B: int) -> tuple[float, "torch.Tensor"]:
    import torch
    from mgnp_lens.hooks import logits_at

    batch = task.split("train").sample(B, generator=torch.Generator().manual_seed(0))
    times, out = [], None
    with torch.inference_mode():
        for i in range(3):
            t = time.perf_counter()
            out = logits_at(model, batch.clean, batch.answer_pos, len(batch))
            if i:
                times.append(time.perf_counter() - t)
    return min(times), out


def measure(name: str, device: str, rounds: int) -> dict:
    import importlib

    from mgnp_lens.speedups import fast_weight_layout

    disc = importlib.import_module("mgnp_lens.speedups")  # where discover() applies the layout

    model, task = setup(name, device)
    B, keep = 32, disc.fast_weight_layout
    step = {"row_major": [], "fast": []}
    fwd = {"row_major": [], "fast": []}
    same = True
    try:
        for _ in range(rounds):
            outs = {}
            for layout in ("row_major", "fast"):
                if layout == "row_major":
                    row_major(model)
                    disc.fast_weight_layout = lambda m: 0  # keep discover() from re-arranging
                else:
                    fast_weight_layout(model)
                    disc.fast_weight_layout = keep
                step[layout].append(step_seconds(model, task, batch_size=B, corruption="cache", autocast="auto",
                                                 warmup=1, steps=2)["median_s"])
                seconds, outs[layout] = forward_seconds(model, task, B)
                fwd[layout].append(seconds)
            same &= bool((outs["row_major"] == outs["fast"]).all())
    finally:
        disc.fast_weight_layout = keep
    s_up, f_up = ab_speedup(step["row_major"], step["fast"]), ab_speedup(fwd["row_major"], fwd["fast"])
    return {"model": name, "batch": B, "step_row_major_s": statistics.median(step["row_major"]),
            "step_fast_s": statistics.median(step["fast"]), "step_speedup": s_up["median"],
            "step_speedup_of_best_rounds": s_up["best_rounds"],
            "fwd_fp32_row_major_s": statistics.median(fwd["row_major"]),
            "fwd_fp32_fast_s": statistics.median(fwd["fast"]), "fwd_speedup": f_up["median"],
            "fwd_speedup_of_best_rounds": f_up["best_rounds"],
            "identical_logits": same, "rounds": {"step": step, "forward": fwd}}


def main() -> None:
    ap = parser(__doc__, "weight_layout", device=True)
    ap.add_argument("--models", default="gpt2-small,default")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    rows = [measure(m, args.device, args.rounds) for m in args.models.split(",")]
    print_table(rows, ["model", "step_row_major_s", "step_fast_s", "step_speedup", "step_speedup_of_best_rounds",
                       "fwd_fp32_row_major_s", "fwd_fp32_fast_s", "fwd_speedup", "fwd_speedup_of_best_rounds",
                       "identical_logits"])
    write("weight_layout", {"results": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
