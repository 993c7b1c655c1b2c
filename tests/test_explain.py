"""attnlrp.explain / explain_generation on a tiny random LLaMA that uses the real SmolLM2 tokenizer.

The tiny model is float64 and bias-free, so CP-LRP conserves exactly: Σ relevance == the explained
value (up to the float32 in which Explanation stores scores).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import pytest
import torch

import attnlrp
from attnlrp import Answer, Contrast, Custom, LogProb

PROMPT = "The Eiffel Tower is located in the city of"
#: float64 model, scores stored as float32: agreement to float32 precision.
RTOL = 1e-5


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text).input_ids


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def assert_conserved(exp, rtol: float = RTOL) -> None:
    scale = max(abs(exp.value), float(np.abs(exp.scores).sum()))
    assert abs(exp.total - exp.value) <= rtol * scale, (exp.total, exp.value)


def assert_same_scores(a: np.ndarray, b: np.ndarray, rtol: float = RTOL) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))


# --- targets ------------------------------------------------------------------------------------


def test_default_target_is_the_top_next_token(tiny_lm, tokenizer):
    ids = ids_of(tokenizer, PROMPT)
    last = logits_of(tiny_lm, ids)[-1]
    top = int(last.argmax())

    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPT)

    assert isinstance(exp, attnlrp.Explanation)
    assert exp.target_id == top
    assert exp.target == tokenizer.decode([top])
    assert exp.value == pytest.approx(float(last[top]), rel=1e-12)
    assert exp.logit == pytest.approx(float(last[top]), rel=1e-6)
    assert exp.prob == pytest.approx(float(torch.softmax(last, -1)[top]), rel=1e-5)
    assert exp.token_ids == ids
    assert exp.tokens == tokenizer.convert_ids_to_tokens(ids)
    assert "".join(exp.display) == PROMPT
    assert exp.scores.shape == (len(ids),) and np.isfinite(exp.scores).all()
    assert np.abs(exp.scores).max() > 0
    assert exp.method == "attnlrp"


def test_target_as_token_string_raw_token_or_id(tiny_lm, tokenizer):
    (paris,) = tokenizer.encode(" Paris", add_special_tokens=False)
    default = attnlrp.explain(tiny_lm, tokenizer, PROMPT)
    assert default.target_id != paris, "pick a target other than the top token for this test to mean anything"

    by_text = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=" Paris")
    by_id = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=paris)
    by_raw = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target="ĠParis")  # the vocabulary's own spelling

    last = logits_of(tiny_lm, ids_of(tokenizer, PROMPT))[-1]
    for exp in (by_text, by_id, by_raw):
        assert exp.target_id == paris
        assert exp.target == " Paris"
        assert exp.value == pytest.approx(float(last[paris]), rel=1e-12)
        np.testing.assert_array_equal(exp.scores, by_text.scores)
    assert not np.allclose(by_text.scores, default.scores), "the target must change the explanation"


def test_answer_span_is_the_sum_of_its_token_logits_and_conserves(tiny_lm, tokenizer):
    answer = " Paris, in France"
    prompt_ids = ids_of(tokenizer, PROMPT)
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    assert len(answer_ids) > 2
    full = prompt_ids + answer_ids
    logits = logits_of(tiny_lm, full)
    p = len(prompt_ids)
    manual = sum(float(logits[p - 1 + j, a]) for j, a in enumerate(answer_ids))

    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Answer(answer), method="cp-lrp")

    assert exp.value == pytest.approx(manual, rel=1e-12)
    assert exp.token_ids == full
    assert exp.target == tokenizer.decode(answer_ids)
    assert exp.target_id is None and exp.logit is None
    assert exp.segments == [("prompt", 0, p), ("answer", p, len(full))]
    assert_conserved(exp)
    # the last answer token is explained as an input of nothing: it only closes the teacher-forced span
    assert exp.scores[-1] == 0
    by_ids = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Answer(answer_ids), method="cp-lrp")
    np.testing.assert_array_equal(by_ids.scores, exp.scores)


def test_contrast_against_a_token_and_against_the_mean(tiny_lm, tokenizer):
    (paris,) = tokenizer.encode(" Paris", add_special_tokens=False)
    (rome,) = tokenizer.encode(" Rome", add_special_tokens=False)
    last = logits_of(tiny_lm, ids_of(tokenizer, PROMPT))[-1]

    versus = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Contrast(" Paris", " Rome"), method="cp-lrp")
    mean = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Contrast(" Paris", "mean"), method="cp-lrp")
    plain = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=" Paris", method="cp-lrp")
    rome_only = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=" Rome", method="cp-lrp")

    assert versus.value == pytest.approx(float(last[paris] - last[rome]), rel=1e-10)
    assert mean.value == pytest.approx(float(last[paris] - last.mean()), rel=1e-10)
    assert versus.target == " Paris vs Rome" and mean.target == " Paris vs mean"
    assert versus.target_id == paris
    for exp in (versus, mean):
        assert_conserved(exp)
    # relevance is linear in the target: R(Paris - Rome) = R(Paris) - R(Rome)
    assert_same_scores(versus.scores, plain.scores - rome_only.scores, rtol=1e-4)


def test_logprob_value_is_the_log_softmax(tiny_lm, tokenizer):
    (paris,) = tokenizer.encode(" Paris", add_special_tokens=False)
    last = logits_of(tiny_lm, ids_of(tokenizer, PROMPT))[-1]
    log_probs = torch.log_softmax(last, -1)

    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=LogProb(" Paris"))
    top = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=LogProb())

    assert exp.value == pytest.approx(float(log_probs[paris]), rel=1e-10)
    assert exp.value < 0 and exp.target == "log p( Paris)"
    assert top.target_id == int(last.argmax())
    assert top.value == pytest.approx(float(log_probs.max()), rel=1e-10)
    assert np.isfinite(exp.scores).all() and np.abs(exp.scores).max() > 0


def test_callable_target(tiny_lm, tokenizer):
    ids = ids_of(tokenizer, PROMPT)
    logits = logits_of(tiny_lm, ids)

    def paris_minus_half_prev(logits):
        return logits[-1, 7042] - 0.5 * logits[-2, 314]

    exp = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=paris_minus_half_prev, method="cp-lrp")
    named = attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=Custom(paris_minus_half_prev, "mine"), method="cp-lrp")

    assert exp.value == pytest.approx(float(logits[-1, 7042] - 0.5 * logits[-2, 314]), rel=1e-10)
    assert exp.target == "paris_minus_half_prev" and named.target == "mine"
    assert exp.target_id is None
    assert_conserved(exp)
    np.testing.assert_array_equal(named.scores, exp.scores)


# --- chat, conservation -------------------------------------------------------------------------


def test_chat_messages_use_the_template_and_segments_add_up(tiny_lm, tokenizer):
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Which city is the Eiffel Tower in?"},
    ]
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    templated = list(templated["input_ids"] if isinstance(templated, Mapping) else templated)

    exp = attnlrp.explain(tiny_lm, tokenizer, messages, method="cp-lrp")

    assert exp.token_ids == templated
    assert [name for name, _, _ in exp.segments] == ["0:system", "1:user", "generation prompt"]
    starts = [a for _, a, _ in exp.segments]
    ends = [b for _, _, b in exp.segments]
    assert starts[0] == 0 and ends[-1] == len(exp) and starts[1:] == ends[:-1]
    assert all(b > a for _, a, b in exp.segments)
    user = exp.segments[1]
    assert "Eiffel Tower" in tokenizer.decode(exp.token_ids[user[1] : user[2]])
    assert "assistant" in tokenizer.decode(exp.token_ids[exp.segments[2][1] :])
    parts = exp.segment_scores()
    assert sum(parts.values()) == pytest.approx(exp.total, rel=1e-5, abs=1e-6)
    assert parts["1:user"] == pytest.approx(float(exp.scores[user[1] : user[2]].sum()), rel=1e-6)
    assert_conserved(exp)
    # merging tokens into words keeps the per-message sums
    words = exp.words().segment_scores()
    assert words.keys() == parts.keys()
    for name in parts:
        assert words[name] == pytest.approx(parts[name], rel=1e-4, abs=1e-6)
    # a generation from the same messages names them too (it had no segments), and what it generated
    gen = attnlrp.explain_generation(tiny_lm, tokenizer, messages, max_new_tokens=3, method="cp-lrp")
    assert gen.segments == [*exp.segments, ("generated", len(exp), len(gen.token_ids))]
    first = gen.step(0)
    assert first.segments == exp.segments
    assert first.segment_scores()["1:user"] == pytest.approx(parts["1:user"], rel=1e-5)
    assert [name for name, _, _ in gen.step(2).segments][-1] == "generated"


def test_segments_of_a_template_that_ends_a_conversation_without_the_generation_prompt(tokenizer):
    from attnlrp.tasks.text import encode

    suffixed = copy.deepcopy(tokenizer)  # Phi-3's way: the end of text after a last turn, where no prompt follows
    suffixed.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
    )
    item = encode(suffixed, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    text = {name: suffixed.decode(item.ids[a:b]) for name, a, b in item.segments}
    assert text == {
        "0:system": "<|system|>\nBe brief.<|im_end|>\n",
        "1:user": "<|user|>\nHello there<|im_end|>\n",
        "generation prompt": "<|assistant|>\n",
    }


def test_a_system_prompt_the_template_adds_is_its_own_segment_not_the_users(tiny_lm, tokenizer):
    exp = attnlrp.explain(tiny_lm, tokenizer, [{"role": "user", "content": "Where is the Eiffel Tower?"}])
    assert [name for name, _, _ in exp.segments] == ["template", "0:user", "generation prompt"]
    text = {name: tokenizer.decode(exp.token_ids[a:b]) for name, a, b in exp.segments}
    assert "You are a helpful AI assistant" in text["template"]  # SmolLM2's default system prompt
    assert text["0:user"] == "<|im_start|>user\nWhere is the Eiffel Tower?<|im_end|>\n"


@pytest.mark.parametrize("prompt", [PROMPT, "Hi", "1 + 1 =\n2\n\n2 + 2 ="])
def test_cp_lrp_conserves_through_explain(tiny_lm, tokenizer, prompt):
    exp = attnlrp.explain(tiny_lm, tokenizer, prompt, method="cp-lrp")
    assert exp.method == "cp-lrp"
    assert_conserved(exp)
    assert np.abs(exp.scores).sum() > 0


def test_text_token_ids_and_tensor_inputs_agree(tiny_lm, tokenizer):
    ids = ids_of(tokenizer, PROMPT)
    text = attnlrp.explain(tiny_lm, tokenizer, PROMPT)
    listed = attnlrp.explain(tiny_lm, tokenizer, ids)
    batch = attnlrp.explain(tiny_lm, tokenizer, torch.tensor([ids, ids]))
    assert isinstance(listed, attnlrp.Explanation)
    assert isinstance(batch, list) and len(batch) == 2
    for exp in (listed, *batch):
        np.testing.assert_array_equal(exp.scores, text.scores)
        assert exp.token_ids == ids


# --- batching -----------------------------------------------------------------------------------

BATCH_PROMPTS = [
    "Hi",
    PROMPT,
    "Alice went to the market and bought three apples, two pears and a melon. Then she",
    "Paris is",
]
BATCH_TARGETS = [None, " Paris", Answer(" yes, she did"), Contrast(" a", " the")]


@pytest.fixture(scope="module")
def alone(tiny_lm, tokenizer):
    """Each batch prompt explained on its own, per method (shared by both padding sides)."""
    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = [
                attnlrp.explain(tiny_lm, tokenizer, p, target=t, method=method)
                for p, t in zip(BATCH_PROMPTS, BATCH_TARGETS)
            ]
        return cache[method]

    return get


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_scores_match_single_prompts(tiny_lm, tokenizer, alone, padding_side, method):
    alone = alone(method)
    batched = attnlrp.explain(
        tiny_lm, tokenizer, BATCH_PROMPTS, target=BATCH_TARGETS, method=method, padding_side=padding_side, batch_size=3
    )  # two chunks: 3 + 1
    assert len(batched) == len(BATCH_PROMPTS)
    lengths = {len(a) for a in alone}
    assert len(lengths) == len(alone), "prompts of different lengths, so that padding happens"
    for single, inside in zip(alone, batched):
        assert inside.token_ids == single.token_ids
        assert inside.target == single.target and inside.target_id == single.target_id
        assert inside.value == pytest.approx(single.value, rel=1e-9, abs=1e-12)
        assert_same_scores(inside.scores, single.scores)


def test_the_output_head_runs_on_each_prompts_own_rows_only(tiny_lm, tokenizer, alone):
    """Prompts of a right-padded batch end at different positions: the head reads each prompt's own rows (the
    longest answer's count), not every position where some prompt ends, and its hook is gone afterwards."""
    head = tiny_lm.get_output_embeddings()
    shapes = []
    handle = head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape[:2])))
    try:
        batched = attnlrp.explain(tiny_lm, tokenizer, BATCH_PROMPTS, target=BATCH_TARGETS, batch_size=4)
    finally:
        handle.remove()
    answer = len(tokenizer(" yes, she did", add_special_tokens=False).input_ids)
    assert shapes and set(shapes) == {(len(BATCH_PROMPTS), answer + 1)}
    assert not head._forward_pre_hooks
    for single, inside in zip(alone("attnlrp"), batched):
        assert inside.value == pytest.approx(single.value, rel=1e-9, abs=1e-12)
        assert_same_scores(inside.scores, single.scores)


