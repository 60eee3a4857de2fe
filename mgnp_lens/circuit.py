"""A discovered circuit: one boolean mask per granularity, hierarchy-consistent.

``Circuit`` knows nothing about training. It can say what it keeps (Appendix D / Table 1
tables), save and load itself as JSON, and run a model with every pruned node patched from
the corrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from .granularity import ALL_GRANULARITIES, APPENDIX_D_COLUMNS, GRANULARITIES, PARENT, ModelDims, check_granularity
from .hooks import Interpolator, check_hook_points, corrupted_activations, masked_full_logits

FORMAT = "mgnp-circuit/1"


def make_consistent(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Enforce the parent→child hierarchy on boolean masks; the function of the circuit is unchanged.

    Downwards: a child is kept only if its parent is kept (the path product would be 0 anyway).
    Upwards: a head with no kept attention neuron, an attention block with no kept head, an expert with no
    kept hidden neuron, and an MLP block with no kept hidden neuron or no kept output neuron are pruned (each is then fully
    patched from the corrupted run, which is what pruning the parent does).
    """
    experts = "mlp_expert" in masks  # a mixture of experts: mlp_block → mlp_expert → mlp_hidden [L, E·d_mlp]
    m = {g: masks[g].clone().bool() for g in (ALL_GRANULARITIES if experts else GRANULARITIES)}
    per_expert = m["mlp_hidden"].view(m["mlp_block"].shape[0], m["mlp_expert"].shape[-1], -1) if experts else None

    def downwards():
        m["attn_head"] &= m["attn_block"][:, None]
        m["attn_neuron"] &= m["attn_head"][:, :, None]
        if experts:
            m["mlp_expert"] &= m["mlp_block"][:, None]
            per_expert.__iand__(m["mlp_expert"][:, :, None])  # in place: a view of m["mlp_hidden"]
        else:
            m["mlp_hidden"] &= m["mlp_block"][:, None]
        m["mlp_output"] &= m["mlp_block"][:, None]

    downwards()
    # upwards
    m["attn_head"] &= m["attn_neuron"].any(dim=-1)
    m["attn_block"] &= m["attn_head"].any(dim=-1)
    if experts:
        m["mlp_expert"] &= per_expert.any(dim=-1)
    m["mlp_block"] &= m["mlp_hidden"].any(dim=-1) & m["mlp_output"].any(dim=-1)
    downwards()  # again, for children of parents pruned by the upward pass
    return m


