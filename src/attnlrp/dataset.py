"""Dataset runs: explain every line of a JSONL file into an output JSONL file, resumably.

Each input line is a string (the prompt) or an object with a ``"prompt"`` and, optionally, ``"target"``,
``"contrast"``, ``"answer"``, ``"pair"``, ``"label"``, ``"at"``, ``"system"``, ``"chat"`` and ``"id"``; any other
field is carried along. Each output line holds the line's key, its position, its input fields (under
``"input"``, and its ``"id"`` at the top) and the explanation (``Explanation.from_dict`` reads it).

Results are matched to input lines by content (a hash of the line) and ``id``, never by line number: a rerun
keeps what still matches, recomputes edited lines, drops the results of deleted lines and writes everything
in the input's order. Finished results are appended (and synced) as they come, so an interruption loses at
most the batch in flight; the next run resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

#: Input fields that say what to explain; the others are carried along.
FIELDS = ("prompt", "target", "contrast", "answer", "pair", "label", "at", "system", "chat", "id")


class RunInterrupted(KeyboardInterrupt):
    """A dataset run stopped by Ctrl-C, after ``done`` of ``total`` lines were in the output."""

    def __init__(self, done: int, total: int):
        super().__init__(f"interrupted after {done} of {total}; run the same command to resume")
        self.done, self.total = done, total


@dataclass
class Line:
    """One input line: its position, its fields, and the key its result is stored under."""

    index: int
    spec: dict[str, Any]
    key: str


@dataclass
class Summary:
    """What a run did: results written, computed now, kept from before, recomputed after an edit, dropped."""

    output: Path
    total: int
    new: int = 0
    kept: int = 0
    edited: int = 0
    dropped: int = 0
    reordered: bool = False
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.total} results in {self.output} ({self.new} new, {self.kept} already there"
        changes = [f"{self.edited} edited line(s) recomputed"] if self.edited else []
        changes += [f"{self.dropped} result(s) of deleted lines dropped"] if self.dropped else []
        changes += ["reordered to the input's order"] if self.reordered else []
        return text + (f"; {', '.join(changes)}" if changes else "") + ")"


def read_lines(path: str | Path) -> list[Line]:
    """The input lines of a JSONL file (blank lines skipped), each keyed by its content and ``id``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"Can't read the input file {path}: {error.strerror or error}.") from error
    lines, seen, ids = [], Counter(), set()
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{n}: not valid JSON ({error}).") from error
        spec = {"prompt": value} if isinstance(value, str) else value
        if not isinstance(spec, dict) or "prompt" not in spec:
            raise InputError(f'{path}:{n}: each line must be a string or an object with a "prompt" key.')
        if "id" in spec:
            if spec["id"] in ids:
                raise InputError(f"{path}:{n}: the id {spec['id']!r} is used twice; ids must be unique.")
            ids.add(spec["id"])
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        seen[digest] += 1  # the same line twice: two results
        lines.append(Line(len(lines), spec, f"{digest}-{seen[digest]}"))
    return lines


def _stored(path: Path) -> dict[str, tuple[dict, str]]:
    """The results already in ``path`` by key (record, line text); a torn last line (an interruption) is dropped."""
    if not path.exists():
        return {}
    stored = {}
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("key"), str) or "input" not in record:
            raise InputError(
                f"{path}:{n} is not an attnlrp result line; give --output a new file name (or the file a previous "
                "run wrote, to resume it)."
            )
        stored[record["key"]] = (record, text)
    return stored


def _record(line: Line, result: Any) -> str:
    head = {"key": line.key, "index": line.index, **({"id": line.spec["id"]} if "id" in line.spec else {})}
    return json.dumps({**head, "input": line.spec, **result.to_dict()}, ensure_ascii=False)


def run_file(
    explain: Callable[[list[Line]], Sequence[Any]],
    lines: list[Line],
    output: str | Path,
    batch_size: int,
    progress: bool = True,
) -> Summary:
    """Explain ``lines`` that have no result in ``output`` yet, ``batch_size`` at a time (``explain`` turns a batch
    of lines into results), then write every result in the input's order.

    Ctrl-C stops after the batch in flight with a ``RunInterrupted``; what was finished stays in the file.
    """
    from rich.progress import Progress

    if batch_size < 1:
        raise InputError(f"batch_size must be 1 or more, not {batch_size}.")
    output = Path(output)
    stored = _stored(output)
    keys = {line.key for line in lines}
    ids = {line.spec["id"]: line.key for line in lines if "id" in line.spec}
    todo = [line for line in lines if line.key not in stored]
    summary = Summary(output, len(lines), kept=len(lines) - len(todo))
    new_places = {line.index for line in todo if "id" not in line.spec}
    for key, (record, _) in stored.items():
        if key not in keys:  # an edited line (same id, or, without ids, a new line in its place) or a deleted one
            edited = record.get("id") in ids if "id" in record else record.get("index") in new_places
            summary.edited += edited
            summary.dropped += not edited
    before = [stored[line.key][0].get("index", -1) for line in lines if line.key in stored]
    summary.reordered = before != sorted(before)
    done = summary.kept
    with output.open("a", encoding="utf-8") as out, Progress(disable=not progress or not sys.stderr.isatty()) as bar:
        task = bar.add_task("explaining", total=len(lines), completed=done)
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                for line, result in zip(chunk, explain(chunk)):
                    text = _record(line, result)
                    out.write(text + "\n")
                    stored[line.key] = (json.loads(text), text)
                out.flush()
                os.fsync(out.fileno())
                done += len(chunk)
                summary.new += len(chunk)
                bar.advance(task, len(chunk))
        except KeyboardInterrupt:
            raise RunInterrupted(done, len(lines)) from None
    _rewrite(output, [_reindexed(stored[line.key], line) for line in lines])
    return summary


def _reindexed(stored: tuple[dict, str], line: Line) -> str:
    """A stored result line with its position in the current input (unchanged text where it is the same)."""
    record, text = stored
    if record.get("index") == line.index:
        return text
    return json.dumps({**record, "index": line.index}, ensure_ascii=False)


def _rewrite(path: Path, texts: list[str]) -> None:
    """Replace ``path`` with ``texts`` (one per line) atomically."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    os.replace(staging, path)
