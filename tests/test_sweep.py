"""λ sweeps, seed stability and their resumable output directories."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mgnp_lens.sweep import jaccard, overlap, stability, sweep


# ------------------------------------------------------------------------------------ sweep, stability
def test_sweep_table_and_pareto(micro_task):
    model, task = micro_task
    res = sweep(model, task, scales=[0.0, 8.0], steps=25, lr=0.5, batch_size=8, progress=False,
                eval_split="train", eval_max_examples=8)
    t = res.table
    assert list(t["lambda_scale"]) == [0.0, 8.0] and {"n_nodes", "n_params", "kl", "attn_head"} <= set(t.columns)
    assert t.loc[0, "n_nodes"] > t.loc[1, "n_nodes"]  # no sparsity pressure keeps more
    assert t.loc[0, "kl"] <= t.loc[1, "kl"] + 1e-6
    assert set(res.pareto().index) <= set(t.index) and len(res.circuits()) == 2
    with pytest.raises(ValueError, match="at least one"):
        sweep(model, task, scales=[])


def test_stability_and_jaccard(micro_task):
    model, task = micro_task
    assert jaccard(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 1])) == pytest.approx(1 / 3)
    table, results = stability(model, task, seeds=[0, 1, 0], steps=3, batch_size=8, progress=False, eval_split=None)
    assert len(table) == 3 and set(table.columns) == {"a", "b", "attn_head", "attn_neuron", "mlp_hidden", "mlp_output"}
    same = table[(table.a == 0) & (table.b == 0)].iloc[0]
    assert same.attn_head == 1.0 and same.mlp_hidden == 1.0  # same seed, same circuit
    assert ((table.drop(columns=["a", "b"]) >= 0) & (table.drop(columns=["a", "b"]) <= 1)).all().all()
    assert len(overlap([r.circuit for r in results])) == 3


def test_a_sweep_in_out_dir_resumes_instead_of_starting_over(micro_task, tmp_path, monkeypatch):
    import importlib

    model, task = micro_task
    kw = dict(steps=4, batch_size=8, progress=False, eval_split=None, autocast="float32")
    straight = sweep(model, task, scales=[0.5, 2.0], **kw)
    disc = importlib.import_module("mgnp_lens.discovery")
    real, calls = disc._kl_backward, []

    def ctrl_c_in_the_second_run(*a, **k):  # the 6th step overall: step 2 of scale 2.0
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(disc, "_kl_backward", ctrl_c_in_the_second_run)
    stopped = sweep(model, task, scales=[0.5, 2.0, 4.0], out_dir=tmp_path, **kw)
    assert stopped.table.interrupted.tolist() == [False, True]  # Ctrl-C ends the sweep, scale 4 never starts
    assert not (tmp_path / "scale_4").exists() and (tmp_path / "scale_2" / "state.pt").exists()
    monkeypatch.setattr(disc, "_kl_backward", real)

    again = sweep(model, task, scales=[0.5, 2.0], out_dir=tmp_path, **kw)
    assert [r.meta["resumed_at_steps"] for r in again.results] == [[4], [1]]  # re-evaluated; continued
    assert again.circuits() == straight.circuits()
    for a, b in zip(again.results, straight.results):
        assert a.history.kl.tolist() == b.history.kl.tolist()
    with pytest.raises(ValueError, match="lr"):  # other settings: the saved runs are not silently mixed in
        sweep(model, task, scales=[0.5], out_dir=tmp_path, lr=0.5, **kw)


def test_stability_in_out_dir_resumes_its_runs(micro_task, tmp_path):
    model, task = micro_task
    kw = dict(steps=3, batch_size=8, progress=False, eval_split=None, autocast="float32")
    first, runs = stability(model, task, seeds=[0, 1], out_dir=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_0", "seed_1"]
    again, rerun = stability(model, task, seeds=[0, 1], out_dir=tmp_path, **kw)
    assert [r.meta.get("resumed_at_steps") for r in rerun] == [[3], [3]]
    pd.testing.assert_frame_equal(first, again)


# ------------------------------------------------------------------------------------ executors
@pytest.mark.slow  # starts Ray
def test_a_sweep_through_ray_gives_the_local_circuits_in_their_own_directories_and_resumes(micro_task, tmp_path):
    import ray

    from mgnp_lens.executors import RayExecutor

    model, task = micro_task
    kw = dict(steps=4, batch_size=8, progress=False, eval_split=None, autocast="float32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each Ray run (num_cpus_per_run=1), so the float sums agree bit for bit
    try:
        local = sweep(model, task, scales=[0.5, 2.0], **kw)
    finally:
        torch.set_num_threads(threads)
    executor = RayExecutor(init={"num_cpus": 2, "object_store_memory": 100 * 2**20})
    try:
        fanned = sweep(model, task, scales=[0.5, 2.0], out_dir=tmp_path, executor=executor, **kw)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["scale_0.5", "scale_2"]
        assert all((tmp_path / d / "circuit.json").exists() for d in ("scale_0.5", "scale_2"))
        assert fanned.circuits() == local.circuits()
        assert [r.history.kl.tolist() for r in fanned.results] == [r.history.kl.tolist() for r in local.results]
        again = sweep(model, task, scales=[0.5, 2.0], out_dir=tmp_path, executor=executor, **kw)
        assert [r.meta["resumed_at_steps"] for r in again.results] == [[4], [4]]  # finished: only re-evaluated
        pd.testing.assert_frame_equal(again.table, fanned.table)
    finally:
        ray.shutdown()


def test_executors_are_checked_before_anything_runs(micro_task):
    from mgnp_lens.executors import LocalExecutor, RayExecutor, resolve

    model, task = micro_task
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        sweep(model, task, scales=[1.0], executor="dask", steps=1)
    with pytest.raises(ValueError, match="num_cpus_per_run"):
        RayExecutor(num_cpus_per_run=0)
    assert isinstance(resolve(None), LocalExecutor) and isinstance(resolve("ray"), RayExecutor)
