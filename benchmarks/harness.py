"""The benchmark harness: one way to declare a benchmark's arguments (:func:`parser`) and one result record
(:func:`write`: the benchmark, when, the command, the code's commit and versions, the machine, then the payload),
plus the set-ups several benchmarks share.

A script runs as ``python benchmarks/NAME.py ...``; Python puts ``benchmarks/`` first on the path, so it imports
this module as ``harness``. Each writes ``benchmarks/results/NAME.json`` (the current result, cited by the docs), or
with ``--tag TAG`` a variant kept for the record, ``benchmarks/results/archive/NAME_TAG.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
#: Packages whose versions every result records.
VERSIONED = ("mgnp-lens", "torch", "transformer-lens", "transformers", "numpy")


def parser(doc: str | None, name: str, device: bool = False, settings: bool = False) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its docstring as the description, and the options every benchmark has:
    ``--out PATH`` (where the JSON goes) and ``--tag TAG`` (a variant: ``results/archive/NAME_TAG.json``); with
    ``device`` also ``--device``, with ``settings`` also ``--set KEY=VALUE`` (a ``PruningConfig`` field, repeatable;
    read with :func:`settings_of`)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help=f"JSON path (default benchmarks/results/{name}.json)")
    ap.add_argument("--tag", default=None, help=f"a variant: write benchmarks/results/archive/{name}_TAG.json")
    if device:
        ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    if settings:
        ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override a PruningConfig field (value parsed as JSON when it can be); repeatable")
    return ap


def settings_of(args) -> dict:
    """``--set KEY=VALUE`` items as ``PruningConfig`` overrides (the CLI's parser; exits naming a bad item)."""
    from mgnp_lens.config import parse_overrides

    try:
        return parse_overrides(args.settings)
    except ValueError as e:
        raise SystemExit(f"--set: {e}") from None


def versions() -> dict:
    """The installed versions of :data:`VERSIONED` and Python."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for package in VERSIONED:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def commit() -> dict:
    """The repository's commit and whether the working tree had changes (None outside a git checkout)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": head.stdout.strip(), "dirty": bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def record(name: str) -> dict:
    """The head of every result: benchmark, when (UTC), command, code (commit, dirty), versions, machine."""
    return {"benchmark": name, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]), "code": commit(), "versions": versions(), "machine": machine()}


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    info.update(cpu_info())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


#: CPU features that change which matrix-product kernels run, hence the float rounding of a training step.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """The CPU's model name, its kernel-relevant ISA flags and torch's CPU capability.

    Runs of the same seed and code on CPUs with different kernels diverge from the first steps (the
    rounding of the reductions differs and the optimisation amplifies it), so results are only
    comparable bit for bit on the same kind of CPU (docs/history/calibration.md, "The same code on another CPU").
    """
    import torch

    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
        info["cpu"] = name
        info["cpu_flags"] = [flag for flag in ISA_FLAGS if flag in flags]
    except OSError:
        pass
    try:
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        pass
    return info


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result_path(name: str, out: str | None = None, tag: str | None = None) -> Path:
    """Where a result goes: ``out``, else ``results/archive/NAME_TAG.json`` with a ``tag``, else ``results/NAME.json``."""
    tag = tag.lstrip("_") if tag else None
    return Path(out) if out else RESULTS / "archive" / f"{name}_{tag}.json" if tag else RESULTS / f"{name}.json"


def write(name: str, payload: dict, out: str | None = None, tag: str | None = None) -> Path:
    """Write a benchmark's JSON (:func:`result_path`): the :func:`record`, then ``payload``."""
    path = result_path(name, out, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**record(name), **payload}
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------- shared set-ups
def curves_setting(data: dict) -> str:
    """What λ×1 and the training pairs were in a ``faithfulness_curves`` result: the defaults of the day (recorded
    since 2026-12-08) or, in files written before, the paper's (the defaults until 2026-12-07)."""
    if "lambdas" not in data:
        return "The paper's setting (its λ and 200 / 150 training pairs, the defaults until 2026-12-07)."
    lams = ", ".join(f"{g} {v:g}" for g, v in data["lambdas"].items())
    return f"The defaults' setting: {data['n_train']:,} training pairs, λ×1 = {lams}."


PAPER_MEMORY_MB = {"paper_mgnp_two_model_copies": 6270, "edge_pruning": 33354, "eap": 72794}


def log_fit(xs, ys) -> tuple[float, float]:
    """Least-squares fit of log(y) = slope · log(x) + intercept: ``(slope, intercept)``, the growth exponent."""
    import math

    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    return slope, my - slope * mx


