"""Tasks: the interface the discovery loop consumes and user-defined prompt-pair tasks."""

from .base import PairBatch, PairSet, PromptPairTask, Task, logit_diff

__all__ = ["PairBatch", "PairSet", "PromptPairTask", "Task", "logit_diff"]
