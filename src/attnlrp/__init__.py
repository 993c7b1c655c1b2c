"""attnlrp: Attention-aware Layer-wise Relevance Propagation for transformers."""

from .explain import InputError, explain, explain_generation
from .loading import load_model
from .results import Explanation, GenerationExplanation, ResultFileError, save_html
from .targets import Answer, Contrast, Custom, LogProb, TargetError, Token
from .attach import AuditReport, Binding, BindingError, Recorder, UnruledOpError, UnruledOpWarning, audit, lrp
from .layer_rules import AlphaBeta, Epsilon, Gamma, LayerRule, ZPlus
from .image_results import ImageExplanation, save_image_grid
from .vision import explain_image

__version__ = "0.1.0"

__all__ = ["Answer", "Contrast", "Custom", "Explanation", "GenerationExplanation", "InputError", "LogProb",
           "ResultFileError", "TargetError", "Token", "explain", "explain_generation", "save_html",
           "AuditReport", "Binding", "BindingError", "Recorder", "UnruledOpError", "UnruledOpWarning", "audit",
           "load_model", "lrp", "__version__",
           "AlphaBeta", "Epsilon", "Gamma", "LayerRule", "ZPlus", "ImageExplanation", "explain_image", "save_image_grid"]


def __getattr__(name: str):
    """``attnlrp.explicit`` (the explicit mode) is imported on first use."""
    if name == "explicit":
        import importlib

        return importlib.import_module(".explicit", __name__)
    raise AttributeError(f"module 'attnlrp' has no attribute {name!r}")
