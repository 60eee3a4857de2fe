"""Exports: the unit table, EAP-IG graph JSON, GraphML, DOT, and the hook list that reproduces a circuit in plain
TransformerLens."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
import torch

import mgnp_lens as mg
from mgnp_lens import export
from mgnp_lens.cli import main
from mgnp_lens.granularity import ModelDims

from helpers import micro_model, random_pairs


def _random_circuit(model, seed=0, p=0.6) -> mg.Circuit:
    from mgnp_lens.circuit import make_consistent

    dims = ModelDims.from_model(model)
    g = torch.Generator().manual_seed(seed)
    masks = {k: torch.rand(dims.shape(k), generator=g) < p for k in mg.GRANULARITIES}
    return mg.Circuit(dims, make_consistent(masks))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_the_tl_hook_list_reproduces_the_circuit_with_plain_transformer_lens(kind):
    model = micro_model(kind)
    circuit = _random_circuit(model)
    clean, corrupted = random_pairs(model, n=3)
    spec = json.loads(export.export(circuit, "tl-hooks"))  # through its file format
    _, cache = model.run_with_cache(corrupted)

    def patch(act, hook):  # plain torch: no mgnp-lens code in the loop
        site = spec["hook_points"][hook.name]
        keep = torch.tensor(site["keep"], dtype=torch.bool).view(site["shape"])
        return torch.where(keep, act, cache[hook.name])

    plain = model.run_with_hooks(clean, fwd_hooks=[(n, patch) for n in spec["hook_points"]])
    ours = circuit.run(model, clean, corrupted)
    torch.testing.assert_close(plain, ours, atol=1e-5, rtol=1e-5)
    helper = model.run_with_hooks(clean, fwd_hooks=export.tl_hooks(spec, cache))
    assert torch.equal(helper, plain)
    assert not torch.allclose(ours, model(clean), atol=1e-3)  # the circuit does prune something


def test_eap_ig_json_lists_the_full_graph_with_the_circuit_flagged():
    model = micro_model("gpt2")
    circuit = _random_circuit(model, seed=1)
    d = export.to_eap_ig(circuit)
    L, H = circuit.dims.n_layers, circuit.dims.n_heads
    assert d["cfg"] == {"n_layers": L, "n_heads": H, "parallel_attn_mlp": False, "d_model": circuit.dims.d_model}
    assert len(d["nodes"]) == 1 + L * (H + 1) + 1  # input, heads and MLPs, logits
    before = lambda l: 1 + l * (H + 1)  # noqa: E731  residual writers before layer l
    expected = sum(3 * H * before(l) + before(l) + H for l in range(L)) + before(L)
    assert len(d["edges"]) == expected
    kept = {f"a{l}.h{h}" for l, h in circuit.active_heads()} | {f"m{l}" for l in circuit.active_mlps()}
    assert {n for n, v in d["nodes"].items() if v["in_graph"]} - {"input", "logits"} == kept
    for name, edge in d["edges"].items():
        src, dst = name.split("->")
        dst = dst.split("<")[0]
        assert edge["in_graph"] == (d["nodes"][src]["in_graph"] and d["nodes"][dst]["in_graph"])
    assert "a0.h0->a1.h0<q>" in d["edges"] and "input->logits" in d["edges"]
    l = circuit.active_mlps()[0]
    assert sum(d["nodes"][f"m{l}"]["neurons"]) == int(circuit.masks["mlp_output"][l].sum())


def test_graphml_dot_and_unit_table(tmp_path):
    circuit = _random_circuit(micro_model("gpt2"), seed=2)
    circuit.masks["embedding"][:] = True
    root = ET.fromstring(export.to_graphml(circuit))
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    ids = {n.get("id") for n in root.iterfind(".//g:node", ns)}
    assert ids == {"input", "logits"} | {f"a{l}.h{h}" for l, h in circuit.active_heads()} | \
        {f"m{l}" for l in circuit.active_mlps()}
    edges = [(e.get("source"), e.get("target")) for e in root.iterfind(".//g:edge", ns)]
    assert ("input", "logits") in edges and all(a != b for a, b in edges)
    dot = export.to_dot(circuit)
    assert dot.startswith("digraph circuit {") and '"input" -> "logits";' in dot
    table = export.unit_table(circuit)
    assert len(table) == sum(circuit.counts().values())
    heads = table[table.granularity == "attn_head"]
    assert sorted(zip(heads["layer"], heads["head"])) == sorted(circuit.active_heads())
    assert set(table[table.granularity == "mlp_hidden"].hook_point) <= {"blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"}
    with pytest.raises(ValueError, match="unknown export format 'png'"):
        export.export(circuit, "png")


def test_export_and_compare_commands(tiny_gpt2_checkpoint, tmp_path, capsys):
    path = tiny_gpt2_checkpoint[0]
    common = ["discover", "--task", "ioi", "--model", str(path), "--steps", "3", "--batch-size", "4", "--n-test", "8",
              "--autocast", "float32", "--lambda-scale", "8", "--quiet"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*common, "--out", str(a)]) == 0 and main([*common, "--seed", "1", "--out", str(b)]) == 0
    for fmt, name in [("eap-ig", "circuit.eap-ig.json"), ("graphml", "circuit.graphml"), ("dot", "circuit.dot"),
                      ("tl-hooks", "circuit.tl-hooks.json"), ("nodes-csv", "circuit.nodes.csv")]:
        assert main(["export", str(a), "--format", fmt]) == 0
        assert (a / name).stat().st_size > 0
    assert json.loads((a / "circuit.tl-hooks.json").read_text())["format"] == "mgnp-tl-hooks/1"
    assert main(["compare", str(a), str(b)]) == 0
    table = pd.read_csv(a / "compare_b.csv", keep_default_na=False).set_index("granularity")
    ca, cb = mg.Circuit.load(a / "circuit.json"), mg.Circuit.load(b / "circuit.json")
    assert table.loc["attn_head", "kept_a"] == ca.count("attn_head")
    assert table.loc["attn_head", "kept_b"] == cb.count("attn_head")
    only_a = set(ca.active_heads()) - set(cb.active_heads())
    assert table.loc["attn_head", "only_a"] == ", ".join(f"L{l} H{h}" for l, h in sorted(only_a))
    assert main(["compare", str(a)]) == 2
    assert "another run directory or --reference" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("mgnp-lens 0.1.0")
