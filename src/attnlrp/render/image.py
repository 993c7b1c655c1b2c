"""Relevance maps of images as PNGs: a heatmap, an overlay on the image, and a grid of several.

Colours are the diverging scale of the other views (blue -, white 0, red +), symmetric around 0.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imsave

from .figure import figure_path
from .palette import colormap, scale


def colours(scores: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] for each score, on a range symmetric around 0."""
    scores = np.asarray(scores, dtype=np.float64)
    return colormap()(0.5 + 0.5 * scores / scale(scores))[..., :3]


def blend(image: np.ndarray, scores: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """The relevance colours over a greyed image; opacity alpha * |R| / max |R|."""
    scores = np.asarray(scores, dtype=np.float64)
    grey = (np.asarray(image, dtype=np.float64) / 255.0).mean(-1, keepdims=True).repeat(3, -1)
    weight = alpha * np.abs(scores)[..., None] / scale(scores)
    return (1 - weight) * (0.25 + 0.5 * grey) + weight * colours(scores)


def _upscale(rgb: np.ndarray, size: int) -> np.ndarray:
    factor = max(1, size // max(rgb.shape[:2]))
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def png(rgb: np.ndarray, size: int = 256) -> bytes:
    """PNG bytes of an RGB array in [0, 1], enlarged (nearest neighbour) to about ``size`` pixels."""
    buffer = io.BytesIO()
    imsave(buffer, _upscale(rgb, size), format="png")
    return buffer.getvalue()


def heatmap(scores: np.ndarray, path: str | Path, size: int = 256) -> Path:
    """The relevance map alone, enlarged (nearest neighbour) to about ``size`` pixels."""
    path = figure_path(path)
    imsave(path, _upscale(colours(scores), size))
    return path


def overlay(image: np.ndarray, scores: np.ndarray, path: str | Path, alpha: float = 0.8, size: int = 256) -> Path:
    """The relevance blended over the image, enlarged to about ``size`` pixels."""
    path = figure_path(path)
    imsave(path, _upscale(blend(image, scores, alpha), size))
    return path


def grid(
    panels: Sequence[tuple[np.ndarray | None, np.ndarray]],
    titles: Sequence[str],
    path: str | Path,
    columns: int | None = None,
    show_images: bool = False,
) -> Path:
    """Panels (image or None, scores) with titles, in rows of ``columns``; each scaled to its own max |R|.

    show_images: each row of overlays gets a row of the plain images above it."""
    columns = columns or len(panels)
    per_row = 2 if show_images else 1
    rows = -(-len(panels) // columns) * per_row
    fig = Figure(figsize=(2.2 * columns, 2.4 * rows))
    for i, ((image, scores), title) in enumerate(zip(panels, titles)):
        row, column = divmod(i, columns)
        ax = fig.add_subplot(rows, columns, row * per_row * columns + column + 1)
        if show_images:
            if image is not None:
                ax.imshow(image, interpolation="nearest")
            ax.axis("off")
            ax = fig.add_subplot(rows, columns, (row * per_row + 1) * columns + column + 1)
        ax.imshow(colours(scores) if image is None else blend(image, scores), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = figure_path(path)
    fig.savefig(path, dpi=150)
    return path
