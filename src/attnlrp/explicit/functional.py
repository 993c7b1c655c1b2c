"""The explicit rules as functions: the forward pass as torch computes it, a backward pass from relevance to relevance.

Each function's backward receives the relevance R of its output and returns the relevance of each
input that requires grad (inputs that don't are constants: weights, masks, cos/sin tables). Start the
backward with ``y.backward(y)`` and ``x.grad`` is the relevance of x. The formulas are written out in
each backward so they can be read next to ``docs/explicit.md``. A backward that divides by the output
recomputes it from the saved inputs, so that the model may modify an output in place (``out.add_(bias)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Number

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from ..core.rules import stabilize

DEFAULT_EPSILON = 1e-6


def sum_to(relevance: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """Relevance of a broadcast output summed back onto an input's shape (and dtype)."""
    return relevance.sum_to_size(shape).to(dtype)


def _as_tensor(value: Tensor | Number, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=like.dtype, device=like.device)


# --- ε-rule for a linear layer -----------------------------------------------------------------


class _LinearEpsilon(Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, epsilon: float) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.epsilon = epsilon
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, relevance: Tensor):
        x, weight, bias = ctx.saved_tensors
        z = F.linear(x, weight, bias)
        # R_x_i = sum_j x_i W_ji R_j / (z_j + eps sign z_j); the bias keeps its share b_j R_j / z_j
        return x * ((relevance / stabilize(z, ctx.epsilon)) @ weight), None, None, None


def linear_epsilon(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, epsilon: float = DEFAULT_EPSILON
) -> Tensor:
    """ε-rule for z = x Wᵀ + b: R_x = x ⊙ Wᵀ(R_z / (z + ε sign z)); the bias absorbs its share."""
    return _LinearEpsilon.apply(input, weight, bias, epsilon)


# --- uniform ε-rule for a product of two input-dependent matrices ------------------------------


class _Matmul(Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, epsilon: float) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.epsilon = epsilon
        return a @ b

    @staticmethod
    def backward(ctx, relevance: Tensor):
        a, b = ctx.saved_tensors
        z = a @ b
        carrying = ctx.needs_input_grad[0] + ctx.needs_input_grad[1]
        ratio = relevance / stabilize(z, ctx.epsilon) / carrying
        # R_a_ik = a_ik sum_j b_kj R_ij / z_ij / n,  R_b_kj = b_kj sum_i a_ik R_ij / z_ij / n
        r_a = sum_to(a * (ratio @ b.mT), a.shape, a.dtype) if ctx.needs_input_grad[0] else None
        r_b = sum_to(b * (a.mT @ ratio), b.shape, b.dtype) if ctx.needs_input_grad[1] else None
        return r_a, r_b, None


def matmul(input: Tensor, other: Tensor, *, epsilon: float = DEFAULT_EPSILON) -> Tensor:
    """z = A B, uniform ε-rule: each of the n input-dependent factors gets 1/n (n = 1: the plain ε-rule)."""
    a = input.unsqueeze(0) if input.dim() == 1 else input
    b = other.unsqueeze(-1) if other.dim() == 1 else other
    z = _Matmul.apply(a, b, epsilon)
    if input.dim() == 1:
        z = z.squeeze(-2)
    return z.squeeze(-1) if other.dim() == 1 else z


# --- softmax ---------------------------------------------------------------------------------


class _Softmax(Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int, temperature: float) -> Tensor:
        s = torch.softmax(x / temperature, dim)
        ctx.save_for_backward(x, s)
        ctx.dim, ctx.temperature = dim, temperature
        return s

    @staticmethod
    def backward(ctx, relevance: Tensor):
        x, s = ctx.saved_tensors
        u = x / ctx.temperature
        u = torch.where(torch.isinf(u), 0.0, u)  # masked logits (-inf) have s = 0 and no relevance
        # R_x = x ⊙ (R_s - s Σ R_s): AttnLRP's softmax rule; 1/T is a constant factor (identity)
        return u * (relevance - s * relevance.sum(ctx.dim, keepdim=True)), None, None


def softmax(input: Tensor, dim: int = -1, dtype: torch.dtype | None = None, *, temperature: float = 1.0) -> Tensor:
    """s = softmax(x/T): R_x = (x/T) ⊙ (R_s − s Σ R_s), AttnLRP's rule (its bias term takes the rest)."""
    x = input.to(dtype) if dtype is not None else input
    return _Softmax.apply(x, dim, temperature)


# --- element-wise products and sums ----------------------------------------------------------


