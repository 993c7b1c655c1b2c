"""Rules bound to whole modules, found by name: routers and per-layer token embeddings.

- A router computes, from the input, weights that mix other tensors: the expert weights of a mixture of
  experts, or the coefficients of Gemma 3n's AltUp, which mix its parallel streams. CP-LRP holds them
  constant, as it holds attention weights constant: the router's outputs are detached. (Softmax and
  sigmoid routers are constant through their op rules already; AltUp's router ends in a tanh, which the
  op table cannot tell from an activation, and adds 1 to its coefficients, a constant that would absorb
  relevance under the uniform rule.)
- Per-layer token embeddings (Gemma 3n's ``embed_tokens_per_layer``) are a second lookup of the input
  tokens. The relevance that reaches them is credited to the input embeddings of the same tokens, so a
  token's relevance includes it, in both methods.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from ..core import rules

#: Routers, by class or attribute name (Llama4Router, DeepseekV3TopkRouter, AltUp's modality_router).
ROUTER = re.compile(r"router$", re.IGNORECASE)

#: Embeddings of the input tokens besides the input embeddings, by attribute name.
PER_LAYER_TOKEN_EMBEDDINGS = frozenset({"embed_tokens_per_layer"})

Hook = Callable[[nn.Module, tuple, Any], Any]


def is_router(path: str, module: nn.Module) -> bool:
    return bool(ROUTER.search(type(module).__name__) or ROUTER.search(path.rsplit(".", 1)[-1]))


def constant_router(note: Callable[[], None]) -> Hook:
    """A forward hook that detaches a router's outputs (CP-LRP)."""

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if not torch.is_grad_enabled():
            return None
        note()
        return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, output)

    return hook


def credited_to(tokens: Callable[[], Tensor | None], note: Callable[[], None]) -> Hook:
    """A forward hook that credits the relevance of a per-layer token embedding to ``tokens()``, the input
    embeddings of the same forward (matched by their leading dimensions: batch and position)."""

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        x = tokens()
        if not (torch.is_grad_enabled() and isinstance(output, Tensor) and x is not None):
            return None
        if x.shape[:-1] != output.shape[:-1] or not x.requires_grad:
            return None
        note()
        return rules.credit(output, x)

    return hook
