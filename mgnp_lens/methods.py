"""Several circuit-finding methods side by side on the same pairs: mgnp-lens, head-and-block pruning,
attribution patching (first order and integrated gradients) and random circuits, scored by
:mod:`mgnp_lens.faithfulness`'s curves and areas.

    comp = compare_methods(model, task, scales=[0.5, 1, 2, 4], splits=("test", "test_ood"), out_dir="runs/cmp")
    comp.areas            # CPR and CMD per method and split
    plot.faithfulness_curves(comp.curve, split="test_ood")
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .baselines import COARSE_GRANULARITIES, attribution_scores, random_circuit, select_nodes
from .circuit import Circuit
from .faithfulness import SIZE_AXES, areas, curve
from .sweep import sweep

#: The size factors of :func:`circuits_from_scores`: circuits of a quarter to four times the returned one's size.
SCORE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)

#: The methods :func:`compare_methods` puts beside mgnp-lens, in this order.
BASELINE_METHODS = ("coarse", "attribution", "attribution_ig", "random")


def matched_baselines(model, task, circuits: Sequence[Circuit], seed: int = 0, ig_steps: int = 5,
                      **attribution_kwargs) -> dict[str, list[Circuit]]:
    """Attribution-patching (first order, and integrated gradients on ``ig_steps`` points) and random circuits with
    the per-granularity counts of each of ``circuits``.

    Each method's scores are computed once (on the task's training pairs unless ``split`` is given).
    """
    first = attribution_scores(model, task, **attribution_kwargs)
    ig = attribution_scores(model, task, method="ig", steps=ig_steps, **attribution_kwargs)
    return {"attribution": [select_nodes(c.dims, first, c.counts()) for c in circuits],
            "attribution_ig": [select_nodes(c.dims, ig, c.counts()) for c in circuits],
            "random": [random_circuit(c.dims, c, seed=seed + i) for i, c in enumerate(circuits)]}


def scaled_counts(circuit: Circuit, factor: float) -> dict[str, int]:
    """``circuit``'s node count of every granularity times ``factor`` (rounded; at least one where it keeps one, at
    most all), then each child granularity's count held between one child per kept parent and all their children,
    so that :func:`~mgnp_lens.baselines.select_nodes` can keep it."""
    dims, kept = circuit.dims, circuit.counts()
    counts: dict[str, int] = {}
    for g in dims.granularities:  # parents first
        n = min(dims.count(g), max(min(kept[g], 1), round(factor * kept[g])))
        parent = dims.parent(g)
        if parent is not None:
            per_parent = dims.count(g) // dims.count(parent)
            n = min(max(n, counts[parent]), counts[parent] * per_parent)
        counts[g] = n
    return counts


def circuits_from_scores(result, factors: Sequence[float] = SCORE_FACTORS) -> list[Circuit]:
    """Circuits of several sizes from one run: for each factor, :func:`scaled_counts` of the run's circuit, filled
    with the nodes whose gates are most likely open (each gate's own probability, from the state the circuit came
    from), parents first and children only under kept parents (:func:`~mgnp_lens.baselines.select_nodes`), so
    factor 1 gives the run's circuit. A faithfulness curve without a λ sweep.

    Args:
        result: a :class:`~mgnp_lens.result.DiscoveryResult` (or one read back with ``DiscoveryResult.load``).
        factors: size factors (1: the run's own counts).
    """
    if not factors or any(f <= 0 for f in factors):
        raise ValueError(f"factors must be positive size factors (1: the run's own counts), got {list(factors)}")
    scores = result.gates.open_probability(result.scored_log_alpha, along_hierarchy=False)
    return [select_nodes(result.circuit.dims, scores, scaled_counts(result.circuit, f)) for f in factors]


@dataclass
class MethodComparison:
    """mgnp-lens against the coarse, attribution (first order and IG) and random baselines on the same pairs.

    Attributes:
        curve: :func:`curve`'s table (every circuit of every method on every split).
        areas: :func:`areas` of it against ``param_fraction`` and ``node_fraction``.
        circuits: ``{method: [circuits]}``.
        sweeps: ``{"mgnp": SweepResult, "coarse": SweepResult}``, the runs behind the two pruning methods.
    """

    curve: pd.DataFrame
    areas: pd.DataFrame
    circuits: dict[str, list[Circuit]]
    sweeps: dict

    def save(self, out_dir: str | Path) -> Path:
        """Write ``curve.csv``, ``areas.csv`` and ``faithfulness.json`` (both tables) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.curve.to_csv(out / "curve.csv", index=False)
        self.areas.to_csv(out / "areas.csv", index=False)
        data = {"curve": self.curve.to_dict(orient="records"), "areas": self.areas.to_dict(orient="records")}
        (out / "faithfulness.json").write_text(json.dumps(data, indent=1, default=float), encoding="utf-8")
        return out


def compare_methods(model, task, scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
                    coarse_scales: Sequence[float] | None = None, splits: Sequence[str] = ("test",),
                    out_dir: str | Path | None = None, max_examples: int | None = None, seed: int = 0,
                    ig_steps: int = 5, one_run: bool = True, config=None, **overrides) -> MethodComparison:
    """Faithfulness curves of mgnp-lens and the baselines (:data:`BASELINE_METHODS`), scored on the same pairs.

    mgnp-lens and coarse pruning (:func:`mgnp_lens.baselines.coarse`) each run a λ sweep; attribution patching
    (first order, and integrated gradients on ``ig_steps`` points) and random circuits are built at the
    per-granularity counts of each mgnp-lens circuit. ``mgnp_one_run`` are circuits of several sizes from the scores
    of one run, the sweep's at the λ scale nearest 1 (:func:`circuits_from_scores`).

    Args:
        scales: mgnp-lens's λ scales; ``coarse_scales`` the coarse sweep's (default the same).
        splits: the splits every circuit is scored on (held-out ones, e.g. ``("test", "test_ood")``).
        out_dir: the sweeps checkpoint to ``out_dir/mgnp`` and ``out_dir/coarse`` (a second call resumes
            them), and :meth:`MethodComparison.save` writes the tables there.
        max_examples: score on the first pairs of each split only.
        seed: the random baseline's seed.
        ig_steps: points on the integrated-gradients path (:func:`mgnp_lens.baselines.attribution_scores`).
        one_run: add ``mgnp_one_run`` (False: the sweeps and baselines only).
        config, overrides: the runs' :class:`~mgnp_lens.PruningConfig` (e.g. ``steps=120``).
    """
    out = Path(out_dir) if out_dir is not None else None
    sweeps = {"mgnp": sweep(model, task, scales, config, out_dir=out / "mgnp" if out else None, **overrides),
              "coarse": sweep(model, task, coarse_scales or scales, config, out_dir=out / "coarse" if out else None,
                              **{**overrides, "granularities": COARSE_GRANULARITIES})}
    mgnp = sweeps["mgnp"].circuits()
    circuits = {"mgnp": mgnp, "coarse": sweeps["coarse"].circuits(),
                **matched_baselines(model, task, mgnp, seed, ig_steps)}
    if one_run:
        nearest = min(range(len(scales)), key=lambda i: abs(math.log(scales[i])))
        circuits["mgnp_one_run"] = circuits_from_scores(sweeps["mgnp"].results[nearest])
    table = curve(model, task, circuits, splits, max_examples=max_examples)
    both = pd.concat([areas(table, s) for s in SIZE_AXES], ignore_index=True)
    result = MethodComparison(table, both, circuits, sweeps)
    if out is not None:
        result.save(out)
    return result
