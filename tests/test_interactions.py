"""Edge scores between kept nodes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens.interactions import interactions
from mgnp_lens.tasks import PromptPairTask

from helpers import micro_model, random_pairs, with_heads


# ------------------------------------------------------------------------------------------ interactions
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_interactions_match_a_finite_difference(kind):
    """score(u → logits) is the first-order change of the metric when u's change reaches the logits directly."""
    model = micro_model(kind)
    clean, corrupted = random_pairs(model, n=4)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0],
                                      split_fractions={"train": 1.0})
    circuit = mg.Circuit.full(model)
    edges = interactions(model, task, circuit, batch_size=4)
    heads = {f"L{l} H{h}" for l, h in circuit.active_heads()}
    assert set(edges["src"]) <= heads | {"embed", "L0 MLP", "L1 MLP"}
    assert (edges["src_layer"] <= edges["dst_layer"]).all() and "logits" in set(edges["dst"])
    assert not ((edges.src == "L1 H0") & (edges.dst == "L1 H1")).any()  # same-layer heads do not talk
    # finite difference for the edge L0 MLP -> logits
    batch = task.split("train").buckets[0]
    _, cc = model.run_with_cache(batch.clean)
    _, cx = model.run_with_cache(batch.corrupted)
    delta = cc["blocks.0.hook_mlp_out"] - cx["blocks.0.hook_mlp_out"]
    eps = 1e-3

    def metric_with(shift):
        def hook(act, hook):
            return act + shift
        logits = model.run_with_hooks(batch.clean, fwd_hooks=[("blocks.1.hook_resid_post", hook)])[:, -1]
        return task.metric(logits, batch).mean()

    with torch.no_grad():
        fd = (metric_with(eps * delta) - metric_with(-eps * delta)) / (2 * eps)
    score = edges[(edges.src == "L0 MLP") & (edges.dst == "logits")].score.item()
    assert score == pytest.approx(float(fd), rel=1e-2, abs=1e-4)
    assert isinstance(edges, pd.DataFrame) and edges.score.abs().is_monotonic_decreasing


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_head_to_head_edge_is_the_first_order_change_through_that_heads_own_input(kind):
    """score(L0 H0 → L1 H1): the metric's first-order change when L0 H0's clean − corrupted output is added to
    L1 H1's own query input and (shared evenly among the kept heads of its key/value group) to its group's key and
    value inputs, measured with TransformerLens' split per-head inputs (the path interactions no longer takes)."""
    model = micro_model(kind)
    clean, corrupted = random_pairs(model, n=4)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0],
                                      split_fractions={"train": 1.0})
    edges = interactions(model, task, mg.Circuit.full(model), batch_size=4)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in  # settings put back
    batch = task.split("train").buckets[0]
    _, cc = model.run_with_cache(batch.clean)
    _, cx = model.run_with_cache(batch.corrupted)
    delta = (cc["blocks.0.attn.hook_z"] - cx["blocks.0.attn.hook_z"])[:, :, 0] @ model.blocks[0].attn.W_O[0]
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    group = model.cfg.n_heads // n_kv
    head, share = 1, model.cfg.n_heads // n_kv  # every head kept: a group's heads share its key and value
    kv = head // group if n_kv != model.cfg.n_heads else head
    eps = 1e-3

    def metric_with(scale):
        def add(index, amount):
            def hook(act, hook):
                act = act.clone()
                act[:, :, index] += amount * scale * delta
                return act
            return hook
        hooks = [("blocks.1.hook_q_input", add(head, 1.0)), ("blocks.1.hook_k_input", add(kv, 1 / share)),
                 ("blocks.1.hook_v_input", add(kv, 1 / share))]
        logits = model.run_with_hooks(batch.clean, fwd_hooks=hooks)[:, -1]
        return task.metric(logits, batch).mean()

    model.set_use_split_qkv_input(True)
    try:
        with torch.no_grad():
            fd = (metric_with(eps) - metric_with(-eps)) / (2 * eps)
    finally:
        model.set_use_split_qkv_input(False)
    score = edges[(edges.src == "L0 H0") & (edges.dst == "L1 H1")].score.item()
    assert abs(score) > 1e-4 and score == pytest.approx(float(fd), rel=1e-2, abs=1e-5)


def test_interactions_only_between_kept_nodes():
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=4)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0], split_fractions={"train": 1.0})
    c = with_heads(mg.ModelDims.from_model(model), [(0, 1), (1, 3)], mlps=[0])
    edges = interactions(model, task, c, batch_size=4)
    assert set(edges.src) == {"embed", "L0 H1", "L0 MLP", "L1 H3"}
    assert set(edges.dst) == {"L0 H1", "L0 MLP", "L1 H3", "logits"}
    # embed → {L0 H1, L0 MLP, L1 H3, logits}, L0 H1 → {L0 MLP, L1 H3, logits}, L0 MLP → {L1 H3, logits};
    # L1 H3 is a writer too (→ logits)
    assert len(edges) == 4 + 3 + 2 + 1


def test_the_graph_of_real_interactions_has_the_readout_arrows_and_separate_mlps():
    from mgnp_lens.plot import interaction_graph

    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=8)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    edges = interactions(model, task, mg.Circuit.full(model), max_examples=8)
    assert "logits" in set(edges.dst)
    fig = interaction_graph(edges, top=len(edges))
    nodes = fig.data[-1]
    pos = dict(zip(nodes.text, zip(nodes.x, nodes.y)))
    assert pos["logits"][1] == max(nodes.y) and pos["embed"][1] == min(nodes.y)  # readout below every layer
    assert len(fig.layout.annotations) == len(edges)  # one arrowhead per edge
    assert pos["L1 MLP"][0] > max(x for n, (x, y) in pos.items() if n.startswith("L1 H"))  # right of its heads
    assert len(set(pos.values())) == len(pos)  # no two nodes on one spot
    assert "logits" in fig.layout.yaxis.ticktext and "L1 MLP" in fig.layout.yaxis.ticktext


def test_the_circuit_graph_draws_every_kept_node_and_the_strongest_real_edges():
    from mgnp_lens.plot import circuit_graph

    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=8)
    task = PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    c = with_heads(mg.ModelDims.from_model(model), [(0, 1), (1, 3)], mlps=[0])
    c.masks["embedding"].fill_(True)
    edges = interactions(model, task, c, max_examples=8)
    fig = circuit_graph(c, edges, top=5)
    nodes = fig.data[-1]
    assert list(nodes.text) == ["embed", "L0 H1", "L0 MLP", "L1 H3", "logits"]  # by layer, readout last
    assert len(fig.layout.annotations) == 5 and len(fig.data) == 6  # the 5 strongest edges, with arrowheads
    drawn = sorted(abs(float(t.text.rsplit(": ", 1)[1])) for t in fig.data[:-1])
    assert drawn[0] >= edges.score.abs().sort_values().iloc[-5] - 1e-3  # ... and they are the strongest
    hover = dict(zip(nodes.text, nodes.customdata))
    assert hover["L0 H1"].startswith(f"L0 H1: {int(c.masks['attn_neuron'][0, 1].sum())}/8 attention neurons kept")
    assert "hidden" in hover["L0 MLP"] and "edges in:" in hover["L1 H3"]
    alone = circuit_graph(c)  # no edge scores: the nodes alone
    assert len(alone.data) == 1 and list(alone.data[0].text) == list(nodes.text) and "no edge scores" in \
        alone.layout.title.text
