"""Dataset runs: explain every line of a JSONL file into an output JSONL file, resumably.

Each input line is a string (the prompt) or an object with a ``"prompt"`` and, optionally, ``"target"``,
``"target_id"``, ``"contrast"``, ``"answer"``, ``"log_prob"`` (true: the target's log-probability, not its logit),
``"pair"``, ``"label"``, ``"at"`` (a word as a string, or a token position as a number), ``"image"`` (a path, for vision-language models and CLIP), ``"system"``, ``"chat"`` and
``"id"``; any other field is carried along (one that looks like a misspelt field, ``"traget"``, is refused).
Each output line holds the line's key, its position, its ``"id"``, the model's ``"dtype"``, its input fields
(under ``"input"``) and the explanation (``Explanation.from_dict`` reads it). An error names the line it comes
from (``prompts.jsonl:7``).

Results are matched to input lines by content (a hash of the line) and ``id``, never by line number: a rerun
keeps what still matches, recomputes edited lines, drops the results of deleted lines and writes everything
in the input's order. Finished results are appended (and synced) as they come, so an interruption loses at
most the batch in flight; the next run resumes from there.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import sharding
from .errors import InputError, TargetError
from .methods import get_method
from .methods.batch import TOKEN_BUDGET, plan

if TYPE_CHECKING:
    from .tasks.base import Task

#: Input fields that say what to explain; the others are carried along.
FIELDS = (
    "prompt",
    "target",
    "target_id",
    "contrast",
    "answer",
    "log_prob",
    "pair",
    "label",
    "at",
    "image",
    "system",
    "chat",
    "id",
)


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
    place: str = ""  # where it came from, for errors: "prompts.jsonl:3"


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
    padding: float = 0.0  # the share of padding in the batches computed now
    shard: tuple[int, int] = (0, 1)
    tokens: int = 0  # padded tokens (rows x width) of the batches computed now
    seconds: float = 0.0
    moved: int = 0  # results of lines another shard's batches now hold (after lines were added or deleted)
    merged: Path | None = None  # where the shards were merged, at the end of a run under a process group
    lines: int = 0  # the lines of the whole input

    def __str__(self) -> str:
        changes = [f"{self.edited} edited line(s) recomputed"] if self.edited else []
        changes += [f"{self.dropped} result(s) of deleted lines dropped"] if self.dropped else []
        changes += [f"{self.moved} now in another shard's batches"] if self.moved else []
        changes += ["reordered to the input's order"] if self.reordered else []
        counts = f"({self.new} new, {self.kept} already there" + (f"; {', '.join(changes)}" if changes else "") + ")"
        padding = f"; padding {self.padding:.0%} of the tokens" if self.tokens else ""
        rank, world = self.shard
        if world == 1:
            return f"{self.total} results in {self.output} {counts}{padding}"
        text = f"shard {rank} of {world}: {self.total} of {self.lines} lines in {self.output} {counts}{padding}"
        text += f"; {self.tokens} token rows in {self.seconds:.1f} s"
        return text + (f"; all {self.lines} merged into {self.merged}" if self.merged else "")


def read_lines(path: str | Path) -> list[Line]:
    """The input lines of a JSONL file (blank lines skipped), each keyed by its content and ``id``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"Can't read the input file {path}: {error.strerror or error}.") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x}): save the file as UTF-8."
        ) from None

    def values():
        for n, raw in enumerate(text.splitlines(), 1):
            if raw.strip():
                try:
                    yield f"{path}:{n}", json.loads(raw)
                except json.JSONDecodeError as error:
                    raise InputError(f"{path}:{n}: not valid JSON ({error}).") from error

    return keyed_lines(values())


def keyed_lines(values: Iterable[tuple[str, Any]]) -> list[Line]:
    """Input lines from ``(place, value)`` pairs (a place names the value in errors: ``"prompts.jsonl:3"``), each
    value a prompt or an object with a ``"prompt"``; checked (unique ids, no misspelt field) and keyed by their
    content and ``id``."""
    lines, seen, ids = [], Counter(), set()
    for place, value in values:
        spec = {"prompt": value} if isinstance(value, str) else value
        if not isinstance(spec, dict) or "prompt" not in spec:
            raise InputError(f'{place}: each line must be a string or an object with a "prompt" key.')
        _check_fields(place, spec)
        if "id" in spec:
            if isinstance(spec["id"], bool) or not isinstance(spec["id"], (str, int)):
                raise InputError(f"{place}: an id is a string or a whole number, not {spec['id']!r}.")
            if spec["id"] in ids:
                raise InputError(f"{place}: the id {spec['id']!r} is used twice; ids must be unique.")
            ids.add(spec["id"])
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        seen[digest] += 1  # the same line twice: two results
        lines.append(Line(len(lines), spec, f"{digest}-{seen[digest]}", place))
    return lines


