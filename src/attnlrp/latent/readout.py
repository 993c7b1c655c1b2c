"""From a prediction to its concepts: ``explain(..., latent=sites, atlas=...)``.

The sites are recorded in the LRP method's own forward and backward, so the input heatmap and the units come
from one pass. Each explanation gets, per site, its most relevant units (by |relevance|, with their peak
activation and, from the atlas, their labels) and the rest of the site's units as one sum, so that the listed
units and the rest add up to the site's total. SAE sites run their SAE in the forward (see
``attnlrp.latent.sae``): their entries also carry the reconstruction error's and the decoder bias's relevance,
and the input heatmap is then the relevance that passed through the SAE's latents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from os import PathLike
from typing import Any

from torch import nn

from ..errors import LatentError, MethodError
from ..methods import get_method
from ..methods.batch import TOKEN_BUDGET, plan
from ..tasks.base import model_name
from ..tasks.causal_lm import CausalLM
from .sites import Site, SiteRecorder, SiteSpec, resolve


def checked_atlas(atlas: Any, model: nn.Module, sites: list[Site]) -> Any:
    """The atlas whose labels name the units: a FeatureAtlas or its folder, of this model."""
    from .atlas import FeatureAtlas

    if atlas is None:
        return None
    if isinstance(atlas, (str, PathLike)):
        atlas = FeatureAtlas.load(atlas)
    if not isinstance(atlas, FeatureAtlas):
        raise LatentError(f"atlas= takes a FeatureAtlas or the folder it was saved in, not {type(atlas).__name__}.")
    if not atlas.collected_on(model):
        raise LatentError(
            f"The atlas was collected on {atlas.settings['model']}, and {model_name(model)} is another model (its "
            "name or weights differ): its labels name other units."
        )
    for site in sites:
        if site.sae is not None and site.name in atlas.states:
            atlas.check_sae(site.sae)
        state = atlas.states.get(site.name)
        if state is not None and state.width != site.width:
            raise LatentError(
                f"Site {site.name} has {site.width} units here, but {state.width} in the atlas: its labels name other "
                "units."
            )
    return atlas


class LatentReadout:
    """The sites of ``explain(..., latent=...)`` and how each explanation gets its ``units``."""

    def __init__(self, model: nn.Module, sites: SiteSpec | Iterable[SiteSpec], atlas: Any = None, top: int = 10):
        if sites is None:
            raise LatentError("atlas= labels the units of latent=sites: give the sites too (explain(..., latent=...)).")
        self.sites = resolve(model, sites)
        self.atlas = checked_atlas(atlas, model, self.sites)
        self.top = top

    def recording(self, batch: Any, method: Any) -> SiteRecorder:
        """The recorder of the sites for ``method``'s pass on ``batch`` (enter it around the pass)."""
        if not method.is_lrp:
            raise MethodError(
                f"latent= reads unit relevance from an LRP backward; the {method.name!r} method has none: use "
                "'attnlrp' or 'cp-lrp'."
            )
        return SiteRecorder(batch.model, self.sites)

    def annotate(self, results: list[Any], batch: Any, recorder: SiteRecorder) -> None:
        """Give each of the batch's results its ``units``, from the recorder of its pass."""
        spans = batch.spans.get("tokens")
        for row, result in enumerate(results):
            span = spans[row] if spans is not None else slice(None)
            result.units = [self._entry(site, recorder, row, span, len(batch)) for site in self.sites]

    def _entry(self, site: Site, recorder: SiteRecorder, row: int, span: slice, rows: int) -> dict[str, Any]:
        name = site.name
        if name not in recorder.relevance:
            raise LatentError(f"No relevance reached site {name}: the explained value doesn't depend on it.")
        relevance, activation = recorder.relevance[name], recorder.activation[name]
        if relevance.shape[0] != rows:
            raise LatentError(
                f"Site {name} ran {relevance.shape[0]} rows for {rows} inputs: latent= reads tasks that run one "
                "forward per input."
            )
        per_unit = relevance[row].double().sum(0)
        peak = activation[row, span].amax(0)
        order = per_unit.abs().argsort(descending=True, stable=True)[: self.top].tolist()
        labels = self.atlas is not None and name in getattr(self.atlas, "states", {})
        top = []
        for unit in order:
            label = self.atlas.label(name, unit) if labels else None
            top.append(
                {
                    "unit": unit,
                    "relevance": float(per_unit[unit]),
                    "activation": float(peak[unit]),
                    "label": label.text if label else None,
                    "purity": label.purity if label else None,
                }
            )
        total = float(per_unit.sum())
        entry = {
            "site": name,
            "kind": site.kind,
            "total": total,
            "top": top,
            "rest": total - sum(u["relevance"] for u in top),
        }
        if site.kind == "sae":
            entry["error"] = float(recorder.error[name][row].double().sum())
            entry["bias"] = float(recorder.bias[name][row].double().sum())
        return entry


def site_totals(units: list[dict[str, Any]]) -> dict[str, float]:
    """Each site's relevance as ``explain`` lists it: its units' total (plus error and bias for SAE sites)."""
    return {u["site"]: u["total"] + u.get("error", 0.0) + u.get("bias", 0.0) for u in units}


def unit_scores(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[Any],
    sites: Sequence[Site],
    method: str = "attnlrp",
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Per prompt of a causal LM, explained for its target (one backward per batch): each site's units'
    relevance summed over positions (``relevance[name]`` [U], float64) and peak |activation| over positions
    (``activation[name]`` [U]), and the explained ``value``; in prompt order. Prompts of similar length share a
    batch of at most ``batch_size`` prompts and ``TOKEN_BUDGET`` padded tokens."""
    lrp_method = get_method(method)
    if not lrp_method.is_lrp:
        raise MethodError(f"Unit relevance comes from an LRP backward: use 'attnlrp' or 'cp-lrp', not {method!r}.")
    task = CausalLM(model, tokenizer)
    items, _ = task.encode(list(prompts))
    checked = task.targets(list(targets), len(items))
    out: list[dict[str, Any]] = [{} for _ in items]
    for group in plan(task.lengths(items), batch_size, TOKEN_BUDGET, by_length=True):
        batch = task.prepare([items[i] for i in group], [checked[i] for i in group])
        with SiteRecorder(model, sites) as recorder:
            lrp_method.attribute(batch)
        for row, (index, span) in enumerate(zip(group, batch.spans["tokens"])):
            out[index] = {
                "relevance": {s.name: recorder.relevance[s.name][row].double().sum(0).cpu() for s in sites},
                "activation": {s.name: recorder.activation[s.name][row, span].abs().amax(0).cpu() for s in sites},
                "value": batch.outcomes[row].value,
            }
    return out
