"""Generation results: the relevance of every token for each generated token."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .base import Result
from .explanation import Explanation, image_item
from .image import ImageExplanation
from .tokens import group_words


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class GenerationExplanation(Result):
    """Relevance of every token for each generated token: ``matrix[i, j]`` is token j's share in step i.

    Where an image is an input too (vision-language models), ``image_matrix[i]`` is the relevance of its pixels in
    step i, ``image_rgb`` the image drawn (uint8 [H, W, 3]) and ``patch_size`` the vision tower's. ``segments`` name
    parts of the tokens (an encoder-decoder's source and target).
    """

    tokens: list[str]
    display: list[str]
    matrix: np.ndarray
    prompt_length: int
    values: list[float]
    method: str
    model: str = ""
    token_ids: list[int] = field(default_factory=list)
    special: list[bool] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    unit: str = "token"
    image_matrix: np.ndarray | None = None
    image_rgb: np.ndarray | None = None
    segments: list[tuple[str, int, int]] = field(default_factory=list)
    patch_size: int | None = None

    kind = "generation"

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float32).reshape(len(self.values), -1)
        if not self.special:
            self.special = [False] * len(self.tokens)
        if self.image_matrix is not None:
            self.image_matrix = np.asarray(self.image_matrix, dtype=np.float32)
        if self.image_rgb is not None:
            self.image_rgb = np.asarray(self.image_rgb, dtype=np.uint8)
        self.segments = [tuple(s) for s in self.segments]

    @property
    def generated(self) -> list[str]:
        """Display strings of the generated tokens (the matrix rows)."""
        return self.display[self.prompt_length :]

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def step(self, i: int) -> Explanation:
        """The explanation of generated token i over all tokens before it (and the image, where there is one);
        negative i counts from the last, as in a list."""
        count = len(self.generated)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -count <= i < count:
            raise IndexError(
                f"step {i!r} of a generation of {count} token(s): give 0..{count - 1}, or -1 for the last."
            )
        i = int(i) % count
        end = self.prompt_length + i
        image = None
        if self.image_matrix is not None:
            image = ImageExplanation(
                self.image_matrix[i],
                self.generated[i],
                self.values[i],
                self.method,
                self.model,
                image=self.image_rgb,
                patch_size=self.patch_size,
            )
        target_id = self.token_ids[len(self.token_ids) - count + i] if self.token_ids else None
        return Explanation(
            tokens=self.tokens[:end],
            display=self.display[:end],
            scores=self.matrix[i, :end],
            target=self.generated[i],
            value=self.values[i],
            method=self.method,
            model=self.model,
            token_ids=self.token_ids[:end] if self.unit == "token" else [],
            special=self.special[:end],
            target_id=target_id,
            logit=self.values[i],
            prob=self.probs[i] if self.probs else None,
            unit=self.unit,
            image=image,
            segments=[(name, a, min(b, end)) for name, a, b in self.segments if a < end],
            explained={"kind": "token", "token": target_id} if target_id is not None else {},
        )

    def top(self, k: int = 5) -> list[list[tuple[str, float, int]]]:
        """For each generated token, its k most relevant earlier tokens."""
        return [self.step(i).top(k) for i in range(len(self))]

    def words(self) -> GenerationExplanation:
        """The prompt's columns merged into words. The generated tokens stay one each: each is a row, and a
        column of the rows after it. ``token_ids`` stays the tokens' ids."""
        if self.unit == "word":
            return self
        p = self.prompt_length
        breaks = [a for _, a, _ in self.segments]
        words, special, matrix, firsts = group_words(self.display[:p], self.special[:p], self.matrix[:, :p], breaks)
        firsts += range(p, len(self.display))
        return replace(
            self,
            tokens=words + self.tokens[p:],
            display=words + self.display[p:],
            matrix=np.concatenate([matrix, self.matrix[:, p:]], axis=1),
            special=special + self.special[p:],
            prompt_length=len(words),
            unit="word",
            segments=[(name, *map(int, np.searchsorted(firsts, [a, b]))) for name, a, b in self.segments],
        )

    def normalized(self, by: str = "max") -> GenerationExplanation:
        """Each row divided by its max |score| (or Σ|score| with ``by="sum"``), its image's pixels included."""
        if by not in ("max", "sum"):
            raise ValueError(f"by must be 'max' or 'sum', not {by!r}.")
        every = np.abs(self.matrix)
        if self.image_matrix is not None:  # a row's image shares its scale
            every = np.concatenate([every, np.abs(self.image_matrix).reshape(len(self), -1)], axis=1)
        scale = every.max(axis=1, keepdims=True) if by == "max" else every.sum(1, keepdims=True)
        images = self.image_matrix
        if images is not None:
            images = np.divide(images, scale[:, :, None], out=np.zeros_like(images), where=scale[:, :, None] > 0)
        return replace(
            self,
            matrix=np.divide(self.matrix, scale, out=np.zeros_like(self.matrix), where=scale > 0),
            image_matrix=images,
        )

    def show(self, color: bool | None = None, file=None) -> None:
        """Print one heatmap line per generated token."""
        from ..render.terminal import print_heatmap

        for i in range(len(self)):
            step = self.step(i)
            print_heatmap(step.display, step.scores, title=f"step {i}: {step.target!r}", color=color, file=file)

    def title(self) -> str:
        return f"{self.method}: {''.join(self.generated)!r}"

    def html_view(self) -> str:
        """An interactive view: click a generated token to see its attribution."""
        from ..render.html import view

        words = self.words()
        data = {
            "kind": "generation",
            "generated": self.generated,
            "tokens": {"text": self.display, "matrix": self.matrix.tolist(), "prompt_length": self.prompt_length},
            "words": {"text": words.display, "matrix": words.matrix.tolist(), "prompt_length": words.prompt_length},
        }
        if self.image_matrix is not None:
            data["images"] = [image_item(self.step(i).image) for i in range(len(self))]
        return view(
            data,
            title=self.title(),
            meta=f"model {self.model} · {len(self)} generated tokens · prompt of {self.prompt_length} tokens",
        )

    def save_figure(self, path: str | Path) -> Path:
        """The generation matrix as a PNG, SVG or PDF figure."""
        from ..render.figure import generation_matrix

        generation_matrix(self.generated, self.display, self.matrix, path=path, title=f"{self.method}: {self.model}")
        return Path(path)

    def summary(self) -> str:
        text = "".join(self.generated)
        return f"{self.method}, {len(self)} generated tokens {text!r}, prompt {self.prompt_length} {self.unit}s"
