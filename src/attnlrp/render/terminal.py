"""Token heatmaps in the terminal: rich colours on a diverging scale, or plain text with scores."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from .palette import css, ink
from .palette import scale as color_scale


def _visible(token: str) -> str:
    return token.replace("\n", "↵\n").replace("\t", "→")


def print_heatmap(
    tokens: Sequence[str],
    scores: Sequence[float],
    title: str = "",
    color: bool | None = None,
    file=None,
    scale: float | None = None,
) -> None:
    """Print tokens coloured by score (normalised by max |score|, or by ``scale``), wrapped to the terminal width.

    color=None picks colour when the output is a terminal and NO_COLOR is unset.
    """
    from rich.console import Console
    from rich.text import Text

    file = file or sys.stdout
    scores = np.asarray(scores, dtype=np.float64)
    scale = scale or color_scale(scores)
    weights = scores / scale
    if color is None:
        color = hasattr(file, "isatty") and file.isatty() and "NO_COLOR" not in os.environ
    console = Console(
        file=file,
        force_terminal=color,
        no_color=not color,
        color_system="truecolor" if color else None,
        highlight=False,
        soft_wrap=False,
    )
    if title:
        console.print(Text(title, style="bold" if color else ""))
    text = Text()
    for token, w in zip(tokens, weights):
        shown = _visible(token)
        if color:
            text.append(shown, style=f"{ink(w)} on {css(w)}")
        else:
            text.append(shown + (f"[{w:+.2f}]" if abs(w) >= 0.1 else ""))
    console.print(text)
    if color:
        legend = Text("legend: ")
        for w in (-1.0, -0.5, 0.0, 0.5, 1.0):
            legend.append(f" {w:+.1f} ", style=f"{ink(w)} on {css(w)}")
        legend.append(f"  (scaled by max |R| = {scale:.3g})")
        console.print(legend)
    else:
        console.print(f"[scores scaled by max |R| = {scale:.3g}; shown where |score| >= 0.10]", markup=False)
