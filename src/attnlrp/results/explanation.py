"""Token results: relevance of each input token (or word) for one explained scalar."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .base import Result
from .image import ImageExplanation
from .tokens import group_words


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class Explanation(Result):
    """Relevance of each input token (or word) for one explained scalar.

    ``target`` names what is explained (a token, an answer, a label) and ``value`` is its value y, so that
    ``total`` (Σ relevance) can be compared with it. ``segments`` name parts of the input (chat messages, prompt
    and answer, the two texts of a pair). Classifiers add ``label_probs`` (the probability of every label);
    token classification adds ``position`` (the token whose label is explained). Where an image is an input too
    (vision-language models, CLIP), ``image`` holds its pixel relevance, and ``total`` counts it.
    ``explain(..., latent=sites)`` adds ``units``: per site, its most relevant latent units and the sum of the
    rest (see ``attnlrp.latent.readout``).

    Language models' ``explained`` writes down the explained scalar with its tokens fixed (``{"kind": "contrast",
    "token": 12, "against": "mean"}``): as ``target=`` of ``explain`` or ``perturbation_curves`` it explains or
    measures the same scalar again, where ``target_id`` would be the plain logit of the token.

    Where the target is a teacher-forced answer, ``context`` is the number of tokens before it (the prompt the
    answer rests on). Rankings (``top``), colours and the words' rankings then cover the context only: that is
    what "which part of the context did the model use?" asks, while an answer's own tokens mostly show that it
    agrees with itself. Their relevance stays in ``scores`` and ``total`` (conservation) and is shown apart:
    ``answer_relevance``. In a word view, ``spans`` gives each word's token range in ``token_ids``.
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
    explained: dict[str, Any] = field(default_factory=dict)
    logit: float | None = None
    prob: float | None = None
    segments: list[tuple[str, int, int]] = field(default_factory=list)
    unit: str = "token"
    label_probs: dict[str, float] = field(default_factory=dict)
    position: int | None = None
    image: ImageExplanation | None = None
    units: list[dict[str, Any]] = field(default_factory=list)
    context: int | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)

    kind = "explanation"

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if not self.special:
            self.special = [False] * len(self.tokens)
        lengths = {"tokens": len(self.tokens), "display": len(self.display), "scores": len(self.scores)}
        lengths["special"] = len(self.special)
        if len(set(lengths.values())) > 1 or self.scores.ndim != 1:
            raise ValueError(
                f"An Explanation has one score, display string and special flag per token; got lengths {lengths}"
                + (f" and scores of shape {self.scores.shape}" if self.scores.ndim != 1 else "")
                + "."
            )
        self.segments = [tuple(s) for s in self.segments]
        self.spans = [tuple(s) for s in self.spans]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def total(self) -> float:
        """Σ relevance of every input (tokens, and the image's pixels where there is one); compare with ``value``
        (the explained scalar) for conservation."""
        return float(self.scores.sum(dtype=np.float64)) + (self.image.total if self.image is not None else 0.0)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["image"] = self.image.to_dict() if self.image is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        image = data.get("image")
        return super().from_dict({**data, "image": ImageExplanation.from_dict(image) if image is not None else None})

    @property
    def answer_relevance(self) -> float:
        """Σ relevance on a teacher-forced answer's own tokens (0 where there is no answer)."""
        return float(self.scores[self.context :].sum(dtype=np.float64)) if self.context is not None else 0.0

    def in_scope(self, scope: str = "context") -> slice:
        """The positions rankings and colours cover: the context before an answer (``"context"``), or all."""
        if scope not in ("context", "all"):
            raise ValueError(f"scope must be 'context' or 'all', not {scope!r}.")
        return slice(0, self.context if scope == "context" and self.context is not None else len(self))

    def top(self, k: int = 5, by: str = "abs", scope: str = "context") -> list[tuple[str, float, int]]:
        """The k most relevant tokens (words, in a word view) as (display string, score, position).

        by: "abs" (largest |score|: what matters most either way), "positive" (most in favour) or "negative" (most
        against; these two rank only the tokens of their sign, so fewer than k come back where fewer have it).
        scope: "context" (the prompt before a teacher-forced answer; everything where there is none) or "all".
        """
        keys = {"abs": lambda x: -np.abs(x), "positive": lambda x: -x, "negative": lambda x: x}
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k is how many tokens to rank: a whole number >= 0, not {k!r}.")
        if by not in keys:
            raise ValueError(f"by must be 'abs', 'positive' or 'negative', not {by!r}.")
        scores = self.scores[self.in_scope(scope)]
        order = np.argsort(keys[by](scores), kind="stable")[:k]
        if by != "abs":
            order = order[keys[by](scores[order]) < 0]  # of the sign asked for
        return [(self._ranked_text(int(i)), float(self.scores[i]), int(i)) for i in order]

    def _ranked_text(self, i: int) -> str:
        """Token i's text in a ranking: a token that holds the rest of a character written by tokens before it
        (a byte of 北 or 🍕; shown empty in place) is named after the character, ``(rest of '北')``."""
        if self.display[i] or not self.tokens[i]:
            return self.display[i]
        owner = next((self.display[j] for j in range(i - 1, -1, -1) if self.display[j]), "")
        return f"(rest of {owner.strip()!r})" if owner.strip() else self.display[i]

    def to_frame(self):
        """A pandas DataFrame with one row per token (or word): position, display text, score, token id(s),
        whether special, its segment and whether it is context (before an answer)."""
        pd = _pandas()
        segment = [next((name for name, a, b in self.segments if a <= i < b), "") for i in range(len(self))]
        ids = [self.token_ids[a:b] for a, b in self.spans] if self.spans else self.token_ids or [None] * len(self)
        return pd.DataFrame(
            {
                "position": range(len(self)),
                self.unit: self.display,
                "score": self.scores.astype(np.float64),
                "token_id": ids,
                "special": self.special,
                "segment": segment,
                "context": [self.context is None or i < self.context for i in range(len(self))],
            }
        )

    def segment_scores(self) -> dict[str, float]:
        """Relevance summed per segment (per chat message, or prompt and answer)."""
        return {name: float(self.scores[a:b].sum()) for name, a, b in self.segments}

    def words(self) -> Explanation:
        """The same explanation with sub-word tokens merged into words (scores summed)."""
        if self.unit == "word":
            return self
        breaks = [a for _, a, _ in self.segments] + ([self.context] if self.context is not None else [])
        words, special, scores, firsts = group_words(self.display, self.special, self.scores, breaks)
        where = np.searchsorted(firsts, [[a, b] for _, a, b in self.segments], side="left") if self.segments else []
        segments = [(name, int(w[0]), int(w[1])) for (name, _, _), w in zip(self.segments, where)]
        bounds = [*firsts, len(self)]
        return replace(
            self,
            tokens=words,
            display=words,
            scores=scores,
            special=special,
            segments=segments,
            spans=list(itertools.pairwise(bounds)),
            context=int(np.searchsorted(firsts, self.context)) if self.context is not None else None,
            position=int(np.searchsorted(firsts, self.position, side="right") - 1)
            if self.position is not None
            else None,
            unit="word",
        )

    def normalized(self, by: str = "max") -> Explanation:
        """Scores divided by max |score| (``by="max"``, range [-1, 1]) or by Σ|score| (``by="sum"``), taken over
        every input (the image's pixels too, which are divided by the same number)."""
        if by not in ("max", "sum"):
            raise ValueError(f"by must be 'max' or 'sum', not {by!r}.")
        every = np.abs(self.scores) if self.image is None else np.abs(np.append(self.scores, self.image.scores))
        scale = every.max(initial=0.0) if by == "max" else every.sum()
        if not scale > 0:
            return replace(self, scores=self.scores.copy())
        image = replace(self.image, scores=self.image.scores / scale) if self.image is not None else None
        return replace(self, scores=self.scores / scale, image=image)

    def show(self, color: bool | None = None, file=None) -> None:
        """Print a heatmap to the terminal (plain text with scores where colour is off)."""
        from ..render.palette import scale as color_scale
        from ..render.terminal import print_heatmap

        title = f"{self.method} relevance for {self.target!r} (y = {self.value:.4g}, Σ relevance = {self.total:.4g})"
        shown = self.in_scope()
        scale = color_scale(self.scores[shown])
        print_heatmap(self.display[shown], self.scores[shown], title=title, color=color, file=file, scale=scale)
        if self.context is not None:
            print_heatmap(
                self.display[self.context :],
                self.scores[self.context :],
                title=f"the answer's own tokens (Σ = {self.answer_relevance:.4g}; on the context's colour scale):",
                color=color,
                file=file,
                scale=scale,
            )
        if self.image is not None:
            h, w = self.image.scores.shape
            print(f"image: Σ relevance = {self.image.total:.4g} over {h}x{w} pixels", file=file)

    def _html_item(self) -> dict[str, Any]:
        words = self.words()
        item = {
            "method": self.method,
            "target": self.target,
            "value": self.value,
            "total": self.total,
            "tokens": {"text": self.display, "scores": self.scores.tolist(), "context": self.context},
            "words": {"text": words.display, "scores": words.scores.tolist(), "context": words.context},
        }
        if self.image is not None:
            item["image"] = image_item(self.image)
        if self.units:
            item["units"] = self.units
        return item

    def title(self) -> str:
        return f"{self.method}: {self.target!r}"

    def html_view(self) -> str:
        return explanations_view([self])

    def save_figure(self, path: str | Path, **options: Any) -> Path:
        """A PNG, SVG or PDF heatmap laid out like text (matplotlib, no LaTeX); the image's relevance beside it."""
        from ..render.figure import token_heatmap
        from ..render.palette import scale

        image = image_rgb(self.image) if self.image is not None else None
        options.setdefault("scale", scale(self.scores[self.in_scope()]))
        token_heatmap(self.display, self.scores, path=path, title=self.title(), image=image, **options)
        return Path(path)

    def summary(self) -> str:
        best = ", ".join(f"{t!r}: {s:+.3g}" for t, s, _ in self.top(3))
        image = f", image Σ={self.image.total:.4g}" if self.image is not None else ""
        return (
            f"{self.method}, target={self.target!r}, y={self.value:.4g}, {len(self)} {self.unit}s, top: {best}{image}"
        )


