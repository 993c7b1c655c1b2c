"""Token results: relevance of each input token (or word) for one explained scalar."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .base import Result
from .tokens import group_words


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class Explanation(Result):
    """Relevance of each input token (or word) for one explained scalar.

    ``target`` names what is explained (a token, an answer, a label) and ``value`` is its value y, so that
    ``total`` (Σ relevance) can be compared with it. ``segments`` name parts of the input (chat messages, prompt
    and answer, the two texts of a pair). Classifiers add ``label_probs`` (the probability of every label);
    token classification adds ``position`` (the token whose label is explained).
    """

    tokens: list[str]
    display: list[str]
    scores: np.ndarray
    target: str
    value: float
    method: str
    model: str = ""
    token_ids: list[int] = field(default_factory=list)
    special: list[bool] = field(default_factory=list)
    target_id: int | None = None
    logit: float | None = None
    prob: float | None = None
    segments: list[tuple[str, int, int]] = field(default_factory=list)
    unit: str = "token"
    label_probs: dict[str, float] = field(default_factory=dict)
    position: int | None = None

    kind = "explanation"

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if not self.special:
            self.special = [False] * len(self.tokens)
        self.segments = [tuple(s) for s in self.segments]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def total(self) -> float:
        """Σ relevance; compare with ``value`` (the explained scalar) for conservation."""
        return float(self.scores.sum(dtype=np.float64))

    def top(self, k: int = 5) -> list[tuple[str, float, int]]:
        """The k most relevant tokens as (display string, score, position)."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [(self.display[i], float(self.scores[i]), int(i)) for i in order]

    def segment_scores(self) -> dict[str, float]:
        """Relevance summed per segment (per chat message, or prompt and answer)."""
        return {name: float(self.scores[a:b].sum()) for name, a, b in self.segments}

    def words(self) -> Explanation:
        """The same explanation with sub-word tokens merged into words (scores summed)."""
        if self.unit == "word":
            return self
        words, special, scores, firsts = group_words(self.display, self.special, self.scores)
        where = np.searchsorted(firsts, [[a, b] for _, a, b in self.segments], side="left") if self.segments else []
        segments = [(name, int(w[0]), int(w[1])) for (name, _, _), w in zip(self.segments, where)]
        return replace(
            self,
            tokens=words,
            display=words,
            scores=scores,
            special=special,
            token_ids=[],
            segments=segments,
            position=int(np.searchsorted(firsts, self.position, side="right") - 1) if self.position is not None else None,
            unit="word",
        )

    def normalized(self, by: str = "max") -> Explanation:
        """Scores divided by max |score| (``by="max"``, range [-1, 1]) or by Σ|score| (``by="sum"``)."""
        if by not in ("max", "sum"):
            raise ValueError(f"by must be 'max' or 'sum', not {by!r}.")
        scale = np.abs(self.scores).max() if by == "max" else np.abs(self.scores).sum()
        return replace(self, scores=self.scores / scale if scale > 0 else self.scores.copy())

    def show(self, color: bool | None = None, file=None) -> None:
        """Print a heatmap to the terminal (plain text with scores where colour is off)."""
        from ..render.terminal import print_heatmap

        title = f"{self.method} relevance for {self.target!r} (y = {self.value:.4g}, Σ relevance = {self.total:.4g})"
        print_heatmap(self.display, self.scores, title=title, color=color, file=file)

    def _html_item(self) -> dict[str, Any]:
        words = self.words()
        return {
            "method": self.method,
            "target": self.target,
            "value": self.value,
            "total": self.total,
            "tokens": {"text": self.display, "scores": self.scores.tolist()},
            "words": {"text": words.display, "scores": words.scores.tolist()},
        }

    def title(self) -> str:
        return f"{self.method}: {self.target!r}"

    def html_view(self) -> str:
        return explanations_view([self])

    def save_figure(self, path: str | Path, **options: Any) -> Path:
        """A PNG, SVG or PDF heatmap laid out like text (matplotlib, no LaTeX)."""
        from ..render.figure import token_heatmap

        token_heatmap(self.display, self.scores, path=path, title=self.title(), **options)
        return Path(path)

    def summary(self) -> str:
        best = ", ".join(f"{t!r}: {s:+.3g}" for t, s, _ in self.top(3))
        return f"{self.method}, target={self.target!r}, y={self.value:.4g}, {len(self)} {self.unit}s, top: {best}"


def _set_title(explanations: list[Explanation]) -> str:
    methods = ", ".join(dict.fromkeys(e.method for e in explanations))
    return f"{methods}: {explanations[0].target!r}"


def explanations_view(explanations: list[Explanation]) -> str:
    """One HTML view with several explanations (e.g. methods) side by side."""
    from ..render.html import view

    first = explanations[0]
    return view(
        {"kind": "set", "items": [e._html_item() for e in explanations]},
        title=_set_title(explanations),
        meta=f"model {first.model} · {len(first)} {first.unit}s",
    )


def save_html(path: str | Path, *explanations: Explanation) -> Path:
    """Write one self-contained page showing the given explanations side by side."""
    from ..render.html import page, write

    if not explanations:
        raise ValueError("save_html needs at least one Explanation.")
    return write(path, page(explanations_view(list(explanations)), _set_title(list(explanations))))
