"""The typed vocabulary of mgnp-lens: granularity names, model dimensions, hierarchy.

Every other module speaks in these names. Layers are 0-indexed throughout the API;
the paper's tables are 1-indexed (see :meth:`mgnp_lens.Circuit.per_layer`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Mapping

Granularity = Literal[
    "embedding", "attn_block", "mlp_block", "attn_head", "attn_neuron", "mlp_hidden", "mlp_output"
]

#: The seven granularities, parents before children.
GRANULARITIES: tuple[Granularity, ...] = (
    "embedding",
    "attn_block",
    "mlp_block",
    "attn_head",
    "attn_neuron",
    "mlp_hidden",
    "mlp_output",
)

#: Parent of each granularity (``None`` for roots). attn_block → attn_head → attn_neuron;
#: mlp_block → mlp_hidden and mlp_output.
PARENT: dict[str, str | None] = {
    "embedding": None,
    "attn_block": None,
    "mlp_block": None,
    "attn_head": "attn_block",
    "attn_neuron": "attn_head",
    "mlp_hidden": "mlp_block",
    "mlp_output": "mlp_block",
}

#: The attention granularities (the block, its heads, their neurons): those whose Hard-Concrete noise
#: warms up by default (``PruningConfig.noise_warmup_granularities``).
ATTENTION_GRANULARITIES: tuple[Granularity, ...] = ("attn_block", "attn_head", "attn_neuron")

#: Paper Appendix C sparsity weights λ_g (``embedding`` is ours; the paper does not gate it).
PAPER_LAMBDAS: dict[str, float] = {
    "embedding": 0.0,
    "attn_block": 0.2,
    "mlp_block": 0.1,
    "attn_head": 3.0,
    "attn_neuron": 1.5,
    "mlp_hidden": 5.0,
    "mlp_output": 1.5,
}

#: Column names of the paper's Appendix D per-layer tables, in order.
APPENDIX_D_COLUMNS = ["Layer", "Attn Block", "MLP Block", "Attn Heads", "Attn Neurons", "MLP Hidden", "MLP Output"]

#: TransformerLens hook points the engine needs, per layer (``{l}`` is the layer).
HOOK_TEMPLATES = {
    "embedding": "blocks.0.hook_resid_pre",
    "attn_neuron": "blocks.{l}.attn.hook_z",
    "mlp_hidden": "blocks.{l}.mlp.hook_post",
    "mlp_output": "blocks.{l}.hook_mlp_out",
}


def check_granularity(name: str) -> Granularity:
    """Return ``name`` if it is a granularity, else raise a ``ValueError`` listing the valid ones."""
    if name not in GRANULARITIES:
        raise ValueError(f"unknown granularity {name!r}; expected one of {', '.join(GRANULARITIES)}")
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelDims:
    """The dimensions that fix the gate shapes of a model.

    Attributes:
        n_layers: number of transformer blocks ``L``.
        n_heads: query heads per layer ``H`` (``hook_z`` is per query head, so GQA needs nothing else).
        d_head: dimensions per head.
        d_mlp: MLP hidden width.
        d_model: residual width.
    """

    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_model: int

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
        if (getattr(cfg, "num_experts", None) or 0) > 1:
            from .families import MOE_REFUSAL

            raise ValueError(f"unsupported model: {MOE_REFUSAL}; use a dense model")
        return cls(int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head), int(d_mlp), int(cfg.d_model))

    @classmethod
    def from_dict(cls, d: Mapping[str, int]) -> "ModelDims":
        missing = [k for k in ("n_layers", "n_heads", "d_head", "d_mlp", "d_model") if k not in d]
        if missing:
            raise ValueError(f"model dimensions are missing {missing}")
        return cls(**{k: int(d[k]) for k in ("n_layers", "n_heads", "d_head", "d_mlp", "d_model")})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def shape(self, g: str) -> tuple[int, ...]:
        """Gate tensor shape of granularity ``g``.

        ``embedding`` [1], ``attn_block`` [L], ``mlp_block`` [L], ``attn_head`` [L, H],
        ``attn_neuron`` [L, H, d_head], ``mlp_hidden`` [L, d_mlp], ``mlp_output`` [L, d_model].
        """
        L = self.n_layers
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
        """Number of gates over all seven granularities (55,465 for GPT-2 small)."""
        return sum(self.count(g) for g in GRANULARITIES)
