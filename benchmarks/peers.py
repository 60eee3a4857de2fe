"""mgnp-lens beside auto-circuit (EAP, Subnetwork Probing, ACDC) on the embedded SmolLM2-135M, on the same
training pairs and scored on the same held-out pairs.

    pip install -e ".[peers]" && pip install --no-deps auto-circuit==1.0.1   # benchmark dependencies only
    python benchmarks/peers.py [--tasks ioi gt gp] [--methods mgnp coarse eap sp acdc] [--n-train 192]
    python benchmarks/peers.py --tasks gp --add ...   # one more task beside those already in results/peers.json

Every method runs in its own process (one after the other, the order rotated from task to task), on the first
``--n-train`` training pairs of the task's most common prompt length (auto-circuit's loader batches prompts of
one length only and drops an incomplete last batch, so every method gets the same whole batches). Each worker
reports its time to a circuit (or to node scores) after the model is loaded, and its peak RSS.

auto-circuit runs on its node graph (``factorized=False``: each head's and MLP's output patched where it enters
the residual stream; ~300 edges). Its edge graph (~10^5 edges on this model) did not fit: its exact EAP loops over
the edges in Python (more than 9 minutes and 14 GB for 64 prompts, stopped), so EAP here is auto-circuit's
mask-gradient form (``mask_gradient_prune_scores``, logit difference, the variant its own benchmarks call EAP).
A node's score is the |score| of its edge. Their circuits keep the top heads and MLP layers at mgnp-lens's
counts of kept heads and MLP layers (all their neurons). Every circuit is then scored by ``mgnp_lens.evaluate``
on the test split and on ``test_ood`` (held-out templates, other corruption), with the corrupted-prompt ablation.
A cross-check evaluates mgnp-lens's node set with auto-circuit's own patching (``run_circuits``) on the training
pairs, with its ``TREE_PATCH`` (mgnp-lens's ablation) and its default ``EDGE_PATCH``. Writes ``results/peers.json``.

auto-circuit 1.0.1 on TransformerLens 3.9 / torch 2.13 needs three shims (:func:`_shim_auto_circuit`): the old
``HookedTransformerKeyValueCache`` name and module, ungrouped GQA attention, and ``torch.optim.adam`` as an
attribute. Its Subnetwork Probing always ablates to the mean over the training pairs (not to the corrupted
prompt), as the note in the results says.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from harness import parser, peak_rss_mb, result_path, write

METHODS = ("mgnp", "coarse", "eap", "sp", "acdc")
TASKS = ("ioi", "gt", "gp")
WORK = Path("runs/peers")


def _shim_auto_circuit(model=None):
    """What auto-circuit 1.0.1 needs from TransformerLens 3.9 and torch 2.13."""
    import types

    import torch
    import transformer_lens as tl

    tl.HookedTransformerKeyValueCache = tl.TransformerLensKeyValueCache
    stub = types.ModuleType("transformer_lens.past_key_value_caching")
    stub.HookedTransformerKeyValueCache = tl.TransformerLensKeyValueCache
    sys.modules["transformer_lens.past_key_value_caching"] = stub
    torch.optim.adam = sys.modules["torch.optim.adam"]
    if model is not None:
        if model.cfg.n_key_value_heads not in (None, model.cfg.n_heads):
            model.set_ungroup_grouped_query_attention(True)
        model.cfg.use_attn_result = True  # auto-circuit's TransformerLens set-up (its load_tl_model)
        model.cfg.use_split_qkv_input = True
        model.set_use_hook_mlp_in(True)
        for p in model.parameters():
            p.requires_grad_(False)


def _task_and_train(model, name: str, n_train: int, n_test: int):
    """The task (its test splits as the CLI builds them) and the shared training pairs: the first ``n_train`` of
    the most common prompt length, drawn from enough generated pairs."""
    import mgnp_lens as mg

    task = mg.tasks.get_task(name, model, n_train=8 * n_train, n_test=n_test, n_heldout=n_test)
    bucket = max(task.split("train").buckets, key=len)
    if len(bucket) < n_train:
        raise SystemExit(f"{name}: only {len(bucket)} training pairs of one length; lower --n-train")
    import torch

    return task, bucket.select(torch.arange(n_train))


def _train_task(task, bucket):
    """A task whose training split is ``bucket`` (the other splits: ``task``'s)."""
    from mgnp_lens.tasks import PairSet, PromptPairTask

    splits = {k: task.split(k) for k in ("validation", "test", *task.heldout_splits())}
    out = PromptPairTask({"train": PairSet([bucket]), **splits}, name=task.name, metric_name=task.metric_name)
    out.metric = task.metric
    return out


def _loader(bucket, batch_size: int):
    from auto_circuit.data import PromptDataLoader, PromptDataset

    answers = [c.view(1) for c in bucket.correct]
    wrong = [c.view(1) for c in bucket.incorrect]
    return PromptDataLoader(PromptDataset(bucket.clean, bucket.corrupted, answers, wrong), seq_len=None,
                            diverge_idx=0, batch_size=batch_size, shuffle=False)


def _node_scores(pm, prune_scores) -> dict:
    """|score| per head ``[L][H]`` and MLP layer ``[L]``: the sum over each source node's edges."""
    cfg = pm.wrapped_model.cfg if hasattr(pm, "wrapped_model") else pm.cfg
    heads = [[0.0] * cfg.n_heads for _ in range(cfg.n_layers)]
    mlps = [0.0] * cfg.n_layers
    for e in pm.edges:
        s = abs(float(e.prune_score(prune_scores)))
        name = e.src.name
        if name.startswith("A") and "." in name:
            layer, head = map(int, name[1:].split("."))
            heads[layer][head] += s
        elif name.startswith("MLP "):
            mlps[int(name.split()[1])] += s
    return {"heads": heads, "mlps": mlps}


def node_set(dims, head_scores, mlp_scores, n_heads: int, n_mlps: int):
    """The circuit of the ``n_heads`` best heads (all their attention neurons) and ``n_mlps`` best MLP layers (all
    their neurons), the embedding kept: a node set as auto-circuit's node graph sees it.

    Args:
        head_scores: ``[L, H]``, higher = more important. mlp_scores: ``[L]``.
    """
    import torch

    import mgnp_lens as mg

    heads = torch.zeros(dims.n_layers * dims.n_heads, dtype=torch.bool)
    heads[torch.topk(torch.as_tensor(head_scores, dtype=torch.float).flatten(), n_heads).indices] = True
    heads = heads.view(dims.n_layers, dims.n_heads)
    mlps = torch.zeros(dims.n_layers, dtype=torch.bool)
    mlps[torch.topk(torch.as_tensor(mlp_scores, dtype=torch.float), n_mlps).indices] = True
    masks = {"embedding": torch.ones(1, dtype=torch.bool), "attn_block": heads.any(-1), "attn_head": heads,
             "attn_neuron": heads[..., None].expand(dims.shape("attn_neuron")).clone(), "mlp_block": mlps,
             "mlp_hidden": mlps[:, None].expand(dims.shape("mlp_hidden")).clone(),
             "mlp_output": mlps[:, None].expand(dims.shape("mlp_output")).clone()}
    return mg.Circuit(dims, masks)


def worker(method: str, name: str, args) -> dict:
    """One method on one task: its circuit (mgnp, coarse) or node scores (auto-circuit), timed after loading."""
    import torch

    import mgnp_lens as mg

    torch.set_grad_enabled(True)
    model = mg.load_model()
    task, bucket = _task_and_train(model, name, args.n_train, args.n_test)
    if method in ("mgnp", "coarse"):
        train_task = _train_task(task, bucket)
        fn = mg.discover if method == "mgnp" else mg.baselines.coarse
        t0 = time.perf_counter()
        r = fn(model, train_task, steps=args.steps, eval_split=None, eval_heldout=False, progress=False)
        seconds = time.perf_counter() - t0
        path = WORK / f"{name}_{method}.json"
        r.circuit.save(path)
        return {"seconds": seconds, "circuit": str(path), "peak_rss_mb": peak_rss_mb()}
    _shim_auto_circuit(model)
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.prune_algos.subnetwork_probing import subnetwork_probing_prune_scores
    from auto_circuit.utils.graph_utils import patchable_model

    loader = _loader(bucket, args.batch_size)
    t0 = time.perf_counter()
    pm = patchable_model(model, factorized=False, slice_output="last_seq", seq_len=None, separate_qkv=True,
                         device=torch.device("cpu"))
    if method == "eap":  # auto-circuit's EAP as its own benchmarks run it: the gradient of the patch masks
        scores = mask_gradient_prune_scores(pm, loader, None, grad_function="logit", answer_function="avg_diff",
                                            mask_val=0.0)
    elif method == "sp":
        scores = subnetwork_probing_prune_scores(pm, loader, None, epochs=args.sp_epochs)
    else:
        scores = acdc_prune_scores(pm, loader, None, tao_exps=list(range(-6, -2)), tao_bases=[1])
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), **_node_scores(pm, scores)}
    if method == "eap" and args.crosscheck:
        out["crosscheck"] = _crosscheck(pm, loader, model, task, bucket, name)
    return out


