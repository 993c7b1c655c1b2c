"""What every result shares: a kind and format version, JSON save/load without pickle, equality and repr."""

from __future__ import annotations

import gzip
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ResultFileError

FORMAT = "attnlrp"
VERSION = 1


def write_json(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` as JSON (gzip when the name ends in .gz), creating its folder where it is missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, ensure_ascii=False)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_json(path: str | Path, what: str = "result") -> Any:
    """The JSON value in ``path`` (gzip when the name ends in .gz), or a ResultFileError naming the file."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return json.load(f)
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError) as error:
        raise ResultFileError(f"Can't read {path} as an attnlrp {what} JSON file: {error}") from error


def _plain(value: Any) -> Any:
    """A JSON value for a field: arrays become (nested) lists of numbers, tuples lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Result:
    """Base of every result dataclass (token, generation, image, ...): subclasses set ``kind`` and are declared
    with ``@dataclass(eq=False, repr=False)``, so that equality and repr come from here.

    Fields holding numpy arrays are saved as lists and compared with ``np.array_equal``; ``__repr__`` shows the
    class name and the subclass's ``summary()``.
    """

    kind: ClassVar[str]
    #: Every result class by its kind.
    KINDS: ClassVar[dict[str, type[Result]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Result.KINDS[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready content, tagged with the format, the kind and the format version."""
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        return {"format": FORMAT, "kind": self.kind, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> Path:
        """Write JSON (gzip when the name ends in .gz); no pickle."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path):
        """Read a file written by ``save`` of this class, or of a subclass (``Explanation.load`` reads an
        ``AudioExplanation``'s file as one)."""
        payload = read_json(path, cls.kind)
        kinds = {c.kind: c for c in _subclasses(cls) if "kind" in c.__dict__}
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("kind") not in kinds:
            found = payload.get("kind", payload.get("format")) if isinstance(payload, dict) else type(payload).__name__
            other = next(
                (c for c in _subclasses(Result) if found is not None and c.__dict__.get("kind") == found), None
            )
            raise ResultFileError(
                f"{path} is not an attnlrp {cls.kind} file (found {found!r}); "
                + (
                    f"read it with {other.__name__}.load()."
                    if other
                    else f"it must be written by {cls.__name__}.save()."
                )
            )
        kind = kinds[payload["kind"]]
        if payload.get("version", 0) > VERSION:
            raise ResultFileError(
                f"{path} was written by a newer attnlrp (format version {payload['version']}); upgrade attnlrp."
            )
        try:
            return kind.from_dict(payload)
        except (TypeError, ValueError) as error:  # fields missing, or that don't fit together
            raise ResultFileError(f"{path} is a damaged attnlrp {payload['kind']} file: {error}") from error

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    def summary(self) -> str:
        """The few facts ``repr`` shows."""
        raise NotImplementedError

    def html_view(self) -> str:
        """This result as one self-contained HTML view (a ``<div>``); any number of them fit on one page."""
        raise NotImplementedError

    def title(self) -> str:
        """A one-line title for pages and figures."""
        raise NotImplementedError

    def to_html(self) -> str:
        """A self-contained HTML page (no network access needed)."""
        from ..render.html import page

        return page(self.html_view(), self.title())

    def save_html(self, path: str | Path) -> Path:
        """Write ``to_html()`` to ``path``."""
        from ..render.html import write

        return write(path, self.to_html())

    def _repr_html_(self) -> str:
        return self.html_view()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.summary()})"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
    return a == b


def _subclasses(cls: type) -> list[type]:
    """``cls`` and every subclass of it, at any depth."""
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found
