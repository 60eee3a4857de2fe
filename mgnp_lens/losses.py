"""What a circuit is trained and scored on: the full model's answers at the answer positions, and the losses
and task metrics that compare a circuit's answers with them.

Every function takes logits at the answer positions: ``[B, d_vocab]`` (one answer position per prompt) or
``[B, P, d_vocab]`` (``P`` answer positions, each with its own correct/incorrect ids ``[B, P]``). Per-example
values are means over the positions, so a task with several answer positions weighs each prompt once.

Losses (:data:`LOSSES`), each per example and zero when the circuit's answers are the full model's:

- ``"kl"``: KL(full ‖ circuit) of the answer distributions (the paper's; the default);
- ``"logit_diff"``: ``|ld(circuit) − ld(full)|``, ld = correct − incorrect logit;
- ``"prob_diff"``: ``|pd(circuit) − pd(full)|``, pd = p(correct) − p(incorrect);
- ``"mse"``: the mean squared difference of the outputs, for models whose output is not a token
  distribution (e.g. tracr's numerical outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The training losses a task can choose (``Task.loss``).
LOSSES = ("kl", "logit_diff", "prob_diff", "mse")


def _per_example(values: torch.Tensor) -> torch.Tensor:
    """[B] from [B] or [B, P] (the mean over answer positions)."""
    return values if values.dim() == 1 else values.mean(-1)


def answer_values(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``values[..., ids]``: [B] or [B, P] entries of [B, d_vocab] or [B, P, d_vocab] ``values``."""
    return values.gather(-1, ids.to(values.device)[..., None])[..., 0]


def logit_diff(logits: torch.Tensor, batch) -> torch.Tensor:
    """Logit of the correct answer minus logit of the incorrect one, [B] (mean over answer positions)."""
    return _per_example(answer_values(logits, batch.correct) - answer_values(logits, batch.incorrect))


def prob_diff(logits: torch.Tensor, batch) -> torch.Tensor:
    """Probability of the correct answer minus that of the incorrect one, [B] (mean over answer positions)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return _per_example(answer_values(probs, batch.correct) - answer_values(probs, batch.incorrect))


def answer_logit(logits: torch.Tensor, batch) -> torch.Tensor:
    """The correct answer's logit (for a numerical output, the output itself), [B] (mean over positions)."""
    return _per_example(answer_values(logits, batch.correct))


#: The task metrics a :class:`~mgnp_lens.tasks.PromptPairTask` can name: ``{name: (function, label)}``.
METRICS = {"logit_diff": (logit_diff, "logit diff"), "prob_diff": (prob_diff, "prob diff"),
           "answer_logit": (answer_logit, "answer logit")}


def check_loss(loss: str) -> str:
    """``loss`` if it is one of :data:`LOSSES`, else a ``ValueError`` naming them."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    return loss


@dataclass
class FullModelTarget:
    """The full model's answers, prepared once for many comparisons with circuits (training steps, batches).

    ``KL = Σ_v p·log p − Σ_v p·log q``: the first sum is fixed per example, so a training step only takes
    one log-softmax, one product and one sum over the vocabulary. Losses other than KL keep the logits.

    Attributes:
        probs: [n, (P,) d_vocab] float32 probabilities of the full model.
        neg_entropy: [n, (P)] ``Σ_v p·log p`` of each example (and answer position).
        loss: the loss :meth:`loss_of` computes (:data:`LOSSES`).
        logits: [n, (P,) d_vocab] float32 logits of the full model (None with the KL loss).
    """

    probs: torch.Tensor
    neg_entropy: torch.Tensor
    loss: str = "kl"
    logits: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor, loss: str = "kl") -> "FullModelTarget":
        """From the full model's answer logits [n, (P,) d_vocab]."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        probs = logp.exp()
        return cls(probs, (probs * logp).sum(-1), check_loss(loss), None if loss == "kl" else logits.float())

    @classmethod
    def from_log_probs(cls, logp: torch.Tensor) -> "FullModelTarget":
        """From the full model's answer log-probabilities [n, (P,) d_vocab] (the KL loss)."""
        logp = logp.float()
        probs = logp.exp()
        return cls(probs, (probs * logp).sum(-1))

    def rows(self, idx: torch.Tensor) -> "FullModelTarget":
        """The targets of rows ``idx`` [b]."""
        idx = idx.to(self.probs.device)
        return FullModelTarget(self.probs[idx], self.neg_entropy[idx], self.loss,
                               None if self.logits is None else self.logits[idx])

    def kl(self, circuit_logits: torch.Tensor) -> torch.Tensor:
        """Per-example KL(full ‖ circuit) [n] for circuit logits [n, (P,) d_vocab] (taken in float32; the mean
        over answer positions)."""
        circ_logp = torch.log_softmax(circuit_logits.float(), dim=-1)
        return _per_example(self.neg_entropy - (self.probs * circ_logp).sum(-1))

    def loss_of(self, circuit_logits: torch.Tensor, batch) -> torch.Tensor:
        """Per-example loss [n] of circuit logits [n, (P,) d_vocab] against the full model's (``batch``: the same
        n examples, for their correct/incorrect ids)."""
        if self.loss == "kl":
            return self.kl(circuit_logits)
        if self.loss == "mse":
            return (circuit_logits.float() - self.logits).pow(2).flatten(1).mean(1)
        metric = METRICS[self.loss][0]
        return (metric(circuit_logits, batch) - metric(self.logits, batch)).abs()


def kl_full_circuit(base_logp: torch.Tensor, circuit_logits: torch.Tensor) -> torch.Tensor:
    """Per-example KL(full ‖ circuit) = Σ_v p_full(v)·(log p_full(v) − log p_circuit(v)).

    Args:
        base_logp: [B, (P,) d_vocab] log-probabilities of the full model.
        circuit_logits: [B, (P,) d_vocab] logits of the circuit.

    Returns:
        [B] KL divergences in nats.
    """
    return FullModelTarget.from_log_probs(base_logp).kl(circuit_logits)
