"""Binding rules to a model instance: ``lrp``, ``audit`` and the ``Recorder``."""

from .audit import AuditReport, audit
from .binding import METHODS, Binding, BindingError, UnruledOpError, UnruledOpWarning, lrp
from .recorder import Recorder

__all__ = ["AuditReport", "audit", "METHODS", "Binding", "BindingError", "UnruledOpError", "UnruledOpWarning",
           "lrp", "Recorder"]
