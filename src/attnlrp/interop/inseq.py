"""AttnLRP and CP-LRP as Inseq attribution methods: importing this module registers ``"attnlrp"`` and ``"cp-lrp"``.

    import inseq
    import attnlrp.interop.inseq  # registers the two methods
    model = inseq.load_model(hf_model, "attnlrp", tokenizer=tokenizer)
    out = model.attribute("The Eiffel Tower is in", generation_args={"max_new_tokens": 3})

Inseq finds its methods as the subclasses of its ``FeatureAttribution`` registry, keyed by ``method_name``;
defining a subclass is its extension mechanism, and nothing of Inseq is changed. Each method is one of Inseq's
gradient methods whose Captum method is ``attnlrp.interop.captum.AttnLRP`` (or ``CPLRP``): every attribution
step binds the rules to the model for that step only. Decoder-only and encoder-decoder models work as with
Inseq's other gradient methods (``attribute_target=True`` adds the decoder prefix); ``return_convergence_delta``
in ``attribution_args`` stores y - Σ R per step as the step score ``deltas``.

Relevance is additive, so the outputs sum it over the embedding dimension when Inseq aggregates them (Inseq's
gradient outputs take the L2 norm, which drops the sign); Inseq then normalises each generated token's column
as usual (``aggregate(normalize=False)`` keeps the raw relevance), and merges subwords and spans by summing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

try:
    from inseq.attr.feat.gradient_attribution import GradientAttributionRegistry
    from inseq.data.attribution import (
        GranularFeatureAttributionSequenceOutput,
        GranularFeatureAttributionStepOutput,
    )
    from inseq.utils import Registry
except ModuleNotFoundError as error:  # pragma: no cover - the message is the point
    raise ImportError("attnlrp.interop.inseq needs Inseq: pip install 'inseq>=0.7'") from error

from .captum import CPLRP, AttnLRP, InputRelevance

#: How relevance merges: summed over the embedding dimension ("scores"), over subwords and spans ("spans").
_SUMMED = {"scores": "sum", "spans": "sum"}


@dataclass(eq=False, repr=False)
class RelevanceSequenceOutput(GranularFeatureAttributionSequenceOutput):
    """One sequence's relevance: aggregated by summing, where Inseq's gradient outputs take the L2 norm."""

    def __post_init__(self):
        # Inseq merges a given dictionary into the one of defaults that all its outputs share, and keeps that
        # shared one: give none, then change a private copy.
        self._dict_aggregate_fn = None
        super().__post_init__()
        self._dict_aggregate_fn = copy.deepcopy(self._dict_aggregate_fn)
        for field in ("source_attributions", "target_attributions"):
            self._dict_aggregate_fn[field].update(_SUMMED)
        self._aggregator = "sum"


@dataclass(eq=False, repr=False)
class RelevanceStepOutput(GranularFeatureAttributionStepOutput):
    """One step's relevance; its sequences are ``RelevanceSequenceOutput``."""

    _sequence_cls: type = RelevanceSequenceOutput


class LRPAttributionRegistry(GradientAttributionRegistry, Registry):
    """The two LRP methods (a direct ``Registry`` subclass, so that Inseq lists its subclasses, not it)."""

    captum_method: ClassVar[type[InputRelevance]]

    def __init__(self, attribution_model, **kwargs: Any):
        super().__init__(attribution_model, **kwargs)
        self.method = self.captum_method(self.attribution_model)

    def attribute_step(
        self, attribute_fn_main_args: dict[str, Any], attribution_args: dict[str, Any] | None = None
    ) -> RelevanceStepOutput:
        step = super().attribute_step(attribute_fn_main_args, attribution_args or {})
        return RelevanceStepOutput(
            source_attributions=step.source_attributions,
            target_attributions=step.target_attributions,
            step_scores=step.step_scores,
        )


class AttnLRPAttribution(LRPAttributionRegistry):
    """AttnLRP (Achtibat et al., ICML 2024): ``inseq.load_model(model, "attnlrp")``."""

    method_name = "attnlrp"
    captum_method = AttnLRP


class CPLRPAttribution(LRPAttributionRegistry):
    """CP-LRP (Ali et al., ICML 2022): ``inseq.load_model(model, "cp-lrp")``."""

    method_name = "cp-lrp"
    captum_method = CPLRP
