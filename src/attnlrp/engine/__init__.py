"""The engine: binds the rules to one model instance (``lrp``), reports ops without a rule (``audit``),
measures conservation module by module (``check``), records relevance inside the model (``Recorder``)
and taps the inputs that carry relevance."""

from .audit import AuditReport, audit
from .binding import RULE_SETS, Binding, binding_of, lrp, rule_set
from .check import CheckReport, check
from .checkpointing import gradient_checkpointing
from .inputs import InputTap, input_embeddings
from .recorder import Recorder, path_matches

__all__ = [
    "RULE_SETS",
    "AuditReport",
    "Binding",
    "CheckReport",
    "InputTap",
    "Recorder",
    "audit",
    "binding_of",
    "check",
    "gradient_checkpointing",
    "input_embeddings",
    "lrp",
    "path_matches",
    "rule_set",
]
