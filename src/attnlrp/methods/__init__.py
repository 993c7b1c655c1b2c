"""Attribution methods, one registry: the LRP methods (run by the engine) and the baselines.

``available_methods()`` lists them; ``get_method(name, **options)`` is the one place names are resolved.
A new method is one registered class: subclass ``Method``, set ``name`` and ``description``, implement
``attribute(batch)``.
"""

from .attention import Attention, AttentionRollout
from .base import REGISTRY, Method, available_methods, get_method, method_names
from .gradient import Gradient, InputXGradient, IntegratedGradients
from .lrp import CPLRP, AttnLRP, LRPMethod
from .occlusion import Occlusion
from .random_scores import Random

__all__ = [
    "CPLRP",
    "REGISTRY",
    "Attention",
    "AttentionRollout",
    "AttnLRP",
    "Gradient",
    "InputXGradient",
    "IntegratedGradients",
    "LRPMethod",
    "Method",
    "Occlusion",
    "Random",
    "available_methods",
    "get_method",
    "method_names",
]
