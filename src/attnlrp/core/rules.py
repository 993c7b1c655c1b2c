"""The LRP rules of `rules.md` as small autograd functions; this module knows nothing of models.

In the efficient (Input x Gradient) mode a rule only changes a local Jacobian; the relevance of any
tensor h is then ``h * h.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Ratio = Callable[[Tensor], Tensor]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _tanh_over_x(x: Tensor) -> Tensor:
    """tanh(x)/x with its limit 1 at x = 0 (series below |x| = 1e-2, never a division by ~0)."""
    small = x.abs() < 1e-2
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 - x * x / 3.0, torch.tanh(safe) / safe)


#: f(x)/x in closed form for each element-wise activation f with f(0) = 0.
RATIOS: dict[str, Ratio] = {
    "silu": torch.sigmoid,
    "gelu": lambda x: 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0)))),
    "gelu_tanh": lambda x: 0.5 * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))),
    "quick_gelu": lambda x: torch.sigmoid(1.702 * x),
    "relu": lambda x: (x > 0).to(x.dtype),
    "relu_squared": torch.relu,
    "tanh": _tanh_over_x,
    "mish": lambda x: torch.tanh(torch.nn.functional.softplus(x)),
    "hardswish": lambda x: torch.clamp(x + 3.0, 0.0, 6.0) / 6.0,
}


def sigmoid_ratio(x: Tensor) -> Tensor:
    """sigmoid(x)/x, for the identity rule at a sigmoid (sigmoid(0) = 1/2: the ratio has a pole at 0, where it is
    taken as 0; an input of exactly 0 carries no relevance, whatever reaches it)."""
    zero = x == 0
    return torch.where(zero, 0.0, torch.sigmoid(x) / torch.where(zero, 1.0, x))


def power_ratio(p: float) -> Ratio:
    """x^p / x = x^(p-1) for an exponent p > 0 (0 where x <= 0 and p is not an integer, as x^p is undefined there)."""
    if float(p).is_integer():
        return lambda x: x.pow(int(p) - 1)
    return lambda x: torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).pow(p - 1), 0.0)


def output_ratio(fn: Callable[[Tensor], Tensor]) -> Ratio:
    """fn(x)/x for an element-wise fn computed as it runs (clamping); 1 where x = 0."""
    return lambda x: torch.where(x == 0, 1.0, fn(x) / torch.where(x == 0, 1.0, x))


def leaky_relu_ratio(slope: float) -> Ratio:
    return lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """z + ε·sign(z) with sign(0) = 1: the ε-rule's denominator, pushed away from zero on its own side."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)


def _times_ratio(grad: Tensor, ratio: Ratio, x: Tensor) -> Tensor:
    """grad * f(x)/x; for half-precision x computed in float32 and clamped to x's range (sigmoid(x)/x near 0
    exceeds float16's: there the gradient is the largest float16, and relevance is not conserved exactly)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        largest = torch.finfo(x.dtype).max
        return (grad.float() * ratio(x.float())).clamp(-largest, largest).to(grad.dtype)
    return grad * ratio(x)


class _IdentityRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor], ratio: Ratio) -> Tensor:
        ctx.save_for_backward(x)
        ctx.ratio = ratio
        return fn(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return _times_ratio(grad, ctx.ratio, x), None, None


def identity_rule(x: Tensor, fn: Callable[[Tensor], Tensor], ratio: Ratio) -> Tensor:
    """y = fn(x) whose backward passes ``grad * f(x)/x``, so that R_x = R_y (the identity rule)."""
    return _IdentityRule.apply(x, fn, ratio)


class _ScaleGrads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, factors: tuple[float, ...], *xs: Tensor) -> tuple[Tensor, ...]:
        ctx.factors = factors
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        return (None, *(g * f if g is not None else None for g, f in zip(grads, ctx.factors)))


def scale_grads(xs: tuple[Tensor, ...], factors: tuple[float, ...]) -> tuple[Tensor, ...]:
    """Identity in the forward pass; multiplies the backward signal of ``xs[i]`` by ``factors[i]``."""
    return _ScaleGrads.apply(tuple(factors), *xs)


def uniform(*factors: Tensor) -> tuple[Tensor, ...]:
    """The uniform rule: each of n input-dependent factors of a product receives 1/n of the relevance."""
    return scale_grads(factors, (1.0 / len(factors),) * len(factors))


def attention_factors(q: Tensor, k: Tensor, v: Tensor, method: str) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v for a fused attention kernel, so that the kernel's plain backward is the rule.

    AttnLRP: uniform rule at q.k^T and at A.V, softmax rule (plain) in between: q/4, k/4, v/2.
    CP-LRP: the attention weights are constants, so q and k are detached.
    """
    if method == "cp-lrp":
        return q.detach(), k.detach(), v
    return scale_grads((q, k, v), (0.25, 0.25, 0.5))


