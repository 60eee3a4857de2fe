"""Calibration of the discovery defaults on the embedded SmolLM2 model, IOI task.

    python benchmarks/calibrate_ioi.py [--templates mixed|baba0|guide] [--lr 0.3] [--steps 240]
                                       [--mask-per-example] [--lambda-warmup 0] [--out results.json]

``mixed``: all 30 BABA/ABBA templates (the IOI default); ``baba0``: the first Wang BABA template;
``guide``: "When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to [A]". Cache mode, batch 32,
paper λ, 200 training pairs, hard-circuit KL on the training pairs and on 512 test pairs.
Reference point (a bare prototype, one template, lr 0.3, 240 steps): heads 27/270, attention neurons
1,894, MLP hidden 5,763, MLP output 5,750, hard-circuit KL 0.135.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

GUIDE = "When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to [A]"
REFERENCE = {"attn_head": 27, "attn_neuron": 1894, "mlp_hidden": 5763, "mlp_output": 5750, "train_kl": 0.135}


def run(templates: str, lr: float, steps: int, per_example: bool, warmup: int = 0, device: str = "cpu") -> dict:
    import mgnp_lens as mg
    from mgnp_lens.tasks import _data

    model = mg.load_model(device=device)
    tpl = {"mixed": "mixed", "baba0": _data.load("ioi")["templates_baba"][:1], "guide": [GUIDE]}[templates]
    task = mg.tasks.IOI(model, n_test=512, templates=tpl)
    with tempfile.TemporaryDirectory() as d:
        result = mg.discover(model, task, steps=steps, lr=lr, mask_per_example=per_example, eval_max_examples=512,
                             lambda_warmup_steps=warmup, checkpoint_dir=d)
    c = result.circuit
    return {"templates": templates, "lr": lr, "steps": steps, "mask_per_example": per_example,
            "lambda_warmup_steps": warmup,
            "seconds": result.seconds, "s_per_step": result.seconds / steps, "counts": c.counts(),
            "train_kl": result.train_evaluation.kl, "test_kl": result.evaluation.kl,
            "train_metric": [result.train_evaluation.base_metric, result.train_evaluation.circuit_metric],
            "test_metric": [result.evaluation.base_metric, result.evaluation.circuit_metric]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--templates", choices=["mixed", "baba0", "guide"], default="mixed")
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--mask-per-example", action="store_true")
    ap.add_argument("--lambda-warmup", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    r = run(args.templates, args.lr, args.steps, args.mask_per_example, args.lambda_warmup, args.device)
    print(f"{'':<12}{'heads':>7}{'attn_n':>8}{'mlp_h':>8}{'mlp_o':>8}{'trainKL':>9}")
    c = r["counts"]
    print(f"{'this run':<12}{c['attn_head']:>7}{c['attn_neuron']:>8}{c['mlp_hidden']:>8}{c['mlp_output']:>8}"
          f"{r['train_kl']:>9.3f}")
    print(f"{'reference':<12}{REFERENCE['attn_head']:>7}{REFERENCE['attn_neuron']:>8}{REFERENCE['mlp_hidden']:>8}"
          f"{REFERENCE['mlp_output']:>8}{REFERENCE['train_kl']:>9.3f}")
    write(f"calibrate_ioi_{args.templates}", {"run": r, "reference": REFERENCE}, args.out)


if __name__ == "__main__":
    main()
