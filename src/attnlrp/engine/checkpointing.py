"""Hugging Face gradient checkpointing switched on for the duration of a block, and restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from torch import nn
from torch.utils.checkpoint import set_checkpoint_early_stop

from .devices import offloads

#: The attributes that switching checkpointing on sets on a model's modules (the input-grad hooks on the model).
_ATTRIBUTES = ("gradient_checkpointing", "_gradient_checkpointing_func", "_require_grads_hooks", "_require_grads_hook")


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """HF gradient checkpointing for the duration (HF checkpoints only in training mode; dropout is off in lrp).
    Leaving the block puts every module's training flag and checkpointing attributes, and the model's input-grad
    hooks, back as they were, present or absent."""
    if not enabled:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing.")
    # transformers >= 5 renamed the API to activation_checkpointing_* (the old names warn)
    new_api = hasattr(model, "activation_checkpointing_enable")
    was_on = model.is_activation_checkpointing if new_api else model.is_gradient_checkpointing
    training = {m: m.training for m in model.modules()}
    saved = {m: {name: vars(m)[name] for name in _ATTRIBUTES if name in vars(m)} for m in model.modules()}
    switched = False
    try:
        if not was_on:  # on already: the user's own settings stay (a reentrant checkpoint too: the binding scopes both)
            if new_api:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            switched = True
        model.train()
        # With offloaded weights, a recomputation stopped early would skip accelerate's post-forward hook and leave
        # that module's weights loaded after the block: recompute each checkpointed layer whole.
        with set_checkpoint_early_stop(False) if offloads(model) else nullcontext():
            yield
    finally:
        for module, flag in training.items():
            module.training = flag
        if switched:
            model.activation_checkpointing_disable() if new_api else model.gradient_checkpointing_disable()
        if not was_on:  # also where switching on failed midway
            _restore(saved)


def _restore(saved: dict[nn.Module, dict[str, Any]]) -> None:
    """Put the checkpointing attributes back as ``saved``, and remove the input-grad hooks enabling added (it
    replaces the model's list of them, stacking a second hook where the user had enabled them already)."""
    for module, attributes in saved.items():
        kept = {id(h) for h in _grad_hooks(attributes)}
        for handle in _grad_hooks(vars(module)):
            if id(handle) not in kept:
                handle.remove()
        for name in _ATTRIBUTES:
            if name in attributes:
                vars(module)[name] = attributes[name]
            else:
                vars(module).pop(name, None)


def _grad_hooks(attributes: dict[str, Any]) -> list[Any]:
    """The input-grad hook handles among ``attributes``: newer transformers keep a list of them, older ones one."""
    hook = attributes.get("_require_grads_hook")
    return [*(attributes.get("_require_grads_hooks") or ()), *([hook] if hook is not None else [])]
