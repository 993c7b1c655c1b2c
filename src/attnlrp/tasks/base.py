"""The task seam: a task adapter knows a model family's job and hands the methods a ``Batch``.

A task adapter decides how inputs are encoded, which inputs carry relevance (token embeddings of one or
several kinds, pixels), how the model is run, how targets are read from its outputs, and which result comes
back. Every method (``attnlrp.methods``) runs on the ``Batch`` alone, so any method works with any task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..methods import Method
from ..methods.batch import Batch


def check_finite(values: Tensor) -> None:
    """A FloatingPointError where an explained value is NaN or infinite."""
    if not torch.isfinite(values).all():
        raise FloatingPointError(
            f"The explained value is not finite ({values.tolist()}); the model produced NaN/inf logits. "
            "Check the dtype (try float32) and the inputs."
        )


def model_name(model: nn.Module) -> str:
    """The name results carry for a model: its hub id or folder, else its class."""
    return str(
        getattr(model, "name_or_path", "")
        or getattr(getattr(model, "config", None), "_name_or_path", "")
        or type(model).__name__
    )


class Task:
    """A task adapter: turns a model's inputs into Batches and relevance into results.

    Subclasses implement ``encode`` (user inputs -> items, and whether one was given alone), ``prepare``
    (items and targets -> Batch) and ``results`` (Batch and relevance -> one result per item).
    """

    name: ClassVar[str]

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected a torch.nn.Module (for example a transformers model), got {type(model).__name__}."
            )
        self.model = model

    def encode(self, inputs: Any) -> tuple[list[Any], bool]:
        raise NotImplementedError

    def prepare(self, items: Sequence[Any], targets: Sequence[Any]) -> Batch:
        raise NotImplementedError

    def results(self, batch: Batch, relevance: dict[str, Any], method: Method) -> list[Any]:
        raise NotImplementedError

    def lengths(self, items: Sequence[Any]) -> list[int]:
        """Each item's size in tokens, for batch plans (1 each where items have no tokens)."""
        return [len(getattr(item, "ids", ())) or 1 for item in items]


def one_per_item(target: Any, count: int, what: str = "prompts") -> list[Any]:
    """``target`` repeated for every item, or the given list of one target per item."""
    targets = list(target) if isinstance(target, (list, tuple)) else [target] * count
    if len(targets) != count:
        raise InputError(f"{len(targets)} targets were given for {count} {what}; give one each, or one for all.")
    return targets
