"""Mixture-of-experts gating (``mlp_expert`` and each expert's hidden neurons) on tiny random Mixtral and OLMoE
checkpoints built here: the invariants bit for bit, a random circuit against this file's own implementation
(every expert run on every token, no routed rows), gradients, the hierarchy, tables and refusals."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as tf

import mgnp_lens as mg
from mgnp_lens import export, hooks, plot
from mgnp_lens.baselines import random_circuit
from mgnp_lens.circuit import hierarchy_violations
from mgnp_lens.config import SpeedSettings
from mgnp_lens.speedups import use_compile

from helpers import gpt2_tokenizer

V = 128
MOE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
           vocab_size=V, max_position_embeddings=64, pad_token_id=0, num_experts_per_tok=2)
CONFIGS = {"mixtral": lambda: tf.MixtralConfig(**MOE, num_local_experts=4),
           "olmoe": lambda: tf.OlmoeConfig(**MOE, num_experts=4, norm_topk_prob=True)}


def _checkpoint(kind: str, path):
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(CONFIGS[kind]()).eval().save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def moe_model(request, tmp_path_factory):
    return mg.load_model(_checkpoint(request.param, tmp_path_factory.mktemp(request.param)))


def _prompts(seed=1, batch=3, pos=7):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(1, V, (batch, pos), generator=g) for _ in range(2))


def _experts_dense(mlp, x):
    """[B, P, E, d_mlp]: every expert's hidden activation on every token times its routing weight (0 where the
    router does not pick it), computed from the weights, not from the block's routed rows."""
    probs = torch.softmax(mlp.W_gate(x).float(), dim=-1)
    w, idx = probs.topk(mlp.experts_per_token, dim=-1)
    if mlp.cfg.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
    weight = torch.zeros_like(probs).scatter(-1, idx, w).to(x.dtype)
    hidden = torch.stack([ex.act_fn(ex.W_gate(x)) * ex.W_in(x) for ex in mlp.experts], dim=-2)
    return hidden * weight[..., None]


def reference_run(model, circuit, clean, corrupted):
    """The circuit's logits by this file's own hooks: embedding and hook_z patched unit by unit; each MoE block's
    output rebuilt from every expert's kept neurons on the clean run and pruned ones on the corrupted run; then
    its kept output dimensions."""
    m, d = circuit.masks, circuit.dims
    _, cache = model.run_with_cache(corrupted)
    state = {}

    def where(keep, name):
        return lambda act, hook: torch.where(keep, act, cache[name])

    def mlp_in(l):
        def hook(act, hook):
            state[l] = model.blocks[l].ln2(act)
            return act
        return hook

    def mlp_out(l):
        mlp = model.blocks[l].mlp
        keep = (m["mlp_block"][l] & m["mlp_expert"][l][:, None] & m["mlp_hidden"][l].view(d.n_experts, -1))

        def hook(act, hook):
            x_cor = model.blocks[l].ln2(cache[f"blocks.{l}.hook_resid_mid"])
            h = torch.where(keep, _experts_dense(mlp, state[l]), _experts_dense(mlp, x_cor))
            out = sum(h[..., e, :] @ ex.W_out.weight.T for e, ex in enumerate(mlp.experts))
            return torch.where(m["mlp_block"][l] & m["mlp_output"][l], out, cache[f"blocks.{l}.hook_mlp_out"])
        return hook

    hooks = [("blocks.0.hook_resid_pre", where(m["embedding"], "blocks.0.hook_resid_pre"))]
    for l in range(d.n_layers):
        z = m["attn_block"][l] & m["attn_head"][l][:, None] & m["attn_neuron"][l]
        hooks += [(f"blocks.{l}.attn.hook_z", where(z, f"blocks.{l}.attn.hook_z")),
                  (f"blocks.{l}.hook_resid_mid", mlp_in(l)), (f"blocks.{l}.hook_mlp_out", mlp_out(l))]
    return model.run_with_hooks(clean, fwd_hooks=hooks)


def moe_invariants(model):
    """all ones = the clean run, all zeros = the corrupted run, bit for bit; random circuits = reference_run."""
    clean, corrupted = _prompts()
    dims = mg.ModelDims.from_model(model)
    with torch.no_grad():
        assert torch.equal(mg.Circuit.full(model).run(model, clean, corrupted), model(clean))
        assert torch.equal(mg.Circuit.empty(model).run(model, clean, corrupted), model(corrupted))
        for seed in range(3):  # every MLP block kept, 5 of its 8 experts, a third of their neurons
            counts = {"attn_head": 4, "attn_neuron": 32, "mlp_expert": 5, "mlp_hidden": dims.count("mlp_hidden") // 3,
                      "mlp_output": dims.count("mlp_output") // 2}
            circuit = random_circuit(dims, counts, seed=seed)
            per_layer = circuit.masks["mlp_expert"].sum(-1)
            assert circuit.masks["mlp_block"].all() and ((per_layer > 0) & (per_layer < dims.n_experts)).any()
            kept_experts_neurons = dims.under_parent("mlp_hidden", circuit.masks["mlp_expert"])
            assert (kept_experts_neurons & ~circuit.masks["mlp_hidden"]).any()  # neurons pruned in kept experts
            got = circuit.run(model, clean, corrupted)
            torch.testing.assert_close(got, reference_run(model, circuit, clean, corrupted), atol=1e-5, rtol=1e-5)
            assert not torch.allclose(got, model(clean), atol=1e-4)


def test_experts_are_gated_exactly(moe_model):
    dims = mg.ModelDims.from_model(moe_model)
    assert dims.n_experts == 4 and "mlp_expert" in dims.granularities
    assert dims.shape("mlp_expert") == (2, 4) and dims.shape("mlp_hidden") == (2, 4 * 48)
    moe_invariants(moe_model)


def test_pruning_one_expert_swaps_in_its_corrupted_contribution(moe_model):
    """Only expert 1 of layer 1 pruned: the change in the block output is that expert's corrupted minus clean
    contribution, everything else clean."""
    dims = mg.ModelDims.from_model(moe_model)
    masks = mg.Circuit.full(dims).masks
    masks["mlp_expert"][1, 1] = False
    circuit = mg.Circuit(dims, masks)
    clean, corrupted = _prompts(seed=4)
    with torch.no_grad():
        got = circuit.run(moe_model, clean, corrupted)
        want = reference_run(moe_model, circuit, clean, corrupted)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, moe_model(clean), atol=1e-5)
    assert circuit.per_layer()["MLP Experts"].tolist() == ["4/4", "3/4"]
    assert circuit.count("mlp_hidden") == dims.count("mlp_hidden") - 48  # its neurons go with it


