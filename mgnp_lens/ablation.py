"""What a pruned node's activation is replaced by: the corrupted run's, zero, or the mean over the corrupted
prompts.

* ``"corrupted"`` (default, the paper's): each pruned unit takes its activation on the paired corrupted prompt.
* ``"zero"``: each pruned unit outputs 0 (the corrupted prompts are not run at all).
* ``"mean"``: each pruned unit outputs its mean activation over the corrupted prompts of the task's
  training pairs, averaged over every position too (so prompts of any length share one value per unit).

For ``zero`` and ``mean`` the replacement is one constant tensor per gated hook point, shaped like one
position of its activation ([d_model], [H, d_head] or [d_mlp]); the interpolation hooks broadcast it.
:class:`Replacement` carries the ablation and those values together through a run, its evaluations and
:meth:`mgnp_lens.Circuit.run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from .granularity import ModelDims
from .names import ABLATIONS  # noqa: F401  (defined with the other choices)
from .hooks import corrupted_activations, expected_site_shape, hook_names
from .tasks.task import check_choice


#: Corrupted prompts the mean ablation averages over (the first ones of the training split).
MEAN_MAX_PAIRS = 1024


class Ablation(str, Enum):
    """What a pruned node outputs, and how its replacement values are made. A ``str`` (``Ablation.ZERO ==
    "zero"``), so configs and files keep the plain names of :data:`mgnp_lens.names.ABLATIONS`."""

    CORRUPTED = "corrupted"
    ZERO = "zero"
    MEAN = "mean"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def of(cls, value) -> "Ablation":
        """``value`` as an :class:`Ablation`: a name, an :class:`Ablation`, or what records one (a circuit, a
        ``PruningConfig``, a config dict; ``CORRUPTED`` where none is recorded). ``ValueError`` for another name."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            check_choice("ablation", value, ABLATIONS)
            return cls(value)
        config = getattr(value, "config", value)
        if hasattr(config, "ablation"):
            return cls.of(config.ablation)
        return cls.of((config or {}).get("ablation", "corrupted") if isinstance(config, dict) else "corrupted")

    @property
    def uses_corrupted_run(self) -> bool:
        """Whether pruned nodes take the paired corrupted prompt's activations (so the corrupted run is needed,
        batch by batch or cached), rather than one constant per unit."""
        return self is Ablation.CORRUPTED

    @property
    def needs_corrupted_prompts(self) -> bool:
        """Whether the replacement depends on the corrupted prompts at all (``ZERO`` does not)."""
        return self is not Ablation.ZERO

    def values(self, model, dims: ModelDims, pairs=None, batch_size: int = 32) -> dict[str, torch.Tensor] | None:
        """The constants that replace pruned activations (None for ``CORRUPTED``); ``MEAN`` averages the corrupted
        prompts of ``pairs`` (a :class:`~mgnp_lens.tasks.PairSet`, its first :data:`MEAN_MAX_PAIRS`)."""
        if self is Ablation.CORRUPTED:
            return None
        if self is Ablation.ZERO:
            return zero_values(model, dims)
        if pairs is None:
            raise ValueError("mean ablation needs prompt pairs to take the mean over")
        pairs = pairs.head(MEAN_MAX_PAIRS)
        return mean_values(model, dims, (b.corrupted for b in pairs.batches(batch_size)))

    def values_for_prompts(self, model, dims: ModelDims, corrupted_tokens) -> dict[str, torch.Tensor] | None:
        """The constants for one batch of [B, pos] corrupted prompts: ``MEAN`` averages these prompts."""
        if self is Ablation.MEAN:
            return mean_values(model, dims, [corrupted_tokens])
        return self.values(model, dims)


@dataclass(frozen=True, eq=False)
class Replacement:
    """What pruned units output in one run: its :class:`Ablation` and, for ``ZERO`` and ``MEAN``, the per-site
    constants (``values``: ``{hook_name: [*one position's shape]}``; None for ``CORRUPTED``, whose values come
    from the corrupted run batch by batch)."""

    ablation: Ablation
    values: dict[str, torch.Tensor] | None = None

    def __post_init__(self):
        object.__setattr__(self, "ablation", Ablation.of(self.ablation))
        if (self.values is None) != self.ablation.uses_corrupted_run:
            raise ValueError(f"the {self.ablation.value!r} ablation " + (
                "takes the corrupted run's activations, not constants" if self.ablation.uses_corrupted_run
                else "needs its constants (Replacement.build)"))

    @classmethod
    def build(cls, ablation, model, dims: ModelDims, pairs=None, batch_size: int = 32) -> "Replacement":
        """``ablation``'s replacement for ``model`` (:meth:`Ablation.values`; ``MEAN`` over ``pairs``)."""
        ablation = Ablation.of(ablation)
        return cls(ablation, ablation.values(model, dims, pairs, batch_size))

    @classmethod
    def for_prompts(cls, ablation, model, dims: ModelDims, corrupted_tokens) -> "Replacement":
        """``ablation``'s replacement for one batch of [B, pos] corrupted prompts (``MEAN`` averages these)."""
        ablation = Ablation.of(ablation)
        return cls(ablation, ablation.values_for_prompts(model, dims, corrupted_tokens))

    @property
    def is_constant(self) -> bool:
        """Whether pruned units take constants (zero, mean) rather than the corrupted run's activations."""
        return self.values is not None

    def interpolation_mode(self, corruption: str) -> str:
        """The :class:`~mgnp_lens.hooks.Interpolator` mode: ``"constant"`` for constants, else ``corruption``
        (``"batch"`` or ``"cache"``: how the corrupted run is obtained)."""
        return "constant" if self.is_constant else corruption

    def site(self, hook_name: str) -> torch.Tensor:
        """The constant of one gated site, [*one position's shape]."""
        if self.values is None:
            raise ValueError("the corrupted ablation has no constants: its values come from the corrupted run")
        return self.values[hook_name]


def ablation_of(circuit_or_config) -> Ablation:
    """The ablation recorded with a circuit (its discovery config) or in a config dict; ``CORRUPTED`` when none is."""
    return Ablation.of(circuit_or_config)


def zero_values(model, dims: ModelDims) -> dict[str, torch.Tensor]:
    """``{hook_name: zeros shaped like one position of its activation}`` on the model's device and dtype."""
    p = next(model.parameters())
    return {n: torch.zeros(expected_site_shape(n, dims), device=p.device, dtype=p.dtype) for n in hook_names(dims)}


@torch.inference_mode()
def mean_values(model, dims: ModelDims, corrupted_batches) -> dict[str, torch.Tensor]:
    """Each gated site's activation averaged over every position of every corrupted prompt.

    Args:
        corrupted_batches: iterable of [B, pos] token-id tensors (any lengths).

    Returns:
        ``{hook_name: [*site shape]}`` in float32 sums divided by the token count, cast to the model's dtype.
    """
    sums: dict[str, torch.Tensor] = {}
    count = 0
    device = next(model.parameters()).device
    for tokens in corrupted_batches:
        acts = corrupted_activations(model, dims, tokens.to(device))
        for name, act in acts.items():
            s = act.float().sum(dim=(0, 1))
            sums[name] = s if name not in sums else sums[name] + s
        count += tokens.numel()
    if count == 0:
        raise ValueError("mean ablation needs at least one corrupted prompt")
    dtype = next(model.parameters()).dtype
    return {n: (s / count).to(dtype) for n, s in sums.items()}
