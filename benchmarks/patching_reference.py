"""The default circuits against an independent reference: TransformerLens's own activation patching.

    python benchmarks/patching_reference.py [--tasks ioi gt gp] [--pairs 64]

For each task, ``reference.patching_effects`` patches every head's ``hook_z`` and every layer's ``hook_mlp_out``
from the corrupted prompt into the clean run (``transformer_lens.patching``, none of mgnp-lens's hooks) on the
first training pairs, and ``reference.rank_against_patching`` ranks the committed default circuit
(``results/TASK_default/circuit.json``) against those effects: AUC of kept vs pruned |effect|, precision at k,
and the strongest component it does not keep. Writes ``results/patching_reference.json``.

``--reuse-effects`` takes each task's effects from that JSON (the patching depends on the model and the pairs, not on
the circuit) and only ranks the committed circuits again: seconds instead of minutes, after ``make default-runs``.
"""

from __future__ import annotations

import json
import time

from harness import parser, RESULTS, write


def main() -> None:
    ap = parser(__doc__, "patching_reference", device=True)
    ap.add_argument("--tasks", nargs="+", default=["ioi", "gt", "gp"], choices=["ioi", "gt", "gp"])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--reuse-effects", action="store_true",
                    help="rank the committed circuits against the effects in results/patching_reference.json")
    args = ap.parse_args()

    import mgnp_lens as mg
    import pandas as pd
    from mgnp_lens.reference import patching_effects, rank_against_patching

    before = json.loads((RESULTS / "patching_reference.json").read_text())["tasks"] if args.reuse_effects else None
    model = None if before else mg.load_model(device=args.device)
    out = {}
    for name in args.tasks:
        t0 = time.perf_counter()
        if before:
            saved = before[name]
            effects, pairs, seconds = pd.DataFrame(saved["effects"]), saved["pairs"], saved["seconds"]
        else:
            task = mg.tasks.get_task(name, model, n_test=16, n_heldout=16)
            effects = patching_effects(model, task, "train", max_examples=args.pairs)
            pairs, seconds = args.pairs, time.perf_counter() - t0
        circuit = mg.Circuit.load(RESULTS / f"{name}_default" / "circuit.json")
        ranks = rank_against_patching(circuit, effects)
        print(name, ranks.to_string(index=False), effects.head(10).to_string(index=False), sep="\n")
        out[name] = {"pairs": pairs, "seconds": seconds, "effects_reused": bool(before),
                     "ranking": ranks.to_dict(orient="records"), "top_effects": effects.head(20).to_dict(orient="records"),
                     "effects": effects.to_dict(orient="records")}
    write("patching_reference", {"model": "smollm2-135m", "split": "train", "tasks": out}, args.out, args.tag)


if __name__ == "__main__":
    main()
