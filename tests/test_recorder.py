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


def test_inside_a_recorder_explain_takes_one_input_and_a_one_backward_method(tiny_lm, tokenizer):
    with attnlrp.Recorder(tiny_lm, "model.layers.*") as rec:
        with pytest.raises(attnlrp.InputError, match="A Recorder holds one forward pass, and 2 inputs were given"):
            attnlrp.explain(tiny_lm, tokenizer, ["The capital of France is", "Rivers flow"])
        with pytest.raises(attnlrp.InputError, match="the 'integrated_gradients' method runs other passes"):
            attnlrp.explain(tiny_lm, tokenizer, "Rivers flow", method="integrated_gradients")
        with pytest.raises(attnlrp.InputError, match="a generation explains each token in a backward of its own"):
            attnlrp.explain_generation(tiny_lm, tokenizer, "Rivers flow", max_new_tokens=2)
        first = attnlrp.explain(tiny_lm, tokenizer, "The capital of France is", method="cp-lrp")
        assert rec.totals()["model.layers.1"] == pytest.approx(first.value, rel=1e-5)
        second = attnlrp.explain(tiny_lm, tokenizer, "Hello there my good friend, how are", method="cp-lrp")
        assert rec.relevance["model.layers.1"].shape[1] == len(second) != len(first), "no stale values"
        tiny_lm(torch.tensor([[1, 2, 3]]))  # a forward with no backward: nothing recorded, and it says so
        with pytest.raises(KeyError, match="No relevance was recorded at 'model.layers.1'"):
            rec.relevance["model.layers.1"]
    attnlrp.explain(tiny_lm, tokenizer, ["a b", "c"])  # after the block: batches again


def test_a_recorder_frees_what_it_recorded_and_names_patterns_that_match_nothing(tiny_lm, tokenizer):
    import gc
    import weakref

    seen = []
    handle = tiny_lm.model.layers[0].register_forward_hook(lambda m, a, out: seen.append(weakref.ref(out[0])))
    try:
        with attnlrp.Recorder(tiny_lm, "model.layers.*"), attnlrp.lrp(tiny_lm, method="cp-lrp"):
            tiny_lm(torch.tensor([[1, 2, 3]])).logits[0, -1].max().backward()
    finally:
        handle.remove()
    gc.collect()
    assert seen and seen[0]() is None, "the recorded output was kept alive by a reference cycle"
    with pytest.raises(ValueError, match=r"matches \['model.layer.\*.mlp'\]"):
        attnlrp.Recorder(tiny_lm, ["model.layers.*", "model.layer.*.mlp"])


def test_inputs_passed_by_keyword_and_model_outputs_are_recorded(tiny_lm, tokenizer):
    with attnlrp.Recorder(tiny_lm, "model.layers.*.self_attn", at="input") as at_input:
        with attnlrp.Recorder(tiny_lm, ["model", "model.norm"]) as at_output:
            exp = attnlrp.explain(tiny_lm, tokenizer, "The capital of France is", method="cp-lrp")
    assert set(at_input.relevance) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    totals = at_output.totals()
    assert totals["model"] == pytest.approx(totals["model.norm"], rel=1e-6)  # the base model's hidden states
    assert totals["model.norm"] == pytest.approx(exp.value, rel=1e-5)


def test_gradient_checkpointing_leaves_the_users_own_settings(tiny_lm, tokenizer):
    tiny_lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    try:
        before = tiny_lm.model.layers[0]._gradient_checkpointing_func
        attnlrp.explain(tiny_lm, tokenizer, "The capital", method="cp-lrp", gradient_checkpointing=True)
        assert (
            tiny_lm.model.layers[0]._gradient_checkpointing_func.keywords == before.keywords == {"use_reentrant": True}
        )
        assert tiny_lm.is_activation_checkpointing
    finally:
        tiny_lm.activation_checkpointing_disable()
