"""Mixture-of-experts MLP blocks as one gated site per layer (TransformerLens's ``MoE`` block: Mixtral, OLMoE).

TransformerLens runs each expert on the tokens routed to it only, so ``blocks.{l}.mlp.experts.{e}.hook_post``
holds [n_routed, d_mlp] rows, and the clean and the corrupted prompt route different tokens: the rows cannot be
interpolated one against the other. The site is therefore the experts' *routed hidden activation*, gathered from
those hooks and the routing (``hook_expert_indices``, ``hook_expert_weights``) into one dense tensor,

    hidden[b, p, e, n] = w_e(b, p) · post_e(b, p)[n]      (0 where token (b, p) is not routed to expert e),

shaped [batch, pos, E, d_mlp]; the block's output is Σ_e hidden[..., e, :] @ W_out_eᵀ. With the site's mask
``M`` [E, d_mlp] (``mlp_block · mlp_expert · mlp_hidden``) the block output becomes

    out + Σ_e ((1 − M_e) · (corrupted_e − hidden_e)) @ W_out_eᵀ

at ``blocks.{l}.hook_mlp_out``, before the ``mlp_output`` gates act there. Where M is 1 the change is exactly 0,
so the block's output is the model's own bit for bit; a pruned expert adds what it added on the corrupted prompt
(its routing weight included) instead of what it adds on the clean one, and a pruned neuron of a kept expert
likewise. Nothing of the model is rewritten: the change is added by a hook.
"""

from __future__ import annotations

import torch

#: Where an MoE layer's gated site sits: the hook point whose value the experts' change is added to.
OUTPUT_HOOK = "blocks.{l}.hook_mlp_out"
#: TransformerLens MLP classes whose experts mgnp-lens gates (their routing is softmax → top-k → optional renorm).
GATED_BLOCKS = ("MoE",)


def check_expert_blocks(model) -> None:
    """Raise ``ValueError`` unless ``model`` is a HookedTransformer whose every MLP is a block in
    :data:`GATED_BLOCKS` (TransformerBridge's mixture-of-experts blocks expose no per-expert hook points, and
    gpt-oss's experts have output biases and routing of their own)."""
    from .families import MOE_REFUSAL

    blocks = getattr(model, "blocks", None)
    kinds = sorted({type(getattr(b, "mlp", None)).__name__ for b in blocks}) if blocks is not None else []
    if type(model).__name__ != "HookedTransformer" or kinds != list(GATED_BLOCKS):
        where = f"{type(model).__name__} with MLP blocks {', '.join(kinds) or 'unknown'}"
        raise ValueError(f"unsupported model ({where}): {MOE_REFUSAL}")


class ExpertTap:
    """One MoE layer's routing and its experts' hidden rows, kept as a forward pass produces them.

    Args:
        mlp: the layer's ``MoE`` module (its ``experts``, ``cfg.norm_topk_prob``).
        layer: the layer's index.
    """

    def __init__(self, mlp, layer: int):
        self.mlp, self.layer = mlp, layer
        self.n_experts = len(mlp.experts)
        self.forget()

    def forget(self) -> None:
        """Drop the recorded pass (when its rows are not needed)."""
        self.weights = self.indices = None
        self.posts: list[torch.Tensor | None] = [None] * self.n_experts

    def hook_names(self) -> list[str]:
        """The hook points it reads, in forward order."""
        pre = f"blocks.{self.layer}.mlp."
        return [pre + "hook_expert_weights", pre + "hook_expert_indices"] + [
            pre + f"experts.{e}.hook_post" for e in range(self.n_experts)]

    def fwd_hooks(self) -> list[tuple[str, object]]:
        """``[(hook_name, fn)]`` that record the routing and each expert's ``hook_post`` rows (unchanged)."""
        def keep(slot):
            def hook(act, hook):
                if isinstance(slot, int):
                    self.posts[slot] = act
                else:
                    setattr(self, slot, act)
                return act
            return hook

        names = self.hook_names()
        return [(names[0], keep("weights")), (names[1], keep("indices"))] + [
            (name, keep(e)) for e, name in enumerate(names[2:])]

    def hidden(self, batch: int, pos: int) -> torch.Tensor:
        """The routed hidden activation of the pass just recorded, [batch, pos, E, d_mlp] (then forgets it).

        The routing weights are recomputed from ``hook_expert_weights`` (the softmax over all experts) exactly as
        the block does: gathered at the chosen experts and, with ``norm_topk_prob``, renormalised."""
        if self.indices is None or any(p is None for p in self.posts):
            raise RuntimeError(f"layer {self.layer}: the MoE block's routing or an expert's hook_post was not "
                               "recorded in this pass")
        tokens = self.indices.shape[0]
        weights = self.weights.gather(1, self.indices)
        if getattr(self.mlp.cfg, "norm_topk_prob", False):
            weights = weights / weights.sum(dim=-1, keepdim=True)
        per_expert = []
        for e, post in enumerate(self.posts):
            # the rows of expert e in the block's own order: torch.where over one_hot(indices)[..., e].T
            slot, token = torch.where((self.indices == e).T)
            rows = post * weights[token, slot, None].to(post.dtype)
            per_expert.append(post.new_zeros((tokens, post.shape[-1])).index_put((token,), rows))
        self.forget()
        return torch.stack(per_expert, dim=1).view(batch, pos, self.n_experts, -1)


def output_change(mlp, hidden: torch.Tensor, corrupted: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """What gating adds to the block's output: ``Σ_e ((1 − m_e)·(corrupted_e − hidden_e)) @ W_out_eᵀ``.

    Args:
        mlp: the layer's ``MoE`` module.
        hidden: [batch, pos, E, d_mlp] routed hidden activation of this pass.
        corrupted: the same on the corrupted prompts, or an ablation constant [E, d_mlp].
        m: the site mask, [E, d_mlp] or [batch, 1, E, d_mlp]; float (soft) or bool (a circuit).

    Returns:
        [batch, pos, d_model].
    """
    diff = corrupted.to(hidden.dtype) - hidden
    diff = diff.masked_fill(m, 0.0) if m.dtype == torch.bool else (1 - m.to(hidden.dtype)) * diff
    change = None
    for e, expert in enumerate(mlp.experts):
        term = diff[..., e, :] @ expert.W_out.weight.T
        change = term if change is None else change + term
    return change
