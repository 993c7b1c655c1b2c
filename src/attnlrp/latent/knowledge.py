"""Knowledge units: the units that carry a relation across a set of prompts, and what steering them does.

Each prompt is explained for its answer's first token with one LRP backward (batched); a unit's relevance,
summed over positions and divided by the prompt's total |relevance| over all units of the sites, is averaged
over the prompts. The units with the highest mean share are the relation's knowledge units (the LRP
counterpart of Dai et al.'s knowledge neurons, which need about 20 integrated-gradient steps per prompt); with
prompts of other relations as a contrast, their mean share is subtracted, so that units every prediction leans
on drop out.

Their effect is measured on the prompts they were found on and on held-out prompts of the same relation:
the answer's probability before and after suppressing (scale 0) or enhancing (scale 2) them, against as many
random units of the same sites (several draws).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import LatentError
from ..evaluate.metrics import summary
from ..results.base import Result
from ..tasks.base import model_name
from ..tasks.targets import token_id
from .readout import checked_atlas, unit_scores
from .sites import Site, SiteSpec, resolve
from .steer import _left_padded, padded_logits, steering

#: The steering factors (mode "scale") of the effect measurements.
FACTORS = {"suppress": 0.0, "enhance": 2.0}


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class KnowledgeUnits(Result):
    """A relation's knowledge units (``units``: site, unit, mean relevance share ``score`` and the ``share`` of
    prompts where it is among the top units) and their ``effects``: per prompt set ("found", "held_out") the
    answer probability ``before`` and, per factor, with the knowledge units and with random units steered
    (mean and 95% bootstrap interval over prompts)."""

    units: list[dict[str, Any]]
    prompts: list[str]
    held_out: list[str]
    effects: dict[str, Any] = field(default_factory=dict)
    model: str = ""

    kind = "knowledge-units"

    def summary(self) -> str:
        return f"{len(self.units)} units from {len(self.prompts)} prompts ({len(self.held_out)} held out)"

    def title(self) -> str:
        return f"Knowledge units: {self.summary()}"

    def table(self) -> str:
        """The effects as a markdown table."""
        lines = [
            "| prompts | answer prob. before | steering | knowledge units | random units |",
            "|---|---:|---|---:|---:|",
        ]
        for part, effect in self.effects.items():
            before = _cell(effect["before"])
            for factor in FACTORS:
                steered = effect[factor]
                lines.append(
                    f"| {part} ({effect['before']['n']}) | {before} | {factor} (x{FACTORS[factor]:g}) | "
                    f"{_cell(steered['knowledge'])} | {_cell(steered['random'])} |"
                )
        return "\n".join(lines)

    def html_view(self) -> str:
        import html

        from ..render.html import style

        rows = "".join(
            f"<tr><td>{html.escape(u['site'])}</td><td>{u['unit']}</td><td>{u['score']:.4f}</td><td>{u['share']:.2f}"
            f"</td><td>{html.escape(u.get('label') or '')}</td></tr>"
            for u in self.units
        )
        return (
            f'<div class="attnlrp-view"><style>{style()}</style><h1>{html.escape(self.title())}</h1>'
            f"<pre>{html.escape(self.table())}</pre><table><tr><th>site</th><th>unit</th><th>score</th>"
            f"<th>share</th><th>label</th></tr>{rows}</table></div>"
        )


def _cell(stat: Mapping[str, float]) -> str:
    return f"{stat['mean']:.4f} [{stat['low']:.4f}, {stat['high']:.4f}]"


def answer_probabilities(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[int],
    plan: Sequence[tuple[Site, torch.Tensor, torch.Tensor]] = (),
    mode: str = "scale",
) -> list[float]:
    """The probability of each prompt's answer token as its next token, with ``plan`` steered (if any)."""
    ids, mask = _left_padded(tokenizer, prompts, next(model.parameters()).device)
    answer = torch.tensor(list(answers), device=ids.device)
    with steering(model, plan, mode) if plan else nullcontext(), torch.no_grad():
        logits = padded_logits(model, ids, mask)[:, -1].float()
    return torch.softmax(logits, -1).gather(-1, answer[:, None]).squeeze(-1).tolist()


def _scaled(units: Iterable[tuple[Site, int]], factor: float) -> list[tuple[Site, torch.Tensor, torch.Tensor]]:
    grouped: dict[str, tuple[Site, list[int]]] = {}
    for site, unit in units:
        grouped.setdefault(site.name, (site, []))[1].append(unit)
    return [(s, torch.tensor(u), torch.full((len(u),), factor)) for s, u in grouped.values()]


def _random_units(sites: Sequence[Site], chosen: list[tuple[Site, int]], rng: random.Random) -> list[tuple[Site, int]]:
    """As many random units per site as ``chosen`` has there, none of them chosen."""
    out = []
    for site in sites:
        taken = {u for s, u in chosen if s.name == site.name}
        pool = [u for u in range(site.width) if u not in taken]
        if len(pool) < len(taken):
            raise LatentError(
                f"{len(taken)} of the {site.width} units of {site.name} are knowledge units, which leaves too few "
                "others to draw as many random units from: give a smaller count, or more sites."
            )
        out += [(site, u) for u in rng.sample(pool, len(taken))]
    return out