def _check_fields(place: str, spec: dict[str, Any]) -> None:
    """A field that looks like a misspelt one of ``FIELDS`` (``"traget"``, ``"Label"``) is refused: carried along
    as it is, it would leave the line explained as if it were absent. Names that extend a field's are metadata."""
    for field in spec:
        name = str(field).lower()
        if field in FIELDS or (name not in FIELDS and (len(name) < 5 or name.startswith(FIELDS))):
            continue  # short names, and names built on a field's ("answers", "prompt_id", "labels"), are metadata
        close = [name] if name in FIELDS else difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.8)
        if close:
            raise InputError(
                f'{place}: unknown field "{field}"; did you mean "{close[0]}"? Other fields are carried along '
                "unread: rename it if it is your own."
            )


def _stored(path: Path) -> dict[str, tuple[dict, str]]:
    """The results already in ``path`` by key (record, line text); a torn last line (an interruption) is dropped,
    and so is a shard file's header."""
    if not path.exists():
        return {}
    stored = {}
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        if n == 1 and sharding.read_header(text) is not None:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("key"), str) or "input" not in record:
            raise InputError(
                f"{path}:{n} is not an attnlrp result line; write to a new file (output=, or --output on the command "
                "line), or to the file a previous run wrote, to resume it."
            )
        stored[record["key"]] = (record, text)
    return stored


#: What a run's settings stamp on each of its output lines, beside the result's own fields
STAMPS = ("dtype", "weights")


def _record(line: Line, result: Any, settings: dict[str, Any]) -> str:
    """One output line: the line's key, position and id, the run's dtype and weights digest, the input fields and
    the result."""
    head = {"key": line.key, "index": line.index, **({"id": line.spec["id"]} if "id" in line.spec else {})}
    head.update({name: settings[name] for name in STAMPS if settings.get(name)})
    body = result.to_dict()
    if settings.get("method") not in (None, body.get("method")):  # a configured method: integrated_gradients(steps=8)
        head["method_label"] = settings["method"]
    return json.dumps({**head, "input": line.spec, **body}, ensure_ascii=False)


def run_file(
    explain: Callable[[list[Line]], Sequence[Any]],
    lines: list[Line],
    output: str | Path,
    batch_size: int,
    lengths: Sequence[int] | None = None,
    shard: tuple[int, int] | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> Summary:
    """Explain every line of ``lines`` that has no result in the output yet (``explain`` turns a batch of lines
    into results), and write every result in the input's order.

    The batches are the same for every run over the same input: lines of similar ``lengths`` (tokens) share a
    batch of at most ``batch_size`` lines and ``TOKEN_BUDGET`` padded tokens, and a batch is computed whole (so
    each result always has the same numbers).
    ``shard=(rank, world)`` (default: from the launcher's environment) takes this process's share of the batches
    and writes ``<output>.shard-<rank>-of-<world>``, headed by ``settings``; under a process group the shards are
    merged into ``output`` at the end. Ctrl-C stops after the batch in flight with a ``RunInterrupted``.
    """
    from rich.progress import Progress

    if batch_size < 1:
        raise InputError(f"batch_size must be 1 or more, not {batch_size}.")
    rank, world = sharding.check_shard(shard) if shard is not None else sharding.current_shard()
    prepare_output(output)
    lengths = list(lengths) if lengths is not None else [1] * len(lines)
    batches = plan(lengths, batch_size, TOKEN_BUDGET, by_length=True)
    mine = [batches[b] for b in sharding.assign(batches, lengths, world)[rank]]
    path = Path(output) if world == 1 else sharding.shard_path(output, rank, world)
    own = sorted(i for batch in mine for i in batch)
    stored = _stored(path)
    _check_stored(path, stored, settings or {})
    if stored and not stored.keys() & {line.key for line in lines}:
        raise InputError(
            f"{path} holds {len(stored)} result(s), none of them of a line of this input (the results of another "
            "input file?): write to another file (--output), or delete it to start afresh."
        )
    summary = _compare(path, [lines[i] for i in own], stored, {line.key for line in lines})
    summary.shard, summary.lines = (rank, world), len(lines)
    todo = [batch for batch in mine if any(lines[i].key not in stored for i in batch)]
    done = len(own) - sum(len(b) for b in todo)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in todo)
    summary.padding = 1 - sum(lengths[i] for b in todo for i in b) / padded if padded else 0.0
    with path.open("a", encoding="utf-8") as out, Progress(disable=not progress or not sys.stderr.isatty()) as bar:
        task = bar.add_task(sharding.progress_label("explaining", (rank, world)), total=len(own), completed=done)
        started = time.perf_counter()
        try:
            for batch in todo:
                chunk = [lines[i] for i in batch]
                summary.new += sum(line.key not in stored for line in chunk)
                for line, result in zip(chunk, explain_lines(explain, chunk)):
                    text = _record(line, result, settings or {})
                    out.write(text + "\n")
                    stored[line.key] = (json.loads(text), text)
                out.flush()
                os.fsync(out.fileno())
                done += len(chunk)
                summary.tokens += len(batch) * max(lengths[i] for i in batch)
                bar.advance(task, len(chunk))
        except KeyboardInterrupt:
            raise RunInterrupted(done, len(own)) from None
        summary.seconds = time.perf_counter() - started
    kept = [_reindexed(stored[lines[i].key], lines[i]) for i in own]
    _rewrite(path, kept if world == 1 else [sharding.header(rank, world, settings or {}, len(lines), own), *kept])
    if world > 1 and sharding.finish(output, world):
        summary.merged = Path(output)
    summary.kept = len(own) - summary.new
    return summary


