"""Interpolation hooks on TransformerLens hook points: ``corrupted + M·(clean − corrupted)``.

``M`` at each site is the product of the gates on the path from the root to the unit:

=========================  ===============================  ==========================================
site                       hook point                       M
=========================  ===============================  ==========================================
embedding                  ``blocks.0.hook_resid_pre``      ``embedding``            shape [1]
attention (head, z-dim)    ``blocks.{l}.attn.hook_z``       ``attn_block·attn_head·attn_neuron`` [H, d_head]
MLP hidden                 ``blocks.{l}.mlp.hook_post``     ``mlp_block·mlp_hidden``   [d_mlp]
MLP output                 ``blocks.{l}.hook_mlp_out``      ``mlp_block·mlp_output``   [d_model]
MoE experts (hidden)       ``blocks.{l}.mlp.hook_experts``  ``mlp_block·mlp_expert·mlp_hidden`` [E, d_mlp]
=========================  ===============================  ==========================================

A mixture-of-experts layer has no ``mlp.hook_post`` site; its experts' site is not one hook point but the routed
hidden activation gathered from each expert's ``hook_post`` and the routing, and its change is added to
``hook_mlp_out`` before the ``mlp_output`` gates act there (:mod:`mgnp_lens.experts`).

With every gate at 1 the model is the clean model; with every gate at 0 every write into the
residual stream (embedding, ``z @ W_O + b_O``, MLP outputs) is the corrupted run's, so the model
is exactly the corrupted run.

Two sources of corrupted activations:

* ``"batch"``: clean and corrupted prompts are concatenated into ONE forward pass of batch 2B.
  At each site the first half is interpolated towards the second half, which is left untouched.
  No memory is held between steps, but every step pays for (and back-propagates through) the
  corrupted half: about twice the compute of a clean pass.
* ``"cache"``: the corrupted activations at every site are computed once per dataset under
  ``torch.no_grad`` and reused; each step runs the clean half only. Costs memory
  ``n_examples × seq × L × (n_heads·d_head + d_mlp + d_model)`` floats, saves roughly half the
  compute of each step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch

from .experts import OUTPUT_HOOK, ExpertTap, check_expert_blocks, output_change
from .granularity import HOOK_TEMPLATES, ModelDims
from .names import CORRUPTION_MODES

CorruptionMode = Literal["batch", "cache"]
#: Where an :class:`Interpolator` takes the activations of pruned units from: the second half of a doubled batch
#: (``"batch"``), a cache of the corrupted run (``"cache"``), or one constant per unit (``"constant"``: the zero
#: or mean ablation's :class:`mgnp_lens.ablation.Replacement`, no corrupted run at all).
InterpolationMode = Literal["batch", "cache", "constant"]


def check_mode(mode: str) -> CorruptionMode:
    if mode not in CORRUPTION_MODES:
        raise ValueError(f"unknown corruption mode {mode!r}; expected 'batch' or 'cache'")
    return mode  # type: ignore[return-value]


def hook_names(dims: ModelDims) -> list[str]:
    """Every site the engine gates, in forward order: hook points, and in a mixture of experts each layer's
    experts' site (``blocks.{l}.mlp.hook_experts``, see :func:`site_hooks`)."""
    hidden = "mlp_expert" if dims.n_experts else "mlp_hidden"
    names = [HOOK_TEMPLATES["embedding"]]
    for l in range(dims.n_layers):
        names += [HOOK_TEMPLATES[g].format(l=l) for g in ("attn_neuron", hidden, "mlp_output")]
    return names


def is_expert_site(name: str) -> bool:
    """Whether ``name`` is a mixture-of-experts layer's experts' site rather than a hook point."""
    return name.endswith(".mlp.hook_experts")


