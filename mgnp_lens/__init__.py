"""mgnp-lens: Multi-Granular Node Pruning for circuit discovery on TransformerLens models.

Typical use::

    import mgnp_lens as mg
    model = mg.load_model()                 # embedded SmolLM2-135M, offline
    task = mg.tasks.IOI(model)
    result = mg.discover(model, task)
    result.circuit.per_layer()              # the paper's Appendix D table

Names are imported on first use, so ``import mgnp_lens`` (and ``mgnp --help``) does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS = {
    "Circuit": "circuit", "PruningConfig": "config", "discover": "discovery", "Evaluation": "evaluate",
    "evaluate": "evaluate", "HardConcreteGates": "gates", "HardConcreteParams": "gates",
    "GRANULARITIES": "granularity", "ALL_GRANULARITIES": "granularity", "PAPER_LAMBDAS": "granularity",
    "DEFAULT_LAMBDAS": "granularity", "ModelDims": "granularity",
    "ModelLoadError": "models", "load_model": "models", "DiscoveryError": "result", "DiscoveryResult": "result",
    "PromptPairTask": "tasks", "write_report": "report", "build_report": "report",
}

__all__ = [*sorted(_EXPORTS), "tasks"]


def __getattr__(name: str):
    """The public names and the submodules (``mg.tasks``, ``mg.reference``, ...), imported when first used."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("_"):
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, "tasks"])


class _Package(types.ModuleType):
    """The package module: importing a submodule that shares a public function's name (``mgnp_lens.evaluate``)
    does not replace the function (the submodule stays in ``sys.modules``)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
