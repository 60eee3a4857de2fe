"""``mgnp`` command line: thin wrappers over the library (argparse).

    mgnp discover --task ioi --out runs/ioi             # embedded SmolLM2-135M, writes report.html
    mgnp discover --task ioi --paper --out runs/paper    # the paper's λ and training pairs
    mgnp discover --data pairs.csv --model /path/to/ckpt --steps 100 --lambda attn_head=2.0
    mgnp discover --resume runs/ioi [--steps 400]       # continue a stopped run (or train a finished one longer)
    mgnp report runs/ioi                                 # (re)build runs/ioi/report.html
    mgnp evaluate runs/ioi --split validation            # re-evaluate the saved circuit
    mgnp compare runs/gpt2-ioi --reference ioi           # against a published GPT-2 circuit

Exit codes: 0 success; 1 the run failed mid-way or a file could not be written (the last complete checkpoint
is on disk); 2 bad input (an option or --set value, a data or run file, an --out that holds a run or is in use),
found before the model loads where it can be; 3 the model cannot be loaded; 130 interrupted (the outputs of the
last finished step are on disk; --resume continues).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import sys
from pathlib import Path

from .phases import Phases
from .names import ABLATIONS, BACKENDS, EVAL_SPLITS, REFERENCE_NAMES, TASK_NAMES

EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_INTERRUPTED = 130

DEFAULT_OUT = "runs/latest"
#: pairs of the evaluation split whose edge scores (mgnp_lens.interactions) go into DIR/edges.csv
EDGE_EXAMPLES = 32  # PruningConfig.edge_examples, for the help (tests check the two agree)
#: ``mgnp compare --reference patching``: the reference computed from the run's own model by activation patching
PATCHING = "patching"
DEFAULT_N_TEST = 1024


class CliError(Exception):
    """A user mistake: printed as ``mgnp: error: ...`` with exit code 2."""


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


def _granularity_spec(what: str, example: str):
    """An argparse type for ``GRANULARITY=VALUE`` (a non-negative number), named ``what`` in its errors."""
    def parse(text: str) -> tuple[str, float]:
        from .granularity import ALL_GRANULARITIES

        if "=" not in text:
            raise argparse.ArgumentTypeError(f"bad {what} spec {text!r}: expected GRANULARITY=VALUE, e.g. {example}")
        g, v = text.split("=", 1)
        if g not in ALL_GRANULARITIES:
            raise argparse.ArgumentTypeError(f"bad {what} spec {text!r}: unknown granularity {g!r} "
                                             f"(expected one of {', '.join(ALL_GRANULARITIES)})")
        return g, _number(v, float, 0.0, f"bad {what} spec {text!r}: ")
    return parse


_lambda_spec = _granularity_spec("λ", "attn_head=3.0")


def _positive_int(text: str) -> int:
    return _number(text, int, 1)


def _non_negative_int(text: str) -> int:
    return _number(text, int, 0)


def _positive_float(text: str) -> float:
    value = _number(text, float, 0.0)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{value} is out of range: must be > 0")
    return value


def _nonnegative_float(text: str) -> float:
    return _number(text, float, 0.0)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mgnp-lens")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_discover(sub, tasks) -> None:
    """The ``discover`` command and its options."""
    d = sub.add_parser("discover", help="discover a circuit; write its tables, figures and report.html",
                       description="Discover a circuit with multi-granular node pruning and write circuit.json, "
                                   "per_layer.csv, summary.csv, evaluation.json, history.csv, config.json, "
                                   "gates.pt, state.pt (to --resume from) and report.html into --out.")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--task", choices=sorted(tasks), default=None,
                     help="built-in task: ioi (indirect object identification, Wang et al.), gt (Greater-Than, Hanna "
                          "et al.), gp (Gendered Pronouns, Mathwin et al.); default ioi")
    src.add_argument("--data", default=None, metavar="PAIRS.{csv,jsonl}",
                     help="your own prompt pairs: columns clean, corrupted, correct, incorrect")
    d.add_argument("--model", default=None, help="model name, checkpoint dir or .gguf (default: embedded SmolLM2)")
    d.add_argument("--backend", choices=BACKENDS, default=None,
                   help="auto (default): TransformerLens's HookedTransformer where it can represent the model's "
                        "family, else TransformerBridge (config.json records which); hooked or bridge: insist on one")
    d.add_argument("--n-devices", type=_positive_int, default=1, metavar="N",
                   help="spread the model's layers over N CUDA devices (hooked backend; default 1)")
    _add_training_options(d.add_argument_group("training"))
    _add_output_options(d.add_argument_group("pairs and output"))


def _add_training_options(d) -> None:
    """``discover``'s optimizer, objective and precision options."""
    d.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (default 240)")
    d.add_argument("--batch-size", type=_positive_int, default=None, help="pairs per step (default 32)")
    d.add_argument("--lr", type=_positive_float, default=None, help="AdamW learning rate on log α (default 0.2)")
    d.add_argument("--lambda-scale", type=_nonnegative_float, default=None, help="multiply every λ (default 1)")
    d.add_argument("--lambda", dest="lambdas", type=_lambda_spec, action="append", default=[],
                   metavar="GRAN=VALUE", help="override one granularity's λ (repeatable)")
    d.add_argument("--paper", action="store_true",
                   help="the paper's setting instead of the defaults: its λ (Appendix C) and, for a built-in task, its "
                        "training pairs (IOI 200, gt and gp 150); --lambda and --max-train still override")
    d.add_argument("--corruption-mode", choices=["batch", "cache"], default=None,
                   help="corrupted activations from the same pass (batch) or precomputed (cache, default)")
    d.add_argument("--target-kl", type=_positive_float, default=None, metavar="EPS",
                   help="ask for the smallest circuit whose KL stays within EPS nats: λ is adjusted during training, "
                        "the hard circuit is checked on validation pairs, and the run says whether it met EPS")
    d.add_argument("--target-sparsity", dest="target_sparsity", type=_granularity_spec("size target", "attn_head=0.9"),
                   action="append", default=[], metavar="GRAN=FRACTION",
                   help="ask for a size instead: prune this fraction of a granularity's nodes (repeatable; its λ is "
                        "adjusted during training, the run says whether it got there)")
    d.add_argument("--ablation", choices=ABLATIONS, default=None,
                   help="what a pruned node outputs: its activation on the corrupted prompt (default), zero, or its "
                        "mean over the training pairs' corrupted prompts")
    d.add_argument("--autocast", choices=["auto", "bfloat16", "float16", "float32"], default=None,
                   help="precision of the training passes (default auto: bfloat16 where the hardware has it)")
    d.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="any PruningConfig field, value as JSON when it parses, e.g. --set lr_warmup_steps=0 "
                        "--set 'betas=[0.9,0.999]' --set l0_penalty=path (repeatable; applied after the flags)")
    d.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    d.add_argument("--device", default="auto",
                   help="torch device: auto (CUDA when available, else CPU; the default), cpu, cuda, cuda:1, ...")
    d.add_argument("--config", default=None, metavar="FILE",
                   help="PruningConfig fields from a JSON or TOML file (a run's config.json works); flags and --set "
                        "override it")