def shaped_model(kind: str = "gpt2-small", device: str = "cpu", **overrides):
    """A HookedTransformer with random weights: ``gpt2-small`` (GPT-2 small's shape), ``llama`` or ``neox``."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    base = dict(n_layers=12, d_model=768, d_head=64, n_heads=12, d_mlp=3072, n_ctx=1024, d_vocab=50257,
                act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard", seed=0)
    if kind == "llama":
        base.update(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
                    n_key_value_heads=max(1, base["n_heads"] // 3), rotary_dim=64, final_rms=True)
    elif kind == "neox":
        base.update(act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary", rotary_dim=16,
                    parallel_attn_mlp=True)
    elif kind != "gpt2-small":
        raise ValueError(f"unknown shape {kind!r}")
    base.update(overrides)
    if kind == "llama":
        base["n_key_value_heads"] = overrides.get("n_key_value_heads", max(1, base["n_heads"] // 3))
        base["rotary_dim"] = base["d_head"]
    base["device"] = device
    torch.manual_seed(0)
    return HookedTransformer(HookedTransformerConfig(**base)).eval()


def random_task(model, n: int, seq: int, seed: int = 0):
    """Random clean/corrupted token pairs of one length (the answer is read at the last position)."""
    import torch
    from mgnp_lens import PromptPairTask

    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (n, seq), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (n, seq), generator=g)
    return PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0],
                                      split_fractions={"train": 1.0})


def step_seconds(model, task, warmup: int = 1, steps: int = 3, **config) -> dict:
    """Median wall time of a discovery step (after ``warmup`` steps), every timed step's, and the first step's KL.

    Steps run in float32 (``autocast="float32"``) unless ``config`` says otherwise, so that ratios against
    the bare float32 forward+backward compare like with like; ``dtype.py`` compares precisions.
    """
    import statistics

    import mgnp_lens as mg

    config.setdefault("autocast", "float32")

    r = mg.discover(model, task, steps=warmup + steps, progress=False, eval_split=None, **config)
    secs = r.history["seconds"].tolist()[warmup:]
    return {"median_s": statistics.median(secs), "all_s": secs, "first_kl": float(r.history["kl"].iloc[0])}


def ab_speedup(before: list[float], after: list[float]) -> dict:
    """Speed-up of alternating A/B rounds: the median of the per-round ratios ``before/after`` and, less
    sensitive to a busy spell of a shared machine, the ratio of each side's fastest round."""
    import statistics

    return {"median": statistics.median(a / b for a, b in zip(before, after)), "best_rounds": min(before) / min(after)}


def bare_step_seconds(model, task, batch_size: int, warmup: int = 1, steps: int = 3, answer_only: bool = True,
                      grad: bool = True) -> float:
    """Median time of the physical floor: forward + backward of the unhooked model on the same batch.

    The backward flows from the KL at the answer position down to the embedding output (a leaf that
    needs grad), through every layer, with frozen weights, as in discovery.
    """
    import statistics
    import time

    import torch
    from mgnp_lens.evaluate import kl_full_circuit
    from mgnp_lens.hooks import logits_at

    for p in model.parameters():
        p.requires_grad_(False)
    batch = task.split("train").sample(batch_size, generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    batch = batch.to(device)
    with torch.inference_mode():
        base = torch.log_softmax(logits_at(model, batch.clean, batch.answer_pos, len(batch)).float(), -1)
    base = base.clone()

    def leaf(act, hook):
        return act.detach().requires_grad_(grad)

    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", leaf)]):
            if answer_only:
                logits = logits_at(model, batch.clean, batch.answer_pos, len(batch))
            else:
                idx = torch.arange(len(batch), device=device)
                logits = model(batch.clean)[idx, batch.answer_pos]
        loss = kl_full_circuit(base, logits).mean()
        if grad:
            loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def in_subprocess(script: str, payload: dict, timeout: int = 1800, env: dict | None = None) -> dict:
    """Run ``python script --child JSON`` in a fresh process (so its peak memory is its own), with
    ``env`` added to this process's environment."""
    import os
    import subprocess

    proc = subprocess.run([sys.executable, script, "--child", json.dumps(payload)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"child {payload} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cuda_peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)


def child_step(payload: dict) -> dict:
    """In a fresh process: build the model and task of ``payload``, time discovery steps, report peak memory.

    payload: ``model`` (gpt2-small | llama | neox | default), ``shape`` overrides, ``batch``, ``seq``,
    ``n_train``, ``device``, ``config`` (PruningConfig fields), ``steps``.
    """
    import torch

    import mgnp_lens as mg

    device = payload.get("device", "cpu")
    if payload.get("threads"):
        torch.set_num_threads(payload["threads"])
    if payload["model"] == "default":
        model = mg.load_model(device=device)
        task = mg.tasks.IOI(model, n_train=payload.get("n_train", 64), n_validation=1, n_test=1,
                            templates=["When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to [A]"])
    else:
        model = shaped_model(payload["model"], device, **payload.get("shape", {}))
        task = random_task(model, payload.get("n_train", payload["batch"]), payload["seq"])
    model_rss = peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = step_seconds(model, task, warmup=1, steps=payload.get("steps", 2), batch_size=payload["batch"],
                     **payload.get("config", {}))
    return {**{k: v for k, v in payload.items() if k != "device"}, "median_step_s": t["median_s"],
            "peak_rss_mb": peak_rss_mb(), "model_rss_mb": model_rss, "cuda_peak_mb": cuda_peak_mb(),
            "n_params": sum(p.numel() for p in model.parameters())}


def child_main(child=None) -> bool:
    """If this process was started by :func:`in_subprocess`, run ``child`` (default :func:`child_step`)
    on the payload and print its JSON; True if so."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps((child or child_step)(json.loads(sys.argv[2]))))
        return True
    return False


def round_parser(doc: str | None, name: str, rounds: int, steps: int) -> argparse.ArgumentParser:
    """:func:`parser` with the options of the alternating-rounds step benchmarks (``ab_versions.py``,
    ``compiled_blocks.py``)."""
    ap = parser(doc, name, device=True, settings=True)
    ap.add_argument("--models", default="default,gpt2-small")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--steps", type=int, default=steps)
    return ap
