"""Feature cards: everything an atlas knows about one unit, and its conditional heatmaps.

A card holds the unit's label and purity, its top contexts by activation and by relevance (activation per
token), its activation histogram and statistics, the output tokens its direction promotes and suppresses, and
conditional heatmaps: the input tokens' relevance through that unit only, for the prediction explained in its
top relevance contexts. The backward for those runs in two steps: from the prediction down to the site, then
from the site down to the input with every unit but this one zeroed; their relevance sums to the unit's
(under CP-LRP without biases; an SAE's encoder biases absorb part of a latent's, and its card says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..engine import lrp
from ..errors import LatentError
from ..results.base import Result
from ..tasks.causal_lm import CausalLM
from ..tasks.text import Item
from .directions import promoted_tokens
from .labels import Labeller, label_of
from .sites import Site, SiteRecorder


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class FeatureCard(Result):
    """One unit of an atlas: ``site``, ``unit`` and the site's kind (``site_kind``); ``label``, ``purity``,
    ``label_kind`` and ``chance`` (see ``attnlrp.latent.labels``); ``stats``; ``histogram`` ({"edges",
    "counts"}); ``top_activation`` and ``top_relevance`` (contexts with ``tokens``, per-token ``activations``,
    ``score``, ``topic``, ``target``); ``promoted`` and ``suppressed`` ([token, logit] pairs);
    ``conditional`` (contexts with ``tokens``, ``scores``, ``target``, ``value`` and ``unit_relevance``); and
    ``notes`` on what is missing and why."""

    site: str
    unit: int
    site_kind: str
    label: str
    purity: float | None
    label_kind: str
    chance: float | None = None
    model: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    histogram: dict[str, list] = field(default_factory=dict)
    top_activation: list[dict[str, Any]] = field(default_factory=list)
    top_relevance: list[dict[str, Any]] = field(default_factory=list)
    promoted: list[list] = field(default_factory=list)
    suppressed: list[list] = field(default_factory=list)
    conditional: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    kind = "feature-card"

    @property
    def name(self) -> str:
        return f"{self.site}:{self.unit}"

    def title(self) -> str:
        return f"{self.name} — {self.label}"

    def summary(self) -> str:
        purity = "" if self.purity is None else f", purity {self.purity:.2f}"
        return f"{self.name}, {self.label!r}{purity}, {len(self.top_activation)} top contexts"

    def html_view(self) -> str:
        from .page import atlas_view

        return atlas_view([self], self.title(), f"model {self.model}")


def _unit_mask(site: Site, unit: int, like: Tensor) -> Tensor:
    mask = torch.zeros_like(like)
    if site.kind == "heads":
        mask.unflatten(-1, (site.width, -1))[..., unit, :] = 1
    else:
        mask[..., unit] = 1
    return mask


def conditional_heatmaps(
    model: nn.Module, tokenizer, site: Site, unit: int, contexts: list[dict[str, Any]], method: str = "attnlrp"
) -> list[dict[str, Any]]:
    """For each context (an atlas entry with ``ids``, ``tokens`` and ``target_id``): the relevance of its input
    tokens through ``unit`` only, for the same prediction, in one batch."""
    if not contexts:
        return []
    unit = site.check_unit(unit)
    task = CausalLM(model, tokenizer)
    targets = task.targets([c["target_id"] for c in contexts], len(contexts))
    batch = task.prepare([Item(list(c["ids"])) for c in contexts], targets)
    leaves = batch.leaves()
    with SiteRecorder(model, [site], keep=True) as recorder, lrp(model, method=method), torch.enable_grad():
        value = batch.evaluate(leaves)
        live = recorder.live[site.name]
        (grad,) = torch.autograd.grad(value.sum(), live, retain_graph=True)
        mask = _unit_mask(site, unit, grad)
        (inputs,) = torch.autograd.grad(live, leaves["tokens"], grad_outputs=grad * mask)
    scores = (leaves["tokens"].detach() * inputs).sum(-1).float()
    through = (live.detach() * grad * mask).flatten(1).sum(-1).float()
    out = []
    for row, (context, span) in enumerate(zip(contexts, batch.spans["tokens"])):
        out.append(
            {
                "context": context.get("context"),
                "tokens": list(context["tokens"]),
                "scores": scores[row, span].tolist(),
                "target": batch.outcomes[row].target.label,
                "value": batch.outcomes[row].value,
                "unit_relevance": float(through[row]),
            }
        )
    return out


def _outputs(atlas, state, site: str, unit: int, notes: list[str]) -> tuple[list[list], list[list]]:
    """The unit's promoted and suppressed tokens: kept in the atlas, else read now for this unit where the atlas
    is bound to its model; else a note says why there are none."""
    readings, words, row = state.promoted, atlas.vocabulary, unit
    if not readings and state.kind != "heads" and atlas.model is not None:
        readings, row = promoted_tokens(atlas.model, atlas.bound_sites[site], [unit]), 0
        words = {
            i: atlas.tokenizer.decode([i])
            for key in ("up_ids", "down_ids")
            for i in readings.get(key, torch.empty(0)).reshape(-1).tolist()
        }
    if not readings:
        notes.append(
            "No output tokens: an attention head has no fixed output direction."
            if state.kind == "heads"
            else "No output tokens: this site doesn't write into the residual stream."
            if atlas.model is not None
            else "No output tokens: they are read through the model; bind the atlas, or call read_outputs() before saving."
        )
        return [], []

    def pairs(ids: str, values: str) -> list[list]:
        return [
            [words.get(i, str(i)), round(v, 4)]
            for i, v in zip(readings[ids][row].tolist(), readings[values][row].tolist())
        ]

    return pairs("up_ids", "up_values"), pairs("down_ids", "down_values")


def _trim(context: dict[str, Any]) -> dict[str, Any]:
    keep = ("context", "tokens", "activations", "relevance", "score", "topic", "target")
    return {key: context[key] for key in keep if key in context}


def build_card(
    atlas, site: str, unit: int, labeller: Labeller | None = None, contexts: int = 8, conditional: int = 3
) -> FeatureCard:
    """The card of one unit of ``atlas`` (see ``FeatureAtlas.card``)."""
    state, unit = atlas.check(site, unit)
    by_activation = atlas.top(site, unit, "activation")
    label = label_of(by_activation, atlas.topics, labeller)
    by_relevance = atlas.top(site, unit, "relevance", contexts)
    edges, counts = atlas.histogram(site, unit)
    notes = []
    promoted, suppressed = _outputs(atlas, state, site, unit, notes)
    heatmaps: list[dict[str, Any]] = []
    if conditional > 0:
        bound = atlas.bound_sites.get(site)
        if bound is None:
            notes.append(
                "No conditional heatmaps: they run the model; bind the atlas to it "
                "(FeatureAtlas.load(folder, model=..., tokenizer=...))."
            )
        else:
            heatmaps = conditional_heatmaps(
                atlas.model, atlas.tokenizer, bound, unit, by_relevance[:conditional], atlas.settings["method"]
            )
            if atlas.settings["method"] != "cp-lrp":
                notes.append(
                    "The conditional heatmaps need not sum to the unit's relevance: between the unit and the input, "
                    "AttnLRP's softmax rule keeps or adds relevance. Collect with method='cp-lrp' for heatmaps that "
                    "sum to it."
                )
            if state.kind == "sae":
                notes.append(
                    "The conditional heatmaps need not sum to the latent's relevance: the SAE's encoder biases "
                    "(b_enc, and the b_dec it subtracts) absorb part of it between the latent and the input."
                )
    if not by_activation:
        raise LatentError(f"The atlas saw no context for {site}:{unit}; collect over a corpus first.")
    return FeatureCard(
        site=site,
        unit=unit,
        site_kind=state.kind,
        label=label.text,
        purity=label.purity,
        label_kind=label.kind,
        chance=label.chance,
        model=atlas.settings["model"],
        stats=atlas.stats(site, unit),
        histogram={"edges": edges, "counts": counts},
        top_activation=[_trim(c) for c in by_activation[:contexts]],
        top_relevance=[_trim(c) for c in by_relevance],
        promoted=promoted,
        suppressed=suppressed,
        conditional=heatmaps,
        notes=notes,
    )
