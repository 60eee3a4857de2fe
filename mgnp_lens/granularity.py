"""The typed vocabulary of mgnp-lens: granularity names, model dimensions, hierarchy.

Every other module speaks in these names. Layers are 0-indexed throughout the API;
the paper's tables are 1-indexed (see :meth:`mgnp_lens.Circuit.per_layer`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Mapping

if TYPE_CHECKING:
    import torch

Granularity = Literal[
    "embedding", "attn_block", "mlp_block", "attn_head", "attn_neuron", "mlp_hidden", "mlp_output", "mlp_expert"
]

#: The paper's seven granularities, parents before children: every model has them.
GRANULARITIES: tuple[Granularity, ...] = (
    "embedding",
    "attn_block",
    "mlp_block",
    "attn_head",
    "attn_neuron",
    "mlp_hidden",
    "mlp_output",
)

#: Every granularity mgnp-lens knows: the seven, then ``mlp_expert`` (the experts of a mixture-of-experts MLP
#: block, which only such models have; :attr:`ModelDims.granularities` lists a model's own, parents first).
ALL_GRANULARITIES: tuple[Granularity, ...] = GRANULARITIES + ("mlp_expert",)

#: Parent of each granularity (``None`` for roots). attn_block → attn_head → attn_neuron;
#: mlp_block → mlp_hidden and mlp_output; in a mixture of experts mlp_block → mlp_expert → mlp_hidden
#: (:meth:`ModelDims.parent`).
PARENT: dict[str, str | None] = {
    "embedding": None,
    "attn_block": None,
    "mlp_block": None,
    "attn_head": "attn_block",
    "attn_neuron": "attn_head",
    "mlp_hidden": "mlp_block",
    "mlp_output": "mlp_block",
    "mlp_expert": "mlp_block",
}

#: The attention granularities (the block, its heads, their neurons): those whose Hard-Concrete noise
#: warms up by default (``PruningConfig.noise_warmup_granularities``).
ATTENTION_GRANULARITIES: tuple[Granularity, ...] = ("attn_block", "attn_head", "attn_neuron")

#: The neuron granularities (units inside a head or an MLP): those a two-stage schedule trains second
#: (``PruningConfig.neuron_start``).
NEURON_GRANULARITIES: tuple[Granularity, ...] = ("attn_neuron", "mlp_hidden", "mlp_output")

#: Paper Appendix C sparsity weights λ_g (``embedding`` is ours; the paper does not gate it).
PAPER_LAMBDAS: dict[str, float] = {
    "embedding": 0.0,
    "attn_block": 0.2,
    "mlp_block": 0.1,
    "attn_head": 3.0,
    "attn_neuron": 1.5,
    "mlp_hidden": 5.0,
    "mlp_output": 1.5,
    "mlp_expert": 0.1,  # not in the paper: an expert is a part of an MLP block, so it takes the block's λ
}

#: The default sparsity weights λ_g: the paper's, with two thirds of its head λ and a sixteenth of its λ on the three
#: neuron granularities, because at the paper's the neuron gates fit the training templates (why, and what it costs:
#: docs/calibration.md). :data:`PAPER_LAMBDAS` replicates the paper.
DEFAULT_LAMBDAS: dict[str, float] = {
    **PAPER_LAMBDAS,
    "attn_head": 2.0,
    "attn_neuron": PAPER_LAMBDAS["attn_neuron"] / 16,
    "mlp_hidden": PAPER_LAMBDAS["mlp_hidden"] / 16,
    "mlp_output": PAPER_LAMBDAS["mlp_output"] / 16,
}

#: Column names of the paper's Appendix D per-layer tables, in order.
APPENDIX_D_COLUMNS = ["Layer", "Attn Block", "MLP Block", "Attn Heads", "Attn Neurons", "MLP Hidden", "MLP Output"]

#: TransformerLens hook points the engine needs, per layer (``{l}`` is the layer).
HOOK_TEMPLATES = {
    "embedding": "blocks.0.hook_resid_pre",
    "attn_neuron": "blocks.{l}.attn.hook_z",
    "mlp_hidden": "blocks.{l}.mlp.hook_post",
    "mlp_output": "blocks.{l}.hook_mlp_out",
    # a mixture of experts: not one hook point but the experts' routed hidden activations, [E, d_mlp] per
    # position, gathered from blocks.{l}.mlp.experts.{e}.hook_post and the routing (mgnp_lens.experts)
    "mlp_expert": "blocks.{l}.mlp.hook_experts",
}


def check_granularity(name: str) -> Granularity:
    """Return ``name`` if it is a granularity, else raise a ``ValueError`` listing the valid ones."""
    if name not in ALL_GRANULARITIES:
        raise ValueError(f"unknown granularity {name!r}; expected one of {', '.join(ALL_GRANULARITIES)}")
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelDims:
    """The dimensions that fix the gate shapes of a model.

    Attributes:
        n_layers: number of transformer blocks ``L``.
        n_heads: query heads per layer ``H`` (``hook_z`` is per query head, so GQA needs nothing else).
        d_head: dimensions per head.
        d_mlp: MLP hidden width (of each expert, in a mixture of experts).
        d_model: residual width.
        n_experts: experts per MLP block; 0 for a dense MLP.
    """

    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_model: int
    n_experts: int = 0

    @classmethod
    def from_model(cls, model) -> "ModelDims":
        """Read the dimensions off a ``HookedTransformer`` or ``TransformerBridge`` (its ``cfg``)."""
        cfg = model.cfg
        d_mlp = getattr(cfg, "d_mlp", None)
        if getattr(cfg, "attn_only", False) or not d_mlp:
            raise ValueError(
                "unsupported model: it has no MLP layers (attn_only or d_mlp unset), so the hook "
                "points blocks.{l}.mlp.hook_post / blocks.{l}.hook_mlp_out that mgnp-lens gates do not exist"
            )
        n_experts = int(getattr(cfg, "num_experts", None) or 0)
        if n_experts > 1:
            from .experts import check_expert_blocks

            check_expert_blocks(model)
        return cls(int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head), int(d_mlp), int(cfg.d_model),
                   n_experts if n_experts > 1 else 0)

    @classmethod
    def from_dict(cls, d: Mapping[str, int]) -> "ModelDims":
        missing = [k for k in ("n_layers", "n_heads", "d_head", "d_mlp", "d_model") if k not in d]
        if missing:
            raise ValueError(f"model dimensions are missing {missing}")
        keys = ("n_layers", "n_heads", "d_head", "d_mlp", "d_model") + (("n_experts",) if "n_experts" in d else ())
        return cls(**{k: int(d[k]) for k in keys})

    def to_dict(self) -> dict[str, int]:
        """The dimensions as a dict (``n_experts`` only for a mixture of experts, so a dense model's is unchanged)."""
        d = asdict(self)
        if not self.n_experts:
            del d["n_experts"]
        return d

    @property
    def hidden_width(self) -> int:
        """MLP hidden units per layer that ``mlp_hidden`` gates: ``d_mlp``, or ``E·d_mlp`` in a mixture of experts."""
        return max(self.n_experts, 1) * self.d_mlp

    @property
    def granularities(self) -> tuple[Granularity, ...]:
        """This model's granularities, parents before children: the seven, and for a mixture of experts
        ``mlp_expert`` between ``mlp_block`` and ``mlp_hidden``."""
        if not self.n_experts:
            return GRANULARITIES
        return ("embedding", "attn_block", "mlp_block", "attn_head", "attn_neuron", "mlp_expert", "mlp_hidden",
                "mlp_output")

    def parent(self, g: str) -> str | None:
        """The parent granularity of ``g`` in this model (``mlp_hidden``'s is ``mlp_expert`` in a mixture of experts)."""
        if g == "mlp_hidden" and self.n_experts:
            return "mlp_expert"
        return PARENT[check_granularity(g)]

    def under_parent(self, g: str, parent_mask: torch.Tensor) -> torch.Tensor:
        """``parent_mask`` (shaped like ``g``'s parent, any leading dimensions) made to broadcast against ``g``'s:
        a trailing unit dimension, or, for an expert's hidden neurons, each expert repeated ``d_mlp`` times."""
        if g == "mlp_hidden" and self.n_experts:
            if parent_mask.shape[-1] == 1:  # a block's, standing in for its experts': already broadcasts
                return parent_mask
            return parent_mask.repeat_interleave(self.d_mlp, dim=-1)
        return parent_mask.unsqueeze(-1)

    def shape(self, g: str) -> tuple[int, ...]:
        """Gate tensor shape of granularity ``g``.

        ``embedding`` [1], ``attn_block`` [L], ``mlp_block`` [L], ``attn_head`` [L, H],
        ``attn_neuron`` [L, H, d_head], ``mlp_hidden`` [L, d_mlp], ``mlp_output`` [L, d_model]; in a mixture of
        experts ``mlp_expert`` [L, E] and ``mlp_hidden`` [L, E·d_mlp] (expert ``e``'s neuron ``n`` at ``e·d_mlp + n``).
        """
        L = self.n_layers
        if g == "mlp_expert" or (g == "mlp_hidden" and self.n_experts):
            if not self.n_experts:
                raise ValueError("mlp_expert gates exist only in a mixture-of-experts model; this one has dense MLPs")
            return (L, self.n_experts) if g == "mlp_expert" else (L, self.hidden_width)
        return {
            "embedding": (1,),
            "attn_block": (L,),
            "mlp_block": (L,),
            "attn_head": (L, self.n_heads),
            "attn_neuron": (L, self.n_heads, self.d_head),
            "mlp_hidden": (L, self.d_mlp),
            "mlp_output": (L, self.d_model),
        }[check_granularity(g)]

    def count(self, g: str) -> int:
        """Number of gates of granularity ``g``."""
        n = 1
        for s in self.shape(g):
            n *= s
        return n

    def total_gates(self) -> int:
        """Number of gates over the model's granularities (55,465 for GPT-2 small)."""
        return sum(self.count(g) for g in self.granularities)
