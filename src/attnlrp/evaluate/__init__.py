"""Faithfulness you can measure: perturbation metrics, ground-truth suites, baselines compared, reports."""

from .metrics import abpc, aopc, bootstrap_ci, pointing_game, recovery_at_k
from .perturbation import Curves, perturbation_curves
from .report import write_report
from .runner import run_suite, score_items
from .suites import SUITES, Item, kept_items

__all__ = [
    "SUITES",
    "Curves",
    "Item",
    "abpc",
    "aopc",
    "bootstrap_ci",
    "kept_items",
    "perturbation_curves",
    "pointing_game",
    "recovery_at_k",
    "run_suite",
    "score_items",
    "write_report",
]