def site_hooks(model, dims: ModelDims, fn, expert_fn) -> list[tuple[str, object]]:
    """``[(hook_name, hook)]`` for ``model.hooks`` over every gated site, in forward order.

    Args:
        fn: ``fn(site, act) -> act`` for a hook-point site.
        expert_fn: ``expert_fn(site, tap, out) -> out`` for an experts' site: called at the layer's
            ``hook_mlp_out`` (before that site's own hook) with the :class:`~mgnp_lens.experts.ExpertTap`
            holding the pass's routing and expert rows, and the block output [batch, pos, d_model].
    """
    hooks = []
    for name in hook_names(dims):
        if not is_expert_site(name):
            hooks.append((name, _site_hook(fn, name)))
            continue
        layer = int(name.split(".")[1])
        tap = ExpertTap(model.blocks[layer].mlp, layer)
        hooks += tap.fwd_hooks()
        hooks.append((OUTPUT_HOOK.format(l=layer), _expert_hook(expert_fn, name, tap)))
    return hooks


def _expert_hook(fn, site: str, tap: ExpertTap):
    def hook(act, hook):
        return fn(site, tap, act)

    return hook


def check_hook_points(model, dims: ModelDims) -> None:
    """Raise ``ValueError`` unless every gated site is a distinct hook point whose activation has the shape
    the gates expect.

    Checked: the names (the first missing one named); that no two gated sites are the same ``HookPoint``
    (a mixture-of-experts block on the ``TransformerBridge`` exposes its output as both ``mlp.hook_post``
    and ``hook_mlp_out``); and, with one two-token forward pass the first time a model is checked, each
    site's activation shape per position against ``dims`` (a ``cfg.d_mlp`` that is not the MLP's width).
    """
    hook_dict = getattr(model, "hook_dict", {})
    if not hook_dict:
        raise ValueError(
            f"unsupported model {type(model).__name__}: it exposes no TransformerLens hook points "
            "(expected a HookedTransformer or a TransformerBridge in compatibility mode)"
        )
    names = hook_names(dims)
    if dims.n_experts:
        check_expert_blocks(model)
    for name in dict.fromkeys(name for name, _ in site_hooks(model, dims, None, None)):  # every point read
        if name not in hook_dict:
            raise ValueError(
                f"unsupported model {type(model).__name__}: missing hook point {name!r}, "
                "which mgnp-lens needs to gate this granularity"
            )
    seen: dict[int, str] = {}
    for name in (n for n in names if not is_expert_site(n)):
        other = seen.setdefault(id(hook_dict[name]), name)
        if other != name:
            raise ValueError(
                f"unsupported model {type(model).__name__}: {other!r} and {name!r} are the same hook point, so "
                "their gates would act on one tensor (a mixture-of-experts block exposes its output as both); "
                "mgnp-lens cannot gate this model's MLPs exactly")
    if getattr(model, _CHECKED_ATTR, None) != dims.to_dict() and callable(model):
        _check_site_shapes(model, dims, names)
        setattr(model, _CHECKED_ATTR, dims.to_dict())


_CHECKED_ATTR = "mgnp_checked_sites"


def expected_site_shape(name: str, dims: ModelDims) -> tuple[int, ...]:
    """The per-position activation shape that the gates of hook point ``name`` expect."""
    if name.endswith("attn.hook_z"):
        return (dims.n_heads, dims.d_head)
    if is_expert_site(name):
        return (dims.n_experts, dims.d_mlp)
    if name.endswith("mlp.hook_post"):
        return (dims.d_mlp,)
    return (dims.d_model,)


@torch.inference_mode()
def _check_site_shapes(model, dims: ModelDims, names: list[str]) -> None:
    shapes: dict[str, tuple[int, ...]] = {}

    def record(site, act):
        shapes.setdefault(site, tuple(act.shape[2:]))
        return act

    def record_experts(site, tap, out):
        record(site, tap.hidden(*out.shape[:2]))
        return out

    tokens = torch.zeros((1, 2), dtype=torch.long, device=next(model.parameters()).device)
    with model.hooks(fwd_hooks=site_hooks(model, dims, record, record_experts)):
        model(tokens, return_type="logits")
    for name in names:
        want = expected_site_shape(name, dims)
        if shapes.get(name) != want:
            got = "no activation" if name not in shapes else f"activations shaped {shapes[name]} per position"
            cause = ("cfg.d_mlp is not the width of the MLP's hidden layer, or the MLP is a mixture of experts"
                     if name.endswith("hook_post") else "the model's config does not describe its layers")
            raise ValueError(f"unsupported model {type(model).__name__}: hook point {name!r} gives {got}, but its "
                             f"gates expect {want} ({dims.to_dict()}); likely cause: {cause}")


