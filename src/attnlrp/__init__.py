"""attnlrp: Attention-aware Layer-wise Relevance Propagation for transformers.

One pipeline: a task adapter (``attnlrp.tasks``) x a method (``attnlrp.methods``) -> a result
(``attnlrp.results``); ``explain``, ``explain_generation`` and ``explain_image`` are its front ends, and the
engine (``attnlrp.lrp``) binds the rules to one model instance.
"""

import importlib

from .core.layer_rules import AlphaBeta, Epsilon, Gamma, LayerRule, ZPlus
from .dataset import explain_dataset
from .engine import AuditReport, Binding, CheckReport, Recorder, audit, check, lrp
from .errors import (
    AttnLRPError,
    BindingError,
    InputError,
    MethodError,
    QuantizedLayerError,
    ResultFileError,
    TargetError,
    UnruledOpError,
    UnruledOpWarning,
)
from .frontends import explain, explain_generation, explain_image
from .loading import load_model
from .methods import available_methods
from .results import (
    AudioExplanation,
    AudioGenerationExplanation,
    Explanation,
    GenerationExplanation,
    ImageExplanation,
    save_html,
    save_image_grid,
)
from .tasks import Direction, TokenLabel
from .tasks.targets import Answer, Contrast, Custom, LogProb, Token

__version__ = "0.2.0"

__all__ = [
    "AlphaBeta",
    "Answer",
    "AttnLRPError",
    "AudioExplanation",
    "AudioGenerationExplanation",
    "AuditReport",
    "Binding",
    "BindingError",
    "CheckReport",
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
    "QuantizedLayerError",
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
    "check",
    "explain",
    "explain_dataset",
    "explain_generation",
    "explain_image",
    "load_model",
    "lrp",
    "save_html",
    "save_image_grid",
    "steer",
]

#: Subpackages imported on first use: optional layers never break ``import attnlrp``.
_LAZY = ("explicit", "compat", "evaluate", "interop", "latent")


def __getattr__(name: str):
    """``attnlrp.explicit``, ``attnlrp.compat``, ``attnlrp.evaluate``, ``attnlrp.interop`` and ``attnlrp.latent``
    load on first use, and so does ``attnlrp.steer`` (from ``attnlrp.latent``)."""
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    if name == "steer":
        return importlib.import_module(".latent", __name__).steer
    raise AttributeError(f"module 'attnlrp' has no attribute {name!r}")