def attention_mask_factor(mask: Tensor, method: str) -> Tensor:
    """A float attention mask that depends on the input, added to the scores inside the kernel: constant with the
    attention weights (CP-LRP), or (AttnLRP) half the relevance of the weights' side, as q.k^T gets (A.V's
    uniform rule halves it; the addition passes it on)."""
    return mask.detach() if method == "cp-lrp" else scale_grads((mask,), (0.5,))[0]


class _Credit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(p, x)
        return p.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        p, x = ctx.saved_tensors
        rho = (p * grad).sum(-1, keepdim=True).to(x.dtype)
        norm = (x * x).sum(-1, keepdim=True)
        share = torch.where(norm > 0, rho / torch.where(norm > 0, norm, 1.0), 0.0)
        return (grad if p.requires_grad else None), x * share


def credit(p: Tensor, x: Tensor) -> Tensor:
    """p, with the relevance that reaches each row of p credited to the same row of x.

    For a second lookup p of the tokens whose input embeddings are x (rows: batch and position): the
    backward gives x the signal x · ρ/‖x‖², ρ = Σ p ⊙ g over the row, so that Σ x ⊙ g_x over the row is ρ,
    p's relevance. A row of x that is all zero (a padding embedding) receives nothing.
    """
    return _Credit.apply(p, x)


class _FrozenLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, shape: list[int], weight: Tensor | None, bias: Tensor | None, eps: float):
        y, _, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.dims = tuple(range(-len(shape), 0))
        ctx.save_for_backward(rstd, weight)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        rstd, weight = ctx.saved_tensors
        g = grad * weight if weight is not None else grad
        g = g * rstd
        return g - g.mean(dim=ctx.dims, keepdim=True), None, None, None, None


def layer_norm(x: Tensor, shape, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm with sigma held constant: the backward is the centring map scaled by w/sigma."""
    return _FrozenLayerNorm.apply(x, list(shape), weight, bias, eps)


class _FrozenRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, shape: list[int], weight: Tensor | None, eps: float | None):
        dims = tuple(range(-len(shape), 0))
        # Like torch.nn.functional.rms_norm: the statistic in float32 for half types (x**2 overflows
        # fp16 above 256), and eps=None means the float32 machine epsilon there.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        eps = torch.finfo(xf.dtype).eps if eps is None else eps
        rstd = torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + eps)
        ctx.save_for_backward(rstd, weight)
        y = xf * rstd
        y = y * weight if weight is not None else y
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rstd, weight = ctx.saved_tensors
        g = grad * weight if weight is not None else grad
        return (g * rstd).to(grad.dtype), None, None, None


def rms_norm(x: Tensor, shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """RMSNorm with the rms held constant (the identity rule on the normalising statistic)."""
    return _FrozenRMSNorm.apply(x, list(shape), weight, eps)


def group_norm(
    x: Tensor, groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """GroupNorm with the per-group sigma held constant; the centring stays linear (as in layer_norm)."""
    shape = x.shape
    grouped = x.reshape(shape[0], groups, -1)
    if x.dtype in (torch.float16, torch.bfloat16):  # in float32, as torch does: the variance overflows fp16
        grouped = grouped.float()
    var = torch.var(grouped.detach(), dim=-1, correction=0, keepdim=True)
    y = ((grouped - grouped.mean(dim=-1, keepdim=True)) * torch.rsqrt(var + eps)).reshape(shape).to(x.dtype)
    view = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(view)
    if bias is not None:
        y = y + bias.reshape(view)
    return y


def batch_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """BatchNorm with the batch's statistics (train mode): per channel over the batch and positions, sigma held
    constant, the centring linear (as in layer_norm)."""
    dims = [0, *range(2, x.dim())]
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    var = torch.var(xf.detach(), dim=dims, correction=0, keepdim=True)
    y = ((xf - xf.mean(dim=dims, keepdim=True)) * torch.rsqrt(var + eps)).to(x.dtype)
    view = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(view)
    if bias is not None:
        y = y + bias.reshape(view)
    return y


def normalize(x: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """x / ||x|| with the norm held constant."""
    xf = x
    if x.dtype in (torch.float16, torch.bfloat16):  # eps=1e-12 underflows fp16 (0/0), and 1/eps overflows it
        xf, eps = x.float(), max(eps, 1.0 / torch.finfo(x.dtype).max)
    return (xf / xf.detach().norm(p=p, dim=dim, keepdim=True).clamp_min(eps)).to(x.dtype)
