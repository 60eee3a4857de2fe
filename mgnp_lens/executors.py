"""Where the runs of a sweep or a seed series execute: this process (the default) or Ray.

    sweep(model, task, scales, out_dir="runs/sweep")                                # one after another, here
    sweep(model, task, scales, out_dir="runs/sweep", executor="ray")                # a Ray instance on this machine
    sweep(model, task, scales, out_dir="/shared/sweep",
          executor=RayExecutor(address="auto", num_gpus_per_run=1))                 # a Ray cluster, a GPU per run

Each run checkpoints to its own directory under ``out_dir`` (on a cluster, a file system every node sees), so
a sweep that stopped, for any reason, resumes when it is called again with the same ``out_dir``: finished
runs are only re-evaluated, stopped ones continue from their last checkpoint. Ray is an optional extra:
``pip install "mgnp-lens[ray]"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

#: The ``executor`` names :func:`resolve` accepts.
EXECUTOR_NAMES = ("local", "ray")


class LocalExecutor:
    """Runs one after another in this process; a run stopped by Ctrl-C ends the series after it."""

    def map(self, fn: Callable, shared: tuple, jobs: Sequence[dict]) -> list:
        """``[fn(*shared, **job) for job in jobs]``, stopping after the first result with ``interrupted``."""
        results = []
        for job in jobs:
            results.append(fn(*shared, **job))
            if getattr(results[-1], "interrupted", False):
                break
        return results


@dataclass
class RayExecutor:
    """Fans the runs out as Ray tasks, each with its own CPUs (and GPUs).

    Attributes:
        address: None starts (or joins) a Ray instance on this machine; ``"auto"`` or ``"ray://host:10001"``
            joins a cluster. Ignored when Ray is already initialised in this process.
        num_cpus_per_run: CPUs Ray reserves for each run; the run's torch uses as many threads.
        num_gpus_per_run: GPUs Ray reserves for each run (the model is moved to ``cuda`` in the run).
        init: further keyword arguments of ``ray.init`` (e.g. ``num_cpus``, ``object_store_memory``).
    """

    address: str | None = None
    num_cpus_per_run: float = 1
    num_gpus_per_run: float = 0
    init: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.num_cpus_per_run > 0 or self.num_gpus_per_run < 0:
            raise ValueError(f"RayExecutor needs num_cpus_per_run > 0 and num_gpus_per_run >= 0, got "
                             f"{self.num_cpus_per_run} and {self.num_gpus_per_run}")

    def map(self, fn: Callable, shared: tuple, jobs: Sequence[dict]) -> list:
        """``fn(*shared, **job)`` for every job as parallel Ray tasks; ``shared`` (the model, the task) is put
        into Ray's object store once. Results come back in the order of ``jobs``; Ctrl-C cancels the runs
        still going (their checkpoints remain)."""
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, **{"include_dashboard": False, "log_to_driver": True, **self.init})
        refs_shared = [ray.put(x) for x in shared]
        remote = ray.remote(num_cpus=self.num_cpus_per_run, num_gpus=self.num_gpus_per_run)(_in_worker)
        refs = [remote.remote(fn, self.num_cpus_per_run, self.num_gpus_per_run > 0, *refs_shared, **job)
                for job in jobs]
        try:
            return ray.get(refs)
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref)
            raise


def _in_worker(fn: Callable, cpus: float, gpu: bool, model, *shared, **job):
    """A run inside a Ray worker: torch gets the run's CPUs as threads, the model its GPU."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    if gpu:
        model = model.to("cuda")
    return fn(model, *shared, **job)


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError('executor="ray" needs Ray: pip install "mgnp-lens[ray]" (or pip install ray)') from e
    return ray


def resolve(executor) -> LocalExecutor | RayExecutor:
    """An executor from a name (``"local"``, ``"ray"``), None (local) or an executor object (returned as is).

    Raises:
        ValueError: an unknown name or object.
    """
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        return RayExecutor()
    if hasattr(executor, "map"):
        return executor
    raise ValueError(f"unknown executor {executor!r}: use one of {EXECUTOR_NAMES} or a RayExecutor(...)")
