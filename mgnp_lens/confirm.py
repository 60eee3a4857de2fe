"""The confirmation phase: the trained circuit checked, and repaired, on discrete changes, on the pairs it learnt from.

The gates are trained through a relaxation (partly open Hard-Concrete samples). On models whose MLPs compute
discretised lookups (tracr's compiled programs) a partly open neuron puts the output far off, so the trained gates
can close neurons, or a node, whose removal the binarised circuit cannot afford. The confirmation phase evaluates the
binarised circuit against every single discrete repair, on the training and validation pairs together (never the
test or held-out pairs, which stay for evaluation):

* a kept node's pruned neurons restored (a head's attention neurons; an MLP block's hidden and output neurons);
* a pruned head or MLP block added with all its neurons (and its attention block).

It applies the repair that lowers the loss most, if it lowers it by more than
:data:`TOLERANCE` of the loss at stake (the empty circuit's), and repeats until no repair does. Each round is one
:func:`mgnp_lens.evaluate.evaluate_many` over the candidates, so a round costs one masked pass per candidate and
batch: seconds on a tracr model, minutes on a 30-layer one (hence ``confirm`` is off by default and on in the
small-model regime, ``PruningConfig.auto_target_fraction``). Evidence: docs/tracr.md.

Single repairs cannot rebuild a circuit whose nodes are needed only together (an AND of heads: adding any one of
them back changes nothing). When the repaired circuit still misses the run's target (a loss above ``target`` of
the loss at stake), the phase *prunes back*: every pruned head and MLP block is added whole (or, where that is not
enough, the full model is the start), then the nodes are removed one at a time, least likely open first (by the
gates), each removal kept where it raises the loss by at most :data:`TOLERANCE` of the loss at stake and the loss
stays within the target. The record says so (``pruned_back``), since that circuit is the discrete search's, not the
gates'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .circuit import Circuit, make_consistent
from .evaluate import evaluate_many

#: The pairs a repair is judged on (their losses averaged by pair): the training pairs too, since a neuron that only
#: some inputs exercise may be missing from the validation pairs alone.
SPLITS = ("train", "validation")
#: A repair counts when it lowers the loss by more than this fraction of the loss at stake.
TOLERANCE = 0.01
#: ``log α`` given to the gates a repair opens, so that the gates binarise to the confirmed circuit (the final state
#: and its scores then agree with the returned circuit).
OPENED_LOG_ALPHA = 4.0


@dataclass
class Confirmation:
    """What the confirmation phase did: the repairs in order (``"neurons of head L.H"``, ``"MLP L"``, ...), the
    loss (on :data:`SPLITS`) before and after, the loss at stake it was measured against, and the candidates
    evaluated."""

    repairs: list[str] = field(default_factory=list)
    loss_before: float = 0.0
    loss_after: float = 0.0
    loss_at_stake: float = 0.0
    evaluated: int = 0
    pruned_back: bool = False

    def to_dict(self) -> dict:
        return {"repairs": list(self.repairs), "loss_before": self.loss_before,
                "loss_after": self.loss_after, "loss_at_stake": self.loss_at_stake,
                "candidates_evaluated": self.evaluated, "pruned_back": self.pruned_back}


def _mlp_children(dims) -> tuple[str, ...]:
    """The granularities inside an MLP block that the model has (experts only in a mixture of experts)."""
    return tuple(g for g in ("mlp_expert", "mlp_hidden", "mlp_output") if g in dims.granularities)


def candidates(circuit: Circuit) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Every single discrete repair of ``circuit``: ``[(what, masks)]`` (see the module docstring)."""
    m, dims, out = circuit.masks, circuit.dims, []

    def changed(edit):
        new = {g: v.clone() for g, v in m.items()}
        edit(new)
        return new

    for layer in range(dims.n_layers):
        for head in range(dims.n_heads):
            where = (layer, head)
            if bool(m["attn_head"][where]) and not bool(m["attn_neuron"][where].all()):
                out.append((f"neurons of head {layer}.{head}",
                            changed(lambda n: n["attn_neuron"][where].fill_(True))))
            elif not bool(m["attn_head"][where]):
                out.append((f"head {layer}.{head}", changed(lambda n: _set_node(n, dims, ("head", *where), True))))
        children = _mlp_children(dims)
        if bool(m["mlp_block"][layer]) and not all(bool(m[g][layer].all()) for g in children):
            out.append((f"neurons of MLP {layer}", changed(lambda n: [n[g][layer].fill_(True) for g in children])))
        elif not bool(m["mlp_block"][layer]):
            out.append((f"MLP {layer}", changed(lambda n: _set_node(n, dims, ("mlp", layer), True))))
    return out


