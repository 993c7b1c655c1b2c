"""Ready composites: the explicit rules for the standard parts of Hugging Face transformers.

One composite covers every family the engine is tested on (LLaMA, Mistral, Mixtral, Qwen2/3 and their
MoE, Gemma 1-3, Phi-3, OLMo2, GPT-2, GPT-NeoX, BERT, RoBERTa, DistilBERT, ViT, and the extended families
of docs/check.md): attention matmuls, softmax and fused attention, norms,
statistics, activations, gated and complex products, linear layers, sums.
"""

from __future__ import annotations

import functools
import operator
import weakref
from numbers import Number
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_leaves

from ..engine import ops
from ..engine.binding import INLINE_ACTIVATIONS, rule_set
from . import functional
from .composite import Composite
from .functional import DEFAULT_EPSILON
from .rules import (
    EpsilonRule,
    IdentityRule,
    Rule,
    ScopedRule,
    StopRelevanceRule,
    UniformEpsilonRule,
    carries_relevance,
)


class GateRule(Rule):
    """Applies ``rule`` and marks the output as a gate, which CP-LRP holds constant where it scales a product.

    self_gating: also remember the input, so that ``x * sigmoid(x)`` (SiLU written out) gets the
    identity rule in ``product``. weight: the output is a weight (CP-LRP's sigmoid), held constant in a product
    before another gate, as the efficient mode holds it.
    """

    def __init__(self, rule: Rule, self_gating: bool = False, weight: bool = False):
        self.rule, self.self_gating, self.weight = rule, self_gating, weight

    def __call__(self, fn, *args: Any, **kwargs: Any) -> Any:
        out = self.rule(fn, *args, **kwargs)
        if isinstance(out, Tensor) and out.requires_grad:
            out._explicit_gate = True
            out._explicit_weight = self.weight
            if self.self_gating:  # the tensor it gates when written out as x * sigmoid(x)
                source = next(t for t in tree_leaves((args, kwargs)) if carries_relevance(t))
                out._explicit_gate_input = weakref.ref(source)
        return out


class StatisticRule(ScopedRule):
    """A statistic (a power, a square root, a standard deviation, a vector norm), as the efficient mode rules it.
    Called by a norm module: a constant. Elsewhere: a normalising factor x^p with p <= 0 (rsqrt, reciprocal) is
    a constant; a power with p > 0 passes its relevance on (identity rule; CP-LRP holds it constant where it
    scales a product, as an activation); a statistic homogeneous of degree 1 (std, a norm) gets the ε-rule,
    which conserves it (Σ x ∂f/∂x = f). Anything else (a variance outside a norm, a power with a tensor
    exponent) runs without a rule and is reported."""

    def __init__(self, epsilon: float = DEFAULT_EPSILON):
        self.epsilon = epsilon

    def scoped(self, binding: Any, fn, *args: Any, **kwargs: Any) -> Any:
        if binding is not None and binding.in_norm():
            return StopRelevanceRule()(fn, *args, **kwargs)
        name = ops.op_name(fn)
        if name in ops.HOMOGENEOUS:
            return EpsilonRule(self.epsilon)(fn, *args, **kwargs)
        p = ops.exponent_of(name, args, kwargs)
        if p is not None:
            return (StopRelevanceRule() if p <= 0 else GateRule(IdentityRule()))(fn, *args, **kwargs)
        out = fn(*args, **kwargs)
        if binding is not None:
            binding.unruled(fn)
        return out


def product(
    input: Tensor | Number, other: Tensor | Number, *, constant_gates: bool = False, epsilon: float = DEFAULT_EPSILON
) -> Tensor:
    """a ⊙ b by ``functional.mul2``; x ⊙ sigmoid(x) gives x all relevance; CP-LRP: gates are constants; a
    complex product by ``complex_product``."""
    if any(isinstance(t, Tensor) and t.is_complex() for t in (input, other)):
        return complex_product(input, other, epsilon=epsilon)
    for gate, x in ((input, other), (other, input)):
        source = getattr(gate, "_explicit_gate_input", None)
        if source is not None and source() is x:
            return functional.mul2(x, gate.detach())
    if constant_gates:
        for mark in ("_explicit_weight", "_explicit_gate"):  # a weight first: act * sigmoid(g) holds the sigmoid
            for gate, x in ((input, other), (other, input)):
                if getattr(gate, mark, False) and carries_relevance(x):
                    return functional.mul2(x, gate.detach())
    return functional.mul2(input, other)


def complex_product(input: Tensor | Number, other: Tensor | Number, *, epsilon: float = DEFAULT_EPSILON) -> Tensor:
    """a ⊙ b of complex numbers (a rotary embedding written as x · e^{iθ}) as the map it is on (real, imaginary)
    pairs: the ε-rule there, shared uniformly by the factors that carry relevance. The relevance of a complex
    tensor travels as R_re + i R_im, as its gradient does through ``view_as_complex`` and ``view_as_real``."""
    carrying = [carries_relevance(t) for t in (input, other)]

    def on_pairs(*pairs: Tensor) -> Tensor:
        given = iter(pairs)
        a, b = (torch.view_as_complex(next(given)) if c else t for t, c in zip((input, other), carrying))
        return torch.view_as_real(a * b)

    pairs = [torch.view_as_real(t) for t, c in zip((input, other), carrying) if c]
    return torch.view_as_complex(UniformEpsilonRule(epsilon)(on_pairs, *pairs))


