"""attnlrp: Attention-aware Layer-wise Relevance Propagation for transformers.

One pipeline: a task adapter (``attnlrp.tasks``) x a method (``attnlrp.methods``) -> a result
(``attnlrp.results``); ``explain``, ``explain_generation`` and ``explain_image`` are its front ends, and the
engine (``attnlrp.lrp``) binds the rules to one model instance.
"""

import importlib

from .core.layer_rules import AlphaBeta, Epsilon, Gamma, LayerRule, ZPlus
from .engine import AuditReport, Binding, Recorder, audit, lrp
from .errors import (
    AttnLRPError,
    BindingError,
    InputError,
    MethodError,
    ResultFileError,
    TargetError,
    UnruledOpError,
    UnruledOpWarning,
)
from .dataset import explain_dataset
from .frontends import explain, explain_generation, explain_image
from .loading import load_model
from .methods import available_methods
from .results import Explanation, GenerationExplanation, ImageExplanation, save_html, save_image_grid
from .tasks import Direction, TokenLabel
from .tasks.targets import Answer, Contrast, Custom, LogProb, Token

__version__ = "0.1.0"

__all__ = [
    "AlphaBeta",
    "Answer",
    "AttnLRPError",
    "AuditReport",
    "Binding",
    "BindingError",
    "Contrast",
    "Custom",
    "Direction",
    "Epsilon",
    "Explanation",
    "Gamma",
    "GenerationExplanation",
    "ImageExplanation",
    "InputError",
    "LayerRule",
    "LogProb",
    "MethodError",
    "Recorder",
    "ResultFileError",
    "TargetError",
    "Token",
    "TokenLabel",
    "UnruledOpError",
    "UnruledOpWarning",
    "ZPlus",
    "__version__",
    "audit",
    "available_methods",
    "explain",
    "explain_dataset",
    "explain_generation",
    "explain_image",
    "load_model",
    "lrp",
    "save_html",
    "save_image_grid",
]

#: Subpackages imported on first use: optional layers never break ``import attnlrp``.
_LAZY = ("explicit", "compat", "evaluate", "interop")


def __getattr__(name: str):
    """``attnlrp.explicit``, ``attnlrp.compat``, ``attnlrp.evaluate`` and ``attnlrp.interop`` load on first use."""
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'attnlrp' has no attribute {name!r}")
