"""mgnp-lens: Multi-Granular Node Pruning for circuit discovery on TransformerLens models.

Typical use::

    import mgnp_lens as mg
    model = mg.load_model()                 # embedded SmolLM2-135M, offline
    task = mg.tasks.IOI(model)
    result = mg.discover(model, task)
    result.circuit.per_layer()              # the paper's Appendix D table
"""

from . import tasks
from .circuit import Circuit
from .config import PruningConfig
from .discovery import discover
from .evaluate import Evaluation, evaluate
from .gates import HardConcreteGates, HardConcreteParams
from .granularity import GRANULARITIES, PAPER_LAMBDAS, ModelDims
from .models import ModelLoadError, load_model
from .result import DiscoveryError, DiscoveryResult
from .tasks import PromptPairTask

__version__ = "0.1.0"

__all__ = [
    "Circuit", "DiscoveryError", "DiscoveryResult", "Evaluation", "GRANULARITIES", "HardConcreteGates",
    "HardConcreteParams", "ModelDims", "ModelLoadError", "PAPER_LAMBDAS", "PromptPairTask", "PruningConfig", "discover",
    "evaluate", "load_model", "tasks",
]