def quotient(input: Tensor | Number, other: Tensor | Number, *, rounding_mode: str | None = None) -> Tensor:
    """a / b with b held constant (a scaling, or a normalisation such as MoE routing weights): R_a = R."""
    other = other.detach() if isinstance(other, Tensor) else other
    return IdentityRule()(torch.div, input, other, rounding_mode=rounding_mode)


def add(
    input: Tensor | Number, other: Tensor | Number, *, alpha: Number = 1, epsilon: float = DEFAULT_EPSILON
) -> Tensor:
    """a + α·b by ``functional.add2`` (the scaling by α is an identity)."""
    return functional.add2(input, other if alpha == 1 else functional.mul2(other, alpha), epsilon=epsilon)


def subtract(
    input: Tensor | Number, other: Tensor | Number, *, alpha: Number = 1, epsilon: float = DEFAULT_EPSILON
) -> Tensor:
    """a − α·b = a + (−α·b) by ``functional.add2``."""
    return functional.add2(input, functional.mul2(other, -alpha), epsilon=epsilon)


def dropout_off(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """Dropout is off while explaining."""
    return input


#: Element-wise activations f(x) with f(0) = 0: identity rule, output marked as a possible gate.
_ACTIVATIONS = (F.silu, F.gelu, F.relu, torch.relu, torch.tanh, F.leaky_relu, F.mish, F.hardswish, F.elu)
#: Products of a tensor with a constant or of two input-dependent tensors: uniform ε-rule.
_PRODUCTS = (
    torch.einsum,
    torch.addmm,
    torch.baddbmm,
    torch.addbmm,
    torch.mv,
    torch.dot,
    torch.tensordot,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.bilinear,
    *filter(None, [getattr(F, "grouped_mm", None)]),
)  # MoE experts (newer torch)
#: Linear ops that sum or average: ε-rule.
_SUMS = (
    torch.sum,
    torch.mean,
    torch.nansum,
    torch.cumsum,
    torch.index_add,
    torch.scatter_add,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.interpolate,
    F.batch_norm,
)
#: Statistics: constants inside norm modules (see ``StatisticRule``).
_STATISTICS = (
    torch.pow,
    torch.square,
    torch.sqrt,
    torch.rsqrt,
    torch.reciprocal,
    torch.std,
    torch.var,
    torch.norm,
    torch.linalg.vector_norm,
)
#: Clamping is the identity between its bounds: an activation.
_CLAMPS = (torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max)
_DROPOUT = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)


def transformer_composite(method: str = "attnlrp", epsilon: float = DEFAULT_EPSILON) -> Composite:
    """AttnLRP (or CP-LRP) in the explicit mode for Hugging Face transformers.

    method "cp-lrp": attention weights are constants (relevance flows through the values only) and the
    activated gate of a gated MLP is a constant, as in the efficient mode.
    """
    cp = rule_set(method) == "cp-lrp"
    activation = GateRule(IdentityRule())
    rules: dict[Any, Any] = {
        # CP-LRP: routing weights are constants (MoE routers by class, Gemma 3n's AltUp modality_router by name)
        **({"*Router": StopRelevanceRule(), "*router": StopRelevanceRule()} if cp else {}),
        "*RMSNorm": IdentityRule(),  # y = x w / rms(x), rms frozen: R_x = R_y
        **dict.fromkeys(INLINE_ACTIVATIONS, activation),  # GPT-2's NewGELU and other inline activations
        F.linear: functools.partial(functional.linear_epsilon, epsilon=epsilon),
        torch.matmul: functools.partial(functional.matmul, epsilon=epsilon),
        torch.bmm: functools.partial(functional.matmul, epsilon=epsilon),
        torch.mm: functools.partial(functional.matmul, epsilon=epsilon),
        **{fn: UniformEpsilonRule(epsilon) for fn in _PRODUCTS},
        F.softmax: StopRelevanceRule() if cp else functional.softmax,
        F.scaled_dot_product_attention: functools.partial(
            functional.scaled_dot_product_attention, epsilon=epsilon, constant_weights=cp
        ),
        F.layer_norm: functools.partial(functional.layer_norm, epsilon=epsilon),
        F.rms_norm: functional.rms_norm_identity,
        **dict.fromkeys(_ACTIVATIONS, activation),
        # sigmoid(x) = softmax([x, 0])[0]: its ε-rule is the softmax rule; CP-LRP passes its relevance on as an
        # activation (identity rule) and holds it constant as a weight where it scales a product, as the engine does
        torch.sigmoid: GateRule(IdentityRule() if cp else EpsilonRule(epsilon), self_gating=True, weight=cp),
        operator.mul: functools.partial(product, constant_gates=cp, epsilon=epsilon),
        operator.truediv: quotient,
        operator.add: functools.partial(add, epsilon=epsilon),
        operator.sub: functools.partial(subtract, epsilon=epsilon),
        operator.neg: IdentityRule(),
        **dict.fromkeys(_STATISTICS, StatisticRule(epsilon)),
        **dict.fromkeys(_CLAMPS, activation),
        **{fn: EpsilonRule(epsilon) for fn in _SUMS},
        **dict.fromkeys(_DROPOUT, dropout_off),
    }
    return Composite(rules, name=f"{'cp-lrp' if cp else 'attnlrp'} (explicit, epsilon={epsilon:g})")
