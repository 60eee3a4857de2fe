"""Known circuits and the paper's numbers: what a discovered circuit is compared against.

* Reference circuits of GPT-2 small (``data/reference_circuits.json``): the IOI circuit of Wang
  et al. (heads by class) and the Greater-Than circuit of Hanna et al. in two encodings that
  disagree: ``gt`` / ``gt-acdc`` (ACDC's encoding, used by published ROC AUCs) and ``gt-hanna``
  (Hanna et al.'s own path-patching list: it has heads 5.1 and 8.8 and lacks 6.1).
* :func:`compare` scores one circuit against a reference; :func:`roc` scores a set of circuits
  (a λ sweep) the way ACDC does: one (FPR, TPR) point per circuit, endpoints (0, 0) and (1, 1)
  added, area by the trapezoid rule.
* The paper's own GPT-2 tables (``data/paper_tables.json``) keyed by our granularity names:
  :func:`paper_summary` (Table 1), :func:`paper_faithfulness` (Table 2), :func:`paper_per_layer`
  (Appendix D).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .circuit import Circuit
from .granularity import APPENDIX_D_COLUMNS
from .hooks import at_positions
from .tasks import _data

#: Our names for the reference circuits, and the key of each in reference_circuits.json.
REFERENCES = {"ioi": "ioi_wang2022", "gt": "greater_than_acdc", "gt-acdc": "greater_than_acdc",
              "gt-hanna": "greater_than_hanna"}

#: Paper table keys → our granularity names.
PAPER_GRANULARITY_NAMES = {"attn_blocks": "attn_block", "mlp_blocks": "mlp_block", "attn_heads": "attn_head",
                           "attn_neurons": "attn_neuron", "mlp_hidden": "mlp_hidden", "mlp_output": "mlp_output"}

#: Paper task keys (Tables 1-2, Appendix D); our built-in task names are the same.
PAPER_TASKS = ("ioi", "gp", "gt")

_GPT2_SMALL = {"n_layers": 12, "n_heads": 12, "d_head": 64, "d_mlp": 3072, "d_model": 768}


@dataclass(frozen=True)
class ReferenceCircuit:
    """A published circuit of GPT-2 small, as 0-indexed heads and MLP layers by class.

    Attributes:
        name: our name (``ioi``, ``gt-acdc``, ``gt-hanna``).
        source: where the list comes from.
        heads_by_class: ``{class: [(layer, head), ...]}``.
        mlps_by_class: ``{class: [layer, ...]}`` (empty when MLPs are not circuit nodes).
        n_layers, n_heads: the model the circuit belongs to.
    """

    name: str
    source: str
    heads_by_class: dict[str, list[tuple[int, int]]]
    mlps_by_class: dict[str, list[int]] = field(default_factory=dict)
    n_layers: int = 12
    n_heads: int = 12
    note: str = ""

    @property
    def heads(self) -> set[tuple[int, int]]:
        return {h for hs in self.heads_by_class.values() for h in hs}

    @property
    def mlps(self) -> set[int]:
        return {m for ms in self.mlps_by_class.values() for m in ms}

    @property
    def model(self) -> str:
        """The model the circuit belongs to, in words."""
        return "GPT-2 small" if self.name in REFERENCES else self.name

    def head_class(self) -> dict[tuple[int, int], str]:
        """``{(layer, head): class}`` for every reference head."""
        return {h: c for c, hs in self.heads_by_class.items() for h in hs}


class _TracrTruths(Mapping):
    """``{"tracr-NAME": ReferenceCircuit}`` for every program of :data:`mgnp_lens.tasks.tracr.LIBRARY`: the node set
    derived from the compiled model under the corrupted ablation (:meth:`mgnp_lens.tasks.tracr.Program.truth`),
    compiled and derived on first use (needs the ``tracr`` extra)."""

    def __init__(self):
        self._cache: dict[str, ReferenceCircuit] = {}

    def _names(self) -> list[str]:
        from .names import TRACR_PROGRAMS

        return [f"tracr-{n}" for n in TRACR_PROGRAMS]

    def __getitem__(self, name: str) -> ReferenceCircuit:
        if name not in self._names():
            raise KeyError(name)
        if name not in self._cache:
            from .tasks import tracr

            self._cache[name] = tracr_reference(tracr.load(name.removeprefix("tracr-")))
        return self._cache[name]

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def tracr_reference(program, ablation: str = "corrupted") -> ReferenceCircuit:
    """A compiled tracr program's ground truth under ``ablation`` as a :class:`ReferenceCircuit`.

    Args:
        program: a :class:`mgnp_lens.tasks.tracr.Program` (:func:`~mgnp_lens.tasks.tracr.from_program`).
        ablation: ``"corrupted"`` or ``"zero"``.
    """
    truth = program.truth(ablation)
    cfg = program.model.cfg
    return ReferenceCircuit(f"tracr-{program.name}", f"tracr RASP program {program.name} (derived from the compiled "
                            f"weights by ablation, {ablation} ablation)", {"truth": sorted(truth.heads)},
                            {"truth": sorted(truth.mlps)} if truth.mlps else {}, n_layers=cfg.n_layers,
                            n_heads=cfg.n_heads)


#: tracr's compiled programs' circuits (:mod:`mgnp_lens.tasks.tracr`), known by construction: derived from the
#: compiled weights under the corrupted ablation when first read. tracr-reverse is {L3H0} and tracr-xproportion
#: {L1H0, MLP 0}: auto-circuit's official node sets.
TRACR_TRUTH = _TracrTruths()


def reference_names() -> list[str]:
    return sorted([*REFERENCES, *TRACR_TRUTH])


def get_reference(name: str) -> ReferenceCircuit:
    """The reference circuit called ``name`` (see :data:`REFERENCES`).

    Raises:
        ValueError: unknown name, or a task without a published circuit (``gp``).
    """
    if name in TRACR_TRUTH:
        return TRACR_TRUTH[name]
    data = _data.load("reference_circuits")
    if name in ("gp", "gendered_pronouns"):
        raise ValueError(f"no reference circuit for {name!r}: {data['gendered_pronouns']['note']}")
    if name not in REFERENCES:
        raise ValueError(f"unknown reference circuit {name!r}; expected one of {', '.join(reference_names())}")
    entry = data[REFERENCES[name]]
    heads = {c: [tuple(h) for h in hs] for c, hs in entry["heads_by_class"].items()}
    mlps = {c: list(ms) for c, ms in entry.get("mlps_by_class", {}).items()}
    return ReferenceCircuit(name, entry["source"], heads, mlps, note=entry.get("note", ""))


def _check_shape(circuit: Circuit, ref: ReferenceCircuit) -> None:
    d = circuit.dims
    if (d.n_layers, d.n_heads) != (ref.n_layers, ref.n_heads):
        raise ValueError(
            f"reference circuit {ref.name!r} is for {ref.model} ({ref.n_layers} layers × {ref.n_heads} heads); "
            f"this circuit has {d.n_layers} layers × {d.n_heads} heads, so heads cannot be matched")


def _scores(found: set, truth: set, universe: int) -> dict:
    tp = len(found & truth)
    precision = tp / len(found) if found else float("nan")
    recall = tp / len(truth) if truth else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if found and truth and (precision + recall) else 0.0
    union = len(found | truth)
    return {"n_reference": len(truth), "n_found": len(found), "true_positives": tp,
            "precision": precision, "recall": recall, "f1": f1 if found and truth else float("nan"),
            "jaccard": tp / union if union else float("nan"),
            "tpr": recall, "fpr": (len(found) - tp) / (universe - len(truth)) if universe > len(truth) else 0.0}


def compare(circuit: Circuit, reference: str | ReferenceCircuit) -> pd.DataFrame:
    """Score ``circuit`` against a reference circuit at head level and MLP level.

    Returns:
        DataFrame with one row per reference class (``level`` head/mlp, ``class``, ``recall``,
        counts) and one ``class == "all"`` row per level with precision, recall, F1, Jaccard,
        TPR and FPR. The MLP level is present only when the reference has MLP classes.
    """
    ref = get_reference(reference) if isinstance(reference, str) else reference
    _check_shape(circuit, ref)
    heads = set(circuit.active_heads())
    rows = []
    n_heads = ref.n_layers * ref.n_heads
    for cls, hs in ref.heads_by_class.items():
        s = _scores(heads, set(hs), n_heads)
        rows.append({"level": "head", "class": cls, "n_reference": s["n_reference"],
                     "n_found": s["true_positives"], "recall": s["recall"]})
    rows.append({"level": "head", "class": "all", **_scores(heads, ref.heads, n_heads)})
    if ref.mlps_by_class:
        mlps = set(circuit.active_mlps())
        for cls, ms in ref.mlps_by_class.items():
            s = _scores(mlps, set(ms), ref.n_layers)
            rows.append({"level": "mlp", "class": cls, "n_reference": s["n_reference"],
                         "n_found": s["true_positives"], "recall": s["recall"]})
        rows.append({"level": "mlp", "class": "all", **_scores(mlps, ref.mlps, ref.n_layers)})
    cols = ["level", "class", "n_reference", "n_found", "true_positives", "precision", "recall", "f1", "jaccard",
            "tpr", "fpr"]
    return pd.DataFrame(rows).reindex(columns=cols)


@dataclass
class RocCurve:
    """ROC points (sorted by FPR, endpoints included) and the area under them."""

    points: pd.DataFrame
    auc: float


#: How :func:`roc` integrates: ``trapezoid`` (straight lines between points) or ``staircase`` (ACDC's published
#: AUCs: each point's TPR held until the next point's FPR, a lower bound).
ROC_RULES = ("trapezoid", "staircase")


def roc(circuits: list[Circuit] | pd.DataFrame, reference: str | ReferenceCircuit, level: str = "node",
        labels: list | None = None, mlps: bool | None = None, rule: str = "trapezoid") -> RocCurve:
    """ACDC-style ROC over a set of circuits (e.g. a λ sweep), or over one run's per-node scores.

    Each circuit gives one point: TPR = |found ∩ ref| / |ref| and FPR = |found \\ ref| / |non-ref|
    over the nodes of ``level`` (``head``; ``mlp``; ``node`` = heads plus MLP layers). Scores
    (:meth:`mgnp_lens.DiscoveryResult.scores`) give one point per distinct score: the nodes scored at least that
    (heads by their ``attn_head`` row, MLP layers by their ``mlp_block`` row), so one run draws a full curve.
    (0, 0) and (1, 1) are added and the points sorted by FPR (then TPR). As in ACDC, the curve keeps only points
    that no point of lower-or-equal FPR beats on TPR (a sweep's circuits need not be nested).

    Args:
        circuits: circuits of the reference's model, or a score table.
        mlps: whether ``level="node"`` counts MLP layers (default: when the reference has MLP nodes). With
            ``True`` and a reference without MLPs every kept MLP is a false positive.
        rule: :data:`ROC_RULES`: the area by the trapezoid rule, or ACDC's staircase.

    Returns:
        :class:`RocCurve` with columns ``label, fpr, tpr, on_curve`` (with scores, ``label`` is the threshold).

    Raises:
        ValueError: an unknown level or rule, no circuits, circuits of another model, or a reference whose nodes
            at ``level`` are all in the truth (no negatives: every curve has area 1).
    """
    if level not in ("head", "mlp", "node"):
        raise ValueError(f"unknown ROC level {level!r}; expected 'head', 'mlp' or 'node'")
    if rule not in ROC_RULES:
        raise ValueError(f"unknown ROC rule {rule!r}; expected one of {', '.join(ROC_RULES)}")
    ref = get_reference(reference) if isinstance(reference, str) else reference
    if level == "mlp" and not ref.mlps_by_class:
        raise ValueError(f"reference {ref.name!r} has no MLP nodes; use level='head', or level='node' with mlps=True")
    with_heads = level in ("head", "node")
    with_mlps = level == "mlp" or (level == "node" and (bool(ref.mlps_by_class) if mlps is None else mlps))

    def nodes_of(heads, mlp_layers) -> set:
        return ({("head", *h) for h in heads} if with_heads else set()) | \
            ({("mlp", m) for m in mlp_layers} if with_mlps else set())

    truth = nodes_of(ref.heads, ref.mlps)
    universe = with_heads * ref.n_layers * ref.n_heads + with_mlps * ref.n_layers
    if universe == len(truth):
        raise ValueError(f"every {level} of {ref.name!r} is in its truth ({universe} of {universe}), so there is no "
                         "false positive to count and any ranking has AUC 1; compare the circuit instead "
                         "(reference.compare), or count more nodes (level='node', mlps=True)")
    found = _scored_sets(circuits, ref, nodes_of) if isinstance(circuits, pd.DataFrame) else \
        _circuit_sets(circuits, ref, nodes_of, labels)
    rows = [{"label": "endpoint", "fpr": 0.0, "tpr": 0.0}]
    for lab, nodes in found:
        s = _scores(nodes, truth, universe)
        rows.append({"label": lab, "fpr": s["fpr"], "tpr": s["tpr"]})
    rows.append({"label": "endpoint", "fpr": 1.0, "tpr": 1.0})
    return _curve(pd.DataFrame(rows), rule)


def _circuit_sets(circuits: list[Circuit], ref: ReferenceCircuit, nodes_of, labels) -> list[tuple]:
    """``[(label, node set)]`` of a list of circuits."""
    if not len(circuits):
        raise ValueError("roc needs at least one circuit")
    labels = list(labels) if labels is not None else list(range(len(circuits)))
    if len(labels) != len(circuits):
        raise ValueError(f"{len(labels)} labels for {len(circuits)} circuits")
    for c in circuits:
        _check_shape(c, ref)
    return [(lab, nodes_of(c.active_heads(), c.active_mlps())) for c, lab in zip(circuits, labels)]


def _scored_sets(scores: pd.DataFrame, ref: ReferenceCircuit, nodes_of) -> list[tuple]:
    """``[(threshold, node set)]``: the nodes scored at least each distinct score of a score table."""
    heads = scores[scores["granularity"] == "attn_head"]
    mlps = scores[scores["granularity"] == "mlp_block"]
    if len(heads) != ref.n_layers * ref.n_heads or len(mlps) != ref.n_layers:
        raise ValueError(f"reference circuit {ref.name!r} is for {ref.model} ({ref.n_layers} layers × {ref.n_heads} "
                         f"heads); these scores have {len(heads)} heads over {len(mlps)} layers")
    head_scores = {(int(l), int(h)): float(v) for l, h, v in heads[["layer", "head", "score"]].itertuples(index=False)}
    mlp_scores = {int(l): float(v) for l, v in mlps[["layer", "score"]].itertuples(index=False)}
    out = []
    for t in sorted({*head_scores.values(), *mlp_scores.values()}, reverse=True):
        out.append((t, nodes_of([h for h, v in head_scores.items() if v >= t], [m for m, v in mlp_scores.items()
                                                                                   if v >= t])))
    return out


def _curve(pts: pd.DataFrame, rule: str) -> RocCurve:
    """The ROC curve through ``pts`` (endpoints included): sorted, dominated points marked, area by ``rule``."""
    pts = pts.sort_values(["fpr", "tpr"], kind="stable").reset_index(drop=True)
    best, on_curve = -1.0, []
    for tpr in pts["tpr"]:  # a point is on the curve unless a point with lower-or-equal FPR has higher TPR
        on_curve.append(tpr >= best)
        best = max(best, tpr)
    pts["on_curve"] = on_curve
    curve = pts[pts["on_curve"]]
    x, y = curve["fpr"].to_numpy(), curve["tpr"].to_numpy()
    auc = float(np.trapezoid(y, x)) if rule == "trapezoid" else float(np.sum(np.diff(x) * y[:-1]))
    return RocCurve(pts, auc)


# --------------------------------------------------------------------- the paper's GPT-2 tables
def _paper_task(task: str) -> str:
    if task not in PAPER_TASKS:
        raise ValueError(f"the paper reports no tables for task {task!r}; expected one of {', '.join(PAPER_TASKS)}")
    return task


def paper_summary(task: str) -> pd.DataFrame:
    """Paper Table 1 for ``task`` (GPT-2 small): granularity, active, sparsity_pct."""
    t1 = _data.load("paper_tables")["table1_active_and_sparsity"][_paper_task(task)]
    return pd.DataFrame([{"granularity": ours, "active": t1[k][0], "sparsity_pct": t1[k][1]}
                         for k, ours in PAPER_GRANULARITY_NAMES.items()])


def paper_faithfulness(task: str) -> dict:
    """Paper Table 2 row for ``task``: base_metric, circuit_metric, kl, metric."""
    return dict(_data.load("paper_tables")["table2_faithfulness"][_paper_task(task)])


def paper_per_layer(task: str) -> pd.DataFrame:
    """Paper Appendix D table for ``task`` with our column names (layers 1-indexed, as printed)."""
    rows = _data.load("paper_tables")["appendix_d_per_layer"][_paper_task(task)]
    keys = ["layer", "attn_block", "mlp_block", "attn_heads", "attn_neurons", "mlp_hidden", "mlp_output"]
    return pd.DataFrame([[r[k] for k in keys] for r in rows], columns=APPENDIX_D_COLUMNS)


def paper_comparison(circuit: Circuit, task: str) -> pd.DataFrame:
    """Our Table 1 beside the paper's (GPT-2 small) for the same task: counts and sparsity %."""
    ours = circuit.summary().set_index("granularity")
    paper = paper_summary(task).set_index("granularity")
    rows = []
    for g in paper.index:
        rows.append({"granularity": g, "active": int(ours.loc[g, "active"]), "total": int(ours.loc[g, "total"]),
                     "sparsity_pct": float(ours.loc[g, "sparsity_pct"]),
                     "paper_active_gpt2": int(paper.loc[g, "active"]),
                     "paper_sparsity_pct_gpt2": float(paper.loc[g, "sparsity_pct"])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------- an independent reference: activation patching
def _replace_all(activation, index, other):
    """TransformerLens patch setter: the whole activation of one layer replaced by the other run's."""
    activation[...] = other
    return activation


def patching_effects(model, task, split: str = "train", max_examples: int | None = 64,
                     batch_size: int = 16) -> pd.DataFrame:
    """Each head's and each MLP's activation-patching effect on the task metric, by TransformerLens's own
    ``transformer_lens.patching`` (no mgnp-lens hooks involved): the clean run with one component's output
    (``hook_z`` of one head, or one layer's ``hook_mlp_out``) replaced at every position by its value on the
    paired corrupted prompt, the way a pruned node is ablated.

    Args:
        model: a ``HookedTransformer``.
        task: a :class:`mgnp_lens.tasks.Task`; its metric is averaged over each batch.
        split, max_examples: the pairs (at most ``max_examples`` of ``split``, spread over its length buckets).
        batch_size: pairs per patched forward pass (one pass per component and batch).

    Returns:
        one row per component: ``kind`` (``head`` or ``mlp``), ``layer``, ``head`` (−1 for MLPs), ``name``
        (``L3 H2``, ``L3 MLP``), ``effect`` = mean over pairs of metric(clean) − metric(patched) (how much of
        the metric the component carries), sorted by ``|effect|``, largest first.
    """
    from transformer_lens import patching

    pairs = task.split(split)
    pairs = pairs.head(max_examples) if max_examples is not None else pairs
    device = next(model.parameters()).device
    cfg = model.cfg
    heads = torch.zeros(cfg.n_layers, cfg.n_heads)
    mlps = torch.zeros(cfg.n_layers)
    n = 0
    with torch.inference_mode():
        for batch in pairs.batches(batch_size):
            batch = batch.to(device)
            def metric(logits, batch=batch):
                return task.metric(at_positions(logits, batch.answer_pos), batch).sum()

            clean = float(metric(model(batch.clean)))
            _, corrupted_cache = model.run_with_cache(batch.corrupted, names_filter=lambda name: name.endswith(
                ("hook_z", "hook_mlp_out")))
            heads += clean - patching.get_act_patch_attn_head_out_all_pos(model, batch.clean, corrupted_cache,
                                                                          metric).cpu()
            mlps += clean - patching.generic_activation_patch(model, batch.clean, corrupted_cache, metric,
                                                              _replace_all, "mlp_out", ("layer",)).cpu()
            n += len(batch)
    if n == 0:
        raise ValueError(f"split {split!r} has no pairs to patch")
    rows = [{"kind": "head", "layer": l, "head": h, "name": f"L{l} H{h}", "effect": float(heads[l, h]) / n}
            for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    rows += [{"kind": "mlp", "layer": l, "head": -1, "name": f"L{l} MLP", "effect": float(mlps[l]) / n}
             for l in range(cfg.n_layers)]
    table = pd.DataFrame(rows)
    return table.reindex(table["effect"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def _auc(kept_scores: np.ndarray, other_scores: np.ndarray) -> float | None:
    """P(a kept component's score > a pruned one's), ties counting half (the Mann-Whitney AUC)."""
    if len(kept_scores) == 0 or len(other_scores) == 0:
        return None
    diff = kept_scores[:, None] - other_scores[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def rank_against_patching(circuit: Circuit, effects: pd.DataFrame) -> pd.DataFrame:
    """How a circuit's kept heads and MLP blocks rank by :func:`patching_effects`' ``|effect|``.

    Returns:
        one row per kind (``head``, ``mlp``): ``kept``, ``auc`` (P(kept |effect| > pruned |effect|)),
        ``precision_at_k`` (the share of the kept among the k strongest, k = number kept) and the
        strongest component the circuit does not keep.
    """
    kept = {"head": {f"L{l} H{h}" for l, h in circuit.active_heads()},
            "mlp": {f"L{l} MLP" for l in circuit.active_mlps()}}
    rows = []
    for kind, part in effects.groupby("kind", sort=False):
        strength = part["effect"].abs().to_numpy()
        is_kept = part["name"].isin(kept[kind]).to_numpy()
        k = int(is_kept.sum())
        top = part.iloc[np.argsort(-strength, kind="stable")[:k]]
        missed = part[~is_kept].iloc[np.argsort(-strength[~is_kept], kind="stable")[:1]]
        rows.append({"kind": kind, "kept": k, "of": len(part), "auc": _auc(strength[is_kept], strength[~is_kept]),
                     "precision_at_k": float(top["name"].isin(kept[kind]).mean()) if k else None,
                     "strongest_not_kept": missed["name"].iloc[0] if len(missed) else None,
                     "its_effect": float(missed["effect"].iloc[0]) if len(missed) else None})
    return pd.DataFrame(rows)
