"""The fixtures (micro models, a tiny GPT-2 checkpoint, the embedded model, a private model cache) and the
``slow`` marking of SmolLM2 tests; the helpers the test modules import are in ``helpers.py``."""

from __future__ import annotations

import os

import pytest
import torch

from mgnp_lens.tasks import PromptPairTask

from helpers import gpt2_tokenizer, micro_model, random_pairs

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(params=["gpt2", "llama", "neox"])
def any_model(request):
    return micro_model(request.param)


@pytest.fixture
def gpt2_micro():
    return micro_model("gpt2")


@pytest.fixture(scope="session")
def tiny_gpt2_checkpoint(tmp_path_factory):
    """A random 2-layer GPT-2 written as a Hugging Face checkpoint with the real GPT-2 tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=len(tok))).eval()
    path = tmp_path_factory.mktemp("tiny_gpt2")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path, hf, tok


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory):
    """A private MGNP_LENS_CACHE for the session, so tests never touch the user's cache."""
    path = tmp_path_factory.mktemp("mgnp_cache")
    old = os.environ.get("MGNP_LENS_CACHE")
    os.environ["MGNP_LENS_CACHE"] = str(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield path
    if old is None:
        os.environ.pop("MGNP_LENS_CACHE", None)
    else:
        os.environ["MGNP_LENS_CACHE"] = old


@pytest.fixture(scope="session")
def default_model_loads(model_cache_dir):
    """The embedded default model loaded twice: first conversion, then from the cache."""
    from mgnp_lens import load_model

    first = load_model()
    second = load_model()
    return first, second


@pytest.fixture(scope="session")
def default_model(default_model_loads):
    return default_model_loads[1]


#: Fixtures that load the embedded SmolLM2 model: a test that uses one is ``slow``.
SMOLLM2_FIXTURES = {"default_model", "default_model_loads"}


def pytest_collection_modifyitems(config, items):
    """Mark the SmolLM2 tests ``slow`` (``pytest -m "not slow"`` skips them in the edit loop; ``make test`` runs
    everything)."""
    for item in items:
        if SMOLLM2_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def micro_task():
    model = micro_model("gpt2")
    clean, corrupted = random_pairs(model, n=16)
    return model, PromptPairTask.from_tokens(clean, corrupted, clean[:, 0], corrupted[:, 0])


@pytest.fixture(scope="module")
def tok():
    """The real GPT-2 tokenizer."""
    return gpt2_tokenizer()
