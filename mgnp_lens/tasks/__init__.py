"""Tasks: the interface the discovery loop consumes, user-defined prompt pairs and the paper's tasks."""

from .pairs import PairBatch, PairSet
from .prompt_pairs import PromptPairTask
from .task import Task, logit_diff
from .gendered_pronouns import GenderedPronouns
from .greater_than import GreaterThan
from .ioi import IOI

TASKS = {"ioi": IOI, "gt": GreaterThan, "gp": GenderedPronouns}


def get_task(name: str, model, **kwargs):
    """Build a task by name (``"ioi"``, ``"gt"``, ``"gp"``); ``ValueError`` names the known tasks."""
    key = name.lower()
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(sorted(TASKS))}")
    return TASKS[key](model, **kwargs)


__all__ = ["GenderedPronouns", "GreaterThan", "IOI", "PairBatch", "PairSet", "PromptPairTask", "TASKS", "Task",
           "get_task", "logit_diff"]
