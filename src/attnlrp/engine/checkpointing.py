"""Hugging Face gradient checkpointing switched on for the duration of a block, and restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from torch import nn
from torch.utils.checkpoint import set_checkpoint_early_stop

from .devices import offloads


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """HF gradient checkpointing for the duration (HF checkpoints only in training mode; dropout is off in lrp)."""
    if not enabled:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing.")
    # transformers >= 5 renamed the API to activation_checkpointing_* (the old names warn)
    new_api = hasattr(model, "activation_checkpointing_enable")
    was_on = model.is_activation_checkpointing if new_api else model.is_gradient_checkpointing
    was_training = model.training
    # enabling also hooks the input embeddings to require grad (transformers >= 5), and disabling leaves that hook
    had_grad_hook = _has_input_grad_hook(model)
    if not was_on:  # on already: the user's own settings stay (a reentrant checkpoint too: the binding scopes both)
        if new_api:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        # With offloaded weights, a recomputation stopped early would skip accelerate's post-forward hook and leave
        # that module's weights loaded after the block: recompute each checkpointed layer whole.
        with set_checkpoint_early_stop(False) if offloads(model) else nullcontext():
            yield
    finally:
        model.train(was_training)
        if not was_on:
            model.activation_checkpointing_disable() if new_api else model.gradient_checkpointing_disable()
            if not had_grad_hook and _has_input_grad_hook(model):
                model.disable_input_require_grads()


def _has_input_grad_hook(model: nn.Module) -> bool:
    return bool(getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"))