def _add_output_options(d) -> None:
    """``discover``'s pair counts, output directory, resuming and edge options."""
    d.add_argument("--n-test", type=_positive_int, default=None,
                   help=f"test pairs to generate and evaluate, and pairs in each held-out split of a built-in task "
                        f"(default {DEFAULT_N_TEST})")
    d.add_argument("--max-train", type=_positive_int, default=None, metavar="N",
                   help="train on at most N pairs (built-in tasks generate N; --data keeps its first N)")
    d.add_argument("--out", default=None, help=f"output directory (default {DEFAULT_OUT})")
    d.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (it is deleted only once the new run has written its "
                        "circuit)")
    d.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR from its last checkpoint (state.pt) with its saved settings, "
                        "exactly as if it had not stopped; with --steps, train a finished run longer. Only "
                        "--steps, --device, --n-devices and --quiet may be given with it")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--edge-examples", type=_non_negative_int, default=None, metavar="N",
                   help=f"score the circuit's edges on N evaluation pairs for the report's graph (edges.csv; "
                        f"default {EDGE_EXAMPLES}: seconds for the default model on 2 CPU cores; 0 skips it; "
                        "the setting edge_examples)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgnp", description="Multi-Granular Node Pruning circuit discovery",
                                epilog="Run 'mgnp COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"mgnp-lens {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_discover(sub, TASK_NAMES)

    r = sub.add_parser("report", help="(re)build DIR/report.html from a run directory")
    r.add_argument("dir", help="a run directory, or a method comparison's (faithfulness curves, curve.csv)")
    r.add_argument("--reference", choices=REFERENCE_NAMES, default=None,
                   help="reference circuit to compare with (GPT-2-small-shaped circuits only)")
    r.add_argument("--out", default=None, help="report path (default DIR/report.html)")
    r.add_argument("--views", action="store_true",
                   help="first (re)compute the edges, heads, attention and example files that mgnp discover writes "
                        "(loads the run's model; for a run stopped while writing them)")
    r.add_argument("--edge-examples", type=_non_negative_int, default=EDGE_EXAMPLES, metavar="N",
                   help=f"with --views: evaluation pairs the edges are scored on (default {EDGE_EXAMPLES}; 0: none)")
    r.add_argument("--device", default="auto", help="with --views: torch device (default auto)")

    e = sub.add_parser("evaluate", help="re-evaluate a saved circuit on a task split",
                       description="Re-evaluate DIR/circuit.json on the run's task (rebuilt from config.json) "
                                   "and write DIR/evaluation_<split>.json; the run's own files are untouched.")
    e.add_argument("dir", help="a run directory")
    e.add_argument("--split", choices=EVAL_SPLITS, default="test",
                   help="which split (default test); test_templates: templates held out of training and validation, "
                        "test_corruption: the other corruption, test_ood: both (built-in tasks)")
    e.add_argument("--max-examples", type=_positive_int, default=None, help="evaluate only the first N pairs")
    e.add_argument("--batch-size", type=_positive_int, default=32, help="pairs per forward pass (default 32)")
    e.add_argument("--model", default=None, help="override the model recorded in config.json")
    e.add_argument("--device", default="auto", help="torch device: auto (CUDA when available, else CPU; the default), cpu, cuda, cuda:1, ...")
    e.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the evaluation (default DIR/evaluation_<split>.json; e.g. for a read-only run)")

    c = sub.add_parser("compare", help="compare a saved circuit with another run's or a published reference",
                       description="Compare DIR's circuit with OTHER's (two runs, seeds or λ of one model: kept nodes, "
                                   "Jaccard per granularity, the heads and MLPs only one keeps) or with --reference "
                                   "(a published circuit, or activation patching of the run's own model: AUC and "
                                   "precision at k of the kept heads and MLPs); writes DIR/compare_<other>.csv.")
    c.add_argument("dir", help="a run directory")
    c.add_argument("other", nargs="?", default=None, help="another run directory")
    c.add_argument("--reference", default=None, choices=(*REFERENCE_NAMES, PATCHING),
                   help="a published circuit (GPT-2 small's or tracr's), or patching: rank the circuit's heads and "
                        "MLPs against TransformerLens's own activation patching of the run's model and task (any "
                        "model; about 5 minutes per 32 pairs for the default model on 2 CPU cores)")
    c.add_argument("--max-examples", type=_positive_int, default=32,
                   help="with --reference patching: patch on the first N evaluation pairs (default 32)")
    c.add_argument("--device", default="auto", help="with --reference patching: torch device (default auto)")

    x = sub.add_parser("export", help="write a saved circuit in another tool's format",
                       description="Write DIR's circuit as a unit table (nodes-csv), EAP-IG graph JSON, GraphML, DOT, "
                                   "or the hook list that reproduces it with plain TransformerLens (tl-hooks).")
    x.add_argument("dir", help="a run directory")
    x.add_argument("--format", required=True, choices=["eap-ig", "graphml", "dot", "tl-hooks", "nodes-csv"],
                   help="eap-ig: EAP-IG's graph JSON; graphml / dot: the node graph for graph tools; tl-hooks: the "
                        "hook list that reproduces the circuit with plain run_with_hooks; nodes-csv: one row per "
                        "kept unit")
    x.add_argument("--out", default=None, help="output file (default DIR/circuit.<format's extension>)")
    return p


# --------------------------------------------------------------------------- helpers
def _check_data_file(path: str) -> Path:
    """The ``--data`` file, read once now (an empty, non-UTF-8 or malformed file is named before the model loads)."""
    from .tasks.readers import read_csv, read_jsonl

    p = Path(path)
    if p.suffix not in (".csv", ".jsonl"):
        raise CliError(f"--data {path}: expected a .csv or .jsonl file of prompt pairs")
    if not p.is_file():
        raise CliError(f"--data {path}: no such file")
    (read_csv if p.suffix == ".csv" else read_jsonl)(p)
    return p.resolve()  # recorded absolute: --resume and evaluate work from any directory


def _resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU; any other name is checked here, before the model loads
    (``CliError``, exit 2, naming what this machine has)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {device}: not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device}: this machine has no CUDA GPU that torch can use (a CPU-only torch build, or "
                       "no driver); use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CliError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CliError(f"--device {device}: Apple's MPS is not available here; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise CliError(f"--device {device}: mgnp runs on cpu, cuda or mps; use --device auto")
    return device


def _load_model(name, device, backend: str | None = None, n_devices: int = 1):
    """The model, or :class:`~mgnp_lens.models.ModelLoadError` (exit 3) for any reason it cannot be loaded
    (too few GPUs for ``n_devices``: a ``CliError``, exit 2, before anything loads)."""
    from .models import ModelLoadError, check_cuda_devices, load_model

    device = _resolve_device(device)
    if n_devices > 1:
        try:
            check_cuda_devices(n_devices)
        except ValueError as e:
            raise CliError(f"--n-devices {n_devices}: {e}") from None
    try:
        return load_model(name, device=device, backend=backend or "auto", n_devices=n_devices)
    except (ValueError, OSError, RuntimeError) as e:
        raise ModelLoadError(str(e)) from e


def _model_and_task(name, device, backend, n_devices: int, cli: dict, phases: Phases):
    """:func:`_load_model` and :func:`_build_task`, each a timed phase; without progress the loaders' own
    messages are silenced too (``--quiet``)."""
    quiet = contextlib.redirect_stdout(io.StringIO()) if not phases.progress else contextlib.nullcontext()
    with phases("load model"), quiet, _loader_bars(phases.progress):
        model = _load_model(name, device, backend, n_devices)
    with phases("build task"):
        return model, _build_task(model, cli)


@contextlib.contextmanager
def _loader_bars(show: bool):
    """``transformers``' own progress bars (the weights' loading) on or off for the ``with``, the GGUF conversion's
    too (it draws a plain ``tqdm`` bar that ``transformers``' switch does not reach)."""
    from transformers.utils import logging as hf_logging

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf
    except ImportError:  # a transformers without GGUF support: no such bar
        gguf = None
    before, bar = hf_logging.is_progress_bar_enabled(), getattr(gguf, "tqdm", None)
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    if not show and bar is not None:
        gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
        if bar is not None:
            gguf.tqdm = bar


def _build_task(model, cli: dict):
    from .tasks import PromptPairTask, get_task

    n_train = cli.get("max_train")
    if cli.get("data"):
        path = Path(cli["data"])
        loader = PromptPairTask.from_csv if path.suffix == ".csv" else PromptPairTask.from_jsonl
        task = loader(model, path, seed=cli.get("seed", 0), name=path.stem)
        if n_train is not None:
            task.splits["train"] = task.splits["train"].head(n_train)
        return task
    sizes = {"n_train": n_train} if n_train is not None else {}
    n_test = cli.get("n_test", 1024)
    return get_task(cli.get("task") or "ioi", model, n_test=n_test, n_heldout=n_test, seed=cli.get("seed", 0),
                    **sizes)


def _print_timings(out: Path) -> None:
    """One line: the session's seconds, phase by phase (``timings.json``)."""
    from .rundir import TIMINGS_FILE

    try:
        phases = json.loads((out / TIMINGS_FILE).read_text())["phases"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    print(f"time: {sum(phases.values()):.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + ")")


def _print_result(result) -> None:
    print()
    print(result.circuit.per_layer().to_string(index=False))
    print()
    print(result.circuit.summary().to_string(index=False))
    for e in (result.train_evaluation, result.evaluation, *result.heldout_evaluations.values()):
        if e is not None:
            recovered = "" if e.recovered is None else f" ({e.recovered:.0%} of the full model's, from the empty circuit's)"
            loss = "" if e.loss is None else f", {e.loss_name} loss {e.loss:.3f}"
            se = "" if e.kl_se is None else f" ± {e.kl_se:.3f}"
            print(f"{e.split} ({e.n_examples} pairs): {e.metric_name} full {e.base_metric:.3f} -> circuit "
                  f"{e.circuit_metric:.3f}{recovered}, KL {e.kl:.3f}{se}{loss}")
    if result.target is not None:
        from .targets import outcome_text

        print("{}: {}".format(*outcome_text(result.target)))
    sel = result.selection
    if sel is not None and sel["select"] == "validation":
        print(f"returned: step {sel['step']} of {sel['of_steps']}'s circuit, chosen over {sel['validation_checks']} "
              f"validation checks ({sel['rule']})")
    conv = result.meta.get("convergence")
    if conv is not None:
        print(f"converged: {'yes' if conv['converged'] else 'no'} (the hard circuit was stable for the last "
              f"{conv['stable_steps']} steps, {conv['stable_needed']} needed"
              f"{'; training stopped there' if conv.get('stopped_at_step') else ''})")
        from .targets import moving_text

        moving = moving_text(conv)
        if moving:
            print(f"  {moving}")
        if conv.get("repairs"):
            from .confirm import repairs_text

            print(f"repaired after training: {repairs_text(conv['repairs'])}")


# --------------------------------------------------------------------------- commands
def _discover_config(args, out: Path):
    """The run's ``PruningConfig`` from the flags and ``--set`` (every value checked; nothing touched yet)."""
    from .config import PruningConfig, parse_overrides

    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                   "lambda_scale": args.lambda_scale, "corruption": args.corruption_mode,
                                   "ablation": args.ablation, "autocast": args.autocast, "target_kl": args.target_kl}.items()
                 if v is not None}
    if args.lambdas or args.paper:
        from .granularity import PAPER_LAMBDAS

        overrides["lambdas"] = {**(PAPER_LAMBDAS if args.paper else {}), **dict(args.lambdas)}
    if args.target_sparsity:
        overrides["target_sparsity"] = dict(args.target_sparsity)
    given = {k: v for k, v in (("seed", args.seed), ("eval_max_examples", args.n_test),
                               ("edge_examples", args.edge_examples)) if v is not None}
    settings = {"seed": 0, "eval_max_examples": DEFAULT_N_TEST, **_config_file(args.config), **given, **overrides,
                **parse_overrides(args.settings)}
    for fixed in ("checkpoint_dir", "progress"):
        if fixed in settings:
            raise CliError(f"--set {fixed}=... is not allowed: the CLI sets it from --out / --quiet")
    try:
        return PruningConfig(**{**settings, "checkpoint_dir": str(out), "progress": not args.quiet})
    except TypeError as e:  # not a field (parse_overrides names those) or a missing one
        raise CliError(str(e)) from None