def confirm(model, task, circuit: Circuit, replacement, max_examples: int | None, batch_size: int,
            tolerance: float = TOLERANCE, target: float | None = None,
            order: list[tuple] | None = None) -> tuple[Circuit, Confirmation]:
    """``circuit`` repaired until no single repair lowers its loss on :data:`SPLITS` by more than ``tolerance`` of the
    loss at stake, and pruned back (:func:`prune_back`) when it still misses ``target``; returns it and what was done
    (:class:`Confirmation`).

    Args:
        replacement: the run's :class:`~mgnp_lens.ablation.Replacement` (what pruned units output).
        max_examples: pairs of each split to measure on (the first ones; None: all).
        target: the largest loss the circuit may keep, as a fraction of the loss at stake (None: no pruning back).
        order: the nodes (:func:`nodes`) in the order pruning back tries to remove them (None: as listed).
    """
    def losses(circuits):
        per_split = [evaluate_many(model, task, circuits, split, batch_size, max_examples, replacement=replacement)
                     for split in SPLITS]
        return [sum(e.objective * e.n_examples for e in evs) / sum(e.n_examples for e in evs)
                for evs in zip(*per_split)]

    stake, current = losses([Circuit.empty(circuit.dims), circuit])
    record = Confirmation(loss_before=current, loss_at_stake=stake)
    circuit, current = _repair(losses, circuit, current, tolerance * stake, record)
    if target is not None and current > target * stake:
        back = prune_back(losses, circuit, order or nodes(circuit.dims), tolerance * stake, target * stake, record)
        if back is not None and back[1] < current:
            record.pruned_back = True
            record.repairs.append("pruned back")
            circuit, current = _repair(losses, *back, tolerance * stake, record)
    record.loss_after = current
    return circuit, record


def _repair(losses, circuit: Circuit, current: float, gain: float, record: Confirmation) -> tuple[Circuit, float]:
    """The best single repair applied while it lowers the loss by more than ``gain``; the circuit and its loss."""
    while current > 0:
        options = candidates(circuit)
        if not options:
            break
        scores = losses([Circuit(circuit.dims, masks) for _, masks in options])
        record.evaluated += len(options)
        best = min(range(len(options)), key=scores.__getitem__)
        if current - scores[best] <= gain:
            break
        circuit = Circuit(circuit.dims, options[best][1], task=circuit.task, config=circuit.config)
        current = scores[best]
        record.repairs.append(options[best][0])
    return circuit, current


def nodes(dims) -> list[tuple]:
    """Every head ``("head", layer, head)`` and MLP block ``("mlp", layer)`` of a model of shape ``dims``."""
    heads = [("head", layer, head) for layer in range(dims.n_layers) for head in range(dims.n_heads)]
    return heads + [("mlp", layer) for layer in range(dims.n_layers)]


def _node_on(masks, node) -> bool:
    return bool(masks["attn_head"][node[1], node[2]]) if node[0] == "head" else bool(masks["mlp_block"][node[1]])


def _set_node(masks, dims, node, on: bool) -> None:
    """Turn ``node`` (:func:`nodes`) on with all its neurons, or off, in ``masks`` (in place)."""
    layer = node[1]
    if node[0] == "head":
        masks["attn_head"][layer, node[2]] = masks["attn_neuron"][layer, node[2]] = on
        masks["attn_block"][layer] = bool(masks["attn_head"][layer].any())
    else:
        for g in ("mlp_block", *_mlp_children(dims)):
            masks[g][layer] = on


def prune_back(losses, circuit: Circuit, order: list[tuple], tolerance: float, budget: float,
               record: Confirmation) -> tuple[Circuit, float] | None:
    """Start from ``circuit`` with every pruned head and MLP block added whole (or, where that misses ``budget``,
    from the full model), then remove each node of ``order`` in turn where that raises the loss by at most
    ``tolerance`` and keeps it within ``budget`` (both in loss units). Returns the circuit and its loss, or None when
    both starts miss ``budget``."""
    dims = circuit.dims
    grown = {g: v.clone() for g, v in circuit.masks.items()}
    for node in nodes(dims):
        if not _node_on(grown, node):
            _set_node(grown, dims, node, True)
    starts = [grown, Circuit.full(dims).masks]
    start_losses = losses([Circuit(dims, m) for m in starts])
    record.evaluated += len(starts)
    fits = [i for i, loss in enumerate(start_losses) if loss <= budget]
    if not fits:
        return None
    masks, current = starts[fits[0]], start_losses[fits[0]]
    for node in order:
        trial = {g: v.clone() for g, v in masks.items()}
        _set_node(trial, dims, node, False)
        loss = losses([Circuit(dims, trial)])[0]
        record.evaluated += 1
        if loss - current <= tolerance and loss <= budget:
            masks, current = trial, loss
    return Circuit(dims, masks, task=circuit.task, config=circuit.config), current


def repairs_text(repairs: list[str]) -> str:
    """The confirmation's repairs in words, for a run's summary (the CLI's, the report's)."""
    text = ", ".join(repairs)
    if "pruned back" in repairs:
        text += (" (pruned back: the trained gates' circuit missed the target, so the circuit is the confirmation's "
                 "discrete search's, not the gates')")
    return text


@torch.no_grad()
def open_gates(gates, circuit: Circuit) -> None:
    """Raise the ``log α`` of every gate ``circuit`` keeps but the gates would prune to :data:`OPENED_LOG_ALPHA`, and
    lower that of every gate it prunes but the gates' (hierarchy-consistent) circuit keeps to
    −:data:`OPENED_LOG_ALPHA` (pruning back), so that ``gates.binarize()`` gives ``circuit`` (a repair changes the
    state, not only the answer)."""
    raw = gates.open_on_cpu()
    kept = {**raw, **make_consistent(raw)}
    for g, la in gates.log_alpha.items():
        keep = circuit.masks[g].to(la.device)
        opened, closed = keep & ~raw[g].to(la.device), ~keep & kept[g].to(la.device)
        la[opened] = torch.maximum(la[opened], torch.full_like(la[opened], OPENED_LOG_ALPHA))
        la[closed] = torch.minimum(la[closed], torch.full_like(la[closed], -OPENED_LOG_ALPHA))
