"""Attention baselines: last-layer attention and attention rollout, read from eager attention weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import MethodError
from .base import REGISTRY, Method
from .batch import Batch


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch the model to eager attention (the only kind that returns its weights) for the duration."""
    previous = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if previous == "eager":
        yield
        return
    if not hasattr(model, "set_attn_implementation"):
        raise MethodError(
            f"{type(model).__name__} can't switch to eager attention, so its attention weights can't "
            "be read; choose a method that needs no attention weights (see attnlrp.available_methods())."
        )
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def head_means(batch: Batch, rows: range, reduce: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """For rows ``rows``: each layer's attention weights [n, T, T], averaged over heads, passed through ``reduce``."""
    maps: list[Tensor] = []
    last: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, output) -> tuple | None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not (isinstance(weights, Tensor) and weights.dim() == 4):
            return None
        if not any(weights is w for w in last):  # an outer attention module passing the same weights on is no layer
            last[:] = [weights]
            maps.append(reduce(weights.detach().float().nan_to_num(0.0).mean(1)))
        if isinstance(output[0], Tensor) and output[0].isnan().any():
            # eager attention in float64 gives NaN at queries whose keys are all masked (left padding); no real
            # token reads them but through 0 x NaN, which would make every later row NaN
            return (output[0].nan_to_num(0.0), *output[1:])
        return None

    model = batch.model
    batch.resolve()  # before the hooks: resolving may run a forward of its own
    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m).__name__.endswith("Attention")]
    try:
        with eager_attention(model), torch.no_grad():
            batch.values({kind: x[rows.start : rows.stop] for kind, x in batch.inputs.items()}, rows)
    finally:
        for handle in handles:
            handle.remove()
    if not maps:
        raise MethodError(
            f"{type(model).__name__} returned no attention weights, so attention baselines can't run on "
            "it; choose a method that needs none (see attnlrp.available_methods())."
        )
    return maps


class AttentionMethod(Method):
    """A method that reads the model's attention weights from the explained position."""

    token_inputs_only = True
    needs_backward = False

    def check(self, batch: Batch) -> None:
        super().check(batch)
        if batch.query is None or len(batch.inputs) != 1:
            others = [c.name for c in REGISTRY.values() if not issubclass(c, AttentionMethod)]
            raise MethodError(
                f"The {self.name!r} method needs one token input and a position the target is read "
                f"from; this task has neither, so choose a method that works on it: {', '.join(map(repr, others))}."
            )


@dataclass
class Attention(AttentionMethod):
    """The last layer's attention from the explained position to every token, averaged over heads."""

    name = "attention"
    description = "The last layer's attention weights from the explained position, averaged over heads"

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        (kind,) = batch.inputs
        out = []
        for chunk in batch.chunks(len(batch), grad=True):
            rows = range(chunk.start, chunk.stop)
            at = torch.arange(len(rows), device=batch.device)
            positions = torch.tensor(batch.query[chunk], device=batch.device)
            out.append(head_means(batch, rows, lambda a, at=at, positions=positions: a[at, positions])[-1])
        return {kind: torch.cat(out)}


@dataclass
class AttentionRollout(AttentionMethod):
    """Attention rollout (Abnar & Zuidema, 2020): the explained position's row of Π_l (A_l + I) / 2, head means."""

    name = "attention_rollout"
    description = "Attention rollout (Abnar & Zuidema, 2020): attention weights multiplied through the layers"

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        (kind,) = batch.inputs
        out = []
        width = batch.inputs[kind].shape[1]
        for chunk in batch.chunks(len(batch), grad=True):
            rows = range(chunk.start, chunk.stop)
            positions = torch.tensor(batch.query[chunk], device=batch.device)
            flow = torch.nn.functional.one_hot(positions, width).float()
            for a in reversed(head_means(batch, rows, lambda a: a)):
                flow = 0.5 * torch.bmm(flow[:, None], a)[:, 0] + 0.5 * flow
            out.append(flow)
        return {kind: torch.cat(out)}