def site_masks(masks: dict[str, torch.Tensor], dims: ModelDims) -> dict[str, torch.Tensor]:
    """Combine per-granularity masks into one broadcastable mask per hook point.

    Args:
        masks: ``{granularity: tensor shaped dims.shape(g)}``; float (soft gates) or bool (a circuit).
            A leading batch dimension ``[B, *dims.shape(g)]`` on every mask gives each example its own.

    Returns:
        ``{hook_name: M}`` with M shaped [1], [H, d_head], [d_mlp] or [d_model] (with a batch mask:
        [B, 1, 1], [B, 1, H, d_head], [B, 1, d_mlp], [B, 1, d_model], broadcasting over positions; an
        experts' site [E, d_mlp]);
        bool if every input was bool, otherwise float.
    """
    binary = all(m.dtype == torch.bool for m in masks.values())
    batched = masks["attn_head"].dim() == 3
    if not binary:
        masks = {g: m.float() for g, m in masks.items()}
    mul = (lambda a, b: a & b) if binary else (lambda a, b: a * b)  # noqa: E731
    z = mul(mul(masks["attn_block"][..., None, None], masks["attn_head"][..., None]), masks["attn_neuron"])
    if dims.n_experts:  # [.., L, E, d_mlp]: block · expert · the expert's neurons
        hidden = masks["mlp_hidden"].unflatten(-1, (dims.n_experts, dims.d_mlp))
        post = mul(mul(masks["mlp_block"][..., None, None], masks["mlp_expert"][..., None]), hidden)
        post_site, post_layers = HOOK_TEMPLATES["mlp_expert"], post.unbind(-3)
    else:
        post = mul(masks["mlp_block"][..., None], masks["mlp_hidden"])
        post_site, post_layers = HOOK_TEMPLATES["mlp_hidden"], post.unbind(-2)
    out = mul(masks["mlp_block"][..., None], masks["mlp_output"])
    pos = (lambda t: t.unsqueeze(1)) if batched else (lambda t: t)  # noqa: E731
    result = {HOOK_TEMPLATES["embedding"]: pos(masks["embedding"])}
    # unbind, not select per layer: its backward is one stack, where L selects would each
    # scatter into a zero tensor of the full [.., L, ..] shape
    per_layer = zip(z.unbind(-3), post_layers, out.unbind(-2))
    for l, (z_l, post_l, out_l) in enumerate(per_layer):
        result[HOOK_TEMPLATES["attn_neuron"].format(l=l)] = pos(z_l)
        result[post_site.format(l=l)] = pos(post_l)
        result[HOOK_TEMPLATES["mlp_output"].format(l=l)] = pos(out_l)
    return result


