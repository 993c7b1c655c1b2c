"""Relevance over time, for audio inputs: a strip in the terminal, figures, and an inline PNG for HTML.

Frames are the model's input frames (Whisper: 10 ms each). Views sum them into time bins and colour each bin
on the one diverging scale of every view (``palette.py``), symmetric around 0.
"""

from __future__ import annotations

import html
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .figure import figure_path
from .palette import colormap, css, token_scores
from .palette import scale as color_scale


def binned(frames: np.ndarray, count: int) -> np.ndarray:
    """``frames`` [..., F] summed into ``count`` consecutive bins of (nearly) equal length [..., count]."""
    frames = np.asarray(frames, dtype=np.float64)
    count = max(1, min(count, frames.shape[-1]))
    edges = np.linspace(0, frames.shape[-1], count + 1).round().astype(int)
    return np.add.reduceat(frames, edges[:-1], axis=-1)


def print_strip(
    frames: np.ndarray, seconds: float, title: str = "", color: bool | None = None, file=None, width: int = 64
) -> None:
    """One line of coloured time bins (``seconds`` long in all), with a time axis; without colour, the most
    relevant bins as text."""
    from rich.console import Console
    from rich.text import Text

    file = file or sys.stdout
    bins = binned(frames, width)
    weights = bins / color_scale(bins)
    step = seconds / len(bins)
    if color is None:
        color = hasattr(file, "isatty") and file.isatty() and "NO_COLOR" not in os.environ
    console = Console(file=file, force_terminal=color, no_color=not color, highlight=False, soft_wrap=False)
    if title:
        console.print(Text(title, style="bold" if color else ""))
    if color:
        strip = Text()
        for w in weights:
            strip.append(" ", style=f"on {css(w)}")
        console.print(strip)
        axis = f"0 s{' ' * max(1, len(bins) - 3 - len(f'{seconds:.2f} s'))}{seconds:.2f} s"
        console.print(Text(axis))
    else:
        top = np.argsort(-bins, kind="stable")[:5]
        listing = ", ".join(f"{i * step:.2f}-{(i + 1) * step:.2f} s [{weights[i]:+.2f}]" for i in top)
        console.print(f"most relevant time: {listing}", markup=False)


def _bars(ax, frames: np.ndarray, frame_seconds: float) -> None:
    frames = np.asarray(frames, dtype=np.float64)
    scale = color_scale(frames)
    times = np.arange(len(frames)) * frame_seconds
    ax.bar(times, frames, width=frame_seconds, align="edge", color=colormap()(0.5 + 0.5 * frames / scale))
    ax.axhline(0, color="#999", linewidth=0.5)
    ax.set_xlim(0, len(frames) * frame_seconds)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("relevance")


def _tokens(ax, tokens: Sequence[str], scores: np.ndarray, fontsize: float) -> None:
    """Tokens in a row (wrapped at the axes' width) on boxes coloured by their scores."""
    from matplotlib.font_manager import FontProperties

    scores = token_scores(tokens, scores)
    scale = color_scale(scores)
    renderer = ax.figure.canvas.get_renderer()
    font = FontProperties(family="DejaVu Sans", size=fontsize)
    width = ax.get_window_extent(renderer).width
    line = fontsize * 1.8 * ax.figure.dpi / 72
    x, y, placed = 0.0, 0.0, []
    for token, score in zip(tokens, scores):
        label = token.replace("\n", "↵") or "∅"
        w = renderer.get_text_width_height_descent(label, font, ismath=False)[0] + 4
        if x + w > width and x > 0:
            x, y = 0.0, y + line
        placed.append((x, y, label, score))
        x += w
    ax.set_xlim(0, width)
    ax.set_ylim(max(y + line, ax.get_window_extent(renderer).height), 0)
    ax.axis("off")
    for x, y, label, score in placed:
        colour = colormap()(0.5 + 0.5 * score / scale)
        ax.text(
            x,
            y + line / 2,
            label,
            fontproperties=font,
            va="center",
            parse_math=False,
            bbox=dict(facecolor=colour, edgecolor="none", pad=1),
        )


def audio_figure(
    frames: np.ndarray,
    frame_seconds: float,
    tokens: Sequence[str],
    scores: Sequence[float],
    path: str | Path | None = None,
    title: str | None = None,
    fontsize: float = 10.0,
) -> Figure:
    """The audio's relevance over time (bars), and below it the decoder's tokens on coloured boxes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(9.0, 3.6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1])
    _bars(top, frames, frame_seconds)
    if title:
        top.set_title(title, fontsize=fontsize)
    fig.tight_layout()
    _tokens(bottom, list(tokens), np.asarray(scores), fontsize)
    if path is not None:
        fig.savefig(figure_path(path), bbox_inches="tight", dpi=200)
    return fig


def alignment_figure(
    frames: np.ndarray,
    frame_seconds: float,
    generated: Sequence[str],
    path: str | Path | None = None,
    title: str | None = None,
    bins: int = 200,
) -> Figure:
    """Generated tokens (rows) x time (columns): each row's audio relevance, scaled by its max |relevance|."""
    frames = np.asarray(frames, dtype=np.float64)
    grid = binned(frames, bins)
    rows = grid / np.maximum(np.abs(grid).max(axis=1, keepdims=True), 1e-30)
    seconds = frames.shape[-1] * frame_seconds
    fig = Figure(figsize=(9.0, max(2.5, 0.25 * len(generated) + 1.2)))
    ax = fig.add_subplot()
    image = ax.imshow(
        rows,
        cmap=colormap(),
        vmin=-1,
        vmax=1,
        aspect="auto",
        interpolation="nearest",
        extent=(0, seconds, len(rows), 0),
    )
    ax.set_yticks(np.arange(len(generated)) + 0.5, [t.replace("\n", "\\n") or "∅" for t in generated], fontsize=7)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("generated token")
    fig.colorbar(image, ax=ax, fraction=0.03, label="relevance / row max |R|")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(figure_path(path), bbox_inches="tight", dpi=200)
    return fig


def png_of(fig: Figure) -> bytes:
    """A figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    return buffer.getvalue()


def relevance_png(frames: np.ndarray, frame_seconds: float) -> bytes:
    """PNG bytes of the relevance over time (bars), for the HTML views."""
    fig = Figure(figsize=(9.0, 2.2))
    _bars(fig.add_subplot(), frames, frame_seconds)
    fig.tight_layout()
    return png_of(fig)


def audio_view(png: bytes, title: str, meta: str, tokens_view: str) -> str:
    """One view of an audio explanation: the relevance over time as an inline PNG, then the view of the tokens."""
    from .html import png_uri

    return (
        f'<div class="attnlrp-view"><h1 style="font:600 18px system-ui,sans-serif;margin:0 0 4px">'
        f"{html.escape(title)}</h1>"
        f'<div style="color:#666;font:13px system-ui,sans-serif;margin-bottom:8px">{html.escape(meta)}</div>'
        f'<img alt="relevance over time" style="max-width:100%" src="{png_uri(png)}">{tokens_view}</div>'
    )
