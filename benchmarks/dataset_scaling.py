"""Peak memory of ``mgnp discover --data pairs.csv`` as the dataset grows: 1k, 10k and 100k IOI pairs.

    python benchmarks/dataset_scaling.py [--sizes 1000,10000,100000] [--steps 5] [--batch-size 8] [--out results.json]

The CSVs are written from the IOI generator (the embedded SmolLM2 model's tokenizer); each size then runs in a
fresh process through the command line, as a user would, with ``--steps 5 --batch-size 8 --n-test 64`` (the
evaluations are capped at 64 pairs). Recorded per size: peak RSS, wall time, whether the training pairs'
full-model outputs were precomputed or computed batch by batch (``precompute="auto"``), and what precomputing
all of them would have needed. Before streaming, 100k pairs were OOM-killed at a 5 GiB limit after 19 minutes.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from harness import child_main, in_subprocess, parser, peak_rss_mb, print_table, write


def child(payload: dict) -> dict:
    """One CLI run on the CSV in ``payload``; its peak RSS and what it chose."""
    import json

    from mgnp_lens.cli import main

    out = Path(payload["out"])
    t0 = time.perf_counter()
    code = main(["discover", "--data", payload["csv"], "--steps", str(payload["steps"]), "--batch-size",
                 str(payload["batch_size"]), "--n-test", "64", "--device", payload["device"], "--out", str(out),
                 "--quiet"])
    seconds = time.perf_counter() - t0
    config = json.loads((out / "config.json").read_text())
    status = json.loads((out / "evaluation.json").read_text())
    return {"exit_code": code, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "precompute": config["precompute"],
            "steps_completed": status["steps_completed"], "train_kl": status["train_evaluation"]["kl"]}


def write_csvs(sizes: list[int], directory: Path) -> dict[int, str]:
    """IOI pair files of each size (the first N pairs of one generated set), with the generator's seconds."""
    import mgnp_lens as mg

    model = mg.load_model()
    task = mg.tasks.IOI(model.tokenizer, n_train=max(sizes), n_validation=1, n_test=1)
    paths = {}
    for n in sizes:
        path = directory / f"ioi_{n}.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["clean", "corrupted", "correct", "incorrect"], extrasaction="ignore")
            w.writeheader()
            w.writerows(task.records[:n])
        paths[n] = str(path)
    return paths


def precompute_all_gb(n_pairs: int, tokens_per_pair: float) -> float:
    """What ``precompute="all"`` would hold for ``n_pairs`` training pairs of SmolLM2 (60% of the file is
    training pairs), in GB: answer logits and probabilities, and the corrupted cache."""
    n_train = int(0.6 * n_pairs)
    vocab, layers, per_layer, d_model = 49152, 30, 576 + 1536 + 576, 576
    return (2 * 4 * n_train * vocab + 4 * n_train * tokens_per_pair * (layers * per_layer + d_model)) / 2**30


def main() -> None:
    ap = parser(__doc__, "dataset_scaling", device=True)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        paths = write_csvs(sizes, Path(d))
        generate_s = time.perf_counter() - t0
        for n in sizes:
            r = in_subprocess(__file__, {"csv": paths[n], "out": str(Path(d) / f"run_{n}"), "steps": args.steps,
                                         "batch_size": args.batch_size, "device": args.device}, timeout=3600)
            rows.append({"pairs": n, "csv_mb": Path(paths[n]).stat().st_size / 2**20, **r,
                         "precompute_all_would_need_gb": precompute_all_gb(n, 16)})
    print_table(rows, ["pairs", "csv_mb", "precompute", "peak_rss_mb", "seconds", "precompute_all_would_need_gb",
                       "exit_code"])
    write("dataset_scaling", {"steps": args.steps, "batch_size": args.batch_size, "seconds_generate_csvs": generate_s,
                              "note": "precompute_all_would_need_gb assumes 16 tokens a pair (IOI on SmolLM2: 14-20)",
                              "results": rows}, args.out, args.tag)


if __name__ == "__main__":
    if not child_main(child):
        main()
