"""Wrong input gets an error that names the problem and says what to do instead."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import attnlrp
from attnlrp import Answer, Contrast, Explanation, InputError, ResultFileError, TargetError

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def short_lm(make_tiny_lm):
    """A tiny model whose context is 16 tokens."""
    return make_tiny_lm(max_position_embeddings=16)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_prompt(tiny_lm, tokenizer, prompt):
    with pytest.raises(InputError, match="The prompt is empty: give some text to explain"):
        attnlrp.explain(tiny_lm, tokenizer, prompt)
    with pytest.raises(InputError, match="empty"):
        attnlrp.explain_generation(tiny_lm, tokenizer, prompt, max_new_tokens=2)
    with pytest.raises(InputError, match="empty"):
        attnlrp.explain(tiny_lm, tokenizer, ["a fine prompt", prompt])


def test_a_contrast_with_itself():
    with pytest.raises(
        TargetError, match=r"Contrast\(' Paris', ' Paris'\) compares a token with itself: its value is 0"
    ):
        Contrast(" Paris", " Paris")


def test_no_token_ids(tiny_lm, tokenizer):
    with pytest.raises(InputError, match="The list of prompts is empty"):  # it said "The prompt has no tokens"
        attnlrp.explain(tiny_lm, tokenizer, [])


def test_unsupported_prompt_type(tiny_lm, tokenizer):
    with pytest.raises(InputError, match=r"Can't explain a float: pass text, a list of token ids, or chat messages"):
        attnlrp.explain(tiny_lm, tokenizer, 3.5)


def test_target_of_several_tokens_suggests_the_first_token_or_answer(tiny_lm, tokenizer, monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("the target must be checked before the model runs")

    monkeypatch.setattr(tiny_lm, "forward", no_forward)
    pieces = tokenizer.encode(" Paris is lovely", add_special_tokens=False)
    assert len(pieces) == 3
    with pytest.raises(TargetError) as info:
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=" Paris is lovely")
    message = str(info.value)
    assert "' Paris is lovely' is 3 tokens" in message and "one next token is expected" in message
    assert f"target={pieces[0]}" in message
    assert "target=attnlrp.Answer(' Paris is lovely')" in message
    # the same check applies to both sides of a contrast
    with pytest.raises(TargetError, match="is 3 tokens"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Contrast(" Paris", " Paris is lovely"))
    # in a batch, the last prompt's bad target stops the run before the first chunk is computed
    with pytest.raises(TargetError, match="is 3 tokens"):
        attnlrp.explain(tiny_lm, tokenizer, ["a", "b", "c"], target=[" a", " b", " Paris is lovely"], batch_size=1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_backward_batch_of_a_generation_is_checked_before_generating(tiny_lm, tokenizer, bad):
    with pytest.raises(attnlrp.InputError, match=rf"backward_batch must be a whole number, 1 or more, not {bad!r}"):
        attnlrp.explain_generation(tiny_lm, tokenizer, "Hi", max_new_tokens=2, backward_batch=bad)
    with pytest.raises(attnlrp.InputError, match=rf"max_new_tokens must be a whole number, 1 or more, not {bad!r}"):
        attnlrp.explain_generation(tiny_lm, tokenizer, "Hi", max_new_tokens=bad)


@pytest.mark.parametrize("bad_id", [-1, 49152, 10**9])
def test_target_id_outside_the_vocabulary(tiny_lm, tokenizer, bad_id):
    with pytest.raises(TargetError, match=rf"Token id {bad_id} is outside the vocabulary \(0\.\.49151\)"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=bad_id)


def test_target_that_is_no_token(tiny_lm, tokenizer):
    with pytest.raises(TargetError, match="non-empty string or an id"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target="")
    with pytest.raises(TargetError, match="Answer '' encodes to no token; give a non-empty answer"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Answer(""))
    with pytest.raises(TargetError, match=r"Unsupported target 1\.5: pass None, a token string or id"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=1.5)


def test_one_target_per_prompt(tiny_lm, tokenizer):
    with pytest.raises(ValueError, match="2 targets were given for 3 prompts; give one each, or one for all"):
        attnlrp.explain(tiny_lm, tokenizer, ["a", "b", "c"], target=[" a", " b"])


def test_prompt_longer_than_the_context(short_lm, tokenizer):
    long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
    n = len(tokenizer(long).input_ids)
    assert n > 16
    with pytest.raises(
        InputError,
        match=rf"The sequence is {n} tokens, but the model's context is 16 tokens\. "
        r"Shorten the prompt",
    ):
        attnlrp.explain(short_lm, tokenizer, long)
    # prompt + answer, and prompt + generated tokens, count too
    prompt = "one two three four five six seven eight nine ten"
    assert len(tokenizer(prompt).input_ids) <= 12
    with pytest.raises(InputError, match="model's context is 16 tokens"):
        attnlrp.explain(
            short_lm, tokenizer, prompt, target=Answer(" eleven twelve thirteen fourteen fifteen sixteen seventeen")
        )
    with pytest.raises(InputError, match="model's context is 16 tokens"):
        attnlrp.explain_generation(short_lm, tokenizer, prompt, max_new_tokens=10)
    # and what fits, works
    assert len(attnlrp.explain(short_lm, tokenizer, prompt)) == len(tokenizer(prompt).input_ids)


def test_chat_messages_without_a_chat_template(tiny_lm, tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    messages = [{"role": "user", "content": "Where is the Eiffel Tower?"}]
    with pytest.raises(
        InputError,
        match="Chat messages were given, but the tokenizer of .* has no chat template. "
        "Pass plain text instead, or set tokenizer.chat_template",
    ):
        attnlrp.explain(tiny_lm, plain, messages)
    assert tokenizer.chat_template, "the shared tokenizer is untouched"


def test_chat_message_without_role_or_content(tiny_lm, tokenizer):
    with pytest.raises(InputError, match="needs 'role' and 'content' keys"):
        attnlrp.explain(tiny_lm, tokenizer, [{"role": "user", "text": "hi"}])


def test_unreadable_or_foreign_result_files(tmp_path):
    torn = tmp_path / "torn.json"
    torn.write_text('{"format": "attnlrp", "kind": "expl', encoding="utf-8")
    with pytest.raises(ResultFileError, match="Can't read .*torn.json as an attnlrp explanation JSON file"):
        Explanation.load(torn)
    foreign = tmp_path / "config.json"
    foreign.write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    with pytest.raises(ResultFileError, match=r"config.json is not an attnlrp explanation file.*Explanation.save\(\)"):
        Explanation.load(foreign)


def test_unknown_method_fails_before_any_work(tiny_lm, tokenizer, monkeypatch):
    with pytest.raises(ValueError, match="Unknown LRP method 'lrp-x': choose one of 'attnlrp', 'cp-lrp'"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, method="lrp-x")

    def no_generation(*args, **kwargs):
        raise AssertionError("generated before checking the method")

    monkeypatch.setattr(tiny_lm, "generate", no_generation)
    with pytest.raises(ValueError, match="Unknown LRP method 'lrp-x'"):
        attnlrp.explain_generation(tiny_lm, tokenizer, PROMPT, max_new_tokens=2, method="lrp-x")


def test_method_spelling_is_normalised(tiny_lm, tokenizer):
    exp = attnlrp.explain(tiny_lm, tokenizer, "Hi", method="CP_LRP")
    assert exp.method == "cp-lrp"


class _NoEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x)


class _NoneEmbeddings(_NoEmbeddings):
    def get_input_embeddings(self):
        return None


@pytest.mark.parametrize("model", [_NoEmbeddings(), _NoneEmbeddings()], ids=["no-getter", "getter-returns-none"])
def test_model_without_input_embeddings(tokenizer, model):
    with pytest.raises(
        InputError,
        match=r"has no input token embeddings \(get_input_embeddings\), so token "
        r"relevance can't be read; use attnlrp.lrp\(model\)",
    ):
        attnlrp.explain(model, tokenizer, PROMPT)


class _EmbedsElsewhere(nn.Module):
    """A model whose input embeddings (get_input_embeddings) are a module its forward never calls, as BART's
    classifier's model.shared is (its encoder and decoder call their own)."""

    def __init__(self, lm):
        super().__init__()
        self.lm, self.unused = lm, copy.deepcopy(lm.get_input_embeddings())

    def get_input_embeddings(self):
        return self.unused

    def forward(self, input_ids, attention_mask=None):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.mark.parametrize("method", ["attnlrp", "occlusion", "input_x_gradient"])
