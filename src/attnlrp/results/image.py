"""Image results: pixel relevance of one image that draws, aggregates, saves and loads itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .base import Result


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class ImageExplanation(Result):
    """Relevance of each pixel (summed over channels) for one explained scalar of an image model."""

    scores: np.ndarray
    target: str
    value: float
    method: str
    model: str = ""
    target_index: int | None = None
    image: np.ndarray | None = None
    rules: str = ""
    patch_size: int | None = None

    kind = "image"

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.scores.ndim != 2:
            raise ValueError(f"scores must be a [height, width] map, got shape {self.scores.shape}.")
        if self.image is not None:
            self.image = np.asarray(self.image, dtype=np.uint8)
            if self.image.shape != (*self.scores.shape, 3):
                raise ValueError(f"image must be [height, width, 3] like the scores, got shape {self.image.shape}.")

    @property
    def total(self) -> float:
        """Σ relevance; compare with ``value`` (the explained scalar) for conservation."""
        return float(self.scores.sum(dtype=np.float64))

    def patches(self, size: int | None = None) -> np.ndarray:
        """Relevance summed over square patches of ``size`` pixels (the model's patch size by default)."""
        size = size or self.patch_size
        if not size:
            raise ValueError("Give a patch size: this explanation does not know its model's.")
        h, w = self.scores.shape
        if h % size or w % size:
            raise ValueError(f"A {h}x{w} map does not divide into {size}x{size} patches.")
        return self.scores.reshape(h // size, size, w // size, size).sum(axis=(1, 3))

    def top_patch(self, size: int | None = None) -> tuple[int, int]:
        """(row, column) of the most relevant patch."""
        grid = self.patches(size)
        row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
        return int(row), int(col)

    def normalized(self) -> ImageExplanation:
        """Scores divided by max |score| (range [-1, 1])."""
        scale = float(np.abs(self.scores).max())
        return replace(self, scores=self.scores / scale if scale > 0 else self.scores.copy())

    def save_heatmap(self, path: str | Path, size: int = 256) -> Path:
        """A PNG of the relevance map: blue (-) to red (+), symmetric around 0, about ``size`` pixels wide."""
        from ..render.image import heatmap

        return heatmap(self.scores, path, size=size)

    def save_overlay(self, path: str | Path, alpha: float = 0.8, size: int = 256) -> Path:
        """A PNG of the relevance blended over the image (opacity grows with |relevance|)."""
        from ..render.image import overlay

        if self.image is None:
            raise ValueError("This explanation has no image to draw on; use save_heatmap().")
        return overlay(self.image, self.scores, path, alpha=alpha, size=size)

    def title(self) -> str:
        """A short label: method, rules and target."""
        rules = f" + {self.rules}" if self.rules else ""
        return f"{self.method}{rules}: {self.target}"

    def html_view(self) -> str:
        """The relevance over the image (or alone, without one), as an inline PNG."""
        from ..render.html import image_view
        from ..render.image import blend, colours, png

        rgb = colours(self.scores) if self.image is None else blend(self.image, self.scores)
        h, w = self.scores.shape
        return image_view(png(rgb), self.title(), f"model {self.model} · y = {self.value:.4g} · {h}x{w} pixels")

    def summary(self) -> str:
        h, w = self.scores.shape
        return f"{self.title()}, y={self.value:.4g}, Σ relevance={self.total:.4g}, {h}x{w} pixels"


def save_image_grid(
    path: str | Path,
    explanations: Sequence[ImageExplanation],
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    show_images: bool = False,
) -> Path:
    """One figure with the explanations side by side (e.g. a sweep of γ), each scaled to its own max |R|;
    ``show_images`` puts the plain images above the overlays."""
    from ..render.image import grid

    if not explanations:
        raise ValueError("save_image_grid needs at least one ImageExplanation.")
    other = next((e for e in explanations if not isinstance(e, ImageExplanation)), None)
    if other is not None:
        raise TypeError(
            f"save_image_grid lays out ImageExplanations (got {type(other).__name__}): show a token explanation with "
            "attnlrp.save_html or its .save_figure(path)."
        )
    titles = list(titles) if titles is not None else [e.title() for e in explanations]
    if len(titles) != len(explanations):
        raise ValueError(f"{len(titles)} titles for {len(explanations)} explanations.")
    return grid([(e.image, e.scores) for e in explanations], titles, path, columns=columns, show_images=show_images)
