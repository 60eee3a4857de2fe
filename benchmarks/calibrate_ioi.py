"""Calibration of the discovery defaults on the embedded SmolLM2 model, IOI task.

    python benchmarks/calibrate_ioi.py [--templates mixed|baba0|guide] [--set lr=0.6 --set steps=80 ...]
                                       [--n-train 200] [--tag NAME] [--out results.json]

``mixed``: all 30 BABA/ABBA templates (the IOI default); ``baba0``: the first Wang BABA template;
``guide``: "When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to [A]". ``--set`` overrides
any :class:`mgnp_lens.PruningConfig` field (values parsed as JSON when possible). Paper λ, 200
training pairs (``--n-train 32``: one fixed batch, likely the prototype's set-up below), hard-circuit KL on
the training pairs and on 512 test pairs.
Reference point (a bare prototype, one template, lr 0.3, 240 steps): heads 27/270, attention neurons
1,894, MLP hidden 5,763, MLP output 5,750, hard-circuit KL 0.135. Its 1,894 attention neurons cannot all
sit in 27 heads of 64 dimensions (1,728 at most), so its counts are of raw binarised gates, before the
hierarchy is enforced; ``raw_counts`` records ours the same way, beside the circuit's ``counts``.
"""

from __future__ import annotations

import tempfile
import time

from harness import parser, settings_of, write

GUIDE = "When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to [A]"
REFERENCE = {"attn_head": 27, "attn_neuron": 1894, "mlp_hidden": 5763, "mlp_output": 5750, "train_kl": 0.135}


def ioi_task(model, templates: str, n_train: int = 200):
    """The calibration task: IOI with ``n_train`` training and 512 test pairs on the named template set."""
    import mgnp_lens as mg
    from mgnp_lens.tasks import _data

    tpl = {"mixed": "mixed", "baba0": _data.load("ioi")["templates_baba"][:1], "guide": [GUIDE]}[templates]
    return mg.tasks.IOI(model, n_train=n_train, n_test=512, templates=tpl)


def run(templates: str, device: str = "cpu", n_train: int = 200, **overrides) -> dict:
    import mgnp_lens as mg

    model = mg.load_model(device=device)
    task = ioi_task(model, templates, n_train)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        result = mg.discover(model, task, eval_max_examples=512, checkpoint_dir=d, **overrides)
    wall = time.perf_counter() - t0
    c = result.circuit
    steps = result.config.steps
    return {"templates": templates, "n_train": n_train, "overrides": overrides, "config": result.config.to_dict(),
            "seconds_loop": result.seconds, "seconds_with_eval": wall, "s_per_step": result.seconds / steps,
            "counts": c.counts(), "raw_counts": {g: int(m.sum()) for g, m in result.gates.binarize().items()},
            "train_kl": result.train_evaluation.kl, "test_kl": result.evaluation.kl,
            "train_metric": [result.train_evaluation.base_metric, result.train_evaluation.circuit_metric],
            "test_metric": [result.evaluation.base_metric, result.evaluation.circuit_metric],
            "sampled_kl_last10": float(result.history.kl.tail(10).mean()),
            "trace": trace(result.history), "log_alpha": log_alpha_summary(result.gates)}


def trace(history, every: int = 10) -> list[dict]:
    """Every ``every``-th history row (step, sampled KL, expected active count per granularity)."""
    keep = [c for c in history.columns if c in ("step", "kl") or c.startswith("active_")]
    rows = history[(history.step % every == 0) | (history.step == history.step.max())][keep]
    return [{k: round(float(v), 4) for k, v in r.items()} for r in rows.to_dict("records")]


def log_alpha_summary(gates) -> dict:
    """Per granularity: quantiles of the trained log α and the share of gates near the threshold (|log α| < 0.5)."""
    import torch

    out = {}
    for g, la in gates.log_alpha.items():
        v = la.detach().flatten().float()
        q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9])) if v.numel() > 1 else v.repeat(3)
        out[g] = {"q10": round(float(q[0]), 3), "q50": round(float(q[1]), 3), "q90": round(float(q[2]), 3),
                  "near_threshold": round(float((v.abs() < 0.5).float().mean()), 4)}
    return out


def main() -> None:
    ap = parser(__doc__, "calibrate_ioi", device=True, settings=True)
    ap.add_argument("--templates", choices=["mixed", "baba0", "guide"], default="mixed")
    ap.add_argument("--n-train", type=int, default=200, help="training pairs (default 200; 32 = one fixed batch)")
    args = ap.parse_args()
    r = run(args.templates, args.device, args.n_train, **settings_of(args))
    print(f"{'':<12}{'heads':>7}{'attn_n':>8}{'mlp_h':>8}{'mlp_o':>8}{'trainKL':>9}{'testKL':>8}{'sec':>7}")
    c = r["counts"]
    print(f"{'this run':<12}{c['attn_head']:>7}{c['attn_neuron']:>8}{c['mlp_hidden']:>8}{c['mlp_output']:>8}"
          f"{r['train_kl']:>9.3f}{r['test_kl']:>8.3f}{r['seconds_with_eval']:>7.0f}")
    raw = r["raw_counts"]
    print(f"{'raw gates':<12}{raw['attn_head']:>7}{raw['attn_neuron']:>8}{raw['mlp_hidden']:>8}{raw['mlp_output']:>8}")
    print(f"{'reference':<12}{REFERENCE['attn_head']:>7}{REFERENCE['attn_neuron']:>8}{REFERENCE['mlp_hidden']:>8}"
          f"{REFERENCE['mlp_output']:>8}{REFERENCE['train_kl']:>9.3f}")
    write("calibrate_ioi", {"templates": args.templates, "run": r, "reference": REFERENCE}, args.out, args.tag)


if __name__ == "__main__":
    main()
