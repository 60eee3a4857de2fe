"""The faithfulness and size targets on the embedded model: does ``target_kl`` meet its target on validation
pairs, does ``target_sparsity`` reach its size, and at what size and held-out KL?

    python benchmarks/target_kl.py [--tasks ioi gt gp] [--target-kl 0.2] [--n-test 512] [--tag T]
    python benchmarks/target_kl.py --target-sparsity 0.9 [--tasks ...]   # heads: prune 90%

One run per task with the CLI's defaults and the target; each run directory goes to ``runs/target_kl_TASK``
(``runs/target_sparsity_TASK``). Writes ``results/target_kl.json`` (``results/target_sparsity.json``): per task
the outcome (met or not, the chosen check's validation KL, the step it stopped at), the circuit's size, the
multiplier it reached and every split's KL and recovered fraction. Tasks already in the file and not run
again are kept.
"""

from __future__ import annotations

import json
import time
import warnings

from harness import parser, peak_rss_mb, RESULTS, write


def _earlier(name: str, tag: str | None, same: dict) -> dict:
    """The tasks of an earlier run of this benchmark with the same settings (kept when others are rerun)."""
    path = RESULTS / "archive" / f"{name}_{tag}.json" if tag else RESULTS / f"{name}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    return old.get("tasks", {}) if all(old.get(k) == v for k, v in same.items()) else {}


def main() -> None:
    ap = parser(__doc__, "target_kl", device=True)
    ap.add_argument("--tasks", nargs="+", default=["ioi", "gt", "gp"], choices=["ioi", "gt", "gp"])
    ap.add_argument("--target-kl", type=float, default=0.2)
    ap.add_argument("--target-sparsity", type=float, default=None,
                    help="run the size target instead: this fraction of attention heads pruned")
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--n-test", type=int, default=512)
    args = ap.parse_args()

    import mgnp_lens as mg

    if args.target_sparsity is None:
        name_, target = "target_kl", {"target_kl": args.target_kl}
    else:
        name_, target = "target_sparsity", {"target_sparsity": {"attn_head": args.target_sparsity}}
    settings = {**target, "steps": args.steps, "n_test": args.n_test}
    model = mg.load_model(device=args.device)
    rows = _earlier(name_, args.tag, settings)
    for name in args.tasks:
        task = mg.tasks.get_task(name, model, n_test=args.n_test, n_heldout=args.n_test)  # as the CLI builds it
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = mg.discover(model, task, **target, steps=args.steps, eval_max_examples=args.n_test,
                            checkpoint_dir=f"runs/{name_}_{name}", progress=False)
        scale = r.history["scale_attn_head"].iloc[-1]
        rows[name] = {"target": r.target, "head_fraction_pruned": 1 - r.circuit.counts()["attn_head"] / (
                          model.cfg.n_layers * model.cfg.n_heads), "selection": r.selection, "steps_completed": r.steps_completed,
                      "seconds": time.perf_counter() - t0, "final_multiplier": float(scale),
                      "counts": r.circuit.counts(), "n_params": r.circuit.n_params(),
                      "evaluations": r.evaluations().to_dict(orient="records"),
                      "warnings": [str(w.message) for w in caught if issubclass(w.category, UserWarning)]}
        print(name, r.target, r.selection["step"], r.circuit.counts()["attn_head"], "heads")
        print(r.evaluations()[["split", "kl", "recovered"]].to_string(index=False))
        # after every task: a stopped benchmark keeps the tasks it finished
        write(name_, {**settings, "peak_rss_mb": peak_rss_mb(), "tasks": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