def _crosscheck(pm, loader, model, task, bucket, name) -> dict | None:
    """mgnp-lens's node set (its circuit's heads and MLP layers) patched by auto-circuit and by mgnp-lens: the mean
    logit difference on the training pairs. auto-circuit's ``TREE_PATCH`` (clean input, the edges outside the
    circuit patched to the corrupted run's) is mgnp-lens's ablation, so the two should agree; its default
    ``EDGE_PATCH`` (corrupted input, the circuit's edges patched to the clean run's) is a different experiment."""
    import torch
    from auto_circuit.prune import run_circuits
    from auto_circuit.types import PatchType

    import mgnp_lens as mg

    path = WORK / f"{name}_mgnp.json"
    if not path.exists():
        return None
    circuit = mg.Circuit.load(path)
    heads, mlps = set(circuit.active_heads()), set(circuit.active_mlps())
    scores, kept = {}, 0
    for mod, t in pm.current_patch_masks_as_prune_scores().items():
        scores[mod] = torch.zeros_like(t)
    for e in pm.edges:
        nm = e.src.name
        keep = (nm.startswith("A") and "." in nm and tuple(map(int, nm[1:].split("."))) in heads) or \
            (nm.startswith("MLP ") and int(nm.split()[1]) in mlps) or nm.startswith("Resid")
        if keep:
            scores[e.dest.module_name][e.patch_idx] = 1.0
            kept += 1
    out = {"n_prompts": len(bucket), "n_edges_kept": kept}
    for patch_type in (PatchType.TREE_PATCH, PatchType.EDGE_PATCH):
        outs = run_circuits(pm, loader, [kept], scores, patch_type=patch_type)[kept]
        diffs = []
        for batch in loader:
            logits = outs[batch.key]
            diffs += (logits.gather(-1, batch.answers) - logits.gather(-1, batch.wrong_answers))[:, 0].tolist()
        out[f"auto_circuit_{patch_type.name.lower()}_logit_diff"] = sum(diffs) / len(diffs)
    nodes = node_set(circuit.dims, circuit.masks["attn_head"], circuit.masks["mlp_block"], len(heads), len(mlps))
    out["mgnp_logit_diff"] = mg.evaluate(model, _train_task(task, bucket), nodes, "train",
                                         max_examples=len(bucket)).circuit_metric
    return out


