"""Relevance inside the model: per layer, per attention head and per MLP neuron, in the same backward."""

from __future__ import annotations

import pytest
import torch
from tiny_models import HEADS, build

import attnlrp


@pytest.fixture(scope="module")
def recorded():
    family = build("llama")
    model = family.model
    paths = [
        "model.layers.*.self_attn",
        "model.layers.*.self_attn.o_proj",
        "model.layers.*.mlp",
        "model.layers.*.mlp.down_proj",
    ]
    outputs = attnlrp.Recorder(model, [paths[0], paths[2]])
    inputs = attnlrp.Recorder(model, [paths[1], paths[3]], at="input")
    with outputs, inputs, attnlrp.lrp(model, method="cp-lrp"):
        logits = model(**family.inputs).logits[0, -1]
        logits.max().backward()
    return model, outputs, inputs


def test_per_head_relevance_adds_up_to_the_attention_output(recorded):
    _, outputs, inputs = recorded
    for layer in range(2):
        heads = inputs.heads(f"model.layers.{layer}.self_attn.o_proj", HEADS)
        assert heads.shape == (1, 10, HEADS)
        total = outputs.relevance[f"model.layers.{layer}.self_attn"].sum()
        assert float(heads.sum()) == pytest.approx(float(total), rel=1e-5)  # o_proj is linear, bias-free
        assert heads[0, -1].abs().min() > 0 and not torch.allclose(heads[..., 0], heads[..., 1])  # every head counts


def test_per_neuron_relevance_adds_up_to_the_mlp_output(recorded):
    model, outputs, inputs = recorded
    for layer in range(2):
        neurons = inputs.relevance[f"model.layers.{layer}.mlp.down_proj"]
        assert neurons.shape == (1, 10, model.config.intermediate_size)
        total = outputs.relevance[f"model.layers.{layer}.mlp"].sum()
        assert float(neurons.sum()) == pytest.approx(float(total), rel=1e-5)


def test_recorder_names_what_it_cannot_find():
    with pytest.raises(ValueError, match="No module path"):
        attnlrp.Recorder(build("llama").model, "model.blocks.*")
    with pytest.raises(ValueError, match="at must be"):
        attnlrp.Recorder(build("llama").model, "model.layers.*", at="middle")
