"""The task protocol and the generators' shared argument checks and metrics."""

from __future__ import annotations

import pytest

import mgnp_lens as mg
from mgnp_lens.tasks import IOI, GenderedPronouns, GreaterThan, get_task


class _CharTokenizer:
    """A tokenizer with one token per character: every name is many tokens."""

    bos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [ord(ch) % 500 + 1 for ch in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_empty_result_after_filtering_is_an_error():
    with pytest.raises(ValueError, match="IOI names are single tokens"):
        IOI(_CharTokenizer())
    with pytest.raises(ValueError, match="unsupported tokenizer for Greater-Than"):
        GreaterThan(_CharTokenizer())


@pytest.mark.parametrize("make, match", [
    (lambda t: IOI(t, corruption="swap"), "unknown IOI corruption 'swap'"),
    (lambda t: GreaterThan(t, corruption="nope"), "unknown Greater-Than corruption"),
    (lambda t: GenderedPronouns(t, corruption="nope"), "unknown Gendered-Pronoun corruption"),
    (lambda t: GreaterThan(t, metric="nope"), "unknown Greater-Than metric"),
    (lambda t: IOI(t, n_train=0), "n_train must be a positive integer"),
    (lambda t: get_task("docstring", t), "unknown task 'docstring'"),
])
def test_bad_task_arguments(tok, make, match):
    with pytest.raises(ValueError, match=match):
        make(tok)


@pytest.mark.parametrize("make", [lambda m: IOI(m, n_test=64), lambda m: GenderedPronouns(m, n_test=64)])
def test_full_model_metric_is_positive_on_smollm2(default_model, make):
    task = make(default_model)
    full = mg.evaluate(default_model, task, mg.Circuit.full(default_model), "test")
    empty = mg.evaluate(default_model, task, mg.Circuit.empty(default_model), "test")
    assert full.base_metric > 0.5
    assert empty.circuit_metric < full.base_metric
