"""Hard-Concrete gates (Louizos et al. 2018; MGNP paper Eq. 6-8), one group per granularity.

For a gate with location ``log α``, temperature ``β`` and stretch interval ``(γ, ζ)``:

* training sample (Eq. 6):  ``u ~ U(0, 1)``,
  ``s = σ((log u − log(1 − u) + log α) / β)``, ``z = clamp(s·(ζ − γ) + γ, 0, 1)``;
* deterministic value:       ``z = clamp(σ(log α)·(ζ − γ) + γ, 0, 1)``;
* expected L0 (Eq. 7):       ``P(z > 0) = σ(log α − β·log(−γ / ζ))``;
* binarisation (Eq. 8):      keep the gate iff its deterministic value exceeds ``threshold``
  (0.5 by default, which is ``log α > 0`` for any β with the default γ, ζ).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .granularity import ALL_GRANULARITIES, ModelDims


@dataclass(frozen=True)
class HardConcreteParams:
    """Shape parameters of the Hard-Concrete distribution (paper defaults)."""

    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1
    init_low: float = 1.5
    init_high: float = 2.5
    threshold: float = 0.5

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"Hard-Concrete beta must be > 0, got {self.beta}")
        if not (self.gamma < 0 and self.zeta > 1):
            raise ValueError(f"Hard-Concrete needs gamma < 0 < 1 < zeta, got gamma={self.gamma}, zeta={self.zeta}")
        if self.init_low > self.init_high:
            raise ValueError(f"log-alpha init range is empty: [{self.init_low}, {self.init_high}]")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"binarisation threshold must be in (0, 1), got {self.threshold}")


class HardConcreteGates(nn.Module):
    """One trainable ``log α`` tensor per granularity, shaped by :meth:`ModelDims.shape`.

    Args:
        dims: the model's dimensions.
        params: Hard-Concrete shape parameters.
        granularities: which granularities carry trainable gates; the others are fixed at 1
            (always kept). Defaults to all of them (the model's own: ``mlp_expert`` only in a mixture of experts).
        generator: torch generator used for the ``U(init_low, init_high)`` initialisation.
    """

    def __init__(
        self,
        dims: ModelDims,
        params: HardConcreteParams | None = None,
        granularities: tuple[str, ...] = ALL_GRANULARITIES,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.dims = dims
        self.params = params or HardConcreteParams()
        for g in granularities:
            if g not in ALL_GRANULARITIES:
                raise ValueError(f"unknown granularity {g!r}; expected some of {ALL_GRANULARITIES}")
        self.trainable = tuple(g for g in dims.granularities if g in granularities)
        p = self.params
        self.log_alpha = nn.ParameterDict()
        for g in self.trainable:
            init = torch.rand(dims.shape(g), generator=generator) * (p.init_high - p.init_low) + p.init_low
            self.log_alpha[g] = nn.Parameter(init)

    def _fixed_ones(self, g: str) -> torch.Tensor:
        device = next(iter(self.log_alpha.values())).device if len(self.log_alpha) else None
        return torch.ones(self.dims.shape(g), device=device)

    def sample(self, generator: torch.Generator | None = None, batch_size: int | None = None,
               noise_scale: float | Mapping[str, float] = 1.0) -> dict[str, torch.Tensor]:
        """Draw stochastic masks (Eq. 6), differentiable in ``log α``.

        Args:
            generator: source of the uniform noise.
            batch_size: if given, draw an independent mask for each of ``batch_size`` examples.
            noise_scale: multiplies the logistic noise ``log u − log(1−u)``; 1 is Eq. 6, 0 the
                noise-free gate ``clamp(σ(log α/β)(ζ−γ)+γ, 0, 1)`` (for a noise warm-up). A mapping
                gives it per granularity (granularities not named: 1).

        Returns:
            ``{granularity: tensor shaped dims.shape(g)}`` (or ``[batch_size, *dims.shape(g)]``)
            with values in [0, 1].
        """
        p = self.params
        lead = () if batch_size is None else (batch_size,)
        out = {}
        for g in self.dims.granularities:
            if g not in self.log_alpha:
                out[g] = self._fixed_ones(g).expand(lead + self.dims.shape(g))
                continue
            la = self.log_alpha[g]
            u = torch.rand(lead + la.shape, generator=generator, device=la.device).clamp(1e-6, 1 - 1e-6)
            noise = torch.log(u) - torch.log1p(-u)
            k = noise_scale.get(g, 1.0) if isinstance(noise_scale, Mapping) else noise_scale
            if k != 1.0:  # a noise warm-up; Eq. 6 itself takes no extra pass over the samples
                noise = k * noise
            s = torch.sigmoid((noise + la) / p.beta)
            out[g] = (s * (p.zeta - p.gamma) + p.gamma).clamp(0.0, 1.0)
        return out

    def deterministic(self) -> dict[str, torch.Tensor]:
        """The noise-free mask used for evaluation: ``clamp(σ(log α)(ζ−γ)+γ, 0, 1)`` per granularity."""
        p = self.params
        out = {}
        for g in self.dims.granularities:
            if g not in self.log_alpha:
                out[g] = self._fixed_ones(g)
            else:
                s = torch.sigmoid(self.log_alpha[g])
                out[g] = (s * (p.zeta - p.gamma) + p.gamma).clamp(0.0, 1.0)
        return out

    def expected_l0(self, path: bool = False) -> dict[str, torch.Tensor]:
        """Per-gate probability of being non-zero (Eq. 7), for the trainable granularities.

        Args:
            path: if True, each gate's probability is multiplied by its ancestors' (e.g. an attention
                neuron's by its head's and its attention block's), so it is the probability that the
                node is active in the circuit, and the L0 of a child granularity also pushes on its parents.

        Returns:
            ``{granularity: tensor shaped dims.shape(g)}`` with values in (0, 1).
        """
        p = self.params
        shift = p.beta * math.log(-p.gamma / p.zeta)
        own = {g: torch.sigmoid(la - shift) for g, la in self.log_alpha.items()}
        if not path:
            return own
        chain: dict[str, torch.Tensor | None] = {}  # path probability, broadcastable to the shape
        for g in self.dims.granularities:  # parents come before their children
            parent = self.dims.parent(g)
            above = None if parent is None or chain[parent] is None else self.dims.under_parent(g, chain[parent])
            mine = own.get(g)
            chain[g] = mine if above is None else above if mine is None else above * mine
        return {g: chain[g] for g in own}

    @torch.no_grad()
    def open_probability(self, log_alpha: Mapping[str, torch.Tensor] | None = None,
                         along_hierarchy: bool = True) -> dict[str, torch.Tensor]:
        """Each node's probability of being kept, along the hierarchy: the chance that a sampled gate (Eq. 6)
        exceeds the binarisation threshold, ``σ(log α − β·logit((threshold − γ)/(ζ − γ)))`` (``σ(log α)`` at the
        default threshold 0.5), times its ancestors'. It rises with log α, so it ranks nodes as binarisation sorts them; at
        the default threshold a gate is kept exactly when its own probability exceeds 1/2.

        Args:
            log_alpha: ``{granularity: log α}`` to score instead of the gates' own (e.g. a saved state's); the
                granularities it lacks count as always kept.
            along_hierarchy: times the ancestors' probabilities (default); False: each gate's own, which orders the
                children of one kept parent exactly as binarisation keeps them.

        Returns:
            ``{granularity: tensor shaped dims.shape(g)}`` in [0, 1] for every granularity of the model (1 for the
            untrained ones and their path).
        """
        p = self.params
        q = (p.threshold - p.gamma) / (p.zeta - p.gamma)
        shift = p.beta * math.log(q / (1 - q))
        source = self.log_alpha if log_alpha is None else log_alpha
        out: dict[str, torch.Tensor] = {}
        for g in self.dims.granularities:  # parents come before their children
            own = torch.sigmoid(source[g].detach().cpu() - shift) if g in source else \
                torch.ones(self.dims.shape(g))
            parent = self.dims.parent(g)
            out[g] = own if parent is None or not along_hierarchy else own * self.dims.under_parent(g, out[parent])
        return out

    def mean_l0(self) -> dict[str, torch.Tensor]:
        """Each trainable granularity's expected L0 divided by its gate count, in [0, 1]."""
        return {g: v.mean() for g, v in self.expected_l0().items()}

    def expected_active(self) -> dict[str, float]:
        """Expected number of non-zero gates per trainable granularity."""
        return {g: float(v.sum()) for g, v in self.expected_l0().items()}

    @torch.no_grad()
    def open_on_cpu(self) -> dict[str, torch.Tensor]:
        """:meth:`binarize`'s masks by one comparison per gate, ``log α > logit((threshold − γ)/(ζ − γ))`` (the
        same rule without computing the gate values; cheap enough to run every step to track the hard circuit)."""
        p = self.params
        q = (p.threshold - p.gamma) / (p.zeta - p.gamma)
        cut = math.log(q / (1 - q))
        return {g: (self.log_alpha[g].detach() > cut).cpu() if g in self.log_alpha else
                torch.ones(self.dims.shape(g), dtype=torch.bool) for g in self.dims.granularities}

    @torch.no_grad()
    def binarize(self) -> dict[str, torch.Tensor]:
        """Eq. 8: boolean masks, True where the deterministic gate exceeds the threshold.

        The result is *not* yet hierarchy-consistent; :class:`mgnp_lens.Circuit` makes it so.
        """
        det = self.deterministic()
        return {g: (v > self.params.threshold).cpu() for g, v in det.items()}
