"""Scaling: time and peak memory per discovery step as layers, d_model, batch and sequence grow.

    python benchmarks/scaling.py [--device cpu] [--out results.json]

Random weights, cache mode, each point a fresh process. The base point is GPT-2-shaped with
4 layers, d_model 256 (4 heads of 64), d_mlp 1024, vocabulary 8,192, batch 16 × 32 tokens; one
dimension is varied at a time, and Llama-shaped (GQA, gated SiLU MLP, RMSNorm, rotary) and
Pythia/NeoX-shaped (parallel attention+MLP, rotary) models are run at the same points of the
layer sweep. The growth exponent is the least-squares slope of log(time) on log(size).
"""

from __future__ import annotations


from harness import child_main, in_subprocess, log_fit, parser, print_table, write

BASE_SHAPE = {"n_layers": 4, "d_model": 256, "d_head": 64, "n_heads": 4, "d_mlp": 1024, "d_vocab": 8192}
BASE = {"batch": 16, "seq": 32}
SWEEPS = {"n_layers": [2, 4, 8, 16], "d_model": [128, 256, 512, 1024], "batch": [4, 8, 16, 32],
          "seq": [16, 32, 64, 128]}


def slope(xs, ys) -> float:
    return log_fit(xs, ys)[0]


def point(kind: str, var: str, value: int, device: str) -> dict:
    shape, run = dict(BASE_SHAPE), dict(BASE)
    if var == "d_model":
        shape.update(d_model=value, n_heads=max(1, value // 64), d_mlp=4 * value)
    elif var == "n_layers":
        shape["n_layers"] = value
    else:
        run[var] = value
    r = in_subprocess(__file__, {"model": kind, "shape": shape, "device": device, "n_train": run["batch"], **run,
                                 "config": {"corruption": "cache"}, "steps": 2})
    r.update(kind=kind, var=var, value=value)
    return r


def main() -> None:
    ap = parser(__doc__, "scaling", device=True)
    args = ap.parse_args()
    rows, fits = [], []
    plan = [("gpt2-small", var, v) for var, vals in SWEEPS.items() for v in vals]
    plan += [(kind, "n_layers", v) for kind in ("llama", "neox") for v in SWEEPS["n_layers"]]
    for kind, var, v in plan:
        rows.append(point(kind, var, v, args.device))
        print(f"{kind:>10} {var:>8}={v:<5} {rows[-1]['median_step_s']:.3f} s  {rows[-1]['peak_rss_mb']:.0f} MB",
              flush=True)
    for kind, var in sorted({(r["kind"], r["var"]) for r in rows}):
        pts = [r for r in rows if r["kind"] == kind and r["var"] == var]
        xs = [r["value"] for r in pts]
        extra = [r["peak_rss_mb"] - r["model_rss_mb"] for r in pts]
        fits.append({"kind": kind, "var": var, "time_exponent": slope(xs, [r["median_step_s"] for r in pts]),
                     "memory_exponent": slope(xs, [max(e, 1.0) for e in extra]),
                     "values": xs})
    print_table(fits, ["kind", "var", "time_exponent", "memory_exponent"])
    write("scaling", {"base_shape": BASE_SHAPE, "base_run": BASE, "points": rows, "fits": fits,
                      "note": "memory exponent is fitted on peak RSS minus the RSS after building the model"},
          args.out, args.tag)


if __name__ == "__main__":
    if not child_main():
        main()
