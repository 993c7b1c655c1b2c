"""Explanation objects: tokens and scores that show, aggregate, normalise, save and load themselves."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .tokens import word_starts

FORMAT = "attnlrp"
VERSION = 1


class ResultFileError(ValueError):
    """A file that is not a readable attnlrp result."""


#: The result class that writes each kind of file.
_CLASS_OF_KIND = {"explanation": "Explanation", "generation": "GenerationExplanation", "image": "ImageExplanation"}


def _write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    text = json.dumps(payload, ensure_ascii=False)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _read_json(path: str | Path, kind: str) -> dict:
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                payload = json.load(f)
        else:
            payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError) as error:
        raise ResultFileError(f"Can't read {path} as an attnlrp {kind} JSON file: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("kind") != kind:
        found = payload.get("kind", payload.get("format")) if isinstance(payload, dict) else type(payload).__name__
        raise ResultFileError(
            f"{path} is not an attnlrp {kind} file (found {found!r}); it must be written by "
            f"{_CLASS_OF_KIND.get(kind, 'Explanation')}.save()."
        )
    if payload.get("version", 0) > VERSION:
        raise ResultFileError(f"{path} was written by a newer attnlrp (format version {payload['version']}); upgrade attnlrp.")
    return payload


def _group(display: list[str], special: list[bool], values: np.ndarray) -> tuple[list[str], list[bool], np.ndarray, list[int]]:
    """Merge tokens into words; values [..., T] are summed per word. Also returns each word's first token."""
    starts = word_starts(display, special)
    firsts = [i for i, s in enumerate(starts) if s]
    bounds = firsts + [len(display)]
    words = ["".join(display[a:b]) for a, b in zip(bounds, bounds[1:])]
    is_special = [special[a] for a in firsts]
    summed = np.add.reduceat(values, firsts, axis=-1) if len(display) else values
    return words, is_special, summed.astype(np.float32), firsts


