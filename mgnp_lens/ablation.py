"""What a pruned node's activation is replaced by: the corrupted run's, zero, or the mean over the corrupted
prompts.

* ``"corrupted"`` (default, the paper's): each pruned unit takes its activation on the paired corrupted prompt.
* ``"zero"``: each pruned unit outputs 0 (the corrupted prompts are not run at all).
* ``"mean"``: each pruned unit outputs its mean activation over the corrupted prompts of the task's
  training pairs, averaged over every position too (so prompts of any length share one value per unit).

For ``zero`` and ``mean`` the replacement is one constant tensor per gated hook point, shaped like one
position of its activation ([d_model], [H, d_head] or [d_mlp]); the interpolation hooks broadcast it.
"""

from __future__ import annotations

import torch

from .granularity import ModelDims
from .names import ABLATIONS  # noqa: F401  (defined with the other choices)
from .hooks import corrupted_activations, expected_site_shape, hook_names
from .tasks.task import check_choice


#: Corrupted prompts the mean ablation averages over (the first ones of the training split).
MEAN_MAX_PAIRS = 1024


def ablation_of(circuit_or_config) -> str:
    """The ablation recorded with a circuit (its discovery config) or in a config dict; ``"corrupted"`` when none is."""
    config = getattr(circuit_or_config, "config", circuit_or_config)
    if hasattr(config, "ablation"):
        return config.ablation
    return (config or {}).get("ablation", "corrupted") if isinstance(config, dict) else "corrupted"


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


def ablation_values(model, dims: ModelDims, ablation: str, pairs=None,
                    batch_size: int = 32) -> dict[str, torch.Tensor] | None:
    """The constants that replace pruned activations under ``ablation`` (None for ``"corrupted"``).

    Args:
        pairs: a :class:`~mgnp_lens.tasks.PairSet` whose corrupted prompts the mean is taken over (its
            first :data:`MEAN_MAX_PAIRS`); needed for ``"mean"`` only.
    """
    check_choice("ablation", ablation, ABLATIONS)
    if ablation == "corrupted":
        return None
    if ablation == "zero":
        return zero_values(model, dims)
    if pairs is None:
        raise ValueError("mean ablation needs prompt pairs to take the mean over")
    pairs = pairs.head(MEAN_MAX_PAIRS)
    return mean_values(model, dims, (b.corrupted for b in pairs.batches(batch_size)))
