"""LRP rules for linear layers (Linear, Conv) in the efficient mode: ε, γ, z⁺ and α-β.

Each rule maps the backward signal g at a layer's output z to a signal g_x at its input such that
``x * g_x`` is the rule's relevance R_x, with the output relevance R_z = z * g. The rules are written
with modified weights (no division by x): for the γ-rule g_x = (W + γW⁺)ᵀ (g ⊙ z / z_γ).
Signed inputs use the generalised forms (Andéol et al. 2021): positive and negative parts of x are
paired with the weights that push z further in its own sign. This module knows nothing of models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rules import stabilize

#: A linear map of a layer: (x, weight, bias) -> z.
LinearMap = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _ratio(r: Tensor, denominator: Tensor, epsilon: float) -> Tensor:
    """r / stabilize(denominator); 0 where that is 0 (ε = 0 and no contribution: nothing to share)."""
    d = stabilize(denominator, epsilon)
    return torch.where(d == 0, 0.0, r / torch.where(d == 0, 1.0, d))


def linear_map(module: nn.Module) -> LinearMap:
    """The layer's map as a function of (x, weight, bias); a clear error for other modules."""
    if isinstance(module, nn.Linear):
        return F.linear
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward
    raise TypeError(
        f"attnlrp's layer rules apply to nn.Linear and nn.Conv1d/2d/3d modules, not {type(module).__name__}; "
        "map only those types in layer_rules."
    )


def _transpose(layer: LinearMap, weight: Tensor, like: Tensor, signal: Tensor) -> Tensor:
    """Jᵀ signal for the linear map x -> layer(x, weight) (its Jacobian does not depend on x)."""
    with torch.enable_grad():
        probe = torch.zeros_like(like, requires_grad=True)
        return torch.autograd.grad(layer(probe, weight, None), probe, signal)[0]


def _split(t: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    return (None, None) if t is None else (t.clamp(min=0), t.clamp(max=0))


def _add(a: Tensor | None, b: Tensor | None, scale: float = 1.0) -> Tensor | None:
    return None if a is None else a + scale * b


class LayerRule:
    """Base class: a rule for one linear layer, used in ``lrp(model, layer_rules={nn.Linear: rule})``."""

    def check(self, module: nn.Module) -> None:
        """Raise a clear error where the rule can't apply to ``module``."""
        linear_map(module)

    def input_gradient(self, module: nn.Module, x: Tensor, z: Tensor, g: Tensor) -> Tensor:
        """g_x with x * g_x = R_x, given the input x, the output z and the output signal g."""
        raise NotImplementedError


class Epsilon(LayerRule):
    """ε-rule: R_i = Σ_j x_i w_ij / (z_j + ε·sign z_j) · R_j (the bias absorbs its share)."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def input_gradient(self, module, x, z, g):
        return _transpose(linear_map(module), module.weight.to(x.dtype), x, _ratio(g * z, z, self.epsilon))

    def __repr__(self) -> str:
        return f"Epsilon({self.epsilon:g})"


class Gamma(LayerRule):
    """γ-rule: R_i = Σ_j x_i (w_ij + γ w_ij⁺) / Σ_i x_i (w_ij + γ w_ij⁺) · R_j for x ≥ 0 and z_j > 0.

    Generalised to signed x and z: where z_j < 0 the negative contributions are amplified instead,
    and negative inputs pair with the opposite weight part, so the rule is symmetric under sign flips.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, not {gamma}.")
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def input_gradient(self, module, x, z, g):
        layer, gamma = linear_map(module), self.gamma
        w = module.weight.to(x.dtype)
        b = module.bias.to(x.dtype) if module.bias is not None else None
        (w_pos, w_neg), (b_pos, b_neg) = _split(w), _split(b)
        up, down = w + gamma * w_pos, w + gamma * w_neg  # weights amplifying positive / negative contributions
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        z_up = layer(x_pos, up, _add(b, b_pos, gamma)) + layer(x_neg, down, None)
        z_down = layer(x_pos, down, _add(b, b_neg, gamma)) + layer(x_neg, up, None)
        s_up = torch.where(z > 0, _ratio(g * z, z_up, self.stabilizer), 0.0)
        s_down = torch.where(z < 0, _ratio(g * z, z_down, self.stabilizer), 0.0)
        to_pos = _transpose(layer, up, x, s_up) + _transpose(layer, down, x, s_down)
        to_neg = _transpose(layer, down, x, s_up) + _transpose(layer, up, x, s_down)
        return torch.where(x > 0, to_pos, 0.0) + torch.where(x < 0, to_neg, 0.0)

    def __repr__(self) -> str:
        return f"Gamma({self.gamma:g})"


class AlphaBeta(LayerRule):
    """α-β rule: R_i = Σ_j (α (x_i w_ij)⁺ / Σ_i (x_i w_ij)⁺ − β (x_i w_ij)⁻ / Σ_i (x_i w_ij)⁻) · R_j, α − β = 1.

    The positive bias part joins the positive sum, the negative part the negative one.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, not alpha={alpha}, beta={beta}.")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def input_gradient(self, module, x, z, g):
        layer = linear_map(module)
        w = module.weight.to(x.dtype)
        b = module.bias.to(x.dtype) if module.bias is not None else None
        (w_pos, w_neg), (b_pos, b_neg) = _split(w), _split(b)
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        r = g * z
        s_pos = self.alpha * _ratio(r, layer(x_pos, w_pos, b_pos) + layer(x_neg, w_neg, None), self.stabilizer)
        to_pos, to_neg = _transpose(layer, w_pos, x, s_pos), _transpose(layer, w_neg, x, s_pos)
        if self.beta:
            z_neg = layer(x_pos, w_neg, b_neg) + layer(x_neg, w_pos, None)
            s_neg = self.beta * _ratio(r, z_neg, self.stabilizer)
            to_pos = to_pos - _transpose(layer, w_neg, x, s_neg)
            to_neg = to_neg - _transpose(layer, w_pos, x, s_neg)
        return torch.where(x > 0, to_pos, 0.0) + torch.where(x < 0, to_neg, 0.0)

    def __repr__(self) -> str:
        return f"AlphaBeta({self.alpha:g}, {self.beta:g})"


class ZPlus(AlphaBeta):
    """z⁺-rule: R_i = Σ_j (x_i w_ij)⁺ / Σ_i (x_i w_ij)⁺ · R_j (α-β with α = 1, β = 0)."""

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(1.0, 0.0, stabilizer)

    def __repr__(self) -> str:
        return "ZPlus()"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _RuledLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, rule: LayerRule, module: nn.Module, forward: Callable[[Tensor], Tensor]) -> Tensor:
        z = forward(x)
        ctx.save_for_backward(x, z)
        ctx.rule, ctx.module = rule, module
        return z

    @staticmethod
    def backward(ctx, g: Tensor):
        x, z = ctx.saved_tensors
        dtype = _compute_dtype(x.dtype)  # the ratios in at least float32: ε = 1e-6 vanishes in half precision
        g_x = ctx.rule.input_gradient(ctx.module, x.to(dtype), z.to(dtype), g.to(dtype))
        return g_x.to(x.dtype), None, None, None


def apply_rule(rule: LayerRule, module: nn.Module, forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """z = forward(x), whose backward is ``rule``'s: x * x.grad is then the rule's relevance."""
    return _RuledLayer.apply(x, rule, module, forward)