def prepare_output(output: str | Path, example: str = "out.jsonl") -> Path:
    """``output`` as a path whose folder exists (made here), checked before any work: a folder given as the output
    file is an InputError (suggesting ``example``, a file name in it), a file or folder that can't be written a
    PermissionError."""
    output = Path(output)
    if output.is_dir():
        raise InputError(f"The output {output} is a folder: give a file name in it, e.g. {output / example}.")
    output.parent.mkdir(parents=True, exist_ok=True)
    written = output if output.exists() else output.parent
    if not os.access(written, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(written))
    return output


def explain_lines(explain: Callable[[list[Line]], Sequence[Any]], chunk: list[Line]) -> Sequence[Any]:
    """``explain(chunk)``; an input or target error is named by the line that raises it alone (``"prompts.jsonl:7:
    ..."``), else by the places of the whole batch."""
    try:
        return explain(chunk)
    except (InputError, TargetError) as error:
        for line in chunk if len(chunk) > 1 else []:
            try:
                explain([line])
            except (InputError, TargetError) as own:
                raise type(own)(f"{line.place}: {own}") from own
        raise type(error)(f"{', '.join(line.place for line in chunk)}: {error}") from error


def _check_stored(path: Path, stored: dict[str, tuple[dict, str]], settings: dict[str, Any]) -> None:
    """Results of another run (another model, method or dtype) are refused, not resumed as if they were this
    run's. The model is told by its weights where both runs sampled them (a fine-tune in a folder of the same
    name is another model, the same weights under another path are not), else by its name."""
    for record, _ in stored.values():
        record = {**record, "method": record.get("method_label", record.get("method"))}  # with its options
        for field in ("dtype", "method", _same_model_field(record, settings)):  # a dtype changes the weights too
            if field in settings and record.get(field) is not None and record[field] != settings[field]:
                seen = (
                    f"model {record.get('model')!r}, other weights"
                    if field == "weights"
                    else f"{field} {record[field]!r}"
                )
                raise InputError(
                    f"{path} holds results of another run ({seen}; this run's is "
                    f"{settings['model' if field == 'weights' else field]!r}): write to another file (--output), "
                    "or delete it to start afresh."
                )


