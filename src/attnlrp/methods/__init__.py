"""Attribution methods by name: the LRP variants (run by ``explain`` under ``lrp``) and the baselines."""

from __future__ import annotations

from ..attach.binding import METHODS as LRP_METHODS
from ..attach.binding import normalize_method
from .attention import Attention, AttentionRollout
from .base import BASELINES, Baseline, Batch
from .gradient import Gradient, InputXGradient, IntegratedGradients
from .occlusion import Occlusion
from .random_scores import Random


def method_names() -> list[str]:
    """Every name ``explain(method=...)`` accepts: the LRP variants first, then the baselines."""
    return [*LRP_METHODS, *BASELINES]


def resolve_method(method: str | Baseline) -> str | Baseline:
    """An LRP variant's canonical name, or a baseline instance (a name gets the baseline's defaults)."""
    if isinstance(method, Baseline):
        return method
    key = str(method).lower().replace("-", "_")
    if key in BASELINES:
        return BASELINES[key]()
    try:
        return normalize_method(method)
    except ValueError:
        raise ValueError(
            f"Unknown LRP method {method!r}: choose one of {', '.join(repr(m) for m in LRP_METHODS)}, "
            f"or a baseline: {', '.join(repr(m) for m in BASELINES)}."
        ) from None


def method_name(method: str | Baseline) -> str:
    """The name results carry for a method."""
    return method.name if isinstance(method, Baseline) else method


__all__ = ["Attention", "AttentionRollout", "BASELINES", "Baseline", "Batch", "Gradient", "InputXGradient",
           "IntegratedGradients", "LRP_METHODS", "Occlusion", "Random", "method_name", "method_names",
           "resolve_method"]
