"""Attention baselines: last-layer attention and attention rollout, read from eager attention weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .base import Baseline, Batch


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch the model to eager attention (the only kind that returns its weights) for the duration."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous == "eager":
        yield
        return
    if not hasattr(model, "set_attn_implementation"):
        raise ValueError(f"{type(model).__name__} can't switch to eager attention, so its attention weights can't be read.")
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def head_means(batch: Batch, rows: range, reduce: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """For prompts ``rows``: each layer's attention weights [n, T, T], averaged over heads, passed through ``reduce``."""
    maps: list[Tensor] = []
    last: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, output) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if isinstance(weights, Tensor) and weights.dim() == 4 and not any(weights is w for w in last):
            last[:] = [weights]  # an outer attention module passing the same weights on is not a new layer
            maps.append(reduce(weights.detach().float().mean(1)))

    model = batch.model
    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m).__name__.endswith("Attention")]
    try:
        with eager_attention(model), torch.no_grad():
            batch.values(batch.embeds[rows.start : rows.stop], rows)
    finally:
        for handle in handles:
            handle.remove()
    if not maps:
        raise ValueError(f"{type(model).__name__} returned no attention weights, so attention baselines can't run on it.")
    return maps


class Attention(Baseline):
    """The last layer's attention from the explained position to every token, averaged over heads."""

    name = "attention"

    def attribute(self, batch: Batch) -> Tensor:
        out = []
        for chunk in batch.chunks(len(batch), grad=True):
            rows = range(chunk.start, chunk.stop)
            at = torch.arange(len(rows), device=batch.ids.device)
            positions = torch.tensor(batch.positions[chunk], device=batch.ids.device)
            out.append(head_means(batch, rows, lambda a: a[at, positions])[-1])
        return torch.cat(out)


class AttentionRollout(Baseline):
    """Attention rollout (Abnar & Zuidema, 2020): the explained position's row of Π_l (A_l + I) / 2, head means."""

    name = "attention_rollout"

    def attribute(self, batch: Batch) -> Tensor:
        out = []
        width = batch.ids.shape[1]
        for chunk in batch.chunks(len(batch), grad=True):
            rows = range(chunk.start, chunk.stop)
            positions = torch.tensor(batch.positions[chunk], device=batch.ids.device)
            flow = torch.nn.functional.one_hot(positions, width).float()
            for a in reversed(head_means(batch, rows, lambda a: a)):
                flow = 0.5 * torch.bmm(flow[:, None], a)[:, 0] + 0.5 * flow
            out.append(flow)
        return torch.cat(out)