def image_rgb(image: ImageExplanation) -> np.ndarray:
    """An image's relevance drawn as RGB in [0, 1]: over the picture where there is one."""
    from ..render.image import blend, colours

    return colours(image.scores) if image.image is None else blend(image.image, image.scores)


def image_item(image: ImageExplanation) -> dict[str, Any]:
    """An image part for the HTML views: its drawing as an inline PNG, and its Σ relevance."""
    from ..render.html import png_uri
    from ..render.image import png

    return {"src": png_uri(png(image_rgb(image))), "total": image.total}


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


def save_html(path: str | Path, *explanations: Explanation | Sequence[Explanation]) -> Path:
    """Write one self-contained page showing the given explanations side by side (given one by one, or as the
    list a batched ``explain`` returns)."""
    from ..render.html import page, write

    if len(explanations) == 1 and isinstance(explanations[0], (list, tuple)):
        explanations = tuple(explanations[0])
    if not explanations:
        raise ValueError("save_html needs at least one Explanation.")
    other = next((e for e in explanations if not isinstance(e, Explanation)), None)
    if other is not None:
        own = " call its own .save_html(path)" if hasattr(other, "save_html") else " give Explanations only"
        raise TypeError(f"attnlrp.save_html shows token Explanations side by side (got {type(other).__name__}):{own}.")
    return write(path, page(explanations_view(list(explanations)), _set_title(list(explanations))))


