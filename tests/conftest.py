"""Shared fixtures, and the test tiers.

``smollm`` is the one real model of the test session: the bundled SmolLM2-135M-Instruct, loaded
once. ``tokenizer`` is its (real) tokenizer, loaded without the model; ``tiny_lm`` is a tiny random
LLaMA (2 layers, hidden 64, float64, no biases) whose vocabulary is that tokenizer's, so tests can
use real text at a fraction of the cost of the real model.

Tiers: tests that use a real model (through ``smollm`` or marked ``real``), a browser, TeX or another
virtual environment carry the markers ``real``, ``browser``, ``tex`` and ``venv``; ``make test-fast``
leaves them out, ``make test`` runs everything.
"""

from __future__ import annotations

import pytest
import torch

import attnlrp
from attnlrp.loading import load_tokenizer


@pytest.fixture(scope="session")
def smollm():
    """(model, tokenizer) of the bundled default model."""
    return attnlrp.load_model()


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled model's tokenizer (byte-level BPE, chat template, 49152 tokens). Don't mutate it."""
    return load_tokenizer()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (see browsing.py), one per test module."""
    from browsing import start_browser

    driver = start_browser()
    yield driver
    driver.quit()


def pytest_collection_modifyitems(items):
    """Every test that loads the real default model is a ``real`` test."""
    for item in items:
        if "smollm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real)


def build_tiny_lm(tokenizer, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides):
    """A tiny random LlamaForCausalLM over ``tokenizer``'s vocabulary, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=None,
    )
    config = AutoConfig.for_model("llama", **{**options, **overrides})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


@pytest.fixture(scope="session")
def make_tiny_lm(tokenizer):
    """build_tiny_lm bound to the real tokenizer: ``make_tiny_lm(max_position_embeddings=16)``."""
    return lambda **overrides: build_tiny_lm(tokenizer, **overrides)


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    """A tiny bias-free LLaMA in float64 with the real tokenizer's vocabulary (CP-LRP conserves exactly)."""
    return build_tiny_lm(tokenizer)
