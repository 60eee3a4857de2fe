"""Where the default circuits lose held-out faithfulness: the neuron gates inside what they keep, or the heads and
blocks they keep. Each committed default circuit is scored as it is, with every kept head whole (all its attention
neurons), with every kept MLP block whole (all its hidden and output neurons), and with both, on the same pairs.

    python benchmarks/whole_nodes.py [--tasks ioi gt gp] [--splits test test_ood] [--max-examples 512] [--tag T]
    python benchmarks/whole_nodes.py --tasks ioi --run runs/DIR --tag T   # another run's circuit, on its seed's pairs
    python benchmarks/whole_nodes.py --tasks gp --all-heads --splits test test_corruption test_ood --tag T

Filling kept nodes in never adds a head or a block, so the "both" circuit has the default circuit's heads and
blocks exactly: if it is far more faithful on ``test_ood``, the neuron gates are what does not generalise; if not,
the choice of heads and blocks is. Writes ``results/whole_nodes.json``: per task, variant and split the KL (with its
standard error), the recovered fraction, the kept counts and parameters. ``--all-heads`` adds two circuits that do
add nodes: every head of the model kept whole (and every attention block), with the MLPs as found or whole: if
they close the held-out gap, the heads the circuit left out are where it lives.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import RESULTS, parser, write

#: ``{task: the default run's directory under results/}``.
RUNS = {"ioi": "ioi_default", "gt": "gt_default", "gp": "gp_default"}
VARIANTS = ("as found", "heads whole", "MLP blocks whole", "both whole")
#: The ``--all-heads`` variants (every head added; MLPs as found, or their kept blocks whole).
ALL_HEADS = ("all heads", "all heads, MLP blocks whole")


def filled(circuit, heads: bool, mlps: bool):
    """``circuit`` with every kept head's attention neurons (``heads``) and every kept MLP block's hidden and
    output neurons (``mlps``) kept; nothing else added."""
    import mgnp_lens as mg

    masks = {g: m.clone() for g, m in circuit.masks.items()}
    if heads:
        masks["attn_neuron"] = masks["attn_head"][..., None].expand_as(masks["attn_neuron"]).clone()
    if mlps:
        masks["mlp_hidden"] = masks["mlp_block"][:, None].expand_as(masks["mlp_hidden"]).clone()
        masks["mlp_output"] = masks["mlp_block"][:, None].expand_as(masks["mlp_output"]).clone()
    return mg.Circuit(circuit.dims, masks, task=circuit.task, config=circuit.config)


def every_head(circuit):
    """``circuit`` with every head of the model kept, all its attention neurons and every attention block."""
    import mgnp_lens as mg

    masks = {g: m.clone() for g, m in circuit.masks.items()}
    for g in ("attn_block", "attn_head", "attn_neuron"):
        masks[g] = masks[g].new_ones(masks[g].shape)
    return mg.Circuit(circuit.dims, masks, task=circuit.task, config=circuit.config)


def main() -> None:
    ap = parser(__doc__, "whole_nodes", device=True)
    ap.add_argument("--tasks", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--splits", nargs="+", default=["test", "test_ood"])
    ap.add_argument("--max-examples", type=int, default=512)
    ap.add_argument("--all-heads", action="store_true", help="also every head kept (MLPs as found, and whole)")
    ap.add_argument("--run", default=None, help="score this run directory's circuit instead (one task; the task is "
                    "drawn with the run's seed, so the pairs are the ones the run was evaluated on)")
    args = ap.parse_args()
    if args.run is not None and len(args.tasks) != 1:
        ap.error("--run scores one run: give its task alone with --tasks")

    import mgnp_lens as mg
    from mgnp_lens.evaluate import evaluate_many

    model = mg.load_model(None, device=args.device)
    out = {}
    for task_name in args.tasks:
        run = Path(args.run) if args.run else RESULTS / RUNS[task_name]
        seed = json.loads((run / "config.json").read_text())["config"]["seed"]
        task = mg.tasks.get_task(task_name, model, n_test=args.max_examples, n_heldout=args.max_examples, seed=seed)
        found = mg.Circuit.load(run / "circuit.json")
        circuits = [filled(found, h, m) for h, m in ((False, False), (True, False), (False, True), (True, True))]
        names = list(VARIANTS)
        if args.all_heads:
            circuits += [every_head(circuits[0]), every_head(circuits[2])]
            names += ALL_HEADS
        rows = [{"variant": v, "counts": c.counts(), "n_params": c.n_params()} for v, c in zip(names, circuits)]
        for split in args.splits:
            for row, ev in zip(rows, evaluate_many(model, task, circuits, split, max_examples=args.max_examples)):
                row[split] = {"n_examples": ev.n_examples, "kl": ev.kl, "kl_se": ev.kl_se,
                              "recovered": ev.recovered}
                print(task_name, split, row["variant"], f"KL {ev.kl:.4f} ± {ev.kl_se:.4f}",
                      f"recovered {ev.recovered:.3f}", flush=True)
        out[task_name] = {"run": str(args.run or RUNS[task_name]), "seed": seed, "rows": rows}
    write("whole_nodes", {"splits": args.splits, "max_examples": args.max_examples, "tasks": out}, args.out,
          args.tag)


if __name__ == "__main__":
    main()
