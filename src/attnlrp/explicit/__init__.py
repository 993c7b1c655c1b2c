"""The explicit mode: LRP as relevance flowing backward, with every rule's math in plain sight.

The backward pass receives relevance and returns relevance: start it with ``y.backward(y)`` and read
``x.grad`` as the relevance of x. ``functional`` holds the rules as functions, ``rules`` wraps any
module or function, ``Composite`` applies them to one model instance, ``transformer_composite``
is the ready composite for Hugging Face transformers. See ``docs/explicit.md``.
"""

from . import functional
from .composite import Composite, ExplicitBinding
from .conservation import ConservationReport, ModuleRelevance, conservation_check
from .presets import GateRule, StatisticRule, transformer_composite
from .rules import (
    EpsilonRule,
    IdentityRule,
    Rule,
    StopRelevanceRule,
    TaylorDecompositionRule,
    UniformEpsilonRule,
    UniformRule,
)

__all__ = [
    "Composite",
    "ConservationReport",
    "EpsilonRule",
    "ExplicitBinding",
    "GateRule",
    "IdentityRule",
    "ModuleRelevance",
    "Rule",
    "StatisticRule",
    "StopRelevanceRule",
    "TaylorDecompositionRule",
    "UniformEpsilonRule",
    "UniformRule",
    "conservation_check",
    "functional",
    "transformer_composite",
]
