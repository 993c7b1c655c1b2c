"""Perturbation curves: perturb tokens in order of relevance, in batched forwards, and watch the explained value.

Modes: ``"zero"`` sets the tokens' input embeddings to zero (as in the AttnLRP paper), ``"replace"`` swaps
the tokens for a neutral token, ``"remove"`` deletes them from the sequence (positions close up; with
every token removed, the neutral token stands alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..engine.predicting import predicting
from ..methods.batch import Batch, chunks
from ..tasks.causal_lm import prepare_batch
from ..tasks.targets import token_id
from . import metrics

MODES = ("zero", "replace", "remove")


@dataclass
class Curves:
    """The explained value as tokens are perturbed most-relevant-first (MoRF) and least-relevant-first (LeRF)."""

    clean: float
    morf: list[float]  # at fractions 0, 1/steps, ..., 1 of the tokens
    lerf: list[float]
    comprehensiveness: float  # AOPC: mean drop with the top 1/5/10/20/50% removed (higher is better)
    sufficiency: float  # AOPC: mean drop with only the top 1/5/10/20/50% kept (lower is better)

    @property
    def abpc(self) -> float:
        return metrics.abpc(self.morf, self.lerf)

    def to_dict(self) -> dict:
        return {
            "clean": self.clean,
            "morf": self.morf,
            "lerf": self.lerf,
            "abpc": self.abpc,
            "comprehensiveness": self.comprehensiveness,
            "sufficiency": self.sufficiency,
        }


def _variants(scores: np.ndarray, steps: int, exclude_first: bool) -> tuple[dict, list[frozenset[int]]]:
    """The perturbed sets one item needs: {(order, count): set index} and the sets (positions to perturb)."""
    exclude = (0,) if exclude_first else ()
    orders = {"morf": metrics.ranking(scores, True, exclude), "lerf": metrics.ranking(scores, False, exclude)}
    n = len(orders["morf"])
    wanted = [(o, c) for o in orders for c in metrics.counts(n, steps)]
    wanted += [("morf", c) for c in metrics.top_counts(n)] + [("lerf", n - c) for c in metrics.top_counts(n)]
    seen: dict[frozenset[int], int] = {}  # each distinct set once, in first-needed order
    index = {(o, c): seen.setdefault(frozenset(orders[o][:c].tolist()), len(seen)) for o, c in wanted}
    return index, list(seen)


def _curves(scores: np.ndarray, steps: int, exclude_first: bool, index: dict, values: np.ndarray) -> Curves:
    n = len(scores) - (1 if exclude_first else 0)
    clean = float(values[index[("morf", 0)]])
    morf = [float(values[index[("morf", c)]]) for c in metrics.counts(n, steps)]
    lerf = [float(values[index[("lerf", c)]]) for c in metrics.counts(n, steps)]
    top = metrics.top_counts(n)
    return Curves(
        clean,
        morf,
        lerf,
        metrics.aopc(clean, [values[index[("morf", c)]] for c in top]),
        metrics.aopc(clean, [values[index[("lerf", n - c)]] for c in top]),
    )


def _embedded_values(batch: Batch, jobs: list[tuple[int, frozenset[int]]], fill: torch.Tensor | None) -> np.ndarray:
    """Values for (row, positions) jobs whose positions get ``fill`` (None: zeros) as their input embedding."""
    out = np.empty(len(jobs))
    with torch.no_grad():
        for chunk in batch.chunks(len(jobs), grad=False):
            rows = [row for row, _ in jobs[chunk]]
            embeds = batch.inputs["tokens"][rows].clone()
            for k, (row, positions) in enumerate(jobs[chunk]):
                at = [batch.spans["tokens"][row].start + p for p in positions]
                embeds[k, at] = 0 if fill is None else fill
            out[chunk] = batch.values({"tokens": embeds}, rows).float().cpu().numpy()
    return out


def _removal_values(
    model, tokenizer, ids: Sequence[Sequence[int]], targets: Sequence, jobs, neutral: int
) -> np.ndarray:
    """Values for (row, positions) jobs with the positions deleted from the token ids."""
    out = np.empty(len(jobs))
    for chunk in chunks(len(jobs), max(len(i) for i in ids), grad=False):
        kept = [
            [t for p, t in enumerate(ids[row]) if p not in positions] or [neutral] for row, positions in jobs[chunk]
        ]
        batch = prepare_batch(model, tokenizer, kept, [targets[row] for row, _ in jobs[chunk]], padding_side="left")
        out[chunk] = batch.clean.float().cpu().numpy()
    return out


def _before_answer(row: int, ids: Sequence[int], scores: np.ndarray, target: Any) -> tuple[list[int], np.ndarray]:
    """The prompt of an explained answer, whose tokens its explanation holds after ``context`` of them: the answer
    target appends them again, and the curves perturb the context (as rankings cover it)."""
    if not (isinstance(target, dict) and target.get("kind") == "answer" and "context" in target):
        return list(ids), scores
    n = target["context"]
    if len(ids) == n:  # the prompt alone was given
        return list(ids), scores
    if list(ids[n:]) != list(target["answer"]):
        raise ValueError(
            f"Prompt {row}: its target is an answer after {n} tokens, but tokens {n}.. are not that answer: pass the "
            "explanation's token_ids and scores with its explained, as they are."
        )
    return list(ids[:n]), scores[:n]


def perturbation_curves(
    model,
    tokenizer,
    ids: Sequence[Sequence[int]],
    targets: Sequence,
    scores: Sequence[Sequence[float]],
    steps: int = 10,
    mode: str = "zero",
    neutral: str | int = " ",
    exclude_first: bool = False,
) -> list[Curves]:
    """MoRF / LeRF curves, ABPC and AOPC comprehensiveness and sufficiency for explained prompts.

    ids: each prompt's token ids (``Explanation.token_ids``); targets: each prompt's explained target, fixed
    (``Explanation.explained``, a token id, or a ``Contrast`` with both tokens given; not None, so that
    perturbation can't change what is explained); scores: each prompt's relevance. An explained answer's tokens
    are left out of the curves: they are the target, appended again to the perturbed prompt. exclude_first keeps
    the first token out of the ranking and unperturbed (an attention sink). All variants of all prompts run as
    batches of forwards.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown perturbation mode {mode!r}: choose one of {', '.join(map(repr, MODES))}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}.")
    if any(t is None for t in targets):
        raise ValueError("Perturbation needs fixed targets (what was explained, Explanation.explained), not None.")
    scores = [np.asarray(s, dtype=np.float64) for s in scores]
    for row, (s, i) in enumerate(zip(scores, ids)):
        if len(s) != len(i):
            raise ValueError(f"Prompt {row} has {len(i)} tokens but {len(s)} scores.")
    ids, scores = zip(*(_before_answer(row, i, s, t) for row, (i, s, t) in enumerate(zip(ids, scores, targets))))
    plans = [_variants(s, steps, exclude_first) for s in scores]
    jobs = [(row, positions) for row, (_, sets) in enumerate(plans) for positions in sets]
    neutral_id = token_id(tokenizer, neutral)
    with predicting(model):  # dropout off, as when the scores were explained
        if mode == "remove":
            values = _removal_values(model, tokenizer, ids, targets, jobs, neutral_id)
        else:
            batch = prepare_batch(model, tokenizer, [list(i) for i in ids], list(targets), padding_side="left")
            fill = None
            if mode == "replace":
                with torch.no_grad():
                    fill = model.get_input_embeddings()(torch.tensor([neutral_id], device=batch.device))[0]
            values = _embedded_values(batch, jobs, fill)
    out, start = [], 0
    for s, (index, sets) in zip(scores, plans):
        out.append(_curves(s, steps, exclude_first, index, values[start : start + len(sets)]))
        start += len(sets)
    return out
