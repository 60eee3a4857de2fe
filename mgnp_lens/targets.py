"""Faithfulness and size targets: the sparsity weights adjusted during training instead of fixed.

With ``target_kl=ε`` the run asks for the smallest circuit whose KL to the full model stays within ε
(the paper's problem statement, Eq. 2): one multiplier ``s`` on every λ_g, starting at
:data:`TARGET_KL_START_SCALE`, follows dual ascent in log space on the hard circuit's KL on the validation
pairs, ``log s += rate · interval · clip((ε − val_KL) / ε, −1, 1)`` at each validation check, so the penalty
grows while the circuit the run would return is within ε and shrinks while it is over. (The sampled
circuit's training KL is no signal for this: the Hard-Concrete noise alone keeps it above 1 nat in the first
steps of a SmolLM2 run, whatever the circuit's size.) λ then means the same on a 4-layer
toy and a 30-layer model: it is only where the search starts. The hard circuit's KL on validation
pairs is what the run reports as met or not met.

With ``target_sparsity={g: fraction pruned}`` each named granularity gets its own multiplier,
``log s_g += rate · clip((density_g − target density_g) / max(target density_g, 0.05), −1, 1)``,
where ``density_g`` is the mean expected L0 (the fraction of gates expected open), as Edge Pruning
does with its own Lagrangian.

The multipliers live in the history (``scale_<g>``), so a resumed run continues from them exactly.
"""

from __future__ import annotations

import math
import zlib

import torch

#: Bounds on each multiplier (1e-4 ... 1e4 times the configured λ).
SCALE_RANGE = (1e-4, 1e4)
#: Consecutive validation checks with the same hard circuit, meeting the target, after which a
#: ``target_kl`` run stops early.
STABLE_CHECKS = 3
#: Validation checks of a ``target_kl`` or ``target_sparsity`` run when ``validate_every`` is not set: every
#: this many steps.
DEFAULT_TARGET_VALIDATE_EVERY = 20
#: The fewest validation pairs a ``target_kl`` run measures its hard circuit on.
MIN_VALIDATION_PAIRS = 16
#: Where a ``target_kl`` run's multiplier starts: from a nearly dense circuit, so that dual ascent raises the
#: penalty until the KL reaches the target. Closed gates hardly reopen (a gate far below zero gets almost no
#: gradient), so a run that starts at the configured λ and prunes past the target cannot come back; see
#: docs/calibration.md, "target_kl".
TARGET_KL_START_SCALE = 0.05
#: How far (in fraction of a granularity's nodes pruned, either way) a ``target_sparsity`` run's returned
#: circuit may land from the asked fraction and still count as meeting it.
SPARSITY_TOLERANCE = 0.05


def initial_scale(config) -> float:
    """The multiplier before the first step: :data:`TARGET_KL_START_SCALE` with ``target_kl``, else 1."""
    return TARGET_KL_START_SCALE if config.target_kl is not None else 1.0


def scales_from_history(rows: list[dict], granularities, start: float = 1.0) -> dict[str, float]:
    """The multipliers after the last finished step (``start`` before the first; 1 without targets)."""
    last = rows[-1] if rows else {}
    return {g: float(last.get(f"scale_{g}", start)) for g in granularities}


def _step(log_scale: float, delta: float) -> float:
    low, high = (math.log(b) for b in SCALE_RANGE)
    return math.exp(min(high, max(low, log_scale + delta)))


def update_scales(config, scales: dict[str, float], density: dict[str, float]) -> dict[str, float]:
    """The multipliers for the next step, from this step's per-granularity densities (``target_sparsity``;
    a ``target_kl`` run moves its multiplier only at validation checks, :func:`rescale_on_check`).

    Args:
        config: the run's :class:`~mgnp_lens.config.PruningConfig` (``target_sparsity``, ``target_rate``).
        scales: ``{granularity: multiplier}`` used in this step.
        density: ``{granularity: mean expected L0}`` of this step.
    """
    rate = config.target_rate
    if config.target_sparsity:
        out = dict(scales)
        for g, pruned in config.target_sparsity.items():
            if g in out:
                want = 1.0 - pruned
                err = (density[g] - want) / max(want, 0.05)
                out[g] = _step(math.log(out[g]), rate * max(-1.0, min(1.0, err)))
        return out
    return scales


def rescale_on_check(config, scales: dict[str, float], val_kl: float) -> dict[str, float]:
    """A ``target_kl`` run's multipliers after a validation check: one dual-ascent step on the hard circuit's
    validation KL, ``log s += rate · interval · clip((ε − val_kl) / ε, −1, 1)`` (as fast per step as the
    size target; between checks the multiplier holds)."""
    delta = config.target_rate * config.validation_interval * max(-1.0, min(1.0, (config.target_kl - val_kl) /
                                                                           config.target_kl))
    return {g: _step(math.log(s), delta) for g, s in scales.items()}


def circuit_key(masks: dict[str, torch.Tensor]) -> int:
    """A checksum of a binarised circuit's masks (to tell whether the hard circuit changed between checks)."""
    key = 0
    for g in sorted(masks):
        key = zlib.crc32(masks[g].to(torch.uint8).cpu().numpy().tobytes(), key)
    return key


