"""Faithfulness and ground-truth metrics on plain arrays, and confidence intervals for their means."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: The ERASER fractions of the most relevant tokens for comprehensiveness and sufficiency.
AOPC_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)


def ranking(scores: Sequence[float], most_relevant_first: bool = True, exclude: Sequence[int] = ()) -> np.ndarray:
    """Positions by relevance (ties keep their order); ``exclude`` positions are left out of the ranking."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores if most_relevant_first else scores, kind="stable")
    return order[~np.isin(order, list(exclude))] if len(exclude) else order


def counts(n: int, steps: int) -> list[int]:
    """How many tokens are perturbed at each of ``steps + 1`` evenly spaced fractions 0, 1/steps, ..., 1."""
    return [round(n * k / steps) for k in range(steps + 1)]


def area(curve: Sequence[float]) -> float:
    """Area under a curve sampled at evenly spaced fractions of [0, 1] (trapezoid rule)."""
    y = np.asarray(curve, dtype=np.float64)
    return float(((y[1:] + y[:-1]) / 2).mean()) if len(y) > 1 else float(y[0])


def abpc(morf: Sequence[float], lerf: Sequence[float]) -> float:
    """Area between the perturbation curves, LeRF minus MoRF: large when the top-ranked tokens matter most."""
    return area(lerf) - area(morf)


def aopc(clean: float, perturbed: Sequence[float]) -> float:
    """Average drop of the explained value over perturbation steps: mean of y(x) - y(x perturbed)."""
    return float(np.mean(clean - np.asarray(perturbed, dtype=np.float64)))


def top_counts(n: int, fractions: Sequence[float] = AOPC_FRACTIONS) -> list[int]:
    """Token counts for the ERASER fractions: at least one token, at most ``n``."""
    return [min(n, max(1, math.ceil(f * n))) for f in fractions]


def pointing_game(scores: Sequence[float], evidence: Sequence[int], exclude: Sequence[int] = ()) -> float:
    """1.0 when the most relevant position (outside ``exclude``) is an evidence position, else 0.0."""
    return float(ranking(scores, exclude=exclude)[0] in set(evidence))


def recovery_at_k(
    scores: Sequence[float], evidence: Sequence[int], k: int | None = None, exclude: Sequence[int] = ()
) -> float:
    """The share of the k most relevant positions that are evidence, out of min(k, |evidence|); k defaults to
    the evidence's size (then it is the R-precision)."""
    evidence = set(evidence)
    if not evidence:
        raise ValueError("recovery@k needs at least one evidence position.")
    k = len(evidence) if k is None else k
    top = ranking(scores, exclude=exclude)[:k]
    return len(evidence.intersection(top.tolist())) / min(k, len(evidence))


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean (resampling items with replacement; fixed seed)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, 95% bootstrap interval and count of a list of per-item values."""
    low, high = bootstrap_ci(values)
    return {"mean": float(np.mean(values)) if len(values) else math.nan, "low": low, "high": high, "n": len(values)}