def _run_worker(method: str, name: str, args) -> dict:
    out = WORK / f"{name}_{method}.result.json"
    cmd = [sys.executable, __file__, "--worker", method, "--tasks", name, "--n-train", str(args.n_train),
           "--n-test", str(args.n_test), "--sp-epochs", str(args.sp_epochs), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps),
           *(["--crosscheck"] if args.crosscheck else [])]
    if args.reuse and out.exists():  # a finished worker of an interrupted benchmark
        return json.loads(out.read_text())
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - t0
    out.write_text(json.dumps(result))
    return result


def evaluate_all(name: str, results: dict, args) -> list[dict]:
    """Every method's circuit at mgnp-lens's head and MLP-layer counts, scored on test and test_ood."""
    import mgnp_lens as mg
    from mgnp_lens.evaluate import evaluate_many

    model = mg.load_model()
    task, _ = _task_and_train(model, name, args.n_train, args.n_test)
    circuits = {m: mg.Circuit.load(results[m]["circuit"]) for m in ("mgnp", "coarse") if m in results}
    ref = circuits.get("mgnp")
    counts = {"attn_head": len(ref.active_heads()), "mlp_block": len(ref.active_mlps())} if ref else None
    dims = mg.ModelDims.from_model(model)
    if ref is not None:  # mgnp-lens's heads and MLP layers, whole: its node set, as the peers' are scored
        circuits["mgnp_nodes"] = node_set(dims, ref.masks["attn_head"], ref.masks["mlp_block"], counts["attn_head"],
                                          counts["mlp_block"])
    for m in ("eap", "sp", "acdc"):
        if m in results and counts:
            circuits[m] = node_set(dims, results[m]["heads"], results[m]["mlps"], counts["attn_head"],
                                   counts["mlp_block"])
    rows = []
    names = list(circuits)
    for split in ("test", "test_ood"):
        for m, ev in zip(names, evaluate_many(model, task, [circuits[m] for m in names], split,
                                                 max_examples=args.n_test)):
            c = circuits[m]
            heads = set(c.active_heads())
            rows.append({"task": name, "method": m, "split": split, "heads": len(heads), "mlps": len(c.active_mlps()),
                         "n_params": c.n_params(), "kl": ev.kl, "recovered": ev.recovered,
                         "head_jaccard_with_mgnp": len(heads & set(ref.active_heads())) / max(1, len(
                             heads | set(ref.active_heads()))) if ref else None})
    return rows


