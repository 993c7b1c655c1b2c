"""A model run as it predicts while it is explained: every module in eval mode (dropout off) for the duration,
each module's own mode restored after, and gradients available."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import BindingError, InputError
from .binding import binding_of


@contextmanager
def predicting(model: nn.Module, lrp: bool = True) -> Iterator[None]:
    """Run ``model`` in eval mode for the block (a model built from a config starts in training mode, where dropout
    would make every method but LRP's explain another, random function). ``lrp``: the method binds the model to its
    rules itself; any other method refuses a model already bound, whose gradient is LRP relevance."""
    if torch.is_inference_mode_enabled():
        raise InputError(
            "Explaining takes a backward pass, which torch.inference_mode() forbids: explain outside the "
            "inference_mode block (torch.no_grad() around the call is fine)."
        )
    if not lrp and binding_of(model) is not None:
        raise BindingError(
            f"{type(model).__name__} is bound to LRP rules (an attnlrp.lrp(...) block, or attnlrp.compat's patch), "
            "where its gradient is LRP relevance: run gradient methods outside the block, on an unbound model."
        )
    training = [module for module in model.modules() if module.training]
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True
