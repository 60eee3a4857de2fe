"""Full-model task metrics of a model on each paper task's test split (issue: tasks), next to the paper's GPT-2 numbers.

    python benchmarks/task_baselines.py [--model NAME_OR_PATH] [--max-test N] [--out results.json]

Also reports the empty circuit (the corrupted run) so the size of the effect is visible.
"""

from __future__ import annotations

import time

from harness import parser, write


def main() -> None:
    ap = parser(__doc__, "task_baselines", device=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-test", type=int, default=None, help="cap on test pairs per task (default: paper sizes)")
    args = ap.parse_args()
    import mgnp_lens as mg
    from mgnp_lens.tasks import _data

    paper = _data.load("paper_tables")["table2_faithfulness"]
    model = mg.load_model(args.model, device=args.device)
    rows = {}
    for name in ("ioi", "gt", "gp"):
        t0 = time.perf_counter()
        task = mg.tasks.get_task(name, model)
        full = mg.evaluate(model, task, mg.Circuit.full(model), "test", max_examples=args.max_test)
        empty = mg.evaluate(model, task, mg.Circuit.empty(model), "test", max_examples=args.max_test)
        rows[name] = {"metric": task.metric_name, "n_test": full.n_examples, "full_model": full.base_metric,
                      "corrupted_run": empty.circuit_metric, "kl_full_vs_corrupted": empty.kl,
                      "paper_gpt2_base": paper[name]["base_metric"], "seconds": time.perf_counter() - t0}
        if hasattr(task, "family"):
            rows[name]["tokenizer_family"] = task.family
    print(f"{'task':<5}{'n_test':>8}{'full model':>12}{'corrupted':>11}{'paper GPT-2':>13}  metric")
    for k, r in rows.items():
        print(f"{k:<5}{r['n_test']:>8}{r['full_model']:>12.3f}{r['corrupted_run']:>11.3f}{r['paper_gpt2_base']:>13.3f}"
              f"  {r['metric']}")
    write("task_baselines", {"model": args.model or "smollm2-135m", "tasks": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
