"""The one colour scale of every view (terminal, HTML, figures, images, LaTeX): blue (-), white (0), red (+).

A weight in [-1, 1] (a score divided by the view's max |score|) blends white towards the full colour.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

POSITIVE = (220, 50, 47)
NEGATIVE = (38, 110, 210)


def rgb(weight: float) -> tuple[int, int, int]:
    """The colour of a weight in [-1, 1] (clipped), as 0..255 integers."""
    if weight != weight:  # NaN: no colour (white), as for zero
        weight = 0.0
    base = POSITIVE if weight >= 0 else NEGATIVE
    w = min(abs(weight), 1.0)
    return tuple(round(255 + (c - 255) * w) for c in base)


def css(weight: float) -> str:
    """``rgb(r,g,b)`` for a weight (CSS and rich both read it)."""
    return "rgb({},{},{})".format(*rgb(weight))


def ink(weight: float) -> str:
    """A text colour that reads on the weight's background: white on saturated colours, black on pale ones."""
    red, green, blue = rgb(weight)
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 150 else "black"


def token_scores(tokens: Sequence[str], scores: Sequence[float]) -> np.ndarray:
    """The scores as float64, one per token; a ValueError where the counts differ (a heatmap would drop the rest)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(tokens):
        raise ValueError(
            f"{len(tokens)} tokens but {values.size} scores (shape {values.shape}): give one score per token."
        )
    return values


def scale(values: np.ndarray) -> float:
    """The max |value| that maps to the full colour (1 where all values are 0)."""
    values = np.asarray(values, dtype=np.float64)
    top = float(np.abs(values).max()) if values.size else 0.0
    return top if top > 0 else 1.0


@lru_cache(maxsize=1)
def colormap():
    """The scale as a matplotlib colormap over [0, 1] (0.5 is white)."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("attnlrp", [np.array(NEGATIVE) / 255, (1, 1, 1), np.array(POSITIVE) / 255])


def javascript() -> str:
    """``color(w)`` in JavaScript, for the HTML pages' scripts."""
    return (
        f"const POSITIVE = {json.dumps(POSITIVE)}, NEGATIVE = {json.dumps(NEGATIVE)};\n"
        "function color(w){ const c = w>=0?POSITIVE:NEGATIVE; const a=Math.min(Math.abs(w),1);\n"
        "  return `rgb(${c.map(v=>Math.round(255+(v-255)*a)).join(',')})`; }\n"
    )


def gradient_css() -> str:
    """The CSS gradient of the legend bar."""
    return f"linear-gradient(90deg,{css(-1)},#fff,{css(1)})"
