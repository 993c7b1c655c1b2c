"""Gradient baselines: saliency, Input x Gradient and Integrated Gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Baseline, Batch


def embedding_gradients(batch: Batch) -> Tensor:
    """The plain gradient ∂y/∂e at the input embeddings [B, T, H]."""
    with torch.enable_grad():
        embeds = batch.embeds.detach().requires_grad_()
        (grads,) = torch.autograd.grad(batch.values(embeds, range(len(batch))).sum(), embeds)
    return grads


class Gradient(Baseline):
    """Saliency: the L2 norm over the hidden dimension of ∂y/∂e_t (unsigned, so it ranks but never opposes)."""

    name = "gradient"

    def attribute(self, batch: Batch) -> Tensor:
        return embedding_gradients(batch).norm(dim=-1)


class InputXGradient(Baseline):
    """Plain Input x Gradient: Σ_h e_t,h ∂y/∂e_t,h with the unmodified gradient."""

    name = "input_x_gradient"

    def attribute(self, batch: Batch) -> Tensor:
        return (batch.embeds * embedding_gradients(batch)).sum(-1)


@dataclass
class IntegratedGradients(Baseline):
    """Integrated Gradients from the all-zero embedding, midpoint rule; the steps of all prompts run in batches.

    Completeness: Σ_t R_t ≈ y(e) - y(0), more exactly with more steps.
    """

    name = "integrated_gradients"
    steps: int = 32

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"IntegratedGradients needs at least one step, not {self.steps}.")

    def attribute(self, batch: Batch) -> Tensor:
        n = len(batch)
        alphas = (torch.arange(self.steps, dtype=batch.embeds.dtype, device=batch.embeds.device) + 0.5) / self.steps
        total = torch.zeros_like(batch.embeds)
        for chunk in batch.chunks(n * self.steps, grad=True):
            index = torch.arange(chunk.start, chunk.stop, device=batch.embeds.device)
            rows, alpha = index % n, alphas[index // n]
            with torch.enable_grad():
                embeds = (batch.embeds[rows] * alpha[:, None, None]).requires_grad_()
                (grads,) = torch.autograd.grad(batch.values(embeds, rows.tolist()).sum(), embeds)
            total.index_add_(0, rows, grads)
        return (batch.embeds * total).sum(-1) / self.steps
