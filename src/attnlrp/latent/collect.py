"""``collect``: one pass over a corpus that fills a ``FeatureAtlas``, in batches, with a progress bar.

Each context (one text, cut to ``max_tokens``) is run through the model once, and its next-token prediction
(the model's own top token, or a given target) is explained with one LRP backward per batch. Every site
records each unit's activation at every token and its relevance for that prediction; the atlas keeps the top-k
contexts of each unit by peak activation and by summed relevance.

Shards (``shard=(rank, world)``) take every world-th batch of the one-process run's batches, so each context is
computed in the same batch, to the same numbers, as in one process; with ``checkpoint=folder`` the atlas is saved
every ``every`` batches and a rerun resumes where the folder stands (after checking that the corpus read so
far is the same).
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import nn

from ..errors import LatentError, TargetError
from ..frontends import make_task
from ..methods import get_method
from ..sharding import progress_label
from ..tasks.base import dtype_name, model_name
from ..tasks.model_identity import weight_sample
from ..tasks.targets import token_id
from ..tasks.text import Item, display_tokens, encode
from .atlas import FeatureAtlas, Part
from .corpus import Record, read_corpus
from .sites import Site, SiteRecorder, SiteSpec, resolve


def _check_target(tokenizer, target: Any, where: str) -> None:
    if target is not None and (isinstance(target, bool) or not isinstance(target, (str, int))):
        raise LatentError(
            f"{where}: collect explains one next token per context: give None (the model's own prediction), a "
            f"token string or a token id, not {type(target).__name__}."
        )
    if target is not None:
        try:
            token_id(tokenizer, target, spans=False)
        except TargetError as error:
            raise TargetError(f"{where}: {error}") from None


def _shard(shard: Sequence[int]) -> tuple[int, int]:
    try:
        rank, world = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise LatentError(f"shard is (rank, world), e.g. (0, 4), not {shard!r}.") from None
    if not 0 <= rank < world:
        raise LatentError(f"shard=(rank, world) needs 0 <= rank < world, not {shard!r}.")
    return rank, world


def _count(corpus: Any) -> int | None:
    """How many records the corpus has, where that is cheap to know (for the progress bar)."""
    if isinstance(corpus, (str, Path)):
        try:
            with open(corpus, encoding="utf-8") as f:
                return sum(1 for line in f if line.strip())
        except OSError:
            return None
    return len(corpus) if hasattr(corpus, "__len__") else None


def _fingerprint(digest: Any, record: Record) -> None:
    digest.update(json.dumps([record.text, record.topic, record.target], ensure_ascii=False).encode())
    digest.update(b"\n")


def _corpus_digest(corpus: str | Path | Iterable[Any]) -> tuple[str, int]:
    """The fingerprint of a whole corpus (as a finished atlas records it) and its number of texts."""
    digest, size = hashlib.sha256(), 0
    for record in read_corpus(corpus):
        _fingerprint(digest, record)
        size += 1
    return digest.hexdigest(), size


def _describe(tokenizer, batch, record: Record, row: int) -> dict[str, Any]:
    sequence = batch.sequences[row]
    outcome = batch.outcomes[row]
    return {
        "tokens": display_tokens(tokenizer, sequence)[1],
        "ids": array("i", sequence),  # compact: the atlas keeps every context a top-k list names
        "topic": record.topic,
        "target": outcome.target.label,
        "target_id": outcome.target.token_id,
        "value": outcome.value,
    }


def _fold(atlas: FeatureAtlas, task, method, sites: list[Site], pending: list[tuple[int, Record]], target) -> None:
    """Run one batch of contexts and fold it into the atlas."""
    length = atlas.settings["max_tokens"]
    items = [Item(encode(task.tokenizer, r.text).ids[:length]) for _, r in pending]
    targets = task.targets([r.target if r.target is not None else target for _, r in pending], len(pending))
    batch = task.prepare(items, targets)
    with SiteRecorder(task.model, sites) as recorder:
        method.attribute(batch)
    width = batch.inputs["tokens"].shape[1]
    mask = torch.zeros(len(pending), width, dtype=torch.bool)
    for row, span in enumerate(batch.spans["tokens"]):
        mask[row, span] = True
    atlas.add(
        torch.tensor([i for i, _ in pending]),
        mask,
        {name: a.cpu() for name, a in recorder.activation.items()},
        {name: r.cpu() for name, r in recorder.relevance.items()},
        [r.topic for _, r in pending],
        lambda row: _describe(task.tokenizer, batch, pending[row][1], row),
    )


def _finish(atlas: FeatureAtlas, digest: str, size: int, shard: tuple[int, int], batch_size: int) -> None:
    rank, world = shard
    atlas.parts = [Part(digest, size, world, [rank], 0, batch_size if world > 1 else 0)]
    atlas.finished = True


def collect(
    model: nn.Module,
    tokenizer,
    corpus: str | Path | Iterable[Any],
    sites: SiteSpec | Iterable[SiteSpec],
    top_k: int = 16,
    target: str | int | None = None,
    method: str = "attnlrp",
    batch_size: int = 16,
    max_tokens: int = 64,
    shard: Sequence[int] = (0, 1),
    checkpoint: str | Path | None = None,
    every: int = 20,
    progress: bool = True,
) -> FeatureAtlas:
    """One pass over ``corpus`` (texts, {"text", "topic", "target"} dicts, or a JSONL file of either): for every
    unit of ``sites`` the top ``top_k`` contexts by activation and by relevance for the next-token prediction,
    with statistics. The returned atlas is bound to the model.

    target: None (the model's own top next token), or a token (string or id) explained in every context; a
    corpus entry's own "target" wins. method: "attnlrp" or "cp-lrp". Contexts are cut to ``max_tokens``
    tokens. shard: (rank, world), this process's share of the corpus: every world-th batch (merge the shards'
    atlases).
    checkpoint: a folder; the atlas is saved there every ``every`` batches and at the end, and a rerun resumes.
    """
    chosen = resolve(model, sites)
    rank, world = _shard(shard)
    _check_target(tokenizer, target, "target")
    lrp_method = get_method(method)
    if not lrp_method.is_lrp:
        raise LatentError(
            f"collect ranks units by LRP relevance: method must be 'attnlrp' or 'cp-lrp', not {method!r}."
        )
    if top_k < 1 or max_tokens < 2 or batch_size < 1:
        raise LatentError("collect needs top_k >= 1, max_tokens >= 2 and batch_size >= 1.")
    task = make_task(model, tokenizer, padding_side="right")
    if task.name != "causal-lm":
        raise LatentError(
            f"collect explains next-token predictions; {type(model).__name__} is a {task.name!r} model. Explain its "
            "predictions with explain(..., latent=sites) instead."
        )
    settings = {
        "model": model_name(model),
        "weights": weight_sample(model),
        "dtype": dtype_name(model),
        "method": lrp_method.name,
        "top_k": top_k,
        "max_tokens": max_tokens,
        "target": target,
        "sites": [s.name for s in chosen],
        "saes": {s.name: s.sae.source for s in chosen if s.sae is not None},
        "sae_weights": {s.name: weight_sample(s.sae) for s in chosen if s.sae is not None},
        "shard": [rank, world, batch_size] if world > 1 else [rank, world],  # a shard's batches depend on the size
    }
    atlas = _resume(checkpoint, settings) or FeatureAtlas.empty(settings, chosen)
    if atlas.finished:
        digest, size = _corpus_digest(corpus)
        if digest != atlas.prefix_digest:
            raise LatentError(
                f"{checkpoint} holds a finished atlas of another corpus ({atlas.position} texts; this one has {size}): "
                "give another checkpoint folder for it (merge the two atlases to combine them), or the same corpus."
            )
        return atlas.bind(model, tokenizer, [s.sae for s in chosen if s.sae is not None])
    digest = hashlib.sha256()
    position, pending, batches = 0, [], 0
    total = _count(corpus)
    with Progress(disable=not progress) as bar:
        label = progress_label(f"collect {len(chosen)} sites", (rank, world))
        task_bar = bar.add_task(label, total=total, completed=atlas.position)
        for record in read_corpus(corpus):
            _check_target(tokenizer, record.target, f"corpus entry {position}")
            _fingerprint(digest, record)
            position += 1
            if position <= atlas.position:
                if position == atlas.position and digest.hexdigest() != atlas.prefix_digest:
                    raise LatentError(
                        f"The corpus differs from the one {checkpoint} was collected on (its first {position} "
                        "texts changed): give another checkpoint folder, or the same corpus."
                    )
                continue
            if (position - 1) // batch_size % world == rank:
                pending.append((position - 1, record))
            if pending and position % batch_size == 0:
                _fold(atlas, task, lrp_method, chosen, pending, target)
                bar.advance(task_bar, position - atlas.position)
                atlas.position, atlas.prefix_digest = position, digest.hexdigest()
                pending, batches = [], batches + 1
                if checkpoint is not None and batches % every == 0:
                    atlas.save(checkpoint)
        if position == 0:
            raise LatentError("The corpus is empty: give at least one text.")
        if position < atlas.position:
            raise LatentError(
                f"The corpus has {position} texts, but {checkpoint} was collected on more: give the same corpus."
            )
        if pending:
            _fold(atlas, task, lrp_method, chosen, pending, target)
        bar.update(task_bar, completed=position)
    atlas.position, atlas.prefix_digest = position, digest.hexdigest()
    _finish(atlas, digest.hexdigest(), position, (rank, world), batch_size)
    if checkpoint is not None:
        atlas.save(checkpoint)
    atlas.model, atlas.tokenizer, atlas.bound_sites = model, tokenizer, {s.name: s for s in chosen}
    return atlas


def _resume(checkpoint: str | Path | None, settings: dict[str, Any]) -> FeatureAtlas | None:
    if checkpoint is None or not (Path(checkpoint) / "atlas.json").is_file():
        return None
    atlas = FeatureAtlas.load(checkpoint)
    if atlas.settings != json.loads(json.dumps(settings)):
        differ = sorted(k for k in settings if atlas.settings.get(k) != json.loads(json.dumps(settings.get(k))))
        raise LatentError(
            f"{checkpoint} holds an atlas collected with other settings ({', '.join(differ)}); give another "
            "checkpoint folder, or delete it to start afresh."
        )
    return atlas