@dataclass
class Explanation:
    """Relevance of each input token (or word) for one explained scalar."""

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

    def words(self) -> "Explanation":
        """The same explanation with sub-word tokens merged into words (scores summed)."""
        if self.unit == "word":
            return self
        words, special, scores, firsts = _group(self.display, self.special, self.scores)
        where = np.searchsorted(firsts, [[a, b] for _, a, b in self.segments], side="left") if self.segments else []
        segments = [(name, int(w[0]), int(w[1])) for (name, _, _), w in zip(self.segments, where)]
        return replace(self, tokens=words, display=words, scores=scores, special=special,
                       token_ids=[], segments=segments, unit="word")

    def normalized(self, by: str = "max") -> "Explanation":
        """Scores divided by max |score| (``by="max"``, range [-1, 1]) or by Σ|score| (``by="sum"``)."""
        if by not in ("max", "sum"):
            raise ValueError(f"by must be 'max' or 'sum', not {by!r}.")
        scale = np.abs(self.scores).max() if by == "max" else np.abs(self.scores).sum()
        return replace(self, scores=self.scores / scale if scale > 0 else self.scores.copy())

    def show(self, color: bool | None = None, file=None) -> None:
        """Print a heatmap to the terminal (plain text with scores where colour is off)."""
        from .render.terminal import print_heatmap

        title = f"{self.method} relevance for {self.target!r} (y = {self.value:.4g}, Σ relevance = {self.total:.4g})"
        print_heatmap(self.display, self.scores, title=title, color=color, file=file)

    def _html_item(self) -> dict[str, Any]:
        words = self.words()
        return {"method": self.method, "target": self.target, "value": self.value, "total": self.total,
                "tokens": {"text": self.display, "scores": self.scores.tolist()},
                "words": {"text": words.display, "scores": words.scores.tolist()}}

    def to_html(self) -> str:
        """A self-contained HTML page (no network access needed)."""
        return explanations_html([self])

    def save_html(self, path: str | Path) -> Path:
        return save_html(path, self)

    def _repr_html_(self) -> str:
        return self.to_html()

    def save_figure(self, path: str | Path, **options: Any) -> Path:
        """A PNG, SVG or PDF heatmap laid out like text (matplotlib, no LaTeX)."""
        from .render.figure import token_heatmap

        token_heatmap(self.display, self.scores, path=path, title=f"{self.method}: {self.target!r}", **options)
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["scores"] = [float(s) for s in self.scores]
        data["segments"] = [list(s) for s in self.segments]
        return {"format": FORMAT, "kind": "explanation", "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Explanation":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> Path:
        """Write JSON (gzip when the name ends in .gz); no pickle."""
        return _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Explanation":
        return cls.from_dict(_read_json(path, "explanation"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Explanation):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) if f.name == "scores"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    def __repr__(self) -> str:
        best = ", ".join(f"{t!r}: {s:+.3g}" for t, s, _ in self.top(3))
        return (f"Explanation({self.method}, target={self.target!r}, y={self.value:.4g}, "
                f"{len(self)} {self.unit}s, top: {best})")


def explanations_html(explanations: list[Explanation]) -> str:
    """One page with several explanations (e.g. methods) side by side."""
    from .render.html import page

    first = explanations[0]
    methods = ", ".join(dict.fromkeys(e.method for e in explanations))
    return page({"kind": "set", "items": [e._html_item() for e in explanations]},
                title=f"{methods}: {first.target!r}", meta=f"model {first.model} · {len(first)} {first.unit}s")


def save_html(path: str | Path, *explanations: Explanation) -> Path:
    """Write one self-contained page showing the given explanations side by side."""
    from .render.html import write

    if not explanations:
        raise ValueError("save_html needs at least one Explanation.")
    return write(path, explanations_html(list(explanations)))


@dataclass
class GenerationExplanation:
    """Relevance of every token for each generated token: ``matrix[i, j]`` is token j's share in step i."""

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

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float32)
        if not self.special:
            self.special = [False] * len(self.tokens)

    @property
    def generated(self) -> list[str]:
        """Display strings of the generated tokens (the matrix rows)."""
        return self.display[self.prompt_length :]

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def step(self, i: int) -> Explanation:
        """The explanation of generated token i over all tokens before it."""
        end = self.prompt_length + i
        return Explanation(
            tokens=self.tokens[:end], display=self.display[:end], scores=self.matrix[i, :end],
            target=self.generated[i], value=self.values[i], method=self.method, model=self.model,
            token_ids=self.token_ids[:end], special=self.special[:end],
            target_id=self.token_ids[end] if self.token_ids else None,
            logit=self.values[i], prob=self.probs[i] if self.probs else None, unit=self.unit,
        )

    def top(self, k: int = 5) -> list[list[tuple[str, float, int]]]:
        """For each generated token, its k most relevant earlier tokens."""
        return [self.step(i).top(k) for i in range(len(self))]

    def words(self) -> "GenerationExplanation":
        """Columns merged into words (rows stay one per generated token)."""
        if self.unit == "word":
            return self
        words, special, matrix, firsts = _group(self.display, self.special, self.matrix)
        return replace(self, tokens=words, display=words, matrix=matrix, special=special, token_ids=[],
                       prompt_length=int(np.searchsorted(firsts, self.prompt_length)), unit="word")

    def normalized(self, by: str = "max") -> "GenerationExplanation":
        """Each row divided by its max |score| (or Σ|score| with ``by="sum"``)."""
        if by not in ("max", "sum"):
            raise ValueError(f"by must be 'max' or 'sum', not {by!r}.")
        scale = np.abs(self.matrix).max(axis=1, keepdims=True) if by == "max" else np.abs(self.matrix).sum(1, keepdims=True)
        return replace(self, matrix=np.divide(self.matrix, scale, out=np.zeros_like(self.matrix), where=scale > 0))

    def show(self, color: bool | None = None, file=None) -> None:
        """Print one heatmap line per generated token."""
        from .render.terminal import print_heatmap

        for i in range(len(self)):
            step = self.step(i)
            print_heatmap(step.display, step.scores, title=f"step {i}: {step.target!r}", color=color, file=file)

    def to_html(self) -> str:
        """A self-contained interactive page: click a generated token to see its attribution."""
        from .render.html import page

        words = self.words()
        data = {
            "kind": "generation", "generated": self.generated,
            "tokens": {"text": self.display, "matrix": self.matrix.tolist(), "prompt_length": self.prompt_length},
            "words": {"text": words.display, "matrix": words.matrix.tolist(), "prompt_length": words.prompt_length},
        }
        return page(data, title=f"{self.method}: {''.join(self.generated)!r}",
                    meta=f"model {self.model} · {len(self)} generated tokens · prompt of {self.prompt_length} tokens")

    def save_html(self, path: str | Path) -> Path:
        from .render.html import write

        return write(path, self.to_html())

    def _repr_html_(self) -> str:
        return self.to_html()

    def save_figure(self, path: str | Path) -> Path:
        """The generation matrix as a PNG, SVG or PDF figure."""
        from .render.figure import generation_matrix

        generation_matrix(self.generated, self.display, self.matrix, path=path, title=f"{self.method}: {self.model}")
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["matrix"] = [[float(x) for x in row] for row in self.matrix]
        return {"format": FORMAT, "kind": "generation", "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationExplanation":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["matrix"] = np.asarray(values["matrix"], dtype=np.float32).reshape(len(values["values"]), -1)
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        return _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "GenerationExplanation":
        return cls.from_dict(_read_json(path, "generation"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationExplanation):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) if f.name == "matrix"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    def __repr__(self) -> str:
        text = "".join(self.generated)
        return (f"GenerationExplanation({self.method}, {len(self)} generated tokens {text!r}, "
                f"prompt {self.prompt_length} {self.unit}s)")