def interpolate(clean: torch.Tensor, corrupted: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``corrupted + m·(clean − corrupted)``; exact selection when ``m`` is bool."""
    if m.dtype == torch.bool:
        return torch.where(m, clean, corrupted)
    return corrupted + m * (clean - corrupted)


def _mix(act: torch.Tensor, mode: InterpolationMode, m: torch.Tensor, corrupted: torch.Tensor | None,
         dead: bool = False) -> torch.Tensor:
    """One site's interpolated activation (the hook's return value).

    Args:
        act: the site's activation, [B, pos, ...] (cache mode) or [2B, pos, ...] (batch mode: clean
            rows, then their corrupted rows).
        m: the site's mask M, broadcastable to one half of ``act``.
        corrupted: cache mode: the cached corrupted activation shaped like ``act``; constant mode: the ablation
            constant shaped like one position of it; batch mode: None.
        dead: ``m`` is exactly 0 everywhere: pass the corrupted activation on, detached from the
            clean computation below it.
    """
    if m.dtype != torch.bool:
        m = m.to(act.dtype)
    if mode == "batch":
        b = act.shape[0] // 2
        clean, corr = act[:b], act[b:]
        mixed = corr.detach() if dead else interpolate(clean, corr, m)
        return torch.cat([mixed, corr], dim=0)
    # in the activation's dtype: under autocast a bfloat16 site mixes in bfloat16, instead of a
    # float32 cache promoting the mix (and every op after it up to the next matmul) to float32
    corrupted = corrupted.to(act.dtype)
    if dead:  # a per-position ablation constant broadcast to the activation's shape
        return corrupted.expand_as(act) if corrupted.shape != act.shape else corrupted
    return interpolate(act, corrupted, m)


class _SiteInputs:
    """What :func:`_shared_site_hook` finds on a hook point for the next pass. A plain object, not a
    module buffer: ``torch.compile`` then traces its tensors as graph inputs whose batch and sequence
    sizes may vary (buffers are specialised to their shape), and one compiled graph serves every block
    (a per-site name in the hook would specialise it to one layer)."""

    __slots__ = ("mode", "mask", "corrupted")

    def __init__(self, mode: InterpolationMode, mask: torch.Tensor, corrupted: torch.Tensor | None):
        self.mode, self.mask, self.corrupted = mode, mask, corrupted


_INPUTS_ATTR = "mgnp_site_inputs"


def _shared_site_hook(act, hook):
    s = getattr(hook, _INPUTS_ATTR)
    return _mix(act, s.mode, s.mask, s.corrupted)


class Interpolator:
    """Owns the current site masks and the corrupted source; hands out forward hooks.

    Usage::

        interp = Interpolator(dims, mode="cache")
        interp.set_masks(gates.sample())
        interp.set_corrupted(cache_for_batch)        # cache mode only
        with interp.attached(model):                 # model.hooks(fwd_hooks=interp.fwd_hooks()), or, with
            ...                                      # shared_hooks, one hook for all sites (see below)

    With ``shared_hooks=True`` every site gets the same hook function, which reads the site's mask and
    corrupted activation from its hook point (put there by :meth:`attached` for the pass), so that the
    blocks can run under ``torch.compile`` (:func:`compile_blocks`) as one graph. Dead sites are then
    not cut out of the autograd graph (that needs a data-dependent branch); the values are the same.
    """

    def __init__(self, dims: ModelDims, mode: InterpolationMode = "batch", skip_dead_sites: bool = True,
                 shared_hooks: bool = False, replacement=None):
        """
        Args:
            dims: the model's gated dimensions.
            mode: ``"batch"``, ``"cache"`` or ``"constant"`` (see :data:`InterpolationMode`).
            skip_dead_sites: cut a site whose mask is exactly 0 out of the autograd graph (exact).
            shared_hooks: one shared hook function for every site (for ``torch.compile``).
            replacement: constant mode's :class:`mgnp_lens.ablation.Replacement` (its per-site ``values``);
                required by and only allowed with ``mode="constant"``.
        """
        self.dims = dims
        has_values = replacement is not None and replacement.values is not None
        if mode == "constant" and not has_values:
            raise ValueError("mode='constant' needs a zero or mean ablation Replacement holding its values")
        if mode != "constant":
            check_mode(mode)
            if has_values:
                raise ValueError(f"a {replacement.ablation.value!r} ablation replaces pruned units by constants and "
                                 f"runs no corrupted prompts: use mode='constant', not {mode!r}")
        self.mode = mode
        self.replacement = replacement if has_values else None
        self.skip_dead_sites = skip_dead_sites
        if shared_hooks and dims.n_experts:
            raise ValueError("compile=True (one shared, compiled hook for every site) does not cover "
                             "mixture-of-experts blocks; run this model with compile=False")
        self.shared_hooks = shared_hooks
        self._masks: dict[str, torch.Tensor] = {}
        self._corrupted: dict[str, torch.Tensor] | None = None

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Set per-granularity masks (soft or bool) for the next forward pass."""
        self._masks = site_masks(masks, self.dims)

    def set_corrupted(self, acts: dict[str, torch.Tensor] | None) -> None:
        """Cache mode: the corrupted activations ``{hook_name: [B, pos, ...]}`` for this batch (ignored in
        constant mode)."""
        self._corrupted = acts

    def _site_corrupted(self, site: str, act: torch.Tensor | None) -> torch.Tensor | None:
        if self.replacement is not None:
            return self.replacement.site(site)
        if self.mode == "batch":
            return None
        if self._corrupted is None:
            raise RuntimeError("cache mode needs set_corrupted() before the forward pass")
        corrupted = self._corrupted[site]
        if act is not None and corrupted.shape != act.shape:  # act None: the shared hook's inputs
            raise ValueError(
                f"cached corrupted activation at {site} has shape {tuple(corrupted.shape)}, "
                f"but the clean pass produced {tuple(act.shape)}"
            )
        return corrupted

    def _interpolate_site(self, site: str, act: torch.Tensor) -> torch.Tensor:
        # the mask and the corrupted source go to the activation's device (a no-op on one device; on a
        # model spread over GPUs, the block's), differentiably, so the gates may live on the first device
        m = self._masks[site].to(act.device)
        corrupted = self._site_corrupted(site, act)
        corrupted = corrupted.to(act.device) if corrupted is not None else None
        # A site whose mask is exactly zero everywhere passes the corrupted activation on and is cut
        # out of the autograd graph, so backward skips the clean computation below it. Exact: a
        # Hard-Concrete gate is exactly 0 only where it is clamped, and there its gradient is 0.
        dead = self.skip_dead_sites and not bool(m.any())
        return _mix(act, self.mode, m, corrupted, dead)

    def _mix_experts(self, site: str, tap: ExpertTap, out: torch.Tensor) -> torch.Tensor:
        """A mixture-of-experts block's output [batch, pos, d_model] with its experts' site gated
        (:func:`mgnp_lens.experts.output_change`); the model's own output where the mask keeps everything."""
        m = self._masks[site].to(out.device)
        if m.dtype == torch.bool and bool(m.all()):
            tap.forget()
            return out
        hidden = tap.hidden(*out.shape[:2])
        if self.mode == "batch":
            b = out.shape[0] // 2
            return torch.cat([out[:b] + output_change(tap.mlp, hidden[:b], hidden[b:], m), out[b:]], dim=0)
        corrupted = self._site_corrupted(site, hidden).to(out.device)
        return out + output_change(tap.mlp, hidden, corrupted, m)

    def fwd_hooks(self, model=None) -> list[tuple[str, object]]:
        """``[(hook_name, fn)]`` for ``model.hooks``; each fn knows its site by our name, since
        a TransformerBridge may report an alias (``blocks.0.hook_in``) as ``hook.name``. With
        ``shared_hooks`` the one shared function (use :meth:`attached`, which gives it its inputs).
        A mixture of experts needs ``model`` (its experts' sites read the blocks' routing)."""
        if self.shared_hooks:
            return [(name, _shared_site_hook) for name in hook_names(self.dims)]
        if self.dims.n_experts and model is None:
            raise ValueError("a mixture-of-experts model's hooks need the model: fwd_hooks(model)")
        return site_hooks(model, self.dims, self._interpolate_site, self._mix_experts)

    @contextmanager
    def attached(self, model):
        """The hooks on ``model`` for the passes inside the ``with`` (and, with ``shared_hooks``, each
        site's inputs on its hook point; removed on exit, so no cache rows outlive the pass)."""
        points = []
        try:
            if self.shared_hooks:
                first = next(model.parameters()).device
                for name in hook_names(self.dims):
                    point, device = model.hook_dict[name], site_device(model, name, first)
                    corrupted = self._site_corrupted(name, None)
                    setattr(point, _INPUTS_ATTR, _SiteInputs(self.mode, self._masks[name].to(device),
                                                             None if corrupted is None else corrupted.to(device)))
                    points.append(point)
            with model.hooks(fwd_hooks=self.fwd_hooks(model)):
                yield
        finally:
            for point in points:
                delattr(point, _INPUTS_ATTR)


