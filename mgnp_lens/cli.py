"""``mgnp`` command line: thin wrappers over the library.

    mgnp discover --task ioi --out runs/ioi            # embedded SmolLM2-135M, paper λ
    mgnp discover --task ioi --model /path/to/ckpt --steps 100 --lambda attn_head=2.0
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path


def _number(text: str, cast, minimum, context: str = ""):
    """``cast(text)``, or an argparse error naming the problem; values below ``minimum`` are out of range."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{context}{text!r} is not {'an integer' if cast is int else 'a number'}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{context}{value} is out of range: must be >= {minimum}")
    return value


def _lambda_spec(text: str) -> tuple[str, float]:
    from .granularity import GRANULARITIES

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"bad λ spec {text!r}: expected GRANULARITY=VALUE, e.g. attn_head=3.0")
    g, v = text.split("=", 1)
    if g not in GRANULARITIES:
        raise argparse.ArgumentTypeError(f"bad λ spec {text!r}: unknown granularity {g!r} "
                                         f"(expected one of {', '.join(GRANULARITIES)})")
    return g, _number(v, float, 0.0, f"bad λ spec {text!r}: ")


def _positive_int(text: str) -> int:
    return _number(text, int, 1)


def build_parser() -> argparse.ArgumentParser:
    from .tasks import TASKS

    p = argparse.ArgumentParser(prog="mgnp", description="Multi-Granular Node Pruning circuit discovery")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("discover", help="discover a circuit and write its tables")
    d.add_argument("--task", choices=sorted(TASKS), default="ioi", help="built-in task (default: ioi)")
    d.add_argument("--model", default=None, help="model name, checkpoint dir or .gguf (default: embedded SmolLM2)")
    d.add_argument("--steps", type=_positive_int, default=None)
    d.add_argument("--batch-size", type=_positive_int, default=None)
    d.add_argument("--lr", type=float, default=None)
    d.add_argument("--lambda-scale", type=float, default=None)
    d.add_argument("--lambda", dest="lambdas", type=_lambda_spec, action="append", default=[],
                   metavar="GRAN=VALUE", help="override one granularity's λ (repeatable)")
    d.add_argument("--corruption-mode", choices=["batch", "cache"], default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--n-test", type=_positive_int, default=1024, help="test pairs to generate and evaluate")
    d.add_argument("--out", default="runs/latest", help="output directory")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _versions() -> dict:
    from . import __version__
    from .models import library_versions

    return {"mgnp_lens": __version__, **library_versions(), "python": platform.python_version()}


def cmd_discover(args) -> int:
    from . import discover, load_model
    from .discover import PruningConfig
    from .tasks import get_task

    out = Path(args.out)
    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                   "lambda_scale": args.lambda_scale, "corruption": args.corruption_mode}.items()
                 if v is not None}
    if args.lambdas:
        overrides["lambdas"] = dict(args.lambdas)
    config = PruningConfig(seed=args.seed, checkpoint_dir=str(out), progress=not args.quiet,
                           eval_max_examples=args.n_test, **overrides)
    model = load_model(args.model, device=args.device)
    task = get_task(args.task, model, n_test=args.n_test, seed=args.seed)
    result = discover(model, task, config)
    meta = {"command": sys.argv, "task": args.task, "model": args.model or "smollm2-135m",
            "versions": _versions(), "config": config.to_dict()}
    (out / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    print()
    print(result.circuit.per_layer().to_string(index=False))
    print()
    print(result.circuit.summary().to_string(index=False))
    if result.evaluation is not None:
        e = result.evaluation
        print(f"\n{e.split} ({e.n_examples} pairs): {e.metric_name} full {e.base_metric:.3f} -> circuit "
              f"{e.circuit_metric:.3f}, KL {e.kl:.3f}")
    print(f"\noutputs in {out}/ (circuit.json, per_layer.csv, summary.csv, evaluation.json, history.csv, config.json)")
    return 130 if result.interrupted else 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "discover":
            return cmd_discover(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"mgnp: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
