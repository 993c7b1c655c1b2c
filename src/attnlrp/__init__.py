"""attnlrp: Attention-aware Layer-wise Relevance Propagation for transformers."""

from .loading import load_model
from .attach import AuditReport, Binding, BindingError, Recorder, UnruledOpError, UnruledOpWarning, audit, lrp

__version__ = "0.1.0"

__all__ = ["AuditReport", "Binding", "BindingError", "Recorder", "UnruledOpError", "UnruledOpWarning", "audit",
           "load_model", "lrp", "__version__"]