def test_a_pass_holds_at_most_the_token_budget(tiny_lm, tokenizer, alone, monkeypatch):
    from attnlrp.methods.lrp import LRPMethod

    passes = []
    attribute = LRPMethod.attribute

    def counted(self, batch):
        passes.append((len(batch), batch.width))
        return attribute(self, batch)

    monkeypatch.setattr(LRPMethod, "attribute", counted)
    monkeypatch.setattr(attnlrp.frontends, "TOKEN_BUDGET", 40)
    batched = attnlrp.explain(tiny_lm, tokenizer, BATCH_PROMPTS, target=BATCH_TARGETS, batch_size=4)
    assert all(rows == 1 or rows * width <= 40 for rows, width in passes), passes
    assert 1 < len(passes) < len(BATCH_PROMPTS), "short prompts still share a pass; long ones take fewer others"
    for single, inside in zip(alone("attnlrp"), batched):
        assert_same_scores(inside.scores, single.scores)


def test_padding_side_is_checked(tiny_lm, tokenizer):
    with pytest.raises(ValueError, match="padding_side"):
        attnlrp.explain(tiny_lm, tokenizer, ["a", "b c"], padding_side="middle")


# --- generation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method, backward_batch", [("attnlrp", 8), ("cp-lrp", 8), ("attnlrp", 3), ("cp-lrp", 1)])
def test_generation_rows_equal_per_step_explanations(tiny_lm, tokenizer, method, backward_batch):
    n_new = 4
    prompt_ids = ids_of(tokenizer, PROMPT)
    p = len(prompt_ids)

    gen = attnlrp.explain_generation(
        tiny_lm, tokenizer, PROMPT, max_new_tokens=n_new, method=method, backward_batch=backward_batch
    )

    ids = gen.token_ids
    assert gen.matrix.shape == (n_new, p + n_new)
    assert gen.prompt_length == p and ids[:p] == prompt_ids and len(ids) == p + n_new
    assert gen.method == method and len(gen.values) == n_new and len(gen.probs) == n_new
    # greedy decoding: every generated token is the argmax after the tokens before it
    logits = logits_of(tiny_lm, ids[:-1])
    assert logits[p - 1 :].argmax(-1).tolist() == ids[p:]
    for i in range(n_new):
        row = gen.matrix[i]
        assert not row[p + i :].any(), f"row {i} must be zero at and after its own position {p + i}"
        step = attnlrp.explain(tiny_lm, tokenizer, ids[: p + i], target=ids[p + i], method=method)
        assert_same_scores(row[: p + i], step.scores)
        assert gen.values[i] == pytest.approx(step.value, rel=1e-6)  # stored as float32
        assert gen.probs[i] == pytest.approx(step.prob, rel=1e-5)
        assert gen.generated[i] == step.target