class _Mul2(Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.inputs = (a.shape, a.dtype), (b.shape, b.dtype)
        return a * b

    @staticmethod
    def backward(ctx, relevance: Tensor):
        # uniform rule: each input-dependent factor gets R / n (n = 1: the identity rule)
        share = relevance / (ctx.needs_input_grad[0] + ctx.needs_input_grad[1])
        return tuple(sum_to(share, *meta) if needed else None for meta, needed in zip(ctx.inputs, ctx.needs_input_grad))


def mul2(input: Tensor | Number, other: Tensor | Number) -> Tensor:
    """a ⊙ b: uniform rule R_a = R_b = R/2; the identity R_a = R when b is a constant."""
    like = input if isinstance(input, Tensor) else other
    return _Mul2.apply(_as_tensor(input, like), _as_tensor(other, like))


class _Add2(Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, epsilon: float) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.epsilon = epsilon
        return a + b

    @staticmethod
    def backward(ctx, relevance: Tensor):
        a, b = ctx.saved_tensors
        ratio = relevance / stabilize(a + b, ctx.epsilon)
        # ε-rule: each summand gets its share R_a = a R / (z + eps sign z); a constant keeps its own
        return (
            sum_to(a * ratio, a.shape, a.dtype) if ctx.needs_input_grad[0] else None,
            sum_to(b * ratio, b.shape, b.dtype) if ctx.needs_input_grad[1] else None,
            None,
        )


def add2(input: Tensor | Number, other: Tensor | Number, *, epsilon: float = DEFAULT_EPSILON) -> Tensor:
    """a + b, ε-rule: R_a = a ⊙ R / (z + ε sign z), R_b likewise; a constant summand absorbs its share."""
    like = input if isinstance(input, Tensor) else other
    return _Add2.apply(_as_tensor(input, like), _as_tensor(other, like), epsilon)


class _Mean(Function):
    @staticmethod
    def forward(ctx, x: Tensor, dims: tuple[int, ...], keepdim: bool, epsilon: float) -> Tensor:
        z = x.mean(dims, keepdim=True)
        ctx.save_for_backward(x)
        ctx.dims, ctx.epsilon, ctx.count = dims, epsilon, x.numel() // max(z.numel(), 1)
        return z if keepdim else z.squeeze(dims)

    @staticmethod
    def backward(ctx, relevance: Tensor):
        (x,) = ctx.saved_tensors
        z = x.mean(ctx.dims, keepdim=True)
        # z = (1/n) Σ x_i is linear: R_x_i = (x_i / n) R / (z + eps sign z)
        return x / ctx.count * (relevance.reshape(z.shape) / stabilize(z, ctx.epsilon)), None, None, None


def mean(
    input: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False, *, epsilon: float = DEFAULT_EPSILON
) -> Tensor:
    """The mean, ε-rule: R_x_i = (x_i / n) · R / (z + ε sign z)."""
    if dim is None:
        dims = tuple(range(input.dim()))
    else:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return _Mean.apply(input, dims, keepdim, epsilon)


# --- norms -------------------------------------------------------------------------------------


class _LayerNorm(Function):
    @staticmethod
    def forward(
        ctx, x: Tensor, shape: list[int], weight: Tensor | None, bias: Tensor | None, eps: float, epsilon: float
    ) -> Tensor:
        y, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.dims, ctx.epsilon = tuple(range(-len(shape), 0)), epsilon
        return y

    @staticmethod
    def backward(ctx, relevance: Tensor):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        y = (x - mean) * rstd
        y = y * weight if weight is not None else y
        y = y + bias if bias is not None else y
        # sigma frozen, y = C x ⊙ w / sigma + b is linear in x (C x = x - mean x, C symmetric):
        # R_x = x ⊙ Cᵀ(w / sigma ⊙ R / (y + eps sign y))
        v = relevance / stabilize(y, ctx.epsilon) * rstd
        v = v * weight if weight is not None else v
        return x * (v - v.mean(ctx.dims, keepdim=True)), None, None, None, None, None


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> Tensor:
    """LayerNorm with σ frozen: a linear map (centring, scaling) plus bias, so the ε-rule applies to it."""
    return _LayerNorm.apply(input, list(normalized_shape), weight, bias, eps, epsilon)


class _RMSNormIdentity(Function):
    @staticmethod
    def forward(ctx, x: Tensor, shape: list[int], weight: Tensor | None, eps: float | None) -> Tensor:
        return F.rms_norm(x, shape, weight, eps)

    @staticmethod
    def backward(ctx, relevance: Tensor):
        # y_i = x_i w_i / rms(x) with the rms frozen: element-wise scaling, so R_x = R_y
        return relevance, None, None, None


def rms_norm_identity(
    input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None, eps: float | None = None
) -> Tensor:
    """RMSNorm with the rms frozen: each element is only scaled, so R_x = R_y (the identity rule)."""
    return _RMSNormIdentity.apply(input, list(normalized_shape), weight, eps)


# --- element-wise activations -----------------------------------------------------------------


class _Identity(Function):
    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, relevance: Tensor):
        return relevance, None  # R_x = R_f(x), element by element


def identity(fn: Callable[..., Tensor], input: Tensor, *args, **kwargs) -> Tensor:
    """y = fn(x) for an element-wise activation fn, identity rule: R_x = R_y."""
    return _Identity.apply(input, lambda x: fn(x, *args, **kwargs))


# --- attention -----------------------------------------------------------------------------------


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    epsilon: float = DEFAULT_EPSILON,
    constant_weights: bool = False,
) -> Tensor:
    """torch's attention written out with the rules: uniform ε at q·kᵀ and A·v, the softmax rule between.

    ``constant_weights`` (CP-LRP): the attention weights are constants, all relevance flows through v.
    Dropout is off (``dropout_p`` is ignored).
    """
    if enable_gqa:
        groups = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
    if constant_weights:
        query, key = query.detach(), key.detach()
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = mul2(matmul(query, key.transpose(-2, -1), epsilon=epsilon), scale)
    if is_causal:
        keep = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        else:
            scores = add2(scores, attn_mask, epsilon=epsilon)
    dead = torch.isneginf(scores).all(-1, keepdim=True)  # every key masked: torch gives this query zeros
    scores = scores.masked_fill(dead, 0.0)
    weights = torch.softmax(scores, -1) if constant_weights else softmax(scores, -1)
    return matmul(weights.masked_fill(dead, 0.0), value, epsilon=epsilon)
