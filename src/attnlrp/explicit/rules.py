"""Rules that wrap any module or function: its backward turns output relevance into input relevance.

``rule(fn, *args, **kwargs)`` runs ``fn`` once. Every floating tensor argument that requires grad
carries relevance; everything else (weights, masks, cos/sin tables) is a constant. The rules that
need a Jacobian use ``fn``'s own vector-Jacobian product, so they work on any differentiable function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .functional import DEFAULT_EPSILON, stabilize, sum_to

Reference = Tensor | float | Callable[[Tensor], Tensor]


def carries_relevance(x: Any) -> bool:
    """A floating (or complex) tensor that requires grad: an input-dependent value that relevance flows to."""
    return isinstance(x, Tensor) and x.requires_grad and (x.is_floating_point() or x.is_complex())


def vjp(output: Tensor, inputs: Sequence[Tensor], vector: Tensor) -> list[Tensor]:
    """vectorᵀ ∂output/∂input for each input (zeros where the output does not depend on it)."""
    if not output.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    with torch.enable_grad():
        grads = torch.autograd.grad(output, inputs, vector, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def jvp(output: Tensor, inputs: Sequence[Tensor], tangents: Sequence[Tensor]) -> Tensor:
    """∂output/∂input · tangent summed over the inputs (by differentiating a VJP in its vector)."""
    with torch.enable_grad():
        probe = torch.zeros_like(output, requires_grad=True)
        grads = torch.autograd.grad(output, inputs, probe, create_graph=True, allow_unused=True)
        pairs = [(g, t) for g, t in zip(grads, tangents) if g is not None and g.requires_grad]
        if not pairs:
            return torch.zeros_like(output)
        (result,) = torch.autograd.grad([g for g, _ in pairs], probe, [t for _, t in pairs], retain_graph=True)
    return result


class _Relevance(Function):
    """Forward: ``call(*inputs)``; backward: ``rule.relevance`` maps the output's relevance to the inputs'."""

    @staticmethod
    def forward(ctx, rule: Rule, call: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
        if rule.needs_graph:
            with torch.enable_grad():
                inputs = tuple(x.detach().requires_grad_() for x in inputs)
                output = call(*inputs)
        else:
            inputs = tuple(x.detach() for x in inputs)
            output = call(*inputs)
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(rule).__name__} wraps functions with one tensor output, got {type(output).__name__}: "
                "wrap the submodule or function that computes the tensor instead."
            )
        ctx.rule, ctx.call, ctx.inputs, ctx.output = rule, call, inputs, output
        # a copy where the rule reads the output later: the model may modify its result in place
        return output.detach().clone() if rule.needs_graph else output.detach()

    @staticmethod
    def backward(ctx, relevance: Tensor):
        return (None, None, *ctx.rule.relevance(ctx.call, ctx.inputs, ctx.output, relevance))


class Rule:
    """Base class: ``rule(fn, *args, **kwargs)`` computes fn; its backward is ``relevance``."""

    #: whether ``relevance`` differentiates fn (then fn's graph is kept from the forward pass)
    needs_graph = True

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        leaves, spec = tree_flatten((args, kwargs))
        slots = [i for i, leaf in enumerate(leaves) if carries_relevance(leaf)]
        if not slots or not torch.is_grad_enabled():
            return fn(*args, **kwargs)

        def call(*inputs: Tensor) -> Any:
            filled = list(leaves)
            for i, x in zip(slots, inputs):
                filled[i] = x
            call_args, call_kwargs = tree_unflatten(filled, spec)
            return fn(*call_args, **call_kwargs)

        return _Relevance.apply(self, call, *(leaves[i] for i in slots))

    def relevance(
        self, call: Callable[..., Tensor], inputs: tuple[Tensor, ...], output: Tensor, relevance: Tensor
    ) -> Sequence[Tensor | None]:
        """The relevance of each input, given the relevance of the output."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class EpsilonRule(Rule):
    """R_x = x ⊙ VJP(R / (z + ε sign z)): the ε-rule (a bias or constant input keeps its share)."""

    def __init__(self, epsilon: float = DEFAULT_EPSILON):
        self.epsilon = epsilon

    def relevance(self, call, inputs, output, relevance):
        grads = vjp(output, inputs, relevance / stabilize(output, self.epsilon))
        return [x * g for x, g in zip(inputs, grads)]


class UniformEpsilonRule(EpsilonRule):
    """The ε-rule shared uniformly by the n input-dependent inputs: R_x = x ⊙ VJP(R / (z + ε sign z)) / n."""

    def relevance(self, call, inputs, output, relevance):
        return [r / len(inputs) for r in super().relevance(call, inputs, output, relevance)]


class UniformRule(Rule):
    """Each of the n input-dependent inputs of an element-wise function gets R / n."""

    needs_graph = False

    def relevance(self, call, inputs, output, relevance):
        return [sum_to(relevance / len(inputs), x.shape, x.dtype) for x in inputs]


class IdentityRule(Rule):
    """R_x = R_y for an element-wise function of one input-dependent tensor (activations, scalings)."""

    needs_graph = False

    def relevance(self, call, inputs, output, relevance):
        if len(inputs) != 1:
            raise ValueError(
                f"IdentityRule passes all relevance to one input, but {len(inputs)} inputs carry relevance: "
                "use UniformRule or EpsilonRule to share it."
            )
        return [sum_to(relevance, inputs[0].shape, inputs[0].dtype)]


class StopRelevanceRule(Rule):
    """The output is a constant: no relevance flows back through it (CP-LRP's attention weights, gates)."""

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, fn(*args, **kwargs))


class ScopedRule(Rule):
    """A function rule that depends on the module calling it. Inside a composite, ``scoped(binding, fn, ...)`` runs
    (``binding.in_norm()`` says whether a norm module calls it, ``binding.unruled(fn)`` reports an op it can't
    rule); called plainly, it rules as outside any norm. It rules torch functions, not modules."""

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.scoped(None, fn, *args, **kwargs)

    def scoped(self, binding: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class TaylorDecompositionRule(Rule):
    """First-order Taylor decomposition: R_x = (x − x̃) ⊙ J(x̃)ᵀ(R / d).

    reference: the expansion point x̃ (a tensor, a number, or a function of x); None expands at x
    itself towards zero, R_x = x ⊙ J(x)ᵀ(R / d) (AttnLRP's derivation). bias: with the bias term,
    d = f(x), so the zero-order term f(x̃) and the remainder keep their share (for x̃ = None this is
    the ε-rule); without it, d = J(x̃)(x − x̃), the first-order terms share all relevance (conservative).
    """

    def __init__(self, reference: Reference | None = None, bias: bool = True, epsilon: float = DEFAULT_EPSILON):
        self.reference, self.bias, self.epsilon = reference, bias, epsilon

    def _point(self, x: Tensor) -> Tensor:
        ref = self.reference(x) if callable(self.reference) else self.reference
        return torch.as_tensor(ref, dtype=x.dtype, device=x.device).expand_as(x).detach().requires_grad_()

    def relevance(self, call, inputs, output, relevance):
        if self.reference is None:
            points, expanded, deltas = inputs, output, inputs
        else:
            points = tuple(self._point(x) for x in inputs)
            with torch.enable_grad():
                expanded = call(*points)
            deltas = tuple(x - p.detach() for x, p in zip(inputs, points))
        denominator = output if self.bias else jvp(expanded, points, deltas)
        grads = vjp(expanded, points, relevance / stabilize(denominator, self.epsilon))
        return [d * g for d, g in zip(deltas, grads)]