def test_soft_gates_get_gradients_and_discovery_runs(moe_model):
    dims = mg.ModelDims.from_model(moe_model)
    clean, corrupted = _prompts(seed=5, batch=4)
    masks = {g: torch.full(dims.shape(g), 0.7, requires_grad=True) for g in dims.granularities}
    for mode in ("batch", "cache"):
        interp = hooks.Interpolator(dims, mode)
        interp.set_masks(masks)
        if mode == "cache":
            interp.set_corrupted(hooks.corrupted_activations(moe_model, dims, corrupted))
        logits = hooks.masked_answer_logits(moe_model, interp, clean, corrupted, torch.full((4,), 6))
        logits.logsumexp(-1).sum().backward()
        for g in ("mlp_expert", "mlp_hidden"):
            assert masks[g].grad is not None and masks[g].grad.abs().sum() > 0, (mode, g)
            masks[g].grad = None
    clean, corrupted = _prompts(seed=6, batch=8, pos=6)
    task = mg.PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = mg.discover(moe_model, task, steps=3, batch_size=4, compile=False, progress=False, eval_split=None)
    assert "mlp_expert" in r.gates.trainable and "l0_mlp_expert" in r.history.columns
    assert not hierarchy_violations(r.circuit.masks)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_zero_and_mean_ablation_of_experts(moe_model, ablation):
    """A pruned expert outputs 0 (zero), or its hidden activation averaged over the corrupted prompts (mean)."""
    dims = mg.ModelDims.from_model(moe_model)
    masks = mg.Circuit.full(dims).masks
    masks["mlp_expert"][0, 2] = False
    circuit = mg.Circuit(dims, masks)
    clean, corrupted = _prompts(seed=7)
    mlp, ln2 = moe_model.blocks[0].mlp, moe_model.blocks[0].ln2
    with torch.no_grad():
        mid = moe_model.run_with_cache(corrupted)[1]["blocks.0.hook_resid_mid"]
        value = torch.zeros(48) if ablation == "zero" else _experts_dense(mlp, ln2(mid))[:, :, 2].mean(dim=(0, 1))
    state = {}

    def keep_mid(act, hook):
        state["mid"] = act
        return act

    def own(act, hook):  # this test's version: expert 2's hidden part replaced by 0 or the mean
        h = _experts_dense(mlp, ln2(state["mid"]))
        return act + (value - h[..., 2, :]) @ mlp.experts[2].W_out.weight.T

    with torch.no_grad():
        got = circuit.run(moe_model, clean, corrupted, ablation=ablation)
        want = moe_model.run_with_hooks(clean, fwd_hooks=[("blocks.0.hook_resid_mid", keep_mid),
                                                          ("blocks.0.hook_mlp_out", own)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_circuit_of_experts_round_trips_and_dense_files_are_unchanged(moe_model, tmp_path):
    dims = mg.ModelDims.from_model(moe_model)
    circuit = random_circuit(dims, {"mlp_expert": 5, "attn_head": 4}, seed=1)
    assert mg.Circuit.load(circuit.save(tmp_path / "c.json")) == circuit
    assert circuit.dims.to_dict()["n_experts"] == 4
    assert "n_experts" not in mg.ModelDims(2, 4, 16, 96, 64).to_dict()  # a dense model's circuit.json as before
    assert "mlp_expert" not in mg.ModelDims(2, 4, 16, 96, 64).granularities
    with pytest.raises(ValueError, match="tl-hooks export"):
        export.export(circuit, "tl-hooks")
    units = export.unit_table(circuit)
    hidden = units[units.granularity == "mlp_hidden"]
    assert hidden.hook_point.str.match(r"blocks\.\d\.mlp\.experts\.\d\.hook_post").all()
    assert hidden["index"].max() < 48
    fig = plot.layer_heatmap(circuit)
    assert "MLP experts" in list(fig.data[0].x) and fig.data[0].z.shape == (2, 7)


def test_moe_on_the_bridge_or_compiled_is_refused(tmp_path):
    path = _checkpoint("mixtral", tmp_path)
    with pytest.raises(mg.ModelLoadError, match='backend=\\\\?"hooked"'):
        mg.load_model(path, backend="bridge")
    model = mg.load_model(path)
    dims = mg.ModelDims.from_model(model)
    with pytest.raises(ValueError, match="compile=False"):
        hooks.Interpolator(dims, shared_hooks=True)
    cpu = torch.device("cpu")
    assert not use_compile(SpeedSettings(), model, cpu, 10_000)  # "auto" stays eager
    with pytest.raises(ValueError, match="mixture-of-experts"):
        use_compile(SpeedSettings(compile=True), model, cpu, 10_000)
