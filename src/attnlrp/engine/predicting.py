"""A model run as it predicts while it is explained: every module in eval mode (dropout off) for the duration,
each module's own mode restored after the last of the calls that run on it at once (nested, or in other
threads) has left."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import BindingError, InputError
from .binding import binding_of
from .unsupported import refuse_compiled

#: Each model in a ``predicting`` block -> [how many blocks are open on it, the modules that were training]
_OPEN: weakref.WeakKeyDictionary[nn.Module, list] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


@contextmanager
def predicting(model: nn.Module, method: Any = None) -> Iterator[None]:
    """Run ``model`` in eval mode for the block (a model built from a config starts in training mode, where dropout
    would make every method but LRP's explain another, random function). ``method``: the method that runs in the
    block (None: forwards only). One that takes a backward pass refuses ``torch.inference_mode()``; a gradient
    method refuses a model bound to LRP rules, whose gradient is LRP relevance (an LRP method binds it itself)."""
    refuse_compiled(model)  # a compiled graph would run without the rules, or without eval mode's effect
    backward = method is not None and method.needs_backward
    if backward and torch.is_inference_mode_enabled():
        raise InputError(
            f"The {method.name!r} method takes a backward pass, which torch.inference_mode() forbids: explain outside "
            "the inference_mode block (torch.no_grad() around the call is fine)."
        )
    bound = binding_of(model) if backward and not method.is_lrp else None
    if bound is not None:
        raise BindingError(
            f"{type(model).__name__} is bound to LRP rules by {bound.owner}, where its gradient is LRP relevance: "
            f"run gradient methods on it unbound; {bound.release}"
        )
    with _LOCK:
        if model in _OPEN:
            _OPEN[model][0] += 1
        else:
            training = [module for module in model.modules() if module.training]
            for module in training:
                module.training = False
            _OPEN[model] = [1, training]
    try:
        yield
    finally:
        with _LOCK:
            _OPEN[model][0] -= 1
            if not _OPEN[model][0]:
                for module in _OPEN.pop(model)[1]:
                    module.training = True
