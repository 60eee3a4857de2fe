"""What the strongest negative head the default circuit drops is worth to the KL objective: each committed default
circuit scored as it is and with that head added back (its attention block, the head, all its neurons), on the same
held-out pairs.

    python benchmarks/negative_heads.py [--splits test test_ood] [--max-examples 512] [--tag T]

The heads are the strongest heads by TransformerLens's activation patching that the default circuits do not keep
(``results/patching_reference.json``: IOI L29 H0, −1.19; Gendered Pronouns L26 H0, −0.99). Writes
``results/negative_heads.json``: per task and split the KL (with its standard error), the circuit's metric and the
recovered fraction of both circuits.
"""

from __future__ import annotations

from harness import RESULTS, parser, write

#: ``{task: (the default run's directory, (layer, head))}``.
HEADS = {"ioi": ("ioi_default", (29, 0)), "gp": ("gp_default", (26, 0))}


def with_head(circuit, layer: int, head: int):
    """``circuit`` with head ``layer.head`` kept whole (its attention block too)."""
    import mgnp_lens as mg

    masks = {g: m.clone() for g, m in circuit.masks.items()}
    masks["attn_block"][layer] = True
    masks["attn_head"][layer, head] = True
    masks["attn_neuron"][layer, head] = True
    return mg.Circuit(circuit.dims, masks)


def main() -> None:
    ap = parser(__doc__, "negative_heads", device=True)
    ap.add_argument("--splits", nargs="+", default=["test", "test_ood"])
    ap.add_argument("--max-examples", type=int, default=512)
    args = ap.parse_args()

    import mgnp_lens as mg
    from mgnp_lens.evaluate import evaluate_many

    model = mg.load_model(None, device=args.device)
    out = {}
    for task_name, (run, (layer, head)) in HEADS.items():
        task = mg.tasks.get_task(task_name, model, n_test=args.max_examples, n_heldout=args.max_examples)
        circuit = mg.Circuit.load(RESULTS / run / "circuit.json")
        if (layer, head) in circuit.active_heads():
            raise SystemExit(f"{run} already keeps L{layer} H{head}")
        rows = []
        for split in args.splits:
            evs = evaluate_many(model, task, [circuit, with_head(circuit, layer, head)], split,
                                   max_examples=args.max_examples)
            for name, ev in zip(("default", f"default + L{layer} H{head}"), evs):
                rows.append({"circuit": name, "split": split, "n_examples": ev.n_examples, "kl": ev.kl,
                             "kl_se": ev.kl_se, "circuit_metric": ev.circuit_metric,
                             "base_metric": ev.base_metric, "recovered": ev.recovered})
                print(task_name, split, name, f"KL {ev.kl:.4f} ± {ev.kl_se:.4f}", f"recovered {ev.recovered:.3f}")
        out[task_name] = {"run": run, "head": [layer, head], "rows": rows}
    write("negative_heads", {"splits": args.splits, "max_examples": args.max_examples, "tasks": out},
          args.out, args.tag)


if __name__ == "__main__":
    main()
