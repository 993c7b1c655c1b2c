"""One method registry behind every front end: names, descriptions, capabilities and errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

import attnlrp
from attnlrp import cli
from attnlrp.core.naming import method_key
from attnlrp.methods import REGISTRY, InputXGradient, Method, get_method, method_names
from attnlrp.methods.batch import Batch, plan

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    return ViTForImageClassification(config).double().eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_available_methods_lists_every_registered_method_with_one_line():
    methods = attnlrp.available_methods()
    assert list(methods) == method_names() and set(methods) == {c.name for c in REGISTRY.values()}
    assert list(methods)[:2] == ["attnlrp", "cp-lrp"], "the LRP methods first"
    assert len(methods) == 9
    for name, text in methods.items():
        assert text and "\n" not in text and len(text) < 120, name


def test_names_are_normalised_in_one_place():
    for spelling in ("CP_LRP", "cp lrp", "cplrp", "Cp-Lrp"):
        assert get_method(spelling).name == "cp-lrp"
        with attnlrp.lrp(torch.nn.Linear(2, 2), method=spelling) as binding:
            assert binding.method == "cp-lrp", "the engine reads the same spelling rule"
    assert get_method("Input-X-Gradient").name == "input_x_gradient"
    assert method_key("Attn_LRP") == method_key("attnlrp")


def test_a_methods_label_reads_back_as_the_same_method():
    from attnlrp.methods import AttnLRP, IntegratedGradients, Random

    for method in (IntegratedGradients(steps=8), Random(seed=3), AttnLRP(gradient_checkpointing=True), Random()):
        assert get_method(method.label) == method, method.label
    assert get_method(" Integrated-Gradients ( steps = 8 ) ") == IntegratedGradients(steps=8)
    for label, says in [
        ("integrated_gradients(8)", "doesn't read as a method with options: write them as name=value"),
        ("integrated_gradients(steps=n)", "doesn't read as a method with options"),
        ("occlusion(steps=8)", r"steps is for the methods \('integrated_gradients'\)"),
    ]:
        with pytest.raises(attnlrp.MethodError, match=says):
            get_method(label)
    with pytest.raises(attnlrp.MethodError, match="gradient_checkpointing is given twice"):
        get_method("attnlrp(gradient_checkpointing=False)", gradient_checkpointing=True)


def test_options_go_to_the_methods_that_take_them():
    assert get_method("attnlrp", gradient_checkpointing=True).gradient_checkpointing
    with pytest.raises(attnlrp.MethodError, match=r"layer_rules is for the LRP methods \('attnlrp', 'cp-lrp'\)"):
        get_method("gradient", layer_rules={})
    configured = InputXGradient()
    assert get_method(configured) is configured
    with pytest.raises(attnlrp.MethodError, match="give them to its constructor"):
        get_method(configured, steps=3)


def test_cli_method_choices_come_from_the_registry(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    for name, description in attnlrp.available_methods().items():
        assert name in text and description.split(":")[0] in text
    with pytest.raises(SystemExit):
        cli.main(["explain", "Hi", "--method", "shap"])
    assert "argument --method: Unknown LRP method 'shap': choose one of 'attnlrp'" in capsys.readouterr().err


def test_a_new_method_is_one_registered_class(tiny_lm, tokenizer):
    @dataclass
    class FirstToken(Method):
        """All relevance on the first token of every row."""

        name = "first_token"
        description = "All relevance on the first token"

        def attribute(self, batch: Batch) -> dict[str, torch.Tensor]:
            out = {}
            for kind, x in batch.inputs.items():
                scores = torch.zeros(x.shape[:2])
                for row, span in enumerate(batch.spans[kind]):
                    scores[row, span.start] = 1.0
                out[kind] = scores
            return out

    try:
        assert "first_token" in attnlrp.available_methods()
        exp = attnlrp.explain(tiny_lm, tokenizer, [PROMPT, "Hi"], method="First-Token", padding_side="left")
        assert [e.method for e in exp] == ["first_token"] * 2
        assert [float(e.scores[0]) for e in exp] == [1.0, 1.0] and [e.total for e in exp] == [1.0, 1.0]
    finally:
        del REGISTRY[method_key("first_token")]


@pytest.mark.parametrize("method", ["input_x_gradient", "occlusion", "random"])
def test_explain_generation_takes_any_method(tiny_lm, tokenizer, method):
    gen = attnlrp.explain_generation(tiny_lm, tokenizer, PROMPT, max_new_tokens=3, method=method, backward_batch=2)
    assert gen.method == method and len(gen) == 3
    ids = gen.token_ids
    p = gen.prompt_length
    for i in range(3):
        step = attnlrp.explain(tiny_lm, tokenizer, ids[: p + i], target=ids[p + i], method=method)
        np.testing.assert_allclose(gen.matrix[i, : p + i], step.scores, rtol=1e-6, atol=1e-9)
        assert not gen.matrix[i, p + i :].any(), "nothing at or after the explained token"
        assert gen.values[i] == pytest.approx(step.value)


def test_explain_generation_with_lrp_and_checkpointing_says_why_not(tiny_lm, tokenizer):
    with pytest.raises(attnlrp.MethodError, match="gradient checkpointing"):
        attnlrp.explain_generation(
            tiny_lm, tokenizer, PROMPT, max_new_tokens=2, method=get_method("attnlrp", gradient_checkpointing=True)
        )
    with pytest.raises(attnlrp.InputError, match="one prompt, not 2"):
        attnlrp.explain_generation(tiny_lm, tokenizer, [PROMPT, "Hi"], max_new_tokens=2)


def test_explain_image_takes_the_pixel_methods(vit, pixels):
    leaf = pixels.clone().requires_grad_()
    logits = vit(pixel_values=leaf).logits
    top = logits.argmax(-1)
    (grad,) = torch.autograd.grad(logits[torch.arange(2), top].sum(), leaf)
    ixg = attnlrp.explain_image(vit, pixels, method="input_x_gradient")
    saliency = attnlrp.explain_image(vit, pixels, method="gradient")
    for row in range(2):
        np.testing.assert_allclose(ixg[row].scores, (pixels[row] * grad[row]).sum(0).numpy(), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(saliency[row].scores, grad[row].norm(dim=0).numpy(), rtol=1e-5, atol=1e-9)
        assert ixg[row].target_index == int(top[row]) and ixg[row].method == "input_x_gradient"
    ig = attnlrp.explain_image(vit, pixels[0], method=attnlrp.methods.IntegratedGradients(steps=64))
    with torch.no_grad():
        out = vit(pixel_values=pixels[:1]).logits[0]
        gap = float(out[ig.target_index] - vit(pixel_values=torch.zeros_like(pixels[:1])).logits[0, ig.target_index])
    assert ig.total == pytest.approx(gap, rel=1e-3), "completeness of integrated gradients"
    noise = attnlrp.explain_image(vit, pixels, method="random")
    assert noise[0].scores.shape == (16, 16) and noise[0].scores.std() > 0.5
    assert np.array_equal(noise[0].scores, attnlrp.explain_image(vit, pixels, method="random")[0].scores)


@pytest.mark.parametrize("method", ["occlusion", "attention", "attention_rollout"])
def test_token_methods_on_pixels_say_so(vit, pixels, method):
    with pytest.raises(attnlrp.MethodError, match=f"The '{method}' method scores token positions.*pixels"):
        attnlrp.explain_image(vit, pixels, method=method)


def test_attention_methods_on_a_model_without_attention_weights(tokenizer):
    class Bag(torch.nn.Module):
        """A bag of embeddings: no attention at all."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(len(tokenizer), 8)
            self.head = torch.nn.Linear(8, len(tokenizer))

        def get_input_embeddings(self):
            return self.embed

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": self.head(self.embed(input_ids).cumsum(1))})()

    with pytest.raises(attnlrp.MethodError, match="can't switch to eager attention"):
        attnlrp.explain(Bag(), tokenizer, PROMPT, method="attention")


