"""Run a suite over several methods: explain, score, append each finished item to a journal, summarise.

The journal (``<output>.jsonl`` beside ``<output>.json``) holds one line per (item, method); a rerun with
the same settings skips what it already holds, so an interrupted run resumes where it stopped.

Under a launcher (torchrun, accelerate launch) or with ``shard=(rank, world)``, each process takes its share of
the (batch, method) pairs (``sharding.assign``) and writes its own journal, ``<output>.jsonl.shard-<rank>-of-
<world>``; rank 0 summarises them all once every process is done. A run summarises every journal of its output it
finds (its own and the shards'), so a run in one process resumes from shards and summarises them: the way to
gather shards written without a process group, or on machines without a shared folder.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.progress import Progress

from ..errors import InputError
from ..frontends import explain
from ..methods import Method, get_method
from ..methods.batch import TOKEN_BUDGET, plan
from ..sharding import assign, check_shard, current_shard, progress_label, shard_path, wait_for_all
from ..tasks.base import dtype_name, model_name
from ..tasks.causal_lm import check_causal_lm
from . import metrics
from .perturbation import MODES, perturbation_curves
from .suites import SUITES, Item, kept_items, needle

#: Most items explained together in one batch (at most the token budget's worth of tokens).
BATCH_ITEMS = 16


def score_items(
    model,
    tokenizer,
    items: Sequence[Item],
    method: str | Method,
    curves: bool,
    steps: int = 10,
    mode: str = "zero",
    exclude_first: bool = False,
) -> list[dict]:
    """Explain ``items`` (one batch) with ``method``; per item, its ground-truth metrics and, with ``curves``,
    its perturbation metrics."""
    targets = [item.target(tokenizer) for item in items]
    explanations = explain(
        model, tokenizer, [item.prompt for item in items], target=targets, method=method, batch_size=len(items)
    )
    records = []
    for item, exp in zip(items, explanations):
        evidence = item.evidence_positions(tokenizer)
        magnitude = np.abs(exp.scores).sum()
        records.append(
            {
                "pointing": metrics.pointing_game(exp.scores, evidence),
                "recovery": metrics.recovery_at_k(exp.scores, evidence),
                "pointing_no_first": metrics.pointing_game(exp.scores, evidence, exclude=(0,)),
                "recovery_no_first": metrics.recovery_at_k(exp.scores, evidence, exclude=(0,)),
                "first_share": float(abs(exp.scores[0]) / magnitude) if magnitude > 0 else 0.0,
            }
        )
    if curves:
        found = perturbation_curves(
            model,
            tokenizer,
            [e.token_ids for e in explanations],
            targets,
            [e.scores for e in explanations],
            steps=steps,
            mode=mode,
            exclude_first=exclude_first,
        )
        for record, c in zip(records, found):
            record.update(c.to_dict())
    return records


def read_journal(path: Path, settings: dict) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """The records of the journal at ``path`` by (item, method), and its whole lines (a line torn by an
    interruption is left out: computed again); an InputError where it holds a run with other settings."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0])["settings"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        header = None
    # the settings this suite uses (None: not this suite's; a journal of an older version may hold them)
    used = {key: value for key, value in settings.items() if value is not None}
    if not isinstance(header, dict) or any(header.get(key) != value for key, value in used.items()):
        differ = (
            "; ".join(
                f"{key}: {header.get(key)!r} there, {value!r} now"
                for key, value in used.items()
                if header.get(key) != value
            )
            if isinstance(header, dict)
            else f"its settings can't be read ({header!r})"
        )
        raise InputError(
            f"{path} holds a run with other settings ({differ}); write to another file (output=, or --output on the "
            "command line), or delete it to start afresh."
        )
    records, kept = {}, [lines[0]]
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[(record["item"], record["method"])] = record
        kept.append(line)
    return records, kept


