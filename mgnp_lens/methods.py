"""Several circuit-finding methods side by side on the same pairs: mgnp-lens, head-and-block pruning,
attribution patching (first order and integrated gradients) and random circuits, scored by :mod:`mgnp_lens.faithfulness`'s curves and areas.

    comp = compare_methods(model, task, scales=[0.5, 1, 2, 4], splits=("test", "test_ood"), out_dir="runs/cmp")
    comp.areas            # CPR and CMD per method and split
    plot.faithfulness_curves(comp.curve, split="test_ood")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .baselines import COARSE_GRANULARITIES, attribution_scores, random_circuit, select_nodes
from .circuit import Circuit
from .faithfulness import SIZE_AXES, areas, curve
from .sweep import sweep

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
                    ig_steps: int = 5, config=None, **overrides) -> MethodComparison:
    """Faithfulness curves of mgnp-lens and the baselines (:data:`BASELINE_METHODS`), scored on the same pairs.

    mgnp-lens and coarse pruning (:func:`mgnp_lens.baselines.coarse`) each run a λ sweep; attribution patching
    (first order, and integrated gradients on ``ig_steps`` points) and random circuits are built at the
    per-granularity counts of each mgnp-lens circuit.

    Args:
        scales: mgnp-lens's λ scales; ``coarse_scales`` the coarse sweep's (default the same).
        splits: the splits every circuit is scored on (held-out ones, e.g. ``("test", "test_ood")``).
        out_dir: the sweeps checkpoint to ``out_dir/mgnp`` and ``out_dir/coarse`` (a second call resumes
            them), and :meth:`MethodComparison.save` writes the tables there.
        max_examples: score on the first pairs of each split only.
        seed: the random baseline's seed.
        ig_steps: points on the integrated-gradients path (:func:`mgnp_lens.baselines.attribution_scores`).
        config, overrides: the runs' :class:`~mgnp_lens.PruningConfig` (e.g. ``steps=120``).
    """
    out = Path(out_dir) if out_dir is not None else None
    sweeps = {"mgnp": sweep(model, task, scales, config, out_dir=out / "mgnp" if out else None, **overrides),
              "coarse": sweep(model, task, coarse_scales or scales, config, out_dir=out / "coarse" if out else None,
                              **{**overrides, "granularities": COARSE_GRANULARITIES})}
    mgnp = sweeps["mgnp"].circuits()
    circuits = {"mgnp": mgnp, "coarse": sweeps["coarse"].circuits(), **matched_baselines(model, task, mgnp, seed, ig_steps)}
    table = curve(model, task, circuits, splits, max_examples=max_examples)
    both = pd.concat([areas(table, s) for s in SIZE_AXES], ignore_index=True)
    result = MethodComparison(table, both, circuits, sweeps)
    if out is not None:
        result.save(out)
    return result
