"""Conservation check of the explicit mode: Σ relevance at each module's inputs against its outputs.

The bookkeeping is the engine's (``engine/check.py``, which ``attnlrp.check`` uses too); in the explicit
mode the gradient of a tensor *is* its relevance.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from torch import nn

from ..engine.check import ConservationReport, ModuleRelevance, relevance_flow

__all__ = ["ConservationReport", "ModuleRelevance", "conservation_check"]


def conservation_check(
    model: nn.Module, rtol: float = 1e-4, paused: Callable[[], bool] = lambda: False
) -> AbstractContextManager[ConservationReport]:
    """Record Σ relevance (the gradient, in the explicit mode) at every module's inputs and outputs.

    Nothing is recorded while ``paused()`` is true (inside a module rule, where gradients are the rule's
    own Jacobian products). Read the report after the backward.
    """
    return relevance_flow(model, lambda t, grad: grad, rtol, paused)
