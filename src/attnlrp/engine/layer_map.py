"""Which module of a model gets which layer rule: ``lrp(model, layer_rules=...)``.

A mapping ``{nn.Conv2d: Gamma(0.25), nn.Linear: Epsilon()}`` or a list of ``(types, rule)`` pairs
(the first matching entry wins, as in Zennit's LayerMapComposite), or a Zennit composite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..core.layer_rules import LayerRule
from .quantized import backend_of

LayerRules = Mapping[Any, LayerRule] | Sequence[tuple[Any, LayerRule]] | Any


def _is_zennit_composite(spec: Any) -> bool:
    return hasattr(spec, "module_map") and any(c.__module__.startswith("zennit.") for c in type(spec).__mro__)


def _pairs(spec: LayerRules) -> list[tuple[tuple[type, ...], LayerRule]]:
    items = list(spec.items()) if isinstance(spec, Mapping) else list(spec)
    pairs = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"layer_rules entries must be (module type, rule) pairs, got {item!r}.")
        types, rule = item
        types = types if isinstance(types, tuple) else (types,)
        if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
            raise TypeError(f"layer_rules keys must be nn.Module subclasses (e.g. nn.Linear), got {item[0]!r}.")
        if not isinstance(rule, LayerRule):
            raise TypeError(
                f"layer_rules maps {item[0]!r} to {rule!r}, which is not an attnlrp rule: use attnlrp.Gamma, "
                "Epsilon, ZPlus or AlphaBeta (a whole Zennit composite is accepted too)."
            )
        pairs.append((types, rule))
    return pairs


def resolve(spec: LayerRules | None, modules: list[tuple[str, nn.Module]]) -> dict[nn.Module, LayerRule]:
    """The rule of each module the spec selects (modules as ``model.named_modules()`` lists them)."""
    if spec is None:
        return {}
    if _is_zennit_composite(spec):
        from ..interop.zennit import composite_rules

        return composite_rules(spec, modules)
    pairs = _pairs(spec)
    chosen = {}
    for _, module in modules:
        # A quantized linear layer is a linear layer, whether or not its class is nn.Linear's (torch's dynamic
        # quantization's isn't): a rule for every nn.Linear selects it, and quantized.check refuses it by name.
        quantized = backend_of(module) is not None
        rule = next(
            (r for types, r in pairs if isinstance(module, types) or (quantized and issubclass(nn.Linear, types))),
            None,
        )
        if rule is not None:
            if not quantized:
                rule.check(module)
            chosen[module] = rule
    return chosen
