"""Faithfulness over circuit sizes, and MIB's integrated metrics, for several methods on the same pairs.

A circuit's faithfulness is MIB's normalisation ``f(C) = (m(C) − m(∅)) / (m(N) − m(∅))`` of the task metric
(:attr:`mgnp_lens.Evaluation.recovered`). Measured over circuits of several sizes it is a curve, and two
areas summarise it (Mueller et al. 2025, "MIB"):

* **CPR**, the area under ``f`` (higher is better);
* **CMD**, the area between ``f`` and 1, ``∫ |1 − f|`` (lower is better).

Sizes are fractions of the model, of its gated nodes (``node_fraction``) or of the parameters touching them
(``param_fraction``), on a linear axis from 0 to 1, by the trapezoid rule, as MIB does. A method's measured
points are joined by the empty circuit (size 0, f = 0) and the full model (size 1, f = 1), which hold for
every method by definition, so every method's area spans the same [0, 1]; :func:`at_sizes` compares methods
at equal sizes instead.

The metrics only: :mod:`mgnp_lens.methods` runs the methods and builds the curves
(``methods.compare_methods``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .circuit import Circuit
from .granularity import GRANULARITIES

#: The size axes a curve can be drawn against.
SIZE_AXES = ("node_fraction", "param_fraction")


def size_of(circuit: Circuit) -> dict:
    """``n_nodes``, ``node_fraction``, ``n_params``, ``param_fraction`` and the kept heads of ``circuit``."""
    total_nodes = sum(circuit.dims.count(g) for g in circuit.dims.granularities)
    n_nodes = sum(circuit.count(g) for g in circuit.dims.granularities)
    full_params = Circuit.full(circuit.dims).n_params()
    n_params = circuit.n_params()
    return {"n_nodes": n_nodes, "node_fraction": n_nodes / total_nodes, "n_params": n_params,
            "param_fraction": n_params / full_params if full_params else 0.0, "attn_head": circuit.count("attn_head")}


def curve(model, task, circuits: Mapping[str, Sequence[Circuit]], splits: Sequence[str] = ("test",),
          batch_size: int = 32, max_examples: int | None = None) -> pd.DataFrame:
    """Every circuit of every method scored on the same pairs of each split.

    Args:
        circuits: ``{method: [circuits]}``, all of ``model``'s shape and one ablation.
        splits: task splits to score on (e.g. ``("test", "test_ood")``).
        max_examples: the first pairs of each split only.

    Returns:
        one row per method, circuit and split: ``method``, ``point`` (the circuit's index), ``split``, the sizes
        of :func:`size_of`, ``kl``, ``base_metric``, ``circuit_metric``, ``empty_metric``, ``recovered``.
    """
    from .evaluate import evaluate_many

    flat = [(method, i, c) for method, cs in circuits.items() for i, c in enumerate(cs)]
    if not flat:
        raise ValueError("curve needs at least one circuit")
    rows = []
    for split in splits:
        evaluations = evaluate_many(model, task, [c for _, _, c in flat], split, batch_size, max_examples)
        for (method, i, c), ev in zip(flat, evaluations):
            rows.append({"method": method, "point": i, "split": split, **size_of(c), "kl": ev.kl,
                         "base_metric": ev.base_metric, "circuit_metric": ev.circuit_metric,
                         "empty_metric": ev.empty_metric, "recovered": ev.recovered, "n_examples": ev.n_examples})
    return pd.DataFrame(rows)


def integrate(sizes: Sequence[float], faithfulness: Sequence[float], anchored: bool = True) -> tuple[float, float]:
    """``(CPR, CMD)`` of one curve by the trapezoid rule on a linear size axis.

    Args:
        sizes: fractions of the model in [0, 1].
        faithfulness: ``f`` at each size (NaN points are dropped; points of equal size are averaged).
        anchored: join the points by (0, 0) and (1, 1), the empty circuit and the full model.

    Raises:
        ValueError: a size outside [0, 1], or fewer than two points to integrate.
    """
    frame = pd.DataFrame({"x": np.asarray(sizes, float), "f": np.asarray(faithfulness, float)}).dropna()
    if ((frame.x < 0) | (frame.x > 1)).any():
        raise ValueError(f"sizes must be fractions in [0, 1], got {frame.x.min():g} .. {frame.x.max():g}")
    if anchored:
        frame = pd.concat([frame[(frame.x > 0) & (frame.x < 1)], pd.DataFrame({"x": [0.0, 1.0], "f": [0.0, 1.0]})])
    frame = frame.groupby("x", as_index=False)["f"].mean().sort_values("x")
    if len(frame) < 2:
        raise ValueError("integrating a curve needs at least two points of different size")
    x, f = frame.x.to_numpy(), frame.f.to_numpy()
    width = np.diff(x)
    cpr = float((width * (f[1:] + f[:-1]) / 2).sum())
    cmd = float((width * (np.abs(1 - f[1:]) + np.abs(1 - f[:-1])) / 2).sum())
    return cpr, cmd


def areas(table: pd.DataFrame, size: str = "param_fraction", faithfulness: str = "recovered",
          anchored: bool = True) -> pd.DataFrame:
    """CPR and CMD of each method on each split of a :func:`curve` table.

    Returns:
        one row per method and split: ``cpr``, ``cmd``, ``points`` (measured circuits), ``min_size`` and
        ``max_size`` (the measured range: outside it the curve is the straight line to an anchor).
    """
    if size not in table.columns or faithfulness not in table.columns:
        raise ValueError(f"the table needs columns {size!r} and {faithfulness!r}")
    rows = []
    for (method, split), part in table.groupby(["method", "split"], sort=False):
        cpr, cmd = integrate(part[size], part[faithfulness], anchored)
        rows.append({"method": method, "split": split, "size": size, "cpr": cpr, "cmd": cmd, "points": len(part),
                     "min_size": float(part[size].min()), "max_size": float(part[size].max())})
    return pd.DataFrame(rows)


def at_sizes(table: pd.DataFrame, sizes: Sequence[float], size: str = "param_fraction",
             faithfulness: str = "recovered") -> pd.DataFrame:
    """Each method's faithfulness interpolated at the given sizes (NaN outside its measured range), for
    comparisons at equal size; one row per method, split and size."""
    rows = []
    for (method, split), part in table.groupby(["method", "split"], sort=False):
        pts = part.dropna(subset=[faithfulness]).groupby(size, as_index=False)[faithfulness].mean()
        x, f = pts[size].to_numpy(float), pts[faithfulness].to_numpy(float)
        for s in sizes:
            inside = len(x) > 0 and x.min() <= s <= x.max()
            rows.append({"method": method, "split": split, size: s,
                         faithfulness: float(np.interp(s, x, f)) if inside else float("nan")})
    return pd.DataFrame(rows)


def pareto_frontier(runs: pd.DataFrame, size: str = "n_params", faithfulness: str = "kl") -> pd.DataFrame:
    """Rows not dominated by a smaller-or-equal and at-least-as-faithful run, sorted by size."""
    ordered = runs.dropna(subset=[size, faithfulness]).sort_values([size, faithfulness], kind="stable")
    keep, best = [], float("inf")
    for idx, row in ordered.iterrows():
        if row[faithfulness] < best:
            keep.append(idx)
            best = row[faithfulness]
    return ordered.loc[keep]