def _config_file(path: str | None) -> dict:
    """PruningConfig fields from ``--config`` (JSON or TOML; a run's config.json: its ``config`` entry), without the
    fields the CLI sets itself. ``CliError`` names a missing or unreadable file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise CliError(f"--config {path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise CliError(f"--config {path}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'} ({e})") from None
    data = data.get("config", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise CliError(f"--config {path}: expected a mapping of PruningConfig fields")
    from .config import check_field_names

    check_field_names(data, f"in --config {path}")
    return {k: v for k, v in data.items() if k not in ("checkpoint_dir", "progress")}


def cmd_discover(args) -> int:
    """Check everything, take the lock, load the model and build the task, and only then replace an old run."""
    from .discovery import discover
    from .result import write_json
    from .rundir import announce_recovery, check_new_out, check_replaceable, check_writable, holds_run, replacing, \
        run_lock

    if args.resume is not None:
        return _resume(args)
    out = Path(args.out or DEFAULT_OUT)
    config = _discover_config(args, out)
    args.seed = config.seed
    args.n_test = DEFAULT_N_TEST if args.n_test is None else args.n_test
    data = str(_check_data_file(args.data)) if args.data else None
    check_writable(out)
    task_name = None if data else (args.task or "ioi")
    if args.paper and task_name and args.max_train is None:
        from .tasks import TASKS

        args.max_train = TASKS[task_name].PAPER_N_TRAIN
    cli = {"task": task_name, "data": data, "model": args.model,
           "n_test": args.n_test, "max_train": args.max_train, "seed": args.seed, "device": args.device,
           "backend": args.backend, "n_devices": args.n_devices}
    with run_lock(out):
        announce_recovery(out)
        if holds_run(out):
            check_replaceable(out)  # a directory with someone else's files is no run, whatever --overwrite says
            if not args.overwrite:
                raise CliError(f"{out} already holds a run; choose another --out or pass --overwrite")
        else:
            check_new_out(out)
        phases = Phases(progress=not args.quiet)
        model, task = _model_and_task(args.model, args.device, args.backend, args.n_devices, cli, phases)
        with replacing(out, holds_run(out)):
            write_json(out / "config.json", {"config": config.to_dict(), "cli": cli, "command": ["mgnp", *args.argv]})
            result = discover(model, task, config)
        return _finish(result, out, phases)


def _read_json(path: Path, what: str) -> dict:
    """A run file's JSON, or a ``CliError`` naming the file and what is wrong with it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CliError(f"{path} ({what}) is damaged: {e}") from None