class Journal:
    """The JSONL file of finished (item, method) records, headed by the run's settings."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.records: dict[tuple[str, str], dict] = {}
        if path.exists():
            self.records, kept = read_journal(path, settings)
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")  # torn lines dropped
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")

    def add(self, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
                self.records[(record["item"], record["method"])] = record
            f.flush()
            os.fsync(f.fileno())


def _check(suite: str, limit: int, steps: int, mode: str, lengths: Sequence[int]) -> None:
    """Refuse a run that can't be done before anything (its journal) is written."""
    if suite not in SUITES:
        raise InputError(f"Unknown suite {suite!r}: choose one of {', '.join(map(repr, SUITES))}.")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"limit is how many items to evaluate: 1 or more, not {limit!r}.")
    if suite == "needle" and (not lengths or min(lengths) < needle.MIN_LENGTH):
        raise InputError(
            f"The needle suite's context lengths must be {needle.MIN_LENGTH} tokens or more (the needle, a "
            f"distractor and the question alone take about 25), not {list(lengths)}."
        )
    if suite == "perturbation" and (steps < 1 or mode not in MODES):
        raise InputError(
            f"The perturbation suite needs steps >= 1 (not {steps}) and a mode of {', '.join(map(repr, MODES))} "
            f"(not {mode!r})."
        )


