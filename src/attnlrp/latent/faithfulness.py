"""Faithfulness of latent relevance: ablate the top-k units of one site, ranked three ways, and watch the answer.

For each item (a prompt and its answer, e.g. the facts suite's), the explained value is the answer's logit
minus the mean logit. One LRP backward ranks the site's units by their relevance for it; the same forward
ranks them by peak |activation|; a seeded permutation ranks them at random. For each k the top-k units are
zeroed (at every position) and the value is read again: one forward per item and ranking, with a row per k.
If relevance is faithful, its curve falls fastest. Finished (item, ranking) curves go to a journal, so an
interrupted run resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import nn

from ..errors import LatentError
from ..evaluate.metrics import summary
from ..evaluate.runner import Journal
from ..tasks.base import model_name
from ..tasks.targets import Contrast
from .readout import unit_scores
from .sites import Site, SiteSpec, resolve_one
from .steer import steering

RANKINGS = ("relevance", "activation", "random")
KS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)


def _curve(model: nn.Module, tokenizer, prompt: str, answer: int, site: Site, order: torch.Tensor, ks) -> list[float]:
    """The value (answer logit minus mean logit) with the first k units of ``order`` zeroed, for each k."""
    ids = torch.tensor([tokenizer(prompt).input_ids] * len(ks), device=next(model.parameters()).device)
    keep = torch.ones(len(ks), site.width)
    for row, k in enumerate(ks):
        keep[row, order[:k]] = 0.0
    with steering(model, [(site, torch.arange(site.width), keep)], "scale"), torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1].float()
    return (logits[:, answer] - logits.mean(-1)).tolist()


def ablation_curves(
    model: nn.Module,
    tokenizer,
    items: Sequence[Any],
    site: SiteSpec,
    ks: Sequence[int] = KS,
    method: str = "attnlrp",
    seed: int = 0,
    journal: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer-value curves over k for units of ``site`` ablated by relevance, activation and random rank, for
    ``items`` (``attnlrp.evaluate.Item``: prompt and answer). Returns the settings, each ranking's mean curve
    with 95% bootstrap intervals per k (``curves[ranking]`` = [{"k", "mean", "low", "high", "n"}]), and the
    per-item curves; ``drops`` the same for the value lost (clean minus ablated, per item, so that the items'
    different values don't widen the intervals). ks: unit counts from 0 up (0, the clean value the drops are
    measured from, is always included; counts above the site's width ablate it all). ``journal``: a JSONL file
    that keeps finished curves (a rerun resumes)."""
    site = resolve_one(model, site)
    if any(int(k) < 0 for k in ks):
        raise LatentError(f"ks are numbers of units to ablate, 0 or more, not {list(ks)}.")
    ks = sorted({0} | {min(int(k), site.width) for k in ks})
    settings = {"site": site.name, "ks": ks, "method": method, "seed": seed, "model": model_name(model)}
    records: dict[tuple[str, str], dict] = {}
    book = Journal(Path(journal), settings) if journal is not None else None
    if book is not None:
        records = book.records
    answers = [item.answer_id(tokenizer) for item in items]
    todo = [i for i, item in enumerate(items) if any((item.id, r) not in records for r in RANKINGS)]
    prompts, targets = [items[i].prompt for i in todo], [Contrast(answers[i], "mean") for i in todo]
    scores = unit_scores(model, tokenizer, prompts, targets, [site], method) if todo else []
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"ablating {site.name}", total=len(items), completed=len(items) - len(todo))
        for i, score in zip(todo, scores):
            item = items[i]
            generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
            orders = {
                "relevance": score["relevance"][site.name].argsort(descending=True, stable=True),
                "activation": score["activation"][site.name].argsort(descending=True, stable=True),
                "random": torch.randperm(site.width, generator=generator),
            }
            found = []
            for ranking, order in orders.items():
                if (item.id, ranking) not in records:
                    curve = _curve(model, tokenizer, item.prompt, answers[i], site, order, ks)
                    found.append({"item": item.id, "method": ranking, "group": item.group, "curve": curve})
            if book is not None:
                book.add(found)
            else:
                records.update({(r["item"], r["method"]): r for r in found})
            bar.advance(task)
    curves = {ranking: [records[(item.id, ranking)]["curve"] for item in items] for ranking in RANKINGS}
    return {
        "settings": settings,
        "items": len(items),
        "curves": {
            r: [{"k": k, **summary([c[j] for c in found])} for j, k in enumerate(ks)] for r, found in curves.items()
        },
        "drops": {
            r: [{"k": k, **summary([c[0] - c[j] for c in found])} for j, k in enumerate(ks)]
            for r, found in curves.items()
        },
        "records": [records[(item.id, ranking)] for item in items for ranking in RANKINGS],  # these items' only
    }


def ablation_table(results: dict[str, Any], key: str = "drops") -> str:
    """A markdown table of ``results[key]`` ("drops": the value lost, per item, or "curves": the value): one
    row per k, one column per ranking, mean [95% bootstrap interval]."""
    rankings = list(results[key])
    lines = ["| k | " + " | ".join(rankings) + " |", "|---:|" + "---:|" * len(rankings)]
    for j, point in enumerate(results[key][rankings[0]]):
        cells = [results[key][r][j] for r in rankings]
        lines.append(
            f"| {point['k']} | "
            + " | ".join(f"{c['mean']:.2f} [{c['low']:.2f}, {c['high']:.2f}]" for c in cells)
            + " |"
        )
    return "\n".join(lines)
