"""Gradient baselines: saliency, Input x Gradient and Integrated Gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.quantized import linear_gradients
from .base import Method
from .batch import Batch


def input_gradients(batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The inputs and the plain gradient ∂y/∂x at each of them (through quantized layers too)."""
    leaves = batch.leaves()
    with torch.enable_grad(), linear_gradients(batch.model):
        grads = torch.autograd.grad(batch.evaluate(leaves).sum(), list(leaves.values()))
    return {k: x.detach() for k, x in leaves.items()}, dict(zip(leaves, grads))


@dataclass
class Gradient(Method):
    """Saliency: the L2 norm over the feature dimension of ∂y/∂x (unsigned, so it ranks but never opposes)."""

    name = "gradient"
    description = "Saliency: the norm of the plain gradient at each input (unsigned)"
    single_backward = True

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        _, grads = input_gradients(batch)
        return {kind: g.norm(dim=-1 if kind in batch.token_kinds else 1) for kind, g in grads.items()}


@dataclass
class InputXGradient(Method):
    """Plain Input x Gradient: Σ_h x_h ∂y/∂x_h with the unmodified gradient."""

    name = "input_x_gradient"
    description = "Input x Gradient with the plain gradient (what LRP's rules improve on)"
    single_backward = True

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        inputs, grads = input_gradients(batch)
        return {kind: batch.reduce(kind, inputs[kind] * grads[kind]) for kind in inputs}


@dataclass
class IntegratedGradients(Method):
    """Integrated Gradients from the all-zero input, midpoint rule; the steps of all rows run in batches.

    Completeness: Σ R ≈ y(x) - y(0), more exactly with more steps.
    """

    name = "integrated_gradients"
    description = "Integrated Gradients from the zero input (midpoint rule, 32 steps by default)"
    steps: int = 32

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"IntegratedGradients needs at least one step, not {self.steps}.")

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        n = len(batch)
        some = next(iter(batch.inputs.values()))
        alphas = (torch.arange(self.steps, dtype=some.dtype, device=some.device) + 0.5) / self.steps
        totals = {kind: torch.zeros_like(x) for kind, x in batch.inputs.items()}
        for chunk in batch.chunks(n * self.steps, grad=True):
            index = torch.arange(chunk.start, chunk.stop, device=some.device)
            rows, alpha = index % n, alphas[index // n]
            with torch.enable_grad(), linear_gradients(batch.model):
                scaled = {
                    kind: (x[rows] * alpha.view(-1, *[1] * (x.dim() - 1))).requires_grad_()
                    for kind, x in batch.inputs.items()
                }
                grads = torch.autograd.grad(batch.values(scaled, rows.tolist()).sum(), list(scaled.values()))
            for kind, g in zip(scaled, grads):
                totals[kind].index_add_(0, rows, g)
        return {kind: batch.reduce(kind, x * totals[kind]) / self.steps for kind, x in batch.inputs.items()}