def run_suite(
    model,
    tokenizer,
    suite: str,
    methods: Sequence[str | Method],
    limit: int,
    output: str | Path,
    seed: int = 0,
    lengths: Sequence[int] = needle.LENGTHS,
    steps: int = 10,
    mode: str = "zero",
    exclude_first: bool = False,
    centered: bool = True,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict | None:
    """Evaluate ``methods`` (names, or configured methods such as ``IntegratedGradients(steps=8)``: results are
    kept under ``Method.label``) on the first ``limit`` items of ``suite`` the model gets right; write the JSON
    results to ``output`` (resuming from its journal) and return them.

    lengths: the needle's context lengths; steps, mode, exclude_first, centered: the perturbation suite's
    curves (``perturbation_curves``) and explained value (the answer's logit minus the mean logit, or not).
    shard: (rank, world) of this process (default: the launcher's environment); the processes other than rank 0,
    and rank 0 where it can't see every shard, return None (see the module's docstring).
    """
    rank, world = check_shard(shard) if shard is not None else current_shard()
    check_causal_lm(model)
    if isinstance(methods, (str, Method)):
        methods = [methods]
    if not methods:
        raise InputError("Give at least one method to evaluate (methods=, or --methods on the command line).")
    chosen: dict[str, Method] = {}  # each once, in the order given, by name and configuration
    for m in methods:
        method = get_method(m)
        chosen.setdefault(method.label, method)
    names = list(chosen)
    _check(suite, limit, steps, mode, lengths)
    output = Path(output)
    if output.suffix == ".jsonl":
        raise InputError(
            f"{output} would be both the results and their journal (<output>.jsonl), one overwriting the other: "
            f"name the results .json, e.g. {output.with_suffix('.json')}."
        )
    perturbation = suite == "perturbation"  # the curves' settings are the perturbation suite's only
    settings = {
        "suite": suite,
        "model": model_name(model),
        "dtype": dtype_name(model),
        "seed": seed,
        "steps": steps if perturbation else None,
        "mode": mode if perturbation else None,
        "exclude_first": exclude_first if perturbation else None,
        "centered": centered if perturbation else None,
        "lengths": list(lengths) if suite == "needle" else None,
    }
    started = time.perf_counter()
    items, tried = kept_items(model, tokenizer, suite, limit, seed, lengths, centered)
    if not items:
        raise InputError(
            f"{model_name(model)} got none of the {tried} {suite} items tried right, so there is nothing to explain: "
            "evaluate a model that solves this suite (a trained one, not a random one)."
        )
    journals = output.with_suffix(".jsonl")
    journal = Journal(journals if world == 1 else shard_path(journals, rank, world), settings)
    done = _found(journals, settings, journal, running=world)
    lengths_of = [len(tokenizer(item.prompt).input_ids) for item in items]
    pairs = [(batch, name) for batch in plan(lengths_of, BATCH_ITEMS, TOKEN_BUDGET, by_length=True) for name in names]
    pairs = [pairs[i] for i in assign([batch for batch, _ in pairs], lengths_of, world)[rank]]
    todo = [(batch, name) for batch, name in pairs if any((items[i].id, name) not in done for i in batch)]
    with Progress(disable=not progress) as bar:  # a resumed run starts the bar at what the journals hold
        label = progress_label(f"{suite}: {len(items)} items x {len(names)} methods", (rank, world))
        task = bar.add_task(label, total=len(pairs), completed=len(pairs) - len(todo))
        for batch, name in todo:
            pending = [items[i] for i in batch if (items[i].id, name) not in done]
            start = time.perf_counter()
            records = score_items(
                model, tokenizer, pending, chosen[name], suite == "perturbation", steps, mode, exclude_first
            )
            seconds = (time.perf_counter() - start) / len(pending)
            journal.add(
                [
                    {"item": item.id, "method": name, "group": item.group, "seconds": seconds, **record}
                    for item, record in zip(pending, records)
                ]
            )
            done.update(journal.records)
            bar.advance(task)

    def summarised() -> dict | None:
        records = _found(journals, settings, journal)
        missing = {name: n for name in names if (n := sum((item.id, name) not in records for item in items))}
        if missing:
            print(
                f"attnlrp: {output} not written: the journals of {journals.parent} lack results "
                f"({', '.join(f'{n} of {name}' for name, n in missing.items())}); where shards were written on "
                f"other machines, copy their {journals.name}.shard-* files here and run the same command in one "
                "process: it resumes from them and summarises.",
                file=sys.stderr,
            )
            return None
        results = summarise(settings, names, items, tried, records)
        results["elapsed_s"] = time.perf_counter() - started
        output.write_text(json.dumps(results, indent=1), encoding="utf-8")
        return results

    if world == 1:
        return summarised()
    results: list[dict | None] = []

    def on_rank_0() -> bool:  # once every process is done
        results.append(summarised())
        return results[0] is not None

    wait_for_all(on_rank_0)
    return results[0] if results else None


def _found(journals: Path, settings: dict, own: Journal, running: int = 1) -> dict[tuple[str, str], dict]:
    """The records of every journal of this output: ``own`` (the one this process writes) and the others (the
    single-process journal, every shard's), read without writing to them. The shards of a world of ``running``
    processes (more than one: this run's, which its other processes are writing) are left out."""
    records: dict[tuple[str, str], dict] = {}
    for path in sorted({journals, *journals.parent.glob(journals.name + ".shard-*-of-*")} - {own.path}):
        if path.is_file() and not (running > 1 and path.name.endswith(f"-of-{running}")):
            records.update(read_journal(path, settings)[0])
    records.update(own.records)
    return records


def summarise(
    settings: dict, names: Sequence[str], items: Sequence[Item], tried: int, records: dict[tuple[str, str], dict]
) -> dict:
    """Per method (and per group): mean and 95% bootstrap interval of each metric; mean perturbation curves."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    groups: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        for name in names:
            record = records[(item.id, name)]
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    table[name][key].append(value)
                    groups[item.group][name][key].append(value)
                elif key in ("morf", "lerf"):
                    curves[name][key].append(value)
    order = sorted(groups, key=int) if settings["lengths"] else list(groups)  # the needle's lengths, ascending
    return {
        "settings": settings,
        "methods": list(names),
        "tried": tried,
        "kept": len(items),
        "metrics": {name: _summaries(table[name]) for name in names},
        "groups": {g: {name: _summaries(groups[g][name]) for name in names} for g in order if g},
        "curves": {name: {k: np.mean(v, axis=0).tolist() for k, v in c.items()} for name, c in curves.items()},
    }


def _summaries(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {key: metrics.summary(v) for key, v in values.items()}