def _resume(args) -> int:
    """``mgnp discover --resume DIR``: rebuild the run's model and task from DIR/config.json and continue it."""
    from .checkpoint import STATE_FILE, load_state
    from .config import PruningConfig
    from .discovery import discover
    from .result import write_json
    from .rundir import announce_recovery, run_lock

    given = [flag for flag, value in (("--task", args.task), ("--data", args.data), ("--model", args.model),
                                      ("--batch-size", args.batch_size), ("--lr", args.lr),
                                      ("--lambda-scale", args.lambda_scale), ("--lambda", args.lambdas or None),
                                      ("--paper", args.paper or None),
                                      ("--corruption-mode", args.corruption_mode), ("--ablation", args.ablation),
                                      ("--target-kl", args.target_kl),
                                      ("--target-sparsity", args.target_sparsity or None),
                                      ("--backend", args.backend),
                                      ("--autocast", args.autocast),
                                      ("--set", args.settings or None), ("--seed", args.seed),
                                      ("--n-test", args.n_test), ("--max-train", args.max_train),
                                      ("--config", args.config),
                                      ("--out", args.out), ("--overwrite", args.overwrite or None))
             if value is not None]
    if given:
        raise CliError(f"--resume continues the run with its saved settings; {', '.join(given)} cannot be given "
                       "with it (only --steps, --device, --n-devices and --quiet)")
    out = Path(args.resume)
    announce_recovery(out)
    if not (out / STATE_FILE).exists():
        raise CliError(f"--resume {out}: no {STATE_FILE} there (a run writes it at each checkpoint, on Ctrl-C or "
                       "an error, and at the end)")
    saved = _read_json(out / "config.json", "the run's settings")
    if not saved.get("cli"):
        raise CliError(f"--resume {out}: the run was not started by mgnp discover; resume it from Python with "
                       "mgnp_lens.discover(model, task, resume_from=DIR)")
    config = PruningConfig.from_dict({**saved["config"], "progress": not args.quiet, "checkpoint_dir": str(out),
                                      **({"steps": args.steps} if args.steps is not None else {}),
                                      **({"edge_examples": args.edge_examples} if args.edge_examples is not None
                                         else {})})
    status = _read_json(out / "evaluation.json", "the run's status") if (out / "evaluation.json").exists() else {}
    if status.get("interrupted") is False and status.get("train_evaluation") \
            and status.get("steps_completed", 0) >= config.steps:  # trained and evaluated
        raise CliError(f"--resume {out}: the run already finished its {status['steps_completed']} steps; "
                       "pass a larger --steps to train it longer")
    load_state(out)  # a damaged state.pt is named now, before the model loads
    with run_lock(out):
        phases = Phases(progress=not args.quiet)
        model, task = _model_and_task(saved["cli"].get("model"), args.device, saved["cli"].get("backend"),
                                      args.n_devices, saved["cli"], phases)
        saved["resumed"] = [*saved.get("resumed", []), ["mgnp", *args.argv]]
        write_json(out / "config.json", saved)
        return _finish(discover(model, task, config, resume_from=out), out, phases)