def hierarchy_violations(masks: Mapping[str, torch.Tensor]) -> list[str]:
    """Descriptions of every place where a kept child has a pruned parent (empty if none)."""
    problems = []
    for g in (g for g in ALL_GRANULARITIES if g in masks):
        parent = "mlp_expert" if g == "mlp_hidden" and "mlp_expert" in masks else PARENT[g]
        if parent is None:
            continue
        p = masks[parent]
        c = masks[g]
        if parent == "mlp_expert":
            p = p.repeat_interleave(c.shape[-1] // p.shape[-1], dim=-1)
        expanded = p.reshape(p.shape + (1,) * (c.dim() - p.dim())).expand_as(c)
        bad = (c & ~expanded).nonzero().tolist()
        problems += [f"{g}{tuple(i)} kept under pruned {parent}" for i in bad[:5]]
    return problems


def _fraction(a: int, b: int) -> str:
    return f"{a}/{b}"


class Circuit:
    """Binary masks over the granularities of one model (seven; eight in a mixture of experts).

    Args:
        dims: the model's dimensions.
        masks: ``{granularity: bool tensor shaped dims.shape(g)}``; made hierarchy-consistent.
        task: optional task description stored with the circuit.
        config: optional discovery configuration stored with the circuit.
    """

    def __init__(self, dims: ModelDims, masks: Mapping[str, torch.Tensor], task: Any = None, config: Any = None):
        self.dims = dims
        for g in dims.granularities:
            if g not in masks:
                raise ValueError(f"circuit masks lack granularity {g!r}")
            shape = tuple(masks[g].shape)
            if shape != dims.shape(g):
                raise ValueError(f"mask {g!r} has shape {shape}, expected {dims.shape(g)} for this model")
        self.masks = make_consistent({g: torch.as_tensor(masks[g]).cpu() for g in dims.granularities})
        self.task = task
        self.config = config

    # ----------------------------------------------------------------- constructors
    @classmethod
    def full(cls, model_or_dims) -> "Circuit":
        """Every node kept: runs as the clean model."""
        dims = _dims(model_or_dims)
        return cls(dims, {g: torch.ones(dims.shape(g), dtype=torch.bool) for g in dims.granularities})

    @classmethod
    def empty(cls, model_or_dims) -> "Circuit":
        """Every node pruned: runs as the corrupted model."""
        dims = _dims(model_or_dims)
        return cls(dims, {g: torch.zeros(dims.shape(g), dtype=torch.bool) for g in dims.granularities})

    # ----------------------------------------------------------------- counts and tables
    def count(self, g: str) -> int:
        """Number of kept nodes of granularity ``g``."""
        return int(self.masks[check_granularity(g)].sum())

    def counts(self) -> dict[str, int]:
        return {g: self.count(g) for g in self.dims.granularities}

    def active_heads(self) -> list[tuple[int, int]]:
        """Kept attention heads as 0-indexed ``(layer, head)`` pairs."""
        return [tuple(x) for x in self.masks["attn_head"].nonzero().tolist()]

    def active_mlps(self) -> list[int]:
        """Layers whose MLP block is kept (a consistent circuit then keeps some of its output neurons)."""
        return [int(l) for l in self.masks["mlp_block"].nonzero().flatten().tolist()]

    def per_layer(self, one_indexed: bool = False) -> pd.DataFrame:
        """The paper's Appendix D table: one row per layer.

        Columns ``Layer, Attn Block, MLP Block, Attn Heads, Attn Neurons, MLP Hidden, MLP Output``;
        cells ``Active``/``Pruned`` for blocks and ``kept/total`` strings otherwise.

        Args:
            one_indexed: number layers from 1, as the paper's tables do (default 0, as the API does).
        """
        d, m = self.dims, self.masks
        rows = []
        for l in range(d.n_layers):
            rows.append([
                l + 1 if one_indexed else l,
                "Active" if m["attn_block"][l] else "Pruned",
                "Active" if m["mlp_block"][l] else "Pruned",
                _fraction(int(m["attn_head"][l].sum()), d.n_heads),
                _fraction(int(m["attn_neuron"][l].sum()), d.n_heads * d.d_head),
                _fraction(int(m["mlp_hidden"][l].sum()), d.hidden_width),
                _fraction(int(m["mlp_output"][l].sum()), d.d_model),
            ])
        table = pd.DataFrame(rows, columns=APPENDIX_D_COLUMNS)
        if d.n_experts:  # a mixture of experts: kept experts, after the MLP block
            table.insert(3, "MLP Experts", [_fraction(int(m["mlp_expert"][l].sum()), d.n_experts)
                                            for l in range(d.n_layers)])
        return table

    def summary(self) -> pd.DataFrame:
        """The paper's Table 1 for this circuit: kept count, total and sparsity % per granularity."""
        rows = []
        for g in self.dims.granularities:
            total = self.dims.count(g)
            active = self.count(g)
            rows.append({"granularity": g, "active": active, "total": total,
                         "sparsity_pct": round(100.0 * (1 - active / total), 2)})
        return pd.DataFrame(rows)

    def n_params(self) -> int:
        """Weights that touch a kept node (an estimate of the circuit's parameter count).

        Per kept attention neuron: its column of W_Q, W_K, W_V and its row of W_O (4·d_model);
        per kept MLP hidden neuron: its W_in column (d_model) and its W_out entries to kept MLP
        output neurons of the same layer; the embedding matrix is not counted.
        """
        d, m = self.dims, self.masks
        attn = 4 * d.d_model * int(m["attn_neuron"].sum())
        mlp = sum(int(m["mlp_hidden"][l].sum()) * (d.d_model + int(m["mlp_output"][l].sum()))
                  for l in range(d.n_layers))
        return attn + mlp

    def compression_ratio(self) -> float:
        """Parameter count of the full model's gated weights ÷ that of this circuit (inf if empty)."""
        full = Circuit.full(self.dims).n_params()
        own = self.n_params()
        return float("inf") if own == 0 else full / own

    # ----------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.dims.to_dict(),
            "masks": {g: self.masks[g].to(torch.uint8).tolist() for g in self.dims.granularities},
            "task": self.task,
            "config": self.config,
        }

    def save(self, path: str | Path) -> Path:
        """Write the circuit as ``mgnp-circuit/1`` JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        tmp.replace(path)  # atomic: a crash never leaves half a file
        return path

    @classmethod
    def from_dict(cls, data: Mapping) -> "Circuit":
        """Inverse of :meth:`to_dict`; ``ValueError`` names a wrong format or a missing part."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"not an mgnp circuit: format is {found!r}, expected {FORMAT!r}")
        missing = [k for k in ("model", "masks") if not isinstance(data.get(k), Mapping)]
        if missing:
            raise ValueError(f"the circuit lacks {', '.join(missing)}")
        try:
            dims = ModelDims.from_dict(data["model"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"the circuit's model shape is malformed ({e})") from None
        missing = [f"masks.{g}" for g in dims.granularities if g not in data["masks"]]
        if missing:
            raise ValueError(f"the circuit lacks {', '.join(missing)}")
        try:
            raw = {g: torch.tensor(data["masks"][g]) for g in dims.granularities}
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"the circuit's model shape or masks are malformed ({e})") from None
        for g, m in raw.items():  # 0/1 (or false/true) only: a 2 or a -1 is a mistake, not "kept"
            if m.dtype != torch.bool and not ((m == 0) | (m == 1)).all():
                bad = sorted({float(v) for v in m[(m != 0) & (m != 1)].flatten()[:5].tolist()})
                raise ValueError(f"masks.{g} holds {', '.join(f'{v:g}' for v in bad)}; a mask value must be 0 "
                                 "(pruned) or 1 (kept)")
        masks = {g: m.bool() for g, m in raw.items()}
        return cls(dims, masks, task=data.get("task"), config=data.get("config"))

    @classmethod
    def load(cls, path: str | Path) -> "Circuit":
        """Read a circuit written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no circuit file at {path}")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is damaged: {e}; in a run directory with state.pt, mgnp discover --resume "
                             f"{path.parent} rewrites it") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, Circuit) and self.dims == other.dims and all(
            torch.equal(self.masks[g], other.masks[g]) for g in self.dims.granularities)

    def __repr__(self) -> str:
        c = self.counts()
        return (f"Circuit(heads={c['attn_head']}/{self.dims.count('attn_head')}, "
                f"attn_neurons={c['attn_neuron']}, mlp_hidden={c['mlp_hidden']}, mlp_output={c['mlp_output']})")

    # ----------------------------------------------------------------- running
    def run(self, model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor | None = None,
            ablation: "Ablation | str | None" = None, replacement: "Replacement | None" = None) -> torch.Tensor:
        """Logits of ``model`` with every pruned node ablated: patched from the corrupted run (the default), set
        to zero, or set to its mean (see :mod:`mgnp_lens.ablation`).

        Args:
            clean_tokens: [batch, pos] token ids.
            corrupted_tokens: [batch, pos] token ids, same shape (the mean ablation averages over them
                unless a ``replacement`` is given; the zero ablation needs none).
            ablation: ``"corrupted"``, ``"zero"`` or ``"mean"``; default the one the circuit was found with (or
                ``replacement``'s).
            replacement: a zero/mean :class:`~mgnp_lens.ablation.Replacement` already built (e.g. with a task's
                training-pair means); it sets the ablation.

        Returns:
            [batch, pos, d_vocab] logits.
        """
        from .ablation import Ablation, Replacement

        if _dims(model) != self.dims:
            raise ValueError(f"circuit was made for {self.dims}, model has {_dims(model)}")
        if replacement is not None and ablation is not None and Ablation.of(ablation) is not replacement.ablation:
            raise ValueError(f"ablation={Ablation.of(ablation).value!r} but the replacement given is the "
                             f"{replacement.ablation.value!r} ablation's; pass one or the other")
        ablation = replacement.ablation if replacement is not None else Ablation.of(ablation or self)
        if corrupted_tokens is None and replacement is None and ablation.needs_corrupted_prompts:
            raise ValueError(f"the {ablation.value!r} ablation needs corrupted_tokens")
        if corrupted_tokens is not None and clean_tokens.shape != corrupted_tokens.shape:
            raise ValueError(f"clean tokens {tuple(clean_tokens.shape)} and corrupted tokens "
                             f"{tuple(corrupted_tokens.shape)} must have the same shape")
        check_hook_points(model, self.dims)
        if replacement is None:
            replacement = Replacement.for_prompts(ablation, model, self.dims, corrupted_tokens)
        # a mixture of experts runs the corrupted prompts on their own first: its routed matmuls round differently
        # in a batch of 2B rows, so only separate passes give the clean and corrupted runs bit for bit
        separate = not replacement.is_constant and bool(self.dims.n_experts)
        interp = Interpolator(self.dims, replacement.interpolation_mode("cache" if separate else "batch"),
                              replacement=replacement)
        interp.set_masks(self.masks)
        with torch.no_grad():
            if separate:
                interp.set_corrupted(corrupted_activations(model, self.dims, corrupted_tokens))
            elif interp.mode == "batch":
                return masked_full_logits(model, interp, clean_tokens, corrupted_tokens)
            with interp.attached(model):
                return model(clean_tokens, return_type="logits")


#: The index columns of :func:`score_table`, by granularity: which of ``layer, head, index`` each axis fills.
_SCORE_AXES = {"embedding": ("index",), "attn_block": ("layer",), "mlp_block": ("layer",),
               "attn_head": ("layer", "head"), "attn_neuron": ("layer", "head", "index"),
               "mlp_expert": ("layer", "index"), "mlp_hidden": ("layer", "index"), "mlp_output": ("layer", "index")}


def score_table(circuit: Circuit, scores: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """One row per node of every granularity: ``granularity, layer, head, index, score, kept``.

    Args:
        circuit: the circuit the scores belong to (its masks fill ``kept``).
        scores: ``{granularity: tensor shaped dims.shape(g)}``, e.g. each node's probability of being kept.

    Returns:
        a DataFrame sorted by granularity (hierarchy order), then position; ``layer``, ``head`` and ``index`` are
        nullable integers (``index``: the attention neuron's ``hook_z`` dimension, the MLP neuron, the expert).
    """
    parts = []
    for g in circuit.dims.granularities:
        values = scores[g].detach().cpu()
        idx = torch.cartesian_prod(*(torch.arange(n) for n in values.shape)).reshape(values.numel(), -1)
        frame = pd.DataFrame({"granularity": g, **{axis: idx[:, i].numpy() for i, axis in enumerate(_SCORE_AXES[g])},
                              "score": values.flatten().double().numpy(),
                              "kept": circuit.masks[g].flatten().numpy()})
        parts.append(frame)
    table = pd.concat(parts, ignore_index=True)
    for axis in ("layer", "head", "index"):
        table[axis] = table[axis].astype("Int64") if axis in table else pd.array([pd.NA] * len(table), dtype="Int64")
    if (table["granularity"] == "embedding").any():
        table.loc[table["granularity"] == "embedding", "index"] = pd.NA
    return table[["granularity", "layer", "head", "index", "score", "kept"]]


def _dims(model_or_dims) -> ModelDims:
    return model_or_dims if isinstance(model_or_dims, ModelDims) else ModelDims.from_model(model_or_dims)