@pytest.mark.parametrize("method", ["attnlrp", "gradient"])
def test_generation_relevance_that_comes_out_nan_is_refused_naming_the_steps(tiny_lm, tokenizer, method):
    # a backward that turns NaN (the values stay finite) gave a matrix of NaN without a word
    def nan_backward(module, args, output):
        if output.requires_grad:
            output.register_hook(lambda grad: grad * float("nan"))

    handle = tiny_lm.model.norm.register_forward_hook(nan_backward)
    try:
        with pytest.raises(
            FloatingPointError,
            match=r"^The relevance of generated token\(s\) 0, 1 \(counting from 0\) is NaN or infinite, though the "
            r"explained values are finite\. Check the dtype",
        ):
            attnlrp.explain_generation(tiny_lm, tokenizer, PROMPT, max_new_tokens=2, method=method)
    finally:
        handle.remove()


class NoCache(torch.nn.Module):
    """A causal LM whose forward takes no key-value cache (it can still generate through the model inside)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.generate = inner.generate
        self.get_output_embeddings = inner.get_output_embeddings

    def forward(self, input_ids, use_cache=False):
        return self.inner(input_ids=input_ids, use_cache=False)

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()


def test_generation_without_a_cache_runs_one_forward(tiny_lm, tokenizer):
    cached = attnlrp.explain_generation(tiny_lm, tokenizer, PROMPT, max_new_tokens=3, backward_batch=2)
    plain = attnlrp.explain_generation(NoCache(tiny_lm), tokenizer, PROMPT, max_new_tokens=3, backward_batch=2)
    assert plain.token_ids == cached.token_ids
    np.testing.assert_allclose(plain.matrix, cached.matrix, rtol=1e-5, atol=1e-9)


def _checkpointing_state(model):
    """Each module's hooks, training flag, and the attributes switching checkpointing on sets (present or not)."""
    names = ("gradient_checkpointing", "_gradient_checkpointing_func", "_require_grads_hooks", "_require_grads_hook")
    return [
        (
            dict(m._forward_hooks),
            dict(m._forward_pre_hooks),
            m.training,
            {k: v for k, v in vars(m).items() if k in names},
        )
        for m in model.modules()
    ]


