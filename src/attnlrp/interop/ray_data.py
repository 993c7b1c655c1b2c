"""Explain a Ray Dataset on a Ray cluster: one actor per model copy, loaded once, fed whole planned batches.

    import ray, attnlrp.interop.ray_data as rd
    prompts = ray.data.read_json("prompts.jsonl")          # rows: "prompt" and the fields of attnlrp explain --input
    results = rd.explain_ray(prompts, "path/to/model", concurrency=4, num_gpus=1)
    rd.write_jsonl(results, "out.jsonl")                    # the file `attnlrp explain --input ... --output` writes

Ray is the distributed engine here (``pip install attnlrp[ray]``): ``map_batches`` with a stateful class runs
``concurrency`` actors, each of which loads the model once (``num_gpus`` per actor; fractions share a GPU, two or
more split the model over the actor's GPUs with ``device_map="auto"``). The driver reads the rows, numbers and
keys them and plans the batches exactly as ``attnlrp.dataset.explain_dataset`` does (lines of similar length
share a batch), and each actor call explains one planned batch whole: every record is the JSON line that a
single-process run writes, with the same numbers. The rows pass through the driver (their text, not the
relevance), so the input's order is the order ``dataset.iter_rows()`` yields.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import (
    Line,
    _record,
    explain_jobs,
    explain_lines,
    keyed_lines,
    line_length,
    placed,
    prepare_output,
    spec_job,
)
from ..errors import InputError
from ..methods import Method, get_method
from ..methods.batch import TOKEN_BUDGET, plan
from ..tasks import task_for
from ..tasks.base import dtype_name
from ..tasks.model_identity import weights_digest


def _plain(value: Any) -> Any:
    """A value of a Ray row as JSON would give it (numpy scalars and arrays to Python)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):  # a nested field other rows' dicts have arrives as None: absent, as at the top
        return {k: _plain(v) for k, v in value.items() if not _missing(v)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # a field other rows have (NaN/None)


def lines_of(rows) -> list[Line]:
    """Input lines from rows (dicts with a ``"prompt"``), keyed as ``attnlrp.dataset.read_lines`` keys a file's
    lines: fields other rows have and this one lacks (None) are left out, as they are absent from its JSON line."""

    def values():
        for n, row in enumerate(rows, 1):
            spec = {k: _plain(v) for k, v in row.items() if not _missing(v)}
            if "prompt" not in spec:
                raise InputError(
                    f'Row {n} of the Ray Dataset has no "prompt" (its fields: {sorted(row)}); name the column "prompt".'
                )
            yield f"row {n} of the Ray Dataset", spec

    return keyed_lines(values())


class Explainer:
    """The stateful callable of ``map_batches``: loads the model once per actor, then explains one planned batch
    (a row whose ``"lines"`` holds the batch's lines as JSON) per call."""

    def __init__(self, model: str | None, method: str | Method, num_gpus: float = 0, load_options: dict | None = None):
        import torch

        import attnlrp

        options = dict(load_options or {})
        if num_gpus and torch.cuda.is_available():
            options.setdefault("device_map", "auto" if num_gpus >= 2 else "cuda")
        self.model, self.tokenizer = attnlrp.load_model(model, **options)
        self.task = task_for(self.model)
        self.method = method
        # the method's label, options included, marks a configured method's records as a single-process run does
        self.stamps = {
            "dtype": dtype_name(self.model),
            "weights": weights_digest(self.model),
            "method": get_method(method).label,
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks = [[Line(**line) for line in json.loads(text)] for text in batch["lines"]]
        jobs = {line.index: placed(line.place, spec_job, line.spec, self.task) for chunk in chunks for line in chunk}

        def explain(lines: list[Line]) -> list[Any]:
            return explain_jobs(self.model, self.tokenizer, [jobs[line.index] for line in lines], self.method)

        indices, records = [], []
        for chunk in chunks:
            for line, result in zip(chunk, explain_lines(explain, chunk)):
                indices.append(line.index)
                records.append(_record(line, result, self.stamps))
        return {"index": np.array(indices, dtype=np.int64), "record": np.array(records, dtype=object)}


def explain_ray(
    dataset,
    model: str | os.PathLike | None = None,
    *,
    method: str | Method = "attnlrp",
    batch_size: int = 8,
    concurrency: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    load_options: dict[str, Any] | None = None,
):
    """Explain every row of the Ray Dataset ``dataset`` (a ``"prompt"`` column, and optionally ``"target"``,
    ``"target_id"``, ``"contrast"``, ``"answer"``, ``"log_prob"``, ``"pair"``, ``"label"``, ``"at"``, ``"system"``, ``"chat"``,
    ``"id"``; other columns are carried along) with the model ``model`` (anything ``attnlrp.load_model`` takes: a
    folder, a .gguf file, a zoo name; None: the bundled model), on ``concurrency`` actors with ``num_cpus`` CPUs
    (Ray gives an actor as many threads) and ``num_gpus`` GPUs each; ``load_options`` go to
    ``attnlrp.load_model``.

    Returns a Ray Dataset of ``{"index": row number, "record": JSON line}``, lazily; ``write_jsonl`` writes it in
    row order, as ``attnlrp.dataset.explain_dataset`` writes the same rows in one process: the same records, byte
    for byte where that process runs as many threads as an actor and the input lines list their fields in the
    order of the dataset's columns (a record's ``"input"`` lists them in column order)."""
    import ray.data

    from .. import zoo
    from ..loading import load_model, load_tokenizer

    get_method(method)  # an unknown method: one line here, not a trace from every actor after loading the model
    if batch_size < 1 or concurrency < 1:
        raise InputError(f"batch_size and concurrency must be 1 or more, not {batch_size} and {concurrency}.")
    if not num_cpus > 0 or num_gpus < 0:
        raise InputError(f"Each actor needs num_cpus > 0 and num_gpus >= 0, not {num_cpus} and {num_gpus}.")
    source = None if model is None else str(model)
    # the tokenizer plans the batches; a zoo model's comes with it (loaded here once, on the driver)
    tokenizer = load_model(source)[1] if source in zoo.MODELS else load_tokenizer(source)
    lines = lines_of(dataset.iter_rows())
    if not lines:
        raise InputError("The Ray Dataset has no rows to explain.")
    gpus = ray.cluster_resources().get("GPU", 0)
    if num_gpus > gpus:  # Ray would wait for them without a word
        raise InputError(
            f"Each actor asks for num_gpus={num_gpus}, and the Ray cluster has {gpus:g} GPUs; "
            "pass num_gpus=0 to explain on CPUs, or start Ray where the GPUs are."
        )
    jobs = [placed(line.place, spec_job, line.spec) for line in lines]
    lengths = [placed(line.place, line_length, tokenizer, *job[:2]) for line, job in zip(lines, jobs)]
    batches = [
        {"lines": json.dumps([vars(lines[i]) for i in batch])}
        for batch in plan(lengths, batch_size, TOKEN_BUDGET, by_length=True)
    ]
    return ray.data.from_items(batches, override_num_blocks=len(batches)).map_batches(
        Explainer,
        batch_size=1,
        concurrency=concurrency,
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
        fn_constructor_kwargs={"model": source, "method": method, "num_gpus": num_gpus, "load_options": load_options},
    )


def write_jsonl(results, output: str | os.PathLike) -> Path:
    """Write the records of ``explain_ray`` to ``output`` in row order (atomically). Its folder is made (and a
    folder given as the file refused) before the rows are read, which runs the explanations of a lazy dataset."""
    output = prepare_output(output)
    rows = sorted(results.iter_rows(), key=lambda row: int(row["index"]))
    staging = output.with_name(output.name + ".tmp")
    staging.write_text("".join(str(row["record"]) + "\n" for row in rows), encoding="utf-8")
    os.replace(staging, output)
    return output