def test_input_embeddings_the_model_never_runs_are_refused(tiny_lm, tokenizer, method):
    # occlusion perturbed the unused module and returned all-zero scores; the gradient methods crashed deep inside
    with pytest.raises(
        InputError,
        match=r"^_EmbedsElsewhere ran a forward in which its tokens input module \(Embedding at unused\) gave no "
        r"tensor, so attnlrp can't read or perturb that input .* explain it with attnlrp.lrp\(model\)",
    ):
        attnlrp.explain(_EmbedsElsewhere(tiny_lm), tokenizer, PROMPT, method=method)


class _LogitsOnly(nn.Module):
    """A plain torch language model: token ids in, the logits tensor itself out (``as_tuple``: in a tuple)."""

    def __init__(self, lm, as_tuple=False):
        super().__init__()
        self.lm, self.as_tuple = lm, as_tuple

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None):
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
        return (logits,) if self.as_tuple else logits


def test_plain_module_returning_logits_is_a_language_model(short_lm, tokenizer):
    plain = attnlrp.explain(_LogitsOnly(short_lm), tokenizer, [PROMPT, "Hi"])
    wrapped = attnlrp.explain(short_lm, tokenizer, [PROMPT, "Hi"])
    for a, b in zip(plain, wrapped):  # an AttributeError ('Tensor' object has no attribute 'logits') before
        assert a.target == b.target
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-9)
    with pytest.raises(InputError, match=r"_LogitsOnly returned tuple; a language model is read from its logits"):
        attnlrp.explain(_LogitsOnly(short_lm, as_tuple=True), tokenizer, PROMPT)
    with pytest.raises(
        InputError, match=r"_LogitsOnly is a plain torch module \(no transformers config\), which the 'image' task"
    ):
        attnlrp.explain(_LogitsOnly(short_lm), tokenizer, PROMPT, task="image")


