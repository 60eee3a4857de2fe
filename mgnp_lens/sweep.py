"""λ sweeps (circuit size vs faithfulness, Pareto frontier) and seed stability.

    res = sweep(model, task, scales=[0.25, 0.5, 1, 2, 4], steps=120)
    res.table                      # one row per λ scale: counts, n_nodes, n_params, KL, metric
    res.pareto()                   # the non-dominated rows
    res.areas()                    # MIB's CPR and CMD of its faithfulness curve
    plot.size_vs_faithfulness(res.table)
    stability(model, task, seeds=[0, 1, 2])   # Jaccard overlap of heads and neurons between seeds
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .circuit import Circuit
from .executors import resolve
from .granularity import GRANULARITIES

NEURON_GRANULARITIES = ("attn_neuron", "mlp_hidden", "mlp_output")


def circuit_row(circuit: Circuit, evaluation=None, **extra) -> dict:
    """One table row: counts per granularity, the sizes of :func:`mgnp_lens.faithfulness.size_of`, and the
    evaluation's KL, metrics and ``recovered`` (MIB's faithfulness)."""
    from .faithfulness import size_of

    row = dict(extra)
    row.update(circuit.counts())
    row.update(size_of(circuit))
    if evaluation is not None:
        row.update({"kl": evaluation.kl, "circuit_metric": evaluation.circuit_metric,
                    "base_metric": evaluation.base_metric, "empty_metric": evaluation.empty_metric,
                    "recovered": evaluation.recovered, "split": evaluation.split,
                    "n_examples": evaluation.n_examples})
    return row


@dataclass
class SweepResult:
    """Results of a λ sweep: the runs and their size-vs-faithfulness table."""

    results: list
    table: pd.DataFrame

    def pareto(self, size: str = "n_params", faithfulness: str = "kl") -> pd.DataFrame:
        from .faithfulness import pareto_frontier

        return pareto_frontier(self.table, size, faithfulness)

    def circuits(self) -> list[Circuit]:
        return [r.circuit for r in self.results]

    def areas(self, size: str = "param_fraction") -> dict[str, float]:
        """CPR and CMD (:func:`mgnp_lens.faithfulness.integrate`) of the sweep's faithfulness curve on the split
        its runs were evaluated on (``recovered`` against ``size``)."""
        from .faithfulness import integrate

        if "recovered" not in self.table or self.table["recovered"].isna().all():
            raise ValueError("the sweep's runs have no faithfulness to integrate (the task has no empty-circuit "
                             "metric, or the runs were not evaluated)")
        cpr, cmd = integrate(self.table[size], self.table["recovered"])
        return {"cpr": cpr, "cmd": cmd, "size": size, "split": str(self.table["split"].iloc[0])}


def _run(model, task, config, overrides: dict, run_dir: Path | None):
    """One discovery run of a series; with ``run_dir`` it checkpoints there and, if the directory
    already holds a training state (an earlier call that finished or was stopped), resumes it."""
    from .checkpoint import STATE_FILE
    from .discovery import discover

    if run_dir is None:
        return discover(model, task, config, **overrides)
    resume = run_dir if (run_dir / STATE_FILE).exists() else None
    return discover(model, task, config, resume_from=resume, **{**overrides, "checkpoint_dir": str(run_dir)})


def sweep(model, task, scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0), config=None,
          out_dir: str | Path | None = None, executor=None, **overrides) -> SweepResult:
    """Run discovery once per λ scale (every λ multiplied by the scale).

    Args:
        scales: the ``lambda_scale`` values.
        config: base :class:`~mgnp_lens.PruningConfig`; ``overrides`` replace its fields.
        out_dir: if set, each run checkpoints to ``out_dir/scale_<s>`` and is saved there when it
            finishes, so a long sweep never loses finished work: calling ``sweep`` again with the
            same ``out_dir`` resumes each run from its saved state (a finished run is only
            re-evaluated, a stopped one continues where it stopped).
        executor: where the runs execute: None or ``"local"`` (one after another in this process),
            ``"ray"`` (in parallel on a Ray instance on this machine) or a
            :class:`~mgnp_lens.executors.RayExecutor` (a cluster, CPUs and GPUs per run).

    Returns:
        :class:`SweepResult`; ``table`` has one row per scale (``lambda_scale``, counts,
        ``n_nodes``, ``n_params``, ``kl``, ``circuit_metric``, ...). Ctrl-C stops the sweep after
        the interrupted run (its row has ``interrupted=True``).
    """
    if not scales:
        raise ValueError("sweep needs at least one λ scale")
    for s in scales:
        if not s >= 0:
            raise ValueError(f"λ scale must be >= 0, got {s}")
    jobs = [{"overrides": {**overrides, "lambda_scale": float(s)},
             "run_dir": Path(out_dir) / f"scale_{s:g}" if out_dir is not None else None} for s in scales]
    results = resolve(executor).map(_run, (model, task, config), jobs)
    rows = [circuit_row(r.circuit, r.evaluation or r.train_evaluation, lambda_scale=float(s), label=f"λ×{s:g}",
                        method="mgnp", interrupted=r.interrupted) for s, r in zip(scales, results)]
    return SweepResult(results, pd.DataFrame(rows))


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b| of two boolean tensors (1.0 when both are empty)."""
    a, b = a.bool(), b.bool()
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def overlap(circuits: Sequence[Circuit], labels: Sequence | None = None) -> pd.DataFrame:
    """Pairwise Jaccard overlap of heads, attention neurons, MLP hidden and MLP output neurons."""
    labels = list(labels) if labels is not None else list(range(len(circuits)))
    rows = []
    for (i, a), (j, b) in itertools.combinations(list(enumerate(circuits)), 2):
        row = {"a": labels[i], "b": labels[j], "attn_head": jaccard(a.masks["attn_head"], b.masks["attn_head"])}
        for g in NEURON_GRANULARITIES:
            row[g] = jaccard(a.masks[g], b.masks[g])
        rows.append(row)
    return pd.DataFrame(rows)


