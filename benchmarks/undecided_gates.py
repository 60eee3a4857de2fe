"""How much a run's circuit depends on the neuron gates it left undecided: those whose ``log α`` ended within
``--band`` of the threshold (0), which the hard circuit keeps or drops from one step to the next. The run's
circuit is scored as it is, with every undecided gate of ``--granularities`` kept, and with every one pruned, on
the held-out pairs of the run's seed (the CLI's task).

    python benchmarks/undecided_gates.py --run runs/DIR [--task ioi] [--band 1.0]
                                         [--granularities mlp_hidden mlp_output] [--splits test test_ood]
                                         [--max-examples 512] [--tag T]

If the KL moves by less than its standard error either way, the run's choice among those units is arbitrary but
cheap. Writes ``results/undecided_gates.json``: per variant the kept counts, parameters and, per split, the KL
with its standard error.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import parser, write


def variants(circuit, log_alpha: dict, granularities, band: float) -> dict:
    """``{"as found", "undecided kept", "undecided pruned": Circuit}``: ``circuit`` with every gate of
    ``granularities`` whose ``|log α| < band`` kept, or pruned (hierarchy made consistent)."""
    import mgnp_lens as mg
    from mgnp_lens.circuit import make_consistent

    kept, pruned = dict(circuit.masks), dict(circuit.masks)
    for g in granularities:
        near = (log_alpha[g].float().abs() < band).view_as(circuit.masks[g])
        kept[g] = circuit.masks[g].bool() | near
        pruned[g] = circuit.masks[g].bool() & ~near
    make = lambda m: mg.Circuit(circuit.dims, make_consistent(m), task=circuit.task, config=circuit.config)  # noqa: E731
    return {"as found": circuit, "undecided kept": make(kept), "undecided pruned": make(pruned)}


def main() -> None:
    import torch

    import mgnp_lens as mg
    from mgnp_lens.evaluate import evaluate_many

    ap = parser(__doc__, "undecided_gates")
    ap.add_argument("--run", required=True, help="a finished run directory (circuit.json, gates.pt, config.json)")
    ap.add_argument("--task", default="ioi", choices=["ioi", "gt", "gp"])
    ap.add_argument("--band", type=float, default=1.0)
    ap.add_argument("--granularities", nargs="+", default=["mlp_hidden", "mlp_output"])
    ap.add_argument("--splits", nargs="+", default=["test", "test_ood"])
    ap.add_argument("--max-examples", type=int, default=512)
    args = ap.parse_args()
    run = Path(args.run)
    seed = json.loads((run / "config.json").read_text())["config"]["seed"]
    model = mg.load_model()
    task = mg.tasks.get_task(args.task, model, n_test=args.max_examples, n_heldout=args.max_examples, seed=seed)
    circuit = mg.Circuit.load(run / "circuit.json")
    circuits = variants(circuit, torch.load(run / "gates.pt", weights_only=False), args.granularities, args.band)
    rows = {name: {**{g: c.count(g) for g in args.granularities}, "n_params": c.n_params()}
            for name, c in circuits.items()}
    for split in args.splits:
        for name, ev in zip(circuits, evaluate_many(model, task, list(circuits.values()), split=split,
                                                    max_examples=args.max_examples)):
            rows[name][split] = {"kl": ev.kl, "kl_se": ev.kl_se}
            print(split, name, rows[name][split], flush=True)
    write("undecided_gates", {"run": str(run), "task": args.task, "seed": seed, "band": args.band,
                              "granularities": args.granularities, "variants": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