def converged(rows: list[dict], target_kl: float, after_step: int = 0) -> bool:
    """Whether the last :data:`STABLE_CHECKS` validation checks after step ``after_step`` saw one hard circuit,
    each within the target. Checks during the warm-ups do not count: before the gates move, the untouched
    circuit is stable and meets any target that the full model meets."""
    checks = [r for r in rows if r.get("circuit_key") is not None and not _isnan(r.get("circuit_key"))
              and r["step"] > after_step]
    last = checks[-STABLE_CHECKS:]
    return len(last) == STABLE_CHECKS and len({int(r["circuit_key"]) for r in last}) == 1 and \
        all(r["val_kl"] <= target_kl for r in last)


#: A run has converged when its hard circuit has not changed for this fraction of its steps (at least
#: :data:`MIN_STABLE_STEPS`) at the end, and meets its target if it has one.
STABLE_FRACTION = 0.2
MIN_STABLE_STEPS = 20


def stable_since(rows: list[dict]) -> int | None:
    """The first step from which every step's hard circuit (``hard_key``) equals the last one (None: no keys)."""
    keyed = [(r["step"], r["hard_key"]) for r in rows if "hard_key" in r and not _isnan(r["hard_key"])]
    if not keyed:
        return None
    last, since = keyed[-1][1], keyed[-1][0]
    for step, key in reversed(keyed):
        if key != last:
            break
        since = step
    return since


def stable_needed(config) -> int:
    """How many steps at the end a run's hard circuit must stay unchanged to count as converged: a
    :data:`STABLE_FRACTION` of its configured steps, at least :data:`MIN_STABLE_STEPS`."""
    return max(MIN_STABLE_STEPS, math.ceil(STABLE_FRACTION * config.steps))


def stable_after_warmup(config, rows: list[dict]) -> bool:
    """Whether the hard circuit has been unchanged for :func:`stable_needed` steps, every one of them after the
    warm-ups and the penalty's start (before them an untouched circuit is stable without having converged).
    ``rows``: the history so far (``hard_key`` on every step)."""
    need = stable_needed(config)
    last = rows[-need:]  # the stretch that must agree: O(need) a call, not the whole history
    if len(last) < need or last[0]["step"] <= max(config.warmup_end, config.penalty_start):
        return False
    key = last[-1].get("hard_key")
    return key is not None and not _isnan(key) and all(r.get("hard_key") == key for r in last)


def hard_changes(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, int]:
    """A step's history columns on the hard (binarised, hierarchy-consistent) circuit: ``kept_<g>``, the units it
    keeps after the step, and ``changed_<g>``, how many of them the step opened or closed, per granularity."""
    out = {}
    for g in after:
        out[f"kept_{g}"] = int(after[g].count_nonzero())
        out[f"changed_{g}"] = int((after[g] ^ before[g]).count_nonzero())
    return out


def still_moving(rows: list[dict], window: int) -> dict[str, dict]:
    """What changes in the hard circuit over a run's last ``window`` steps, per granularity: ``kept`` at the last
    step, ``changed`` (openings and closings summed over the window) and ``stable_steps`` (steps at the end with
    no change). Granularities without ``changed_<g>`` columns (histories written before them) are left out."""
    out = {}
    last = rows[-window:]
    for g in [k[len("changed_"):] for k in (rows[-1] if rows else {}) if k.startswith("changed_")]:
        col = f"changed_{g}"
        known = [r for r in rows if col in r and not _isnan(r[col])]
        stable = 0
        for r in reversed(known):
            if r[col]:
                break
            stable += 1
        changed = sum(r[col] for r in last if col in r and not _isnan(r[col]))
        out[g] = {"kept": int(rows[-1][f"kept_{g}"]), "changed": int(changed), "stable_steps": stable}
    return out


def moving_text(conv: dict) -> str:
    """The granularities whose hard circuit still changed in a run's stability window, for the run's summary
    lines: "still changing over the last 48 steps: attn_neuron (37 changes; 1,882 kept), ..." ("" if none)."""
    moving = {g: m for g, m in conv.get("granularities", {}).items() if m["changed"]}
    if not moving:
        return ""
    parts = [f"{g} ({m['changed']:,} changes; {m['kept']:,} kept)" for g, m in moving.items()]
    still = [g for g, m in conv["granularities"].items() if not m["changed"]]
    steady = f"; unchanged: {', '.join(still)}" if still else ""
    return f"still changing over the last {conv['stable_needed']} steps: {', '.join(parts)}{steady}"