def test_one_batch_plan():
    assert plan([5, 1, 3], 2) == [[0, 1], [2]], "in order"
    assert plan([5, 1, 3, 1], 8, by_length=True) == [[1, 3, 2, 0]]
    assert plan([5, 1, 3, 1], 8, max_tokens=9, by_length=True) == [[1, 3, 2], [0]], "rows x longest <= budget"
    with pytest.raises(ValueError, match="batch_size must be 1 or more, not 0"):
        plan([1, 2], 0)


def test_every_method_explains_a_model_in_training_mode_as_it_predicts(tokenizer):
    from conftest import build_tiny_lm

    model = build_tiny_lm(tokenizer, attention_dropout=0.5)
    prompt = "The capital of France is"
    predicted = {m: attnlrp.explain(model, tokenizer, prompt, method=m).scores for m in ("gradient", "attnlrp")}
    model.train()  # as a model built from a config starts; dropout made the baselines explain a random function
    for name, scores in predicted.items():
        for _ in range(2):
            np.testing.assert_array_equal(attnlrp.explain(model, tokenizer, prompt, method=name).scores, scores)
    assert all(module.training for module in model.modules()), "each module's mode is restored"
    generated = attnlrp.explain_generation(model, tokenizer, prompt, max_new_tokens=2, method="gradient")
    model.eval()
    assert (
        generated.matrix.tolist()
        == attnlrp.explain_generation(model, tokenizer, prompt, max_new_tokens=2, method="gradient").matrix.tolist()
    )


def test_calls_that_overlap_on_a_model_in_training_mode_restore_it_when_the_last_leaves(tokenizer):
    from conftest import build_tiny_lm

    from attnlrp.engine.predicting import predicting

    model = build_tiny_lm(tokenizer, attention_dropout=0.5).train()
    first, second = predicting(model), predicting(model)  # two threads' calls: the first leaves while the second runs
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not any(module.training for module in model.modules()), "the first call's exit put dropout back on"
    second.__exit__(None, None, None)
    assert all(module.training for module in model.modules())


def test_a_bound_model_or_inference_mode_is_refused_by_name_where_a_backward_runs(tiny_lm, tokenizer):
    with (
        attnlrp.lrp(tiny_lm),
        pytest.raises(
            attnlrp.BindingError,
            match=r"by an enclosing attnlrp.lrp\(...\) block, .* run gradient methods on it unbound; leave that block",
        ),
    ):
        attnlrp.explain(tiny_lm, tokenizer, "Hi there", method="input_x_gradient")  # it returned LRP relevance
    with torch.inference_mode(), pytest.raises(attnlrp.InputError, match=r"'attnlrp' method takes a backward pass"):
        attnlrp.explain(tiny_lm, tokenizer, "Hi there")
    with torch.no_grad():
        assert attnlrp.explain(tiny_lm, tokenizer, "Hi there").scores.any()
    # methods without a backward run anywhere, as they did
    for name in ("occlusion", "random", "attention"):
        alone = attnlrp.explain(tiny_lm, tokenizer, "Hi there", method=name).scores
        with torch.inference_mode():
            assert (attnlrp.explain(tiny_lm, tokenizer, "Hi there", method=name).scores == alone).all()
        with attnlrp.lrp(tiny_lm):
            assert (attnlrp.explain(tiny_lm, tokenizer, "Hi there", method=name).scores == alone).all()