def _pandas():
    try:
        import pandas
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            'Frames need pandas: pip install "attnlrp[pandas]" (or pip install pandas).'
        ) from None
    return pandas


def frame(explanations: list[Explanation]):
    """One pandas DataFrame over many explanations: ``to_frame()`` of each, with its index, target and method."""
    pd = _pandas()
    explanations = list(explanations)
    if not explanations:
        raise ValueError("frame needs at least one explanation.")
    units = {e.unit for e in explanations}
    if len(units) > 1:
        raise ValueError(
            "frame stacks explanations of one unit, and these mix tokens and words: give each as a word view "
            "(e.words()), or each as tokens."
        )
    parts = [e.to_frame().assign(explanation=i, target=e.target, method=e.method) for i, e in enumerate(explanations)]
    return pd.concat(parts, ignore_index=True)


def mean_relevance(explanations: list[Explanation], unit: str = "word", normalize: bool = True, scope: str = "context"):
    """Mean relevance per word (or token) across explanations, most relevant first: a DataFrame indexed by the
    text (stripped, lower case) with its mean, mean |score|, sum and count. ``normalize`` divides each explanation
    by its max |score| first (so that long and short texts weigh the same); ``scope`` as in ``top``."""
    if unit not in ("word", "token"):
        raise ValueError(f"unit must be 'word' or 'token', not {unit!r}.")
    pd = _pandas()
    rows = []
    for e in explanations:
        view = e.words() if unit == "word" else e
        view = view.normalized() if normalize else view
        shown = view.in_scope(scope)
        rows += [
            (t.strip().lower(), float(s))
            for t, s, special in zip(view.display[shown], view.scores[shown], view.special[shown])
            if not special
        ]
    table = pd.DataFrame(rows, columns=[unit, "score"])
    table["abs"] = table["score"].abs()
    summary = table.groupby(unit).agg(
        mean=("score", "mean"), mean_abs=("abs", "mean"), sum=("score", "sum"), count=("score", "size")
    )
    return summary.sort_values("mean_abs", ascending=False)
