"""Parameter dtype: discovery step time in float32 vs bfloat16 on the embedded model, and what it costs.

    python benchmarks/dtype.py [--dtypes float32,bfloat16] [--device cpu] [--out results.json]

For each dtype: median wall time of a discovery step (SmolLM2-135M IOI, batch 32 × 15 tokens,
cache mode, after one warm-up step). The cost of the lower precision is measured on 128 IOI test
pairs as KL(float32 full model ‖ this dtype's full model) at the answer position and the task
metric of each; a bfloat16 run's circuit is then judged against its own (bfloat16) full model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_device_arg, print_table, step_seconds, write  # noqa: E402


def answer_logp(model, split):
    """[n, d_vocab] float32 log-probs of the full model at the answer positions (the discovery loop's own
    base-logit pass, bucket by bucket)."""
    from mgnp_lens.discover import _precompute
    from mgnp_lens.granularity import ModelDims

    base, _ = _precompute(model, ModelDims.from_model(model), split, 32, with_cache=False)
    return torch.cat(base).cpu()


def main() -> None:
    import mgnp_lens as mg
    from mgnp_lens.evaluate import kl_full_circuit

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    add_device_arg(ap)
    args = ap.parse_args()
    rows, ref = [], None
    for name in args.dtypes.split(","):
        model = mg.load_model(device=args.device, dtype=name)
        task = mg.tasks.IOI(model, n_train=64, n_validation=1, n_test=128)
        step = step_seconds(model, task, warmup=1, steps=3)
        logp = answer_logp(model, task.split("test"))
        ref = logp if ref is None else ref
        metric = mg.evaluate(model, task, mg.Circuit.full(model), "test").base_metric
        rows.append({"dtype": name, "step_s": step["median_s"], "all_step_s": step["all_s"],
                     "kl_vs_first": float(kl_full_circuit(ref, logp).mean()), "test_metric": metric})
        del model
    for r in rows:
        r["speedup_vs_first"] = rows[0]["step_s"] / r["step_s"]
    print_table(rows, ["dtype", "step_s", "speedup_vs_first", "kl_vs_first", "test_metric"])
    write("dtype", {"model": "SmolLM2-135M (embedded)", "task": "IOI, batch 32, cache mode", "rows": rows}, args.out)


if __name__ == "__main__":
    main()