def _same_model_field(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The field that tells whether two runs' models are the same: their weights digest where both have one."""
    return "weights" if "weights" in a and "weights" in b else "model"


def _compare(path: Path, lines: list[Line], stored: dict[str, tuple[dict, str]], every: set[str]) -> Summary:
    """A summary of what changed since the stored results were written: edited, deleted and reordered lines of
    ``lines`` (a shard's share of the input, whose keys are ``every``), and results of lines another shard's
    batches now hold."""
    summary = Summary(path, len(lines))
    keys = {line.key for line in lines}
    ids = {line.spec["id"] for line in lines if "id" in line.spec}
    unclaimed = sorted(line.index for line in lines if line.key not in stored and "id" not in line.spec)
    # (old index, new index) of the lines kept: a line without id was edited where a new line sits between the same
    # kept neighbours as its result did (lines inserted above it move both)
    kept = sorted((stored[line.key][0].get("index", -1), line.index) for line in lines if line.key in stored)
    for key, (record, _) in sorted(stored.items(), key=lambda item: item[1][0].get("index", -1)):
        if key in every and key not in keys:
            summary.moved += 1
        elif key not in keys:  # an edited line (same id, or a new line in its place) or a deleted one
            if "id" in record:
                edited = record["id"] in ids
            else:
                old = record.get("index", -1)
                low = max((new for before, new in kept if before < old), default=-1)
                high = min((new for before, new in kept if before > old), default=len(every))
                place = next((i for i in unclaimed if low < i < high), None)
                edited = place is not None
                if edited:
                    unclaimed.remove(place)
            summary.edited += edited
            summary.dropped += not edited
    before = [stored[line.key][0].get("index", -1) for line in lines if line.key in stored]
    summary.reordered = before != sorted(before)
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


def placed(place: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, with an input or target error prefixed by ``place`` (``"prompts.jsonl:3"``)."""
    try:
        return fn(*args)
    except (InputError, TargetError) as error:
        raise type(error)(f"{place}: {error}") from error


def line_length(tokenizer, inputs: Any, target: Any) -> int:
    """The tokens a line runs: its prompt's, and a teacher-forced answer's after it (batch plans and padding)."""
    from .tasks.targets import Answer
    from .tasks.text import encode

    answer = target.resolve(tokenizer).answer_ids if isinstance(target, Answer) else ()
    return len(encode(tokenizer, inputs).ids) + len(answer)


def chat_messages(prompt: Any, system: str | None, chat: bool) -> Any:
    """The prompt, or chat messages when asked for (a system message makes it a chat)."""
    from .tasks.text import is_chat

    if not (chat or system):
        return prompt
    if is_chat(prompt):  # messages already: a system message goes first, unless they have one
        if system and prompt[0].get("role") == "system":
            raise InputError("The messages begin with a system message already: leave out the system option.")
        return ([{"role": "system", "content": system}] if system else []) + list(prompt)
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


#: The options (an input line's fields) saying what to explain; each task's ``fields`` say those it takes
WHAT_TO_EXPLAIN = (
    "target",
    "target_id",
    "contrast",
    "answer",
    "label",
    "log_prob",
    "pair",
    "at",
    "image",
    "chat",
    "system",
)


def spec_job(
    spec: dict, task: type[Task] | None = None, name: Callable[[str], str] = json.dumps
) -> tuple[Any, Any, dict]:
    """What one spec (the command line's options, or an input line) asks for: (inputs, target, options), for a
    model of the task ``task`` where it is known. ``name`` spells an option in errors (an input line's field by
    default; the command line passes its --option)."""
    import attnlrp

    takes = task.fields if task is not None else None
    refused = [n for n in WHAT_TO_EXPLAIN if takes and n not in takes and spec.get(n) not in (None, False)]
    if refused:
        listing = ", ".join(name(n) for n in WHAT_TO_EXPLAIN if n in takes and (n in FIELDS or n in spec))
        raise InputError(
            f"{', '.join(map(name, refused))} {'is' if len(refused) == 1 else 'are'} not for a {task.name} model "
            f"(it takes {listing})."
        )
    if spec.get("target_id") is not None:
        clash = [n for n in ("target", "label", "answer") if spec.get(n) is not None]
        if clash:
            raise InputError(f"{name('target_id')} and {name(clash[0])} both say what to explain: give one of them.")
        given = spec["target_id"]
        if isinstance(given, bool) or not (isinstance(given, int) or str(given).isdigit()):
            raise InputError(f"{name('target_id')} is a token or label id (a whole number), not {given!r}.")
        spec = {**spec, "target": int(given)}
    if spec.get("label") is not None and spec.get("target") is not None:
        raise InputError("Give --target (a next token) or --label (a classifier's label), not both.")
    if spec.get("answer") is not None and (spec.get("target") is not None or spec.get("contrast") is not None):
        raise InputError("An answer is the whole target: give --answer without --target or --contrast.")
    for flag in ("chat", "log_prob"):
        if not isinstance(spec.get(flag, False), bool):
            raise InputError(f"{name(flag)} is true or false, not {spec[flag]!r}.")
    target = spec.get("label") if spec.get("label") is not None else spec.get("target")
    if spec.get("log_prob"):
        clash = [n for n in ("contrast", "answer") if spec.get(n) is not None]
        if clash:
            raise InputError(
                f"{name('log_prob')} explains one token's (or label's) log-probability, and {name(clash[0])} another "
                "scalar: give one of them."
            )
        target = attnlrp.LogProb(target)
    if spec.get("at") is not None:  # a string is a word ("1990" too), a whole number a token position
        at = spec["at"]
        if isinstance(at, bool) or not isinstance(at, (str, int)):
            raise InputError(f"{name('at')} is a word (a string) or a token position (a whole number), not {at!r}.")
        target = attnlrp.TokenLabel(at, label=target)
    if spec.get("answer") is not None:  # an empty one is refused by Answer, not ignored
        target = attnlrp.Answer(spec["answer"])
    elif spec.get("contrast") is not None:
        target = attnlrp.Contrast(target, spec["contrast"])
    options = {"pair": spec["pair"]} if spec.get("pair") is not None else {}
    if spec.get("image") is not None:
        options["images"] = read_image(spec["image"])
    return chat_messages(spec["prompt"], spec.get("system"), bool(spec.get("chat"))), target, options


def explain_jobs(
    model, tokenizer, jobs: list[tuple[Any, Any, dict]], method: str, gradient_checkpointing: bool = False
) -> list[Any]:
    """One batch of ``spec_job`` jobs explained in one call: their inputs, targets and options (pairs, images)."""
    import attnlrp

    options = {}
    for key in ("pair", "images"):
        values = [given.get(key) for _, _, given in jobs]
        if any(v is not None for v in values):
            options[key] = values
    return attnlrp.explain(
        model,
        tokenizer,
        [inputs for inputs, _, _ in jobs],
        target=[target for _, target, _ in jobs],
        method=method,
        batch_size=len(jobs),
        gradient_checkpointing=gradient_checkpointing,
        **options,
    )


def read_image(path: str | Path):
    """The RGB image at ``path`` (PIL), or an InputError naming the file."""
    from .tasks.image import open_image

    return open_image(Path(path))


def explain_dataset(
    model,
    tokenizer,
    input: str | Path,
    output: str | Path,
    method: str = "attnlrp",
    batch_size: int = 8,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    gradient_checkpointing: bool = False,
) -> Summary:
    """Explain every line of the JSONL file ``input`` into ``output`` (see the module's docstring for the fields),
    resumably, in batches of similar length; ``shard=(rank, world)`` (default: from torchrun's or accelerate's
    environment) takes one process's share and writes its shard file (merged with ``attnlrp merge``, or at the
    end of a run under a process group). ``gradient_checkpointing``: as for ``attnlrp.explain`` (the same
    relevance, less memory)."""

    from .tasks.base import dtype_name, model_name, task_for
    from .tasks.model_identity import weights_digest

    task = task_for(model)
    if task.name == "image":
        raise InputError(
            f"{type(model).__name__} is an image classifier, and a dataset run explains text: explain images with "
            "attnlrp.explain_image(model, images, processor=processor) (a batch of them in one call), or one with "
            "attnlrp explain --image PATH."
        )
    lines = read_lines(input)
    jobs = [placed(line.place, spec_job, line.spec, task) for line in lines]
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's own tokenizer
    lengths = [placed(line.place, line_length, text_tokenizer, *job[:2]) for line, job in zip(lines, jobs)]

    def explain(chunk: list[Line]) -> list[Any]:
        return explain_jobs(model, tokenizer, [jobs[line.index] for line in chunk], method, gradient_checkpointing)

    settings = {
        "model": model_name(model),
        "weights": weights_digest(model),
        "method": get_method(method).label,  # its options too: steps=8 is another run than steps=64
        "dtype": dtype_name(model),
        "batch_size": batch_size,
        "input": hashlib.sha256("".join(line.key for line in lines).encode()).hexdigest()[:16],
    }
    return run_file(explain, lines, output, batch_size, lengths, shard, settings, progress)
