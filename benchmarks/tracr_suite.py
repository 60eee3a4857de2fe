"""The tracr suite: every program of ``mgnp_lens.tasks.tracr.LIBRARY`` (programs of ``tracr.compiler.lib``), under
the corrupted and the zero ablation, seeds 0-2, discovered with default settings (nothing set), each against the
ground truth derived from its compiled weights (``Program.truth``).

    python benchmarks/tracr_suite.py [--programs reverse sort ...] [--seeds 0 1 2] [--ablations corrupted zero]
                                     [--set KEY=JSON ...] [--tag TAG]

Writes ``results/tracr_suite.json`` (``results/archive/tracr_suite_TAG.json`` with ``--tag``): per run the
truth, the kept heads and MLP layers, whether they equal the truth, the test loss, whether the run converged,
which step it returned, and the seconds it took. ``--set`` overrides a ``PruningConfig`` field (for trying an
optimizer change on the same suite; the default-settings table in docs/tracr.md comes from a run without it).
"""

from __future__ import annotations

import time
import warnings

from harness import parser, settings_of, write

#: A circuit is faithful when its test loss is at most this (exactly the full model up to float rounding).
LOSS_ZERO = 1e-6


def run_one(program, ablation: str, seed: int, settings: dict) -> dict:
    """One default-settings discovery on ``program`` scored against its truth."""
    import mgnp_lens as mg

    truth = program.truth(ablation)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = mg.discover(program.model, program.task, seed=seed, ablation=ablation, eval_heldout=False,
                        progress=False, **settings)
    seconds = time.perf_counter() - t0
    heads, mlps = sorted(r.circuit.active_heads()), sorted(r.circuit.active_mlps())
    conv = r.meta.get("convergence", {})
    exact = set(heads) == truth.heads and set(mlps) == truth.mlps
    return {"program": program.name, "ablation": ablation, "seed": seed, "truth_heads": sorted(truth.heads),
            "truth_mlps": sorted(truth.mlps), "heads": heads, "mlps": mlps, "exact": exact,
            "loss": r.evaluation.objective, "faithful": r.evaluation.objective <= LOSS_ZERO,
            "converged": conv.get("converged"), "returned_step": conv.get("returned_step"),
            "steps": r.steps_completed, "final_state": conv.get("final_state"), "seconds": seconds,
            "counts": r.circuit.counts(), "repairs": conv.get("repairs", []),
            "pruned_back": bool(r.meta.get("confirmation", {}).get("pruned_back")),
            "small_model_regime": r.meta.get("auto_target")}


def node_cost_settings(program, ablation: str, fraction: float) -> dict:
    """``lambda_scale`` that makes keeping the costliest whole node (paper λ) cost ``fraction`` of the loss at
    stake (the empty circuit's loss on 32 validation pairs), with the auto target off."""
    import mgnp_lens as mg
    from mgnp_lens.granularity import PAPER_LAMBDAS as lam

    cfg = program.model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    head = lam["attn_block"] / n_layers + (lam["attn_head"] + lam["attn_neuron"]) / (n_layers * n_heads)
    mlp = (lam["mlp_block"] + lam["mlp_hidden"] + lam["mlp_output"]) / n_layers
    stake = mg.evaluate(program.model, program.task, mg.Circuit.empty(program.model), "validation", ablation=ablation,
                        max_examples=32).objective
    return {"auto_target_fraction": None, "lambda_scale": fraction * stake / max(head, mlp)}


def main() -> None:
    from mgnp_lens.tasks import tracr

    ap = parser(__doc__, "tracr_suite", settings=True)
    ap.add_argument("--programs", nargs="+", default=list(tracr.LIBRARY), choices=list(tracr.LIBRARY))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ablations", nargs="+", default=list(tracr.TRUTH_ABLATIONS), choices=tracr.TRUTH_ABLATIONS)
    ap.add_argument("--node-cost", type=float, default=None, metavar="FRACTION",
                    help="instead of the auto target: fixed λ scaled so the costliest node (a head with its block "
                         "share and neurons, or an MLP with its neurons) costs FRACTION of the loss at stake")
    args = ap.parse_args()
    settings = settings_of(args)

    rows = []
    for name in args.programs:
        program = tracr.load(name)
        for ablation in args.ablations:
            for seed in args.seeds:
                extra = node_cost_settings(program, ablation, args.node_cost) if args.node_cost else {}
                row = run_one(program, ablation, seed, {**settings, **extra})
                rows.append(row)
                print(f"{name:14s} {ablation:9s} seed {seed}: exact={row['exact']!s:5} loss={row['loss']:.2g} "
                      f"found {row['heads']} {row['mlps']} (truth {row['truth_heads']} {row['truth_mlps']}) "
                      f"converged={row['converged']} repairs={row['repairs']} step {row['returned_step']}/{row['steps']} "
                      f"{row['seconds']:.1f} s", flush=True)
    both = sum(r["exact"] and r["faithful"] for r in rows)
    summary = {"runs": len(rows), "exact": sum(r["exact"] for r in rows), "exact_and_faithful": both,
               "converged": sum(bool(r["converged"]) for r in rows),
               "repaired": sum(bool(r["repairs"]) for r in rows),
               "pruned_back": sum(r["pruned_back"] for r in rows),
               "exact_and_faithful_unrepaired": sum(r["exact"] and r["faithful"] and not r["repairs"] for r in rows)}
    print(summary)
    write("tracr_suite", {"settings": settings, "node_cost": args.node_cost, "seeds": args.seeds, "summary": summary,
                          "runs": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
