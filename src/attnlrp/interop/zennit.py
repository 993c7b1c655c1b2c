"""Zennit composites inside attnlrp's efficient mode.

Each module a composite maps gets Zennit's own rule (its input and parameter modifiers, gradient
mapper and reducer, run on the module as Zennit runs them); the input relevance R_x it yields is
turned into the signal g_x = R_x / x, so that ``x * x.grad`` is Zennit's relevance. Sign-split rules
(ε, γ, z⁺, α-β, Norm) give R_x ∝ x, so this is exact; rules that give relevance to exactly-zero
inputs (ZBox, Flat, WSquare) lose that part, with a warning.
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..core.layer_rules import LayerRule
from ..errors import ZennitRelevanceWarning


def _placeholder(name: str) -> types.ModuleType:
    module = types.ModuleType(name, "Stands in for Zennit's torchvision canonizers where torchvision is missing.")

    def missing(attribute: str):
        raise AttributeError(f"{name}.{attribute} is not available: it needs torchvision (pip install torchvision).")

    module.__getattr__ = missing
    return module


def import_zennit() -> types.ModuleType:
    """Import zennit, also where torchvision is missing (only its ResNet/VGG canonizers need it)."""
    try:
        import zennit
    except ModuleNotFoundError as error:
        if error.name == "zennit":
            raise ImportError("Zennit interoperability needs zennit: pip install zennit") from error
        if error.name != "torchvision":
            raise
        sys.modules["zennit.torchvision"] = _placeholder("zennit.torchvision")
        import zennit
    return zennit


class ZennitRule(LayerRule):
    """A Zennit rule (a hook template of a composite) applied in the efficient mode."""

    def __init__(self, hook: Any):
        core = import_zennit().core
        if not isinstance(hook, (core.BasicHook, import_zennit().rules.Pass)):
            raise TypeError(
                f"Zennit's {type(hook).__name__} is not an LRP rule attnlrp can run (BasicHook rules and Pass are)."
            )
        self.hook = hook

    def check(self, module: nn.Module) -> None:
        """Zennit's composite decided where its rule applies."""

    def input_gradient(self, module: nn.Module, x: Tensor, z: Tensor, g: Tensor) -> Tensor:
        relevance_out = g * z
        if isinstance(self.hook, import_zennit().rules.Pass):
            if relevance_out.shape != x.shape:
                raise ValueError(f"Zennit's Pass rule needs an element-wise module, not {type(module).__name__}.")
            relevance = relevance_out
        else:
            relevance = self._relevance(module, x, relevance_out)
        return _per_input(relevance, x, module)

    def _relevance(self, module: nn.Module, x: Tensor, relevance_out: Tensor) -> Tensor:
        """R_x as Zennit's BasicHook computes it from the output relevance."""
        param_mod = import_zennit().core.ParamMod
        hook, forward = self.hook, type(module).forward  # the class forward: the instance one is ours
        inputs, outputs = [], []
        with torch.enable_grad():
            for in_mod, p_mod, out_mod in zip(hook.input_modifiers, hook.param_modifiers, hook.output_modifiers):
                modified_input = in_mod(x.detach().clone()).requires_grad_()
                with param_mod.ensure(p_mod)(module) as modified:
                    outputs.append(out_mod(forward(modified, modified_input)))
                inputs.append(modified_input)
        grads = torch.autograd.grad(outputs, inputs, grad_outputs=hook.gradient_mapper(relevance_out, outputs))
        return hook.reducer(inputs, grads)

    def __repr__(self) -> str:
        return f"zennit {type(self.hook).__name__}"


def _per_input(relevance: Tensor, x: Tensor, module: nn.Module) -> Tensor:
    """R_x / x, 0 where x is 0 (warning where relevance is lost there)."""
    zero = x == 0
    lost = float(relevance[zero].abs().sum()) if zero.any() else 0.0
    if lost > 0:
        warnings.warn(
            f"A Zennit rule at a {type(module).__name__} gave relevance (Σ|R| = {lost:.3g}) to exactly-zero inputs; "
            "in the x * grad form that part is dropped. Use a rule proportional to the input there "
            "(ε, γ, z⁺, α-β).",
            ZennitRelevanceWarning,
            stacklevel=2,
        )
    return torch.where(zero, 0.0, relevance / torch.where(zero, 1.0, x))


def composite_rules(composite: Any, modules: list[tuple[str, nn.Module]]) -> dict[nn.Module, LayerRule]:
    """The rule of each module as the Zennit composite maps it (modules in ``named_modules()`` order)."""
    if getattr(composite, "canonizers", None):
        raise ValueError(
            "The Zennit composite has canonizers; attnlrp does not apply them. Apply them to the model "
            "yourself (handles = canonizer.apply(model) ... handle.remove()), and pass a composite without."
        )
    context: dict = {}
    chosen = {}
    for name, module in modules:
        template = composite.module_map(context, name, module)
        if template is not None:
            chosen[module] = ZennitRule(template)
    return chosen