def compare_circuits(a: Circuit, b: Circuit) -> pd.DataFrame:
    """Two circuits of one model side by side, per granularity: kept in each, in both, Jaccard, and (for
    heads and MLP blocks) the nodes only one of them keeps."""
    if a.dims != b.dims:
        raise ValueError(f"the circuits are of different models: {a.dims.to_dict()} and {b.dims.to_dict()}")
    names = {"attn_head": lambda i: f"L{i[0]} H{i[1]}", "mlp_block": lambda i: f"L{i[0]} MLP",
             "mlp_expert": lambda i: f"L{i[0]} E{i[1]}"}
    rows = []
    for g in a.dims.granularities:
        ma, mb = a.masks[g].bool(), b.masks[g].bool()
        row = {"granularity": g, "kept_a": int(ma.sum()), "kept_b": int(mb.sum()), "kept_both": int((ma & mb).sum()),
               "jaccard": jaccard(ma, mb), "only_a": "", "only_b": ""}
        if g in names:
            row["only_a"] = ", ".join(names[g](i) for i in (ma & ~mb).nonzero().tolist())
            row["only_b"] = ", ".join(names[g](i) for i in (mb & ~ma).nonzero().tolist())
        rows.append(row)
    return pd.DataFrame(rows)


def stability(model, task, seeds: Sequence[int] = (0, 1, 2), config=None, out_dir: str | Path | None = None,
              executor=None, **overrides) -> tuple[pd.DataFrame, list]:
    """The same task with several seeds: pairwise Jaccard overlap of the circuits.

    Args:
        out_dir: as in :func:`sweep`: runs checkpoint to ``out_dir/seed_<s>`` and a second call resumes them.
        executor: as in :func:`sweep`.

    Returns:
        ``(table, results)``: one row per pair of seeds (columns ``a, b, attn_head, attn_neuron,
        mlp_hidden, mlp_output``) and the runs.

    Raises:
        KeyboardInterrupt: Ctrl-C stopped a run (with ``out_dir``, calling again resumes it).
    """
    if len(seeds) < 2:
        raise ValueError("stability needs at least two seeds")
    jobs = [{"overrides": {**overrides, "seed": int(s)},
             "run_dir": Path(out_dir) / f"seed_{int(s)}" if out_dir is not None else None} for s in seeds]
    results = resolve(executor).map(_run, (model, task, config), jobs)
    for s, r in zip(seeds, results):
        if r.interrupted:  # an overlap with a half-trained circuit would mislead
            raise KeyboardInterrupt(f"stability run for seed {s} was interrupted after {r.steps_completed} steps")
    return overlap([r.circuit for r in results], labels=list(seeds)), results