def _write_timings(out: Path, result, phases: Phases) -> None:
    """``timings.json``: the seconds of every phase of this session, the CLI's (model load, task, edges, views,
    report) around the run's own (:attr:`DiscoveryResult.timings`)."""
    from .result import write_json
    from .rundir import TIMINGS_FILE

    order = ("load model", "build task")
    cli = phases.seconds
    merged = {**{k: cli[k] for k in order if k in cli}, **result.timings,
              **{k: v for k, v in cli.items() if k not in order}}
    write_json(out / TIMINGS_FILE, {"phases": merged, "total": sum(merged.values())})


def _finish(result, out: Path, phases: Phases) -> int:
    """Build the report, print the tables and where the outputs are; the exit code."""
    from .report import RUN_FILES, build_report

    try:
        _write_timings(out, result, phases)
        with phases("report"):
            report = build_report(out)
        _write_timings(out, result, phases)
    except KeyboardInterrupt:
        print(f"mgnp: interrupted while building the report; the run's files are complete "
              f"({result.steps_completed} steps): mgnp report {out} builds it"
              + (f", mgnp discover --resume {out} continues the run" if result.interrupted else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_result(result)
    _print_timings(out)
    print(f"\noutputs in {out}/: {', '.join(n for n in RUN_FILES if (out / n).exists())}")
    print(f"report: {report.resolve()}")
    if result.interrupted:
        print(f"interrupted after {result.steps_completed} steps; the circuit of the last finished step is saved; "
              f"continue with: mgnp discover --resume {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def cmd_report(args) -> int:
    from .report import CURVE_FILE, build_comparison_report, build_report
    from .rundir import announce_recovery

    announce_recovery(Path(args.dir))
    if args.views:
        _recompute_views(args)
    if (Path(args.dir) / CURVE_FILE).exists() and not (Path(args.dir) / "circuit.json").exists():
        path = build_comparison_report(args.dir, out=args.out)  # methods.compare_methods' directory
    else:
        path = build_report(args.dir, out=args.out, reference=args.reference)
    print(f"report: {path.resolve()}")
    return 0


def _recompute_views(args) -> None:
    """``mgnp report DIR --views``: the run's edges, heads, attention and example files written again from its
    circuit (the model and task rebuilt from config.json)."""
    from .config import PruningConfig
    from .views import run_views

    info = _run_cli_info(Path(args.dir), need_evaluation=False)
    run, cli = info["run"], info["cli"]
    model = _load_model(cli.get("model"), args.device, cli.get("backend"))
    task = _build_task(model, cli)
    config = PruningConfig.from_dict({**run["config"]["config"], "progress": True})
    run_views(model, task, run["circuit"], config.eval_split or "train", config.ablation, args.edge_examples,
              phases=Phases(progress=True)).write(Path(args.dir))


def _run_cli_info(directory: Path, need_evaluation: bool = True) -> dict:
    from .report import load_run
    from .rundir import announce_recovery

    announce_recovery(Path(directory))
    run = load_run(directory, need_evaluation=need_evaluation)
    cfg = run["config"]
    cli = dict(cfg.get("cli") or {})
    if not cli:  # a run saved from Python: rebuild the task from its description if it is a built-in one
        task = cfg.get("task") or run["circuit"].task or {}
        from .tasks import TASKS

        if task.get("name") not in TASKS:
            raise CliError(f"{directory}: task {task.get('name')!r} cannot be rebuilt from config.json; "
                           "evaluate it from Python with mgnp_lens.evaluate")
        cli = {"task": task["name"], "seed": task.get("seed", cfg.get("seed", 0)),
               "n_test": (task.get("sizes") or {}).get("test", 1024)}
        source = (cfg.get("model") or {}).get("source")
        cli["model"] = None if source is None or str(source).endswith("SmolLM2-135M-Instruct.Q4_1.gguf") else source
    return {"run": run, "cli": cli}


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    from .result import write_json
    from .rundir import check_writable

    info = _run_cli_info(Path(args.dir), need_evaluation=False)  # a damaged evaluation.json is not needed here
    run, cli = info["run"], info["cli"]
    path = Path(args.out) if args.out else Path(args.dir) / f"evaluation_{args.split}.json"
    try:
        check_writable(path.parent)
    except ValueError as e:
        raise CliError(f"{e} (pass --out FILE to write the evaluation elsewhere)") from None
    model = _load_model(args.model if args.model is not None else cli.get("model"), args.device, cli.get("backend"))
    task = _build_task(model, cli)
    ev = evaluate(model, task, run["circuit"], args.split, args.batch_size, args.max_examples)
    write_json(path, ev.to_dict())
    print(ev.to_frame().to_string(index=False))
    print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from .reference import compare
    from .report import load_run
    from .sweep import compare_circuits

    if (args.other is None) == (args.reference is None):
        raise CliError("compare needs another run directory or --reference NAME (one of them)")
    circuit = load_run(args.dir)["circuit"]
    if args.other is not None:
        table, label = compare_circuits(circuit, load_run(args.other)["circuit"]), Path(args.other).name
    elif args.reference == PATCHING:
        table, label = _against_patching(args), PATCHING
    else:
        table, label = compare(circuit, args.reference), args.reference
    path = Path(args.dir) / f"compare_{label}.csv"
    table.to_csv(path, index=False)
    print(table.to_string(index=False))
    print(f"wrote {path}")
    return 0


def _against_patching(args):
    """The run's circuit ranked against activation patching of its own model and task (``reference.patching_effects``
    on the evaluation split); the effects go to DIR/patching_effects.csv."""
    from .reference import patching_effects, rank_against_patching

    info = _run_cli_info(Path(args.dir))
    run, cli = info["run"], info["cli"]
    model = _load_model(cli.get("model"), args.device, cli.get("backend"))
    task = _build_task(model, cli)
    split = run["config"].get("config", {}).get("eval_split") or "test"
    effects = patching_effects(model, task, split=split, max_examples=args.max_examples)
    effects.to_csv(Path(args.dir) / "patching_effects.csv", index=False)
    return rank_against_patching(run["circuit"], effects)


EXTENSIONS = {"eap-ig": "eap-ig.json", "graphml": "graphml", "dot": "dot", "tl-hooks": "tl-hooks.json",
              "nodes-csv": "nodes.csv"}


def cmd_export(args) -> int:
    from .export import export
    from .report import load_run

    run = load_run(args.dir)
    parallel = bool(run["config"].get("parallel_attn_mlp", False))
    path = Path(args.out) if args.out else Path(args.dir) / f"circuit.{EXTENSIONS[args.format]}"
    path.write_text(export(run["circuit"], args.format, parallel), encoding="utf-8")
    print(f"wrote {path}")
    return 0


COMMANDS = {"discover": cmd_discover, "report": cmd_report, "evaluate": cmd_evaluate, "compare": cmd_compare,
            "export": cmd_export}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # --help and --version exit here, before torch is imported
    from .models import ModelLoadError
    from .result import DiscoveryError

    from .result import stop_signals_interrupt

    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in config.json
    try:
        with stop_signals_interrupt():  # SIGTERM and SIGHUP stop a run as Ctrl-C does
            return COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        print(f"mgnp: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModelLoadError as e:
        print(f"mgnp: error: cannot load the model: {e}", file=sys.stderr)
        return EXIT_MODEL
    except (CliError, ValueError, FileNotFoundError) as e:
        print(f"mgnp: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DiscoveryError as e:
        print(f"mgnp: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a lost mount: what was written in full is intact
        print(f"mgnp: error: cannot read or write a file: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
