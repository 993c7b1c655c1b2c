"""Static figures with matplotlib (no LaTeX): token heatmaps laid out like text and the generation
matrix. PNG, SVG or PDF by the file's extension."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from ..errors import InputError
from .palette import colormap, token_scores
from .palette import scale as color_scale

#: The formats a figure is saved in, by the file name's ending (those of images drawn pixel by pixel too).
FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "webp", "tiff", "bmp", "gif", "eps", "ps")


def figure_path(path: Any) -> Any:
    """``path`` checked to end in one of ``FORMATS`` (a name without one was written with ".png" added, so the
    file named did not exist), with its folder made; a file object passes as it is."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in FORMATS:
        raise InputError(
            f"Figures are saved in the format the file name ends in, and {path.name!r} ends in none of "
            f"{', '.join(FORMATS)}: end it in .png, .svg or .pdf ({path.stem or 'figure'}.png, say)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(figure_path(path), bbox_inches="tight", dpi=SAVE_DPI)
    return fig


#: The resolution figures are saved at (token widths are measured at it, so that the glyphs' hinting matches).
SAVE_DPI = 200

#: Inches an image takes beside a token heatmap.
_SIDE = 2.2


def _advance(renderer, text: str, font: FontProperties) -> float:
    """How far ``text`` moves the pen, leading and trailing spaces and side bearings included (a text's extent
    covers its ink only, which left apostrophes overlapping and spaces missing): measured between two bars."""

    def width(t: str) -> float:
        return renderer.get_text_width_height_descent(t, font, ismath=False)[0]

    return (width("|" + text + "|") - width("||")) * 72 / renderer.dpi  # in points


def token_heatmap(
    tokens: Sequence[str],
    scores: Sequence[float],
    path: str | Path | None = None,
    width: float = 8.0,
    fontsize: float = 11.0,
    title: str | None = None,
    image: np.ndarray | None = None,
    scale: float | None = None,
) -> Figure:
    """Tokens on coloured boxes, wrapped like running text, with a colour bar; ``image`` (RGB [H, W, 3] in [0, 1],
    e.g. an image's relevance drawn over it) goes left of the text. ``scale``: the |score| of the full colour
    (default: the max |score|; larger scores are drawn at the full colour)."""
    scores = token_scores(tokens, scores)
    scale = scale or color_scale(scores)
    dpi = 100.0
    font = FontProperties(family="DejaVu Sans", size=fontsize)
    measure = Figure(dpi=SAVE_DPI)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(measure).get_renderer()
    line = fontsize * 1.7 * dpi / 72
    right = width * dpi

    def advance(text: str) -> float:
        return _advance(renderer, text, font) * dpi / 72

    boxes, x, y = [], 0.0, 0.0
    word = 0  # where the word being laid out starts among the boxes: lines break between words only
    for token, score in zip(tokens, scores):
        for k, part in enumerate(token.split("\n")):
            if k:
                x, y, word = 0.0, y + line, len(boxes)
            if not part:
                continue
            if part[0].isspace():
                word = len(boxes)
            w = advance(part)
            if x + w > right and x > 0:
                moved = boxes[word:]  # the word so far goes along, unless it starts the line already
                if moved and moved[0][0] > 0 and all(b[1] == y for b in moved):
                    del boxes[word:]
                    x, y = 0.0, y + line
                    for _, _, mw, mpart, mscore in moved:
                        mpart = mpart.lstrip() if x == 0 else mpart
                        mw = advance(mpart)
                        boxes.append((x, y, mw, mpart, mscore))
                        x += mw
                else:  # the word is longer than a line: break inside it
                    x, y = 0.0, y + line
            if x == 0 and part[0].isspace():  # no line starts with a token's leading space
                part = part.lstrip()
                w = advance(part)
            boxes.append((x, y, w, part, score))
            x += w
    height_px = y + line
    side = 0.0 if image is None else _SIDE
    tall = 0.0 if image is None else side * min(1.0, image.shape[0] / image.shape[1])  # the image's height
    fig = Figure(figsize=(width + side, max(height_px / dpi, tall) + (0.9 if title else 0.6)), dpi=dpi)
    text_height = height_px / (fig.get_figheight() * dpi)
    top = 1 - (0.35 / fig.get_figheight() if title else 0.02)
    left = side / fig.get_figwidth()
    ax = fig.add_axes((left, top - text_height, 1 - left, text_height))
    if image is not None:
        picture = fig.add_axes((0, top - tall / fig.get_figheight(), 0.95 * left, tall / fig.get_figheight()))
        picture.imshow(image, interpolation="nearest")
        picture.set_anchor("N")  # top-aligned with the text
        picture.axis("off")
    ax.set_xlim(0, right)
    ax.set_ylim(height_px, 0)
    ax.axis("off")
    for x, y, w, part, score in boxes:
        ax.add_patch(_box(x, y, w, line, colormap()(0.5 + 0.5 * score / scale)))
        ax.text(x, y + line * 0.5, part, fontproperties=font, va="center", ha="left", usetex=False, parse_math=False)
    if title:
        fig.suptitle(title, fontsize=fontsize, y=1 - 0.1 / fig.get_figheight(), va="top")
    bar = fig.add_axes((0.3, 0.02, 0.4, 0.12 / fig.get_figheight()))
    bar.imshow(np.linspace(-1, 1, 256)[None, :], cmap=colormap(), aspect="auto", extent=(-scale, scale, 0, 1))
    bar.set_yticks([])
    bar.tick_params(labelsize=fontsize * 0.7)
    return _save(fig, path)


def _box(x: float, y: float, w: float, h: float, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y + h * 0.1), w, h * 0.8, facecolor=color, edgecolor="none")


def _label(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t") or "∅"


def generation_matrix(
    generated: Sequence[str],
    tokens: Sequence[str],
    matrix: np.ndarray,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Generated tokens (rows) x all tokens (columns); each row scaled by its max |relevance|."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix / np.maximum(np.abs(matrix).max(axis=1, keepdims=True), 1e-30)
    fig = Figure(figsize=(max(4.0, 0.22 * len(tokens) + 1.5), max(2.5, 0.25 * len(generated) + 1.2)))
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap=colormap(), vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(tokens)), [_label(t) for t in tokens], rotation=90, fontsize=7)
    ax.set_yticks(range(len(generated)), [_label(t) for t in generated], fontsize=7)
    ax.set_xlabel("input and generated tokens")
    ax.set_ylabel("generated token")
    fig.colorbar(image, ax=ax, fraction=0.03, label="relevance / row max |R|")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