def site_device(model, hook_name: str, default: torch.device) -> torch.device:
    """The device of the block holding ``hook_name`` (``blocks.{l}.…``; on a model spread over several GPUs,
    that block's), else ``default``."""
    if hook_name.startswith("blocks.") and hasattr(model, "blocks"):
        param = next(model.blocks[int(hook_name.split(".")[1])].parameters(), None)
        if param is not None:
            return param.device
    return default


def _site_hook(fn, site: str):
    def hook(act, hook):
        return fn(site, act)

    return hook


def _has_split_unembed(model) -> bool:
    return hasattr(model, "ln_final") and hasattr(model, "unembed") and hasattr(model, "blocks") and \
        type(model).__name__ == "HookedTransformer"


def logits_at(model, tokens: torch.Tensor, positions: torch.Tensor, rows: int) -> torch.Tensor:
    """Run ``model`` on ``tokens`` and return logits of the first ``rows`` rows at ``positions``.

    On a ``HookedTransformer`` the pass stops after the last block and only the answer
    positions are normalised and unembedded (a [rows, d_vocab] unembed instead of
    [batch, pos, d_vocab]). Other models (``TransformerBridge``) run in full.

    Args:
        tokens: [batch, pos] token ids.
        positions: [rows] position of the answer prediction in each of the first ``rows`` rows, or
            [rows, P] for ``P`` answer positions each.

    Returns:
        [rows, d_vocab] (or [rows, P, d_vocab]) logits.
    """
    positions = positions.to(tokens.device)
    if _has_split_unembed(model):
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [batch, pos, d_model]
        picked = at_positions(resid, positions)  # [rows, (P,) d_model]
        single = picked.dim() == 2
        picked = picked[:, None, :] if single else picked
        if model.cfg.normalization_type is not None:
            picked = model.ln_final(picked)
        out = model.unembed(picked)
        return out[:, 0, :] if single else out
    return at_positions(model(tokens, return_type="logits"), positions)