def test_non_finite_logits(short_lm, tokenizer):
    broken = copy.deepcopy(short_lm)
    with torch.no_grad():
        broken.lm_head.weight[:, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"not finite .* Check the dtype \(try float32\)"):
        attnlrp.explain(broken, tokenizer, "Hi", target=5)


def test_a_compiled_model_is_refused_with_the_fix(tiny_lm, tokenizer):
    class OptimizedModule(torch.nn.Module):  # what torch.compile(model) returns: the model as _orig_mod
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

    compiled = OptimizedModule(tiny_lm)
    with pytest.raises(attnlrp.InputError, match=r"LlamaForCausalLM was given compiled .*compiled\._orig_mod"):
        attnlrp.explain(compiled, tokenizer, "Hi")
    tiny_lm.compile(backend="eager")  # in place: the model's own calls run the compiled graph
    try:
        with pytest.raises(attnlrp.InputError, match=r"compiled in place \(model\.compile\(\)\): undo it with"):
            attnlrp.explain(tiny_lm, tokenizer, "Hi")
    finally:
        tiny_lm._compiled_call_impl = None


def test_padded_token_ids_and_answer_ids_outside_the_vocabulary(tiny_lm, tokenizer):
    padded = tokenizer(["The capital of France is", "Hi"], padding=True, return_tensors="pt").input_ids
    with pytest.raises(InputError, match=r"These token ids look padded \(row 1 has \d+ padding tokens"):
        attnlrp.explain(tiny_lm, tokenizer, padded)  # the padding was explained as prompt tokens
    same_length = tokenizer(["a b c", "d e f"], return_tensors="pt").input_ids
    assert len(attnlrp.explain(tiny_lm, tokenizer, same_length)) == 2
    finished = same_length.clone()
    finished[0, -1] = tokenizer.eos_token_id  # pad is the end of text here: one ends a finished turn
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and len(attnlrp.explain(tiny_lm, tokenizer, finished)) == 2
    for bad in ([10**7], [-1]):  # a raw IndexError and OverflowError
        with pytest.raises(TargetError, match=r"Token id -?\d+ is outside the vocabulary"):
            attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Answer(bad))


def test_a_contrast_whose_sides_are_one_token_and_a_target_that_returns_a_number(tiny_lm, tokenizer):
    (paris,) = tokenizer.encode(" Paris", add_special_tokens=False)
    with pytest.raises(TargetError, match=rf"compares ' Paris' \(id {paris}\) with itself"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Contrast(paris, " Paris"))  # explained 0 before
    top = attnlrp.explain(tiny_lm, tokenizer, PROMPT).target_id
    with pytest.raises(TargetError, match="with itself"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Contrast(None, top))
    with pytest.raises(TargetError, match=r"returned a float, not a tensor: compute it from the logits"):
        attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=lambda logits: 1.0)


def test_left_padding_that_gives_nan_says_how_to_pad(tokenizer):
    from conftest import build_tiny_lm

    eager = build_tiny_lm(tokenizer, attn_implementation="eager")  # float64: padding attending to nothing is NaN
    with pytest.raises(FloatingPointError, match=r"with left padding: .* Pad on the right"):
        attnlrp.explain(eager, tokenizer, ["The capital of France is a nice", "Hi"], padding_side="left")
    assert len(attnlrp.explain(eager, tokenizer, ["The capital of France is a nice", "Hi"])) == 2


def test_a_generation_of_several_sequences_is_refused(tiny_lm, tokenizer):
    # only the first sequence was explained, the others dropped without a word
    with pytest.raises(InputError, match=r"num_return_sequences=3 asks for more \(the others were dropped\)"):
        attnlrp.explain_generation(tiny_lm, tokenizer, PROMPT, max_new_tokens=2, num_return_sequences=3, num_beams=3)