def convergence(config, rows: list[dict], steps: int, met: bool | None, returned_step: int | None) -> dict:
    """Whether a run converged, and which state it returned and why (for ``evaluation.json`` and the report).

    Args:
        config: the run's configuration (``select``).
        rows: its history (``hard_key`` on every step).
        steps: the steps it finished.
        met: whether its final circuit meets its target (None: no target).
        returned_step: the validation check whose circuit it returns (None: the final state).
    """
    since = stable_since(rows)
    stable = 0 if since is None else steps - since + 1
    need = stable_needed(config)
    final = returned_step is None or returned_step == steps
    out = {"converged": stable >= need and met is not False, "stable_steps": stable, "stable_needed": need,
           "final_meets_target": met, "final_state": final, "returned_step": steps if final else returned_step,
           "granularities": still_moving(rows, need)}
    if not final:
        out["why"] = selection_rule(config)
    return out


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def pruned_fractions(config, circuit) -> dict[str, float]:
    """``{g: fraction of g's nodes pruned}`` in ``circuit`` for the granularities ``target_sparsity`` names."""
    return {g: 1.0 - circuit.count(g) / circuit.dims.count(g) for g in (config.target_sparsity or {})}


def sparsity_gap(config, circuit) -> float:
    """The largest ``|pruned fraction − asked fraction|`` over ``target_sparsity``'s granularities (0 without)."""
    reached = pruned_fractions(config, circuit)
    return max((abs(reached[g] - p) for g, p in config.target_sparsity.items()), default=0.0) \
        if config.target_sparsity else 0.0


def target_report(config, validation_kl: float | None, circuit=None) -> dict | None:
    """Whether the returned circuit meets the run's target, for ``evaluation.json`` (None without a target).

    ``target_kl``: ``{"target_kl", "validation_kl", "met"}``. ``target_sparsity`` (needs ``circuit``):
    ``{"target_sparsity", "reached", "tolerance", "validation_kl", "met"}``, met when every named
    granularity's pruned fraction is within :data:`SPARSITY_TOLERANCE` of the asked one.
    """
    if config.target_kl is not None:
        met = validation_kl is not None and validation_kl <= config.target_kl
        return {"target_kl": config.target_kl, "validation_kl": validation_kl, "met": met}
    if config.target_sparsity and circuit is not None:
        return {"target_sparsity": dict(config.target_sparsity), "reached": pruned_fractions(config, circuit),
                "tolerance": SPARSITY_TOLERANCE, "validation_kl": validation_kl,
                "met": sparsity_gap(config, circuit) <= SPARSITY_TOLERANCE}
    return None


def outcome_text(outcome: dict) -> tuple[str, str]:
    """A :func:`target_report` in words: (what was asked, whether the returned circuit meets it, with figures)."""
    verdict = "met" if outcome["met"] else "not met"
    kl = outcome.get("validation_kl")
    kl_text = "no validation check" if kl is None else f"validation KL {kl:.3f}"
    if "target_kl" in outcome:
        early = outcome.get("stopped_early_at_step")
        return (f"target KL {outcome['target_kl']:g} on validation",
                f"{verdict} ({kl_text}{f', stopped early at step {early}' if early else ''})")
    reached = ", ".join(f"{g} {outcome['reached'][g]:.1%} pruned (asked {p:.1%})"
                        for g, p in outcome["target_sparsity"].items())
    return "target sparsity", f"{verdict}: {reached}; {kl_text}"


# ------------------------------------------------------------------ choosing the returned circuit on validation
def hard_penalty(circuit, lambdas: dict[str, float]) -> float:
    """``Σ_g λ_g · kept_g / total_g``: the loss's sparsity term for a binarised circuit (``lambdas`` by
    granularity)."""
    return float(sum(lam * circuit.count(g) / circuit.dims.count(g) for g, lam in lambdas.items()))


def selection_key(config, step: int, val_kl: float, penalty: float, gap: float = 0.0) -> list[float]:
    """How a validation check ranks among a run's checks (smaller is better; ``select="validation"``).

    Without a target: the training objective measured on the validation pairs with the hard circuit,
    ``val_kl + penalty`` (:func:`hard_penalty`). With ``target_kl``: first the checks that meet it, the
    smallest ``penalty`` among them; if none does, the lowest ``val_kl``. With ``target_sparsity``: first the
    checks whose size is within :data:`SPARSITY_TOLERANCE` of it (``gap``, :func:`sparsity_gap`), the lowest
    ``val_kl`` among them; if none is, the smallest ``gap``. Ties go to the later step.
    """
    if config.target_kl is not None:
        met = val_kl <= config.target_kl
        return [0.0 if met else 1.0, penalty if met else val_kl, -float(step)]
    if config.target_sparsity:
        met = gap <= SPARSITY_TOLERANCE
        return [0.0 if met else 1.0, val_kl if met else gap, -float(step)]
    return [0.0, val_kl + penalty, -float(step)]


def selection_rule(config) -> str:
    """The returned circuit's rule in words (for ``evaluation.json`` and the report)."""
    if config.select == "last":
        return "the last step's circuit (select='last')"
    if config.target_kl is not None:
        return (f"of the validation checks whose hard circuit meets KL <= {config.target_kl:g} on the validation "
                "pairs, the one with the smallest λ-weighted size (the lowest validation KL if none meets it)")
    if config.target_sparsity:
        return (f"of the validation checks whose hard circuit prunes within {SPARSITY_TOLERANCE:g} of the "
                "target_sparsity fractions, the one with the lowest validation KL (the closest in size if none does)")
    return ("the validation check with the lowest training objective measured on the validation pairs: the hard "
            "circuit's KL plus Σ_g λ_g · (kept fraction of g)")