def at_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``values[i, positions[i]]`` for the first ``len(positions)`` rows of [batch, pos, ...] ``values``:
    [rows, ...] for [rows] positions, [rows, P, ...] for [rows, P]."""
    idx = torch.arange(positions.shape[0], device=values.device).view(-1, *([1] * (positions.dim() - 1)))
    return values[idx, positions.to(values.device)]


@contextmanager
def recording_sites(model, dims: ModelDims):
    """Records the unmasked model's activations at every gated site during the passes run inside: yields the
    ``{hook_name: [B, pos, ...]}`` dict the last pass fills.

    Raises:
        RuntimeError: on leaving, if a pass recorded some sites but not all (compiled blocks run no per-site
            hooks: record eagerly, e.g. inside ``TrainingSpeedups.suspended()``).
    """
    store: dict[str, torch.Tensor] = {}

    def save(site, act):
        store[site] = act.detach().clone()
        return act

    def save_experts(site, tap, out):
        save(site, tap.hidden(*out.shape[:2]))
        return out

    with model.hooks(fwd_hooks=site_hooks(model, dims, save, save_experts)):
        yield store
    missing = [name for name in hook_names(dims) if name not in store]
    if store and missing:
        raise RuntimeError(f"the recording pass reached {len(store)} of {len(store) + len(missing)} gated sites "
                           f"(first missing: {missing[0]}); a pass through compiled blocks or one stopped early "
                           "runs no hooks after that point: record in an eager, full pass")


@torch.inference_mode()
def corrupted_activations(model, dims: ModelDims, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Activations of the unmasked model on ``tokens`` at every gated site: ``{hook_name: [B, pos, ...]}``."""
    with recording_sites(model, dims) as store:
        if _has_split_unembed(model):
            model(tokens, stop_at_layer=model.cfg.n_layers)
        else:
            model(tokens, return_type="logits")
    return store


def masked_answer_logits(
    model,
    interp: Interpolator,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Logits [B, (P,) d_vocab] at the answer positions of the masked model on the clean prompts.

    In batch mode ``clean`` and ``corrupted`` ([B, pos] each) run as one [2B, pos] pass; in cache
    mode only ``clean`` runs and the interpolator must already hold the corrupted activations.
    """
    tokens = torch.cat([clean, corrupted], dim=0) if interp.mode == "batch" else clean
    with interp.attached(model):
        return logits_at(model, tokens, positions, clean.shape[0])


def masked_full_logits(model, interp: Interpolator, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """Logits [B, pos, d_vocab] of the masked model on ``clean`` (batch-mode pass)."""
    if interp.mode != "batch":
        raise ValueError("masked_full_logits uses the batch corruption mode")
    tokens = torch.cat([clean, corrupted], dim=0)
    with interp.attached(model):
        logits = model(tokens, return_type="logits")
    return logits[: clean.shape[0]]
