"""Does mgnp-lens recover tracr's known circuits? Per program (reverse, xproportion) and ablation (corrupted,
zero, mean): the default settings (nothing set: the paper's λ, which on these toys hand over to a target of 10%
of the loss at stake, and 240 steps), the paper's λ alone, and faithfulness targets of 10% and 2%.

    python benchmarks/tracr_truth.py [--steps 150] [--seeds 0 1 2] [--settings defaults ...] [--ablations corrupted ...]
                                       [--tag TAG]

Writes ``results/tracr_truth.json``: per run the kept heads and MLP layers, the node counts, the test loss, the
target's outcome, and whether the heads and MLPs equal the ground truth (``reference.TRACR_TRUTH``, stated for
the corrupted ablation only).
"""

from __future__ import annotations

import time
import warnings

from harness import parser, write


#: Each setting's discover() arguments, from the loss at stake and --steps.
SETTINGS = {
    "defaults": lambda at_stake, steps: {},
    "paper λ": lambda at_stake, steps: {"steps": steps, "auto_target_fraction": None},
    "target 10%": lambda at_stake, steps: {"steps": steps, "target_kl": 0.1 * at_stake},
    "target 2%": lambda at_stake, steps: {"steps": steps, "target_kl": 0.02 * at_stake},
}


def main() -> None:
    ap = parser(__doc__, "tracr_truth")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--ablations", nargs="+", default=["corrupted", "zero", "mean"], choices=["corrupted", "zero", "mean"])
    args = ap.parse_args()

    import mgnp_lens as mg
    from mgnp_lens.reference import TRACR_TRUTH
    from mgnp_lens.tasks import tracr

    rows = []
    for name in tracr.PROGRAMS:
        compiled = tracr.compile_program(name)
        task, model = tracr.task(compiled), compiled.model
        truth = TRACR_TRUTH[f"tracr-{name}"]
        for ablation in args.ablations:
            at_stake = mg.evaluate(model, task, mg.Circuit.empty(model), "validation", ablation=ablation).objective
            for setting in args.settings:
                for seed in args.seeds:
                    kw = SETTINGS[setting](at_stake, args.steps)
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        r = mg.discover(model, task, seed=seed, ablation=ablation, eval_heldout=False, progress=False,
                                        **kw)
                    heads, mlps = sorted(r.circuit.active_heads()), sorted(r.circuit.active_mlps())
                    rows.append({"program": name, "ablation": ablation, "setting": setting, "seed": seed,
                                 "loss": task.loss, "loss_at_stake": at_stake, "heads": heads, "mlps": mlps,
                                 "counts": r.circuit.counts(), "test_loss": r.evaluation.objective,
                                 "target_met": None if r.target is None else r.target["met"],
                                 "exact": (set(heads) == truth.heads and set(mlps) == truth.mlps)
                                 if ablation == "corrupted" else None,
                                 "seconds": time.perf_counter() - t0})
                    print(name, ablation, setting, seed, heads, mlps, f"{r.evaluation.objective:.2e}")
    write("tracr_truth", {"steps": args.steps, "seeds": args.seeds, "runs": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
