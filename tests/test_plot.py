"""Every plot function returns a figure with the expected traces and axes for a known circuit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import mgnp_lens as mg
from mgnp_lens import plot

DIMS = mg.ModelDims(n_layers=3, n_heads=4, d_head=2, d_mlp=6, d_model=5)


@pytest.fixture
def known():
    """Layer 0: head 1 with 1 of 2 neurons; layer 2: MLP with hidden 0,1,2 and output 4."""
    c = mg.Circuit.empty(DIMS)
    m = c.masks
    m["embedding"][0] = True
    m["attn_block"][0] = True
    m["attn_head"][0, 1] = True
    m["attn_neuron"][0, 1, 0] = True
    m["mlp_block"][2] = True
    m["mlp_hidden"][2, :3] = True
    m["mlp_output"][2, 4] = True
    return c


def test_layer_heatmap(known):
    fig = plot.layer_heatmap(known)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    hm = fig.data[0]
    assert hm.type == "heatmap"
    assert list(hm.x) == ["Attn block", "Attn heads", "Attn neurons", "MLP block", "MLP hidden", "MLP output"]
    z = np.asarray(hm.z)
    assert z.shape == (3, 6)
    assert z[0, 1] == pytest.approx(1 / 4) and z[0, 2] == pytest.approx(1 / 8)
    assert z[2, 4] == pytest.approx(3 / 6) and z[2, 5] == pytest.approx(1 / 5) and z[1].sum() == 0
    assert "L2 · MLP hidden: 3/6 kept" in hm.text[2][4]
    assert fig.layout.yaxis.title.text.startswith("layer") and fig.layout.xaxis.title.text == "granularity"


def test_head_grid_with_reference_outline(known):
    fig = plot.head_grid(known, reference=[(0, 1), (2, 3)])
    hm = fig.data[0]
    z = np.asarray(hm.z, dtype=float)
    assert z.shape == (3, 4) and z[0, 1] == pytest.approx(0.5) and np.isnan(z).sum() == 11  # pruned: blank
    assert hm.text[0][1] == "L0 H1: kept, 1/2 neurons · in reference"
    assert hm.text[2][3] == "L2 H3: pruned · in reference"
    assert len(fig.layout.shapes) == 2 and fig.layout.shapes[0].type == "rect"
    assert any(t.name == "reference head" for t in fig.data)
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.dtick == 1  # every layer labelled
    assert hm.colorscale[0][1] == "#440154" and fig.layout.plot_bgcolor == "white"  # Viridis: no grey mid-tone
    plain = plot.head_grid(known, color_by_neurons=False)
    assert np.asarray(plain.data[0].z, dtype=float)[0, 1] == 1 and len(plain.layout.shapes) == 0


def test_head_grid_by_reference_name():
    gpt2 = mg.ModelDims(n_layers=12, n_heads=12, d_head=64, d_mlp=3072, d_model=768)
    fig = plot.head_grid(mg.Circuit.full(gpt2), reference="ioi")
    assert len(fig.layout.shapes) == 26  # Wang et al.'s heads, all classes
    assert "L9 H9: kept, 64/64 neurons · in reference" in np.asarray(fig.data[0].text).ravel()


def test_neuron_strips(known):
    fig = plot.neuron_strips(known)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    hidden, out = (np.asarray(t.z) for t in fig.data)
    assert hidden.shape == (3, 6) and hidden[2].tolist() == [1, 1, 1, 0, 0, 0]
    assert out.shape == (3, 5) and out.sum() == 1 and out[2, 4] == 1
    assert "MLP hidden: 3/18 kept" in fig.layout.annotations[0].text
    with pytest.raises(ValueError, match="not 'attn_head'"):
        plot.neuron_strips(known, granularities=["attn_head"])


def test_training_curves():
    hist = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "kl": [1.0, 0.5, 0.4],
                         "l0_attn_head": [0.9, 0.5, 0.2], "active_attn_head": [10.8, 6.0, 2.4],
                         "l0_mlp_hidden": [0.95, 0.6, 0.3], "active_mlp_hidden": [17.0, 11.0, 5.4]})
    fig = plot.training_curves(hist)
    names = [t.name for t in fig.data]
    assert names == ["KL(full ‖ circuit)", "loss (KL + λ·L0)", "Attn heads", "MLP hidden"]
    assert list(fig.data[0].y) == [1.0, 0.5, 0.4]
    assert fig.layout.yaxis.title.text == "KL (nats)" and fig.data[1].yaxis == "y2"  # loss on its own axis
    assert fig.data[0].yaxis == "y" and fig.layout.yaxis2.title.text == "loss"
    assert fig.layout[fig.data[-1].xaxis.replace("x", "xaxis")].title.text == "optimizer step"
    with pytest.raises(ValueError, match="no 'kl' column"):
        plot.training_curves(hist.drop(columns="kl"))
    hard = hist.assign(kept_attn_head=[12, 6, 6], changed_attn_head=[0, 6, 0])  # a run's history since kept_<g>
    fig = plot.training_curves(hard)
    assert [t.name for t in fig.data][-1] == "Attn heads (hard)" and list(fig.data[-1].y) == [12, 6, 6]
    assert list(fig.data[-1].customdata) == [0, 6, 0] and fig.layout.yaxis4.type == "log"
    assert fig.layout[fig.data[-1].xaxis.replace("x", "xaxis")].title.text == "optimizer step"
    assert len(fig.layout.annotations) == 3 and fig.layout.annotations[2].text == "Kept by the hard circuit"


def test_size_vs_faithfulness_and_pareto():
    runs = pd.DataFrame({"label": ["a", "b", "c", "d"], "n_params": [10, 20, 30, 40], "kl": [0.5, 0.6, 0.2, 0.1],
                         "method": ["mgnp", "mgnp", "coarse", "mgnp"]})
    fig = plot.size_vs_faithfulness(runs)
    assert [t.name for t in fig.data] == ["mgnp", "coarse", "Pareto frontier"]
    assert list(fig.data[-1].x) == [10, 30, 40]  # b is dominated by a
    assert fig.layout.xaxis.title.text == "n_params (count)"
    with pytest.raises(ValueError, match="no column 'size'"):
        plot.size_vs_faithfulness(runs, size="size")


def test_roc_and_interaction_figures():
    from mgnp_lens.reference import RocCurve

    pts = pd.DataFrame({"label": ["endpoint", 0, "endpoint"], "fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1]})
    fig = plot.roc_curve({"mgnp": RocCurve(pts, 0.85)})
    assert fig.data[0].name == "mgnp (AUC 0.850)" and fig.layout.xaxis.title.text == "false positive rate"
    edges = pd.DataFrame({"src": ["embed", "L0 H1", "L0 H1"], "dst": ["L0 H1", "L2 MLP", "L1 H0"],
                          "score": [0.5, -0.2, 0.1]})
    g = plot.interaction_graph(edges)
    nodes = g.data[-1]
    assert set(nodes.text) == {"embed", "L0 H1", "L1 H0", "L2 MLP"} and len(g.data) == 4


def test_attention_patterns_one_heatmap_restyled_by_the_menu():
    """One heatmap trace; each menu entry carries its own head and prompt's pattern and token labels."""
    views = {"prompts": [["a", "b"], ["c", "d", "e"]],
             "heads": {"L0 H1": [[[1, 0], [0.4, 0.6]], [[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]],
                       "L2 H0": [[[1, 0], [0.9, 0.1]], [[1, 0, 0], [0.1, 0.9, 0], [0.3, 0.3, 0.4]]]}}
    fig = plot.attention_patterns(views)
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Heatmap)
    assert np.allclose(fig.data[0].z, views["heads"]["L0 H1"][0])
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["L0 H1 · prompt 1", "L0 H1 · prompt 2", "L2 H0 · prompt 1",
                                          "L2 H0 · prompt 2"]
    last = buttons[3].args[0]
    assert np.allclose(last["z"][0], views["heads"]["L2 H0"][1])
    assert list(last["x"][0]) == list(last["y"][0]) == ["0: c", "1: d", "2: e"]
    with pytest.raises(ValueError, match="no kept head"):
        plot.attention_patterns({"prompts": [["a"]], "heads": {}})