@pytest.mark.parametrize("users_grad_hook", [False, True])
def test_gradient_checkpointing_leaves_the_model_exactly_as_it_was(make_tiny_lm, tokenizer, users_grad_hook):
    model = make_tiny_lm()
    if users_grad_hook:
        model.enable_input_require_grads()
    model.model.layers[1].train()  # a training flag of the user's own, unlike the model's
    before = _checkpointing_state(model)
    plain = attnlrp.explain(model, tokenizer, PROMPT)
    checkpointed = attnlrp.explain(model, tokenizer, PROMPT, gradient_checkpointing=True)
    np.testing.assert_allclose(checkpointed.scores, plain.scores, rtol=1e-12, atol=1e-12)
    assert _checkpointing_state(model) == before
    assert not model.is_activation_checkpointing
    embeddings = model.get_input_embeddings()
    with torch.no_grad():  # only the hook makes the embeddings require grad
        assert embeddings(torch.tensor([[1, 2]])).requires_grad is users_grad_hook
    model.disable_input_require_grads()  # the user's own hook is still theirs to remove
    assert not embeddings._forward_hooks


def test_gradient_checkpointing_gives_identical_scores(tiny_lm, tokenizer):
    (paris,) = tokenizer.encode(" Paris", add_special_tokens=False)
    embeddings = tiny_lm.get_input_embeddings()
    hooks_before = (len(embeddings._forward_hooks), len(embeddings._forward_pre_hooks))
    seen = []

    def paris_logit(logits):
        seen.append(tiny_lm.model.layers[0].gradient_checkpointing and tiny_lm.training)
        return logits[-1, paris]

    plain = attnlrp.explain(tiny_lm, tokenizer, [PROMPT, "Hi there"], target=paris)
    checkpointed = attnlrp.explain(
        tiny_lm, tokenizer, [PROMPT, "Hi there"], target=paris_logit, gradient_checkpointing=True
    )

    assert seen and all(seen), "checkpointing must be on during the pass"
    for a, b in zip(plain, checkpointed):
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-12, atol=1e-12)
        assert b.value == pytest.approx(a.value, rel=1e-12)
    # and everything is as it was afterwards
    assert not tiny_lm.training
    assert not any(getattr(m, "gradient_checkpointing", False) for m in tiny_lm.modules())
    assert (len(embeddings._forward_hooks), len(embeddings._forward_pre_hooks)) == hooks_before
    assert all(not p.requires_grad or p.grad is None for p in tiny_lm.parameters())