def main() -> None:
    ap = parser(__doc__, "peers")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--n-train", type=int, default=192)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sp-epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=240, help="mgnp-lens's and coarse's training steps (the CLI's 240)")
    ap.add_argument("--crosscheck", action="store_true", help="with eap: mgnp-lens's node set patched by both")
    ap.add_argument("--reuse", action="store_true", help="keep the workers' results already in runs/peers/")
    ap.add_argument("--add", action="store_true",
                    help="keep the other tasks already in the results file (run with the same settings)")
    ap.add_argument("--worker", choices=METHODS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.worker:
        name = args.tasks[0]
        (WORK / f"{name}_{args.worker}.result.json").write_text(json.dumps(worker(args.worker, name, args)))
        return
    out = _earlier_tasks(args) if args.add else {}
    for name in args.tasks:
        i = TASKS.index(name)  # the same rotation whether a task runs alone or with the others
        order = args.methods[i % len(args.methods):] + args.methods[:i % len(args.methods)]
        order = sorted(order, key=lambda m: m != "mgnp") if "eap" in order and args.crosscheck else order
        results = {m: _run_worker(m, name, args) for m in order}
        out[name] = {"order": order, "runs": {m: {k: v for k, v in r.items() if k not in ("heads", "mlps")}
                                              for m, r in results.items()},
                     "scores": {m: {"heads": r["heads"], "mlps": r["mlps"]} for m, r in results.items() if "heads" in r},
                     "evaluations": evaluate_all(name, results, args)}
        write("peers", {**_settings(args), "tasks": out}, args.out, args.tag)


def _settings(args) -> dict:
    return {"n_train": args.n_train, "n_test": args.n_test, "sp_epochs": args.sp_epochs, "steps": args.steps,
            "methods": list(args.methods)}


def _earlier_tasks(args) -> dict:
    """The tasks of the results file that ``--add`` keeps; refused if they ran with other settings."""
    path = result_path("peers", args.out, args.tag)
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    theirs = {k: old.get(k) for k in _settings(args)}
    if theirs != _settings(args):
        raise SystemExit(f"--add: {path} ran with other settings ({theirs}); "
                         "rerun every task, or drop --add")
    return {k: v for k, v in old["tasks"].items() if k not in args.tasks}


if __name__ == "__main__":
    main()
