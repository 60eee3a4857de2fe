"""The resumable training state of a discovery run (``state.pt``).

A run writes it next to its outputs at every checkpoint, on Ctrl-C or an error, and at the end:
the gates' ``log α``, AdamW's moments, the batch and gate-noise generator states and the history.
Restoring all of it continues the run exactly where it stopped, so a resumed run ends bit-identical
to one that never stopped (``discover(..., resume_from=...)``, ``mgnp discover --resume DIR``).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch

STATE_FILE = "state.pt"
STATE_FORMAT = "mgnp-state/1"
#: PruningConfig fields a resumed run may change: none of them alters the steps already taken.
RESUMABLE_CHANGES = ("steps", "checkpoint_dir", "checkpoint_every", "progress", "eval_split", "eval_max_examples",
                     "eval_heldout", "eval_batch_size", "precast_weights", "validate_every", "validate_max_examples",
                     "select", "eval_kl_se", "edge_examples", "views", "stop_when_converged")


def train_fingerprint(pairs) -> str:
    """SHA-256 of a split's tokens and answers (bucket by bucket): identifies the pairs a run trained on."""
    h = hashlib.sha256()
    for b in pairs.buckets:
        for t in (b.clean, b.corrupted, b.correct, b.incorrect, b.answer_pos):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def capture(step: int, gates, optimizer, generators: dict[str, torch.Generator], history: list[dict],
            seconds: float, identity: dict) -> dict:
    """The training state after ``step`` finished steps (copies: later steps do not change it).

    Args:
        step: finished optimizer steps; ``history`` must hold exactly their rows.
        gates: the :class:`~mgnp_lens.gates.HardConcreteGates`.
        optimizer: their AdamW.
        generators: ``{"batch": ..., "noise": ...}``.
        history: the per-step rows so far.
        seconds: wall time of the run so far.
        identity: what a resumed run must match: ``config`` (dict), ``task`` (description),
            ``train_fingerprint``, ``model_dims``, and ``resumed_at_steps``.
    """
    return {"format": STATE_FORMAT, "step": step,
            "log_alpha": {g: v.detach().clone() for g, v in gates.log_alpha.items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "generators": {k: g.get_state() for k, g in generators.items()},
            "history": list(history), "seconds": seconds, **identity}


def restore(state: dict, gates, optimizer, generators: dict[str, torch.Generator]) -> None:
    """Put a captured state's gates, optimizer moments and generator states back (in place). The state
    itself is left untouched: ``load_state_dict`` would otherwise share its moment tensors with the
    optimizer, whose later steps update them in place."""
    with torch.no_grad():
        for g, v in state["log_alpha"].items():
            gates.log_alpha[g].copy_(v)
    optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def to_cpu(obj):
    """``obj`` with every tensor inside (nested dicts/lists) moved to the CPU, for ``torch.save``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def load_state(source) -> dict:
    """The training state to resume from: a :class:`~mgnp_lens.DiscoveryResult`, a run directory, or its
    ``state.pt``.

    Raises:
        ValueError: no state there (a run that never reached a checkpoint, or a result without one), or
            not a mgnp-lens training state.
    """
    if hasattr(source, "circuit") and hasattr(source, "state"):  # a DiscoveryResult
        if source.state is None:
            raise ValueError("cannot resume: this result holds no training state")
        return source.state
    path = Path(source)
    path = path / STATE_FILE if path.is_dir() else path
    if not path.exists():
        raise ValueError(f"cannot resume from {source}: no {STATE_FILE} there (a run writes it at each checkpoint, "
                         "on Ctrl-C or an error, and at the end)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, overwritten, or not a torch file at all
        first = str(e).strip().split(". ")[0][:160]  # the first sentence (torch goes on with unsafe advice)
        raise ValueError(f"cannot resume from {path}: the file is damaged ({type(e).__name__}: {first}); the "
                         "run's circuit.json and history.csv are not affected, but its training cannot be continued "
                         "from this state: start a new run") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"cannot resume from {path}: not a {STATE_FORMAT} training state")
    return state


def check_resumable(state: dict, saved_config: dict, config: dict, identity: dict) -> None:
    """Raise ``ValueError`` naming what differs between a saved state and the run that would resume it.

    Args:
        state: from :func:`load_state`.
        saved_config: the state's config, normalised (``PruningConfig.from_dict(...).to_dict()``).
        config: the resuming run's ``PruningConfig.to_dict()``.
        identity: the resuming run's ``task``, ``train_fingerprint`` and ``model_dims``. The task must have
            the same name, metric and training pairs; its validation and test splits may differ.
    """
    if state["model_dims"] != identity["model_dims"]:
        raise ValueError(f"cannot resume: the saved state is for a model shaped {state['model_dims']}, "
                         f"this model is {identity['model_dims']}")
    same_task = all(state["task"].get(k) == identity["task"].get(k) for k in ("name", "metric"))
    if not same_task:
        raise ValueError(f"cannot resume: the saved state was trained on another task ({state['task']}); "
                         f"this task is {identity['task']}")
    if state["train_fingerprint"] != identity["train_fingerprint"]:  # held-out splits may differ
        raise ValueError(f"cannot resume: the training pairs differ from the saved run's (same task "
                         f"{identity['task'].get('name')!r}, other pairs: its data file or generator changed since); "
                         "restore the data the run was started with, or start a new run")
    if "n_experts" not in identity["model_dims"]:  # a dense model: a run saved before mlp_expert existed is the same
        saved_config, config = _without_experts(saved_config), _without_experts(config)
    differ = [f"{k} ({saved_config[k]!r} → {config[k]!r})" for k in config
              if k not in RESUMABLE_CHANGES and saved_config[k] != config[k]]
    if differ:
        raise ValueError(f"cannot resume: the config differs from the saved run's in {', '.join(differ)}; "
                         f"only {', '.join(RESUMABLE_CHANGES)} may change")
    if config["steps"] < state["step"]:
        raise ValueError(f"cannot resume: steps={config['steps']} but the saved state has already taken "
                         f"{state['step']} steps")


def _without_experts(config: dict) -> dict:
    """``config`` without ``mlp_expert`` in its granularities and λ (settings a dense model has no gates for)."""
    out = dict(config)
    if isinstance(out.get("granularities"), (list, tuple)):
        out["granularities"] = [g for g in out["granularities"] if g != "mlp_expert"]
    if isinstance(out.get("lambdas"), dict):
        out["lambdas"] = {g: v for g, v in out["lambdas"].items() if g != "mlp_expert"}
    return out