def _effects(model, tokenizer, prompts, answers, units, sites, draws: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    randoms = [_random_units(sites, units, rng) for _ in range(draws)]
    before = answer_probabilities(model, tokenizer, prompts, answers)
    out: dict[str, Any] = {"before": summary(before)}
    for name, factor in FACTORS.items():
        knowledge = answer_probabilities(model, tokenizer, prompts, answers, _scaled(units, factor))
        drawn = [answer_probabilities(model, tokenizer, prompts, answers, _scaled(r, factor)) for r in randoms]
        random_mean = [sum(values) / draws for values in zip(*drawn)]
        out[name] = {"knowledge": summary(knowledge), "random": summary(random_mean)}
    return out


def _shares(model, tokenizer, prompts, answers, sites: list[Site], method: str, batch_size: int) -> torch.Tensor:
    """Each unit's relevance divided by the prompt's total |relevance| over the sites [prompts, all units]."""
    scores = unit_scores(model, tokenizer, prompts, answers, sites, method, batch_size)
    flat = torch.stack([torch.cat([s["relevance"][site.name] for site in sites]) for s in scores])
    return flat / flat.abs().sum(1, keepdim=True).clamp_min(1e-30)


def _answer_ids(tokenizer, answers: Sequence[str | int]) -> list[int]:
    """One token each: a unit's share is of one next token's relevance."""
    return [token_id(tokenizer, a, spans=False) for a in answers]


def knowledge_units(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str | int],
    sites: SiteSpec | Iterable[SiteSpec],
    count: int = 20,
    held_out: float = 0.5,
    contrast: tuple[Sequence[str], Sequence[str | int]] | None = None,
    draws: int = 5,
    seed: int = 0,
    method: str = "attnlrp",
    batch_size: int = 8,
    atlas: Any = None,
) -> KnowledgeUnits:
    """The ``count`` units of ``sites`` that carry the relation of ``prompts`` -> ``answers`` (one token each: a
    string or an id), found on the first (1 - held_out) of the prompts, and their effects
    on those and on the held-out rest (see the module docstring); labelled from ``atlas`` (a FeatureAtlas of this
    model, or its folder) when one is given.

    contrast: (prompts, answers) of other relations. A unit's score is then its mean share on the relation
    minus its mean share on these, which leaves out units that every prediction leans on (Dai et al. refine
    knowledge neurons against other relations in the same spirit)."""
    if len(prompts) != len(answers) or len(prompts) < 2:
        raise LatentError("knowledge_units needs at least two prompts, with one answer each.")
    for name, value in (("count", count), ("draws", draws)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LatentError(f"knowledge_units needs {name} to be a whole number of at least 1, not {value!r}.")
    if not 0 <= held_out < 1:
        raise LatentError(
            f"held_out is the share of prompts held out, from 0 (none) up to but not including 1, not {held_out!r}."
        )
    chosen_sites = resolve(model, sites)
    atlas = checked_atlas(atlas, model, chosen_sites)
    ids = _answer_ids(tokenizer, answers)
    split = max(1, min(len(prompts) - 1, round(len(prompts) * (1 - held_out)))) if held_out > 0 else len(prompts)
    shares = _shares(model, tokenizer, prompts[:split], ids[:split], chosen_sites, method, batch_size)
    score = shares.mean(0)
    if contrast is not None:
        others, other_answers = contrast
        score = score - _shares(
            model, tokenizer, others, _answer_ids(tokenizer, other_answers), chosen_sites, method, batch_size
        ).mean(0)
    count = min(count, score.numel())
    in_top = torch.zeros_like(shares, dtype=torch.bool).scatter_(1, shares.topk(count, 1).indices, True)
    offsets = torch.tensor([0] + [s.width for s in chosen_sites]).cumsum(0)
    units, chosen = [], []
    for flat in score.topk(count).indices.tolist():
        which = int(torch.searchsorted(offsets, flat, right=True)) - 1
        site, unit = chosen_sites[which], flat - int(offsets[which])
        label = atlas.label(site.name, unit).text if atlas is not None and site.name in atlas.states else None
        share = float(in_top[:, flat].float().mean())
        units.append({"site": site.name, "unit": unit, "score": float(score[flat]), "share": share, "label": label})
        chosen.append((site, unit))
    effects = {"found": _effects(model, tokenizer, prompts[:split], ids[:split], chosen, chosen_sites, draws, seed)}
    if split < len(prompts):
        effects["held_out"] = _effects(
            model, tokenizer, prompts[split:], ids[split:], chosen, chosen_sites, draws, seed
        )
    return KnowledgeUnits(units, list(prompts[:split]), list(prompts[split:]), effects, model_name(model))
