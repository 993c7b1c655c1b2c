"""attnlrp: Attention-aware Layer-wise Relevance Propagation for transformers."""

from .explain import InputError, explain, explain_generation
from .loading import load_model
from .results import Explanation, GenerationExplanation, ResultFileError, save_html
from .targets import Answer, Contrast, Custom, LogProb, TargetError, Token
from .attach import AuditReport, Binding, BindingError, Recorder, UnruledOpError, UnruledOpWarning, audit, lrp

__version__ = "0.1.0"

__all__ = ["Answer", "Contrast", "Custom", "Explanation", "GenerationExplanation", "InputError", "LogProb",
           "ResultFileError", "TargetError", "Token", "explain", "explain_generation", "save_html",
           "AuditReport", "Binding", "BindingError", "Recorder", "UnruledOpError", "UnruledOpWarning", "audit",
           "load_model", "lrp", "__version__"]
