"""Training precision: discovery step time in float32, float32 weights with bfloat16 autocast, and
bfloat16 weights, on the embedded model, and what each costs.

    python benchmarks/dtype.py [--settings float32,autocast-bfloat16,bfloat16] [--device cpu] [--out results.json]

For each setting: median wall time of a discovery step (SmolLM2-135M IOI, batch 32, cache mode, 10
steps after two warm-up steps; single steps vary by ±20% on a shared machine). The cost of the lower
precision is measured on 128 IOI test pairs as KL(float32 full model ‖ this setting's full model) at
the answer position, and the task metric.
``autocast-bfloat16`` is ``PruningConfig(autocast="bfloat16")`` (the ``"auto"`` default on hardware with
native bfloat16): weights stay float32, matrix products run in bfloat16, norms and softmax in float32.
``bfloat16`` casts the weights themselves (``load_model(dtype="bfloat16")``).
"""

from __future__ import annotations


import torch

from harness import parser, print_table, step_seconds, write


def answer_logp(model, split, amp: bool = False):
    """[n, d_vocab] float32 log-probs of the full model at the answer positions (the discovery loop's own
    base-logit pass, bucket by bucket), under bfloat16 autocast if ``amp``."""
    from mgnp_lens.precompute import precompute
    from mgnp_lens.granularity import ModelDims

    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        pre = precompute(model, ModelDims.from_model(model), split, 32, with_cache=False)
    return torch.cat(pre.base).cpu()


SETTINGS = {  # name: (weights dtype, PruningConfig.autocast)
    "float32": ("float32", "float32"),
    "autocast-bfloat16": ("float32", "bfloat16"),
    "bfloat16": ("bfloat16", "float32"),
}


def main() -> None:
    import mgnp_lens as mg
    from mgnp_lens.evaluate import kl_full_circuit

    ap = parser(__doc__, "dtype", device=True)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    args = ap.parse_args()
    rows, ref, model = [], None, None
    for name in args.settings.split(","):
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; expected some of {', '.join(SETTINGS)}")
        weights, autocast = SETTINGS[name]
        if model is None or next(model.parameters()).dtype != getattr(torch, weights):
            model = mg.load_model(device=args.device, dtype=weights)
            task = mg.tasks.IOI(model, n_train=64, n_validation=1, n_test=128)
        step = step_seconds(model, task, warmup=2, steps=10, autocast=autocast)
        amp = autocast == "bfloat16"
        logp = answer_logp(model, task.split("test"), amp=amp)
        ref = logp if ref is None else ref
        with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, enabled=amp):
            metric = mg.evaluate(model, task, mg.Circuit.full(model), "test").base_metric
        rows.append({"setting": name, "weights": weights, "autocast": autocast, "step_s": step["median_s"],
                     "all_step_s": step["all_s"], "kl_vs_first": float(kl_full_circuit(ref, logp).mean()),
                     "test_metric": metric})
    for r in rows:
        r["speedup_vs_first"] = rows[0]["step_s"] / r["step_s"]
    print_table(rows, ["setting", "step_s", "speedup_vs_first", "kl_vs_first", "test_metric"])
    write("dtype", {"model": "SmolLM2-135M (embedded)", "task": "IOI, batch 32, cache mode", "rows": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
