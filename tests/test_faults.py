"""What survives a fault: an exception in a target callable, a MemoryError inside the forward and a
KeyboardInterrupt inside explain_generation all leave the model exactly as it was (unbound, hooks gone,
parameters as they were, the same outputs), and no torch function mode active."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import _get_current_function_mode_stack

import attnlrp
from attnlrp.engine import binding_of

PROMPT = "The capital of France is"


def _snapshot(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    grads = [p.requires_grad for p in model.parameters()]
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    return hooks, grads, logits, "forward" in model.__dict__


def _assert_restored(model, before) -> None:
    hooks, grads, logits, own_forward = _snapshot(model)
    assert binding_of(model) is None and _get_current_function_mode_stack() == []
    assert hooks == before[0] and grads == before[1] and own_forward == before[3]
    assert torch.equal(logits, before[2])


def test_an_exception_in_a_target_callable(tiny_lm, tokenizer):
    before = _snapshot(tiny_lm)

    def broken(logits):
        raise ZeroDivisionError("the user's target failed")

    for method in ("attnlrp", "input_x_gradient"):
        with pytest.raises(ZeroDivisionError, match="the user's target failed"):
            attnlrp.explain(tiny_lm, tokenizer, PROMPT, target=broken, method=method)
        _assert_restored(tiny_lm, before)


def test_a_memory_error_inside_the_forward(tiny_lm, tokenizer):
    before = _snapshot(tiny_lm)

    def out_of_memory(module, args):
        raise MemoryError("no room for the activations")

    handle = tiny_lm.model.layers[1].mlp.register_forward_pre_hook(out_of_memory)
    try:
        with pytest.raises(MemoryError):
            attnlrp.explain(tiny_lm, tokenizer, PROMPT, method="cp-lrp", gradient_checkpointing=True)
    finally:
        handle.remove()
    _assert_restored(tiny_lm, before)
    assert not tiny_lm.training and not tiny_lm.is_activation_checkpointing, "checkpointing switched back off"


def test_a_keyboard_interrupt_inside_explain_generation(tiny_lm, tokenizer):
    before = _snapshot(tiny_lm)
    calls = []

    def interrupt_in_the_second_segment(module, args, kwargs):
        calls.append(1)
        if torch.is_grad_enabled() and len(calls) > 4:
            raise KeyboardInterrupt

    handle = tiny_lm.model.layers[0].register_forward_pre_hook(interrupt_in_the_second_segment, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            attnlrp.explain_generation(tiny_lm, tokenizer, PROMPT, max_new_tokens=6, backward_batch=2)
    finally:
        handle.remove()
    _assert_restored(tiny_lm, before)
    after = attnlrp.explain_generation(tiny_lm, tokenizer, PROMPT, max_new_tokens=3)
    assert len(after) == 3, "the model explains again as before"
