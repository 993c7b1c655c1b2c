"""The LRP methods: AttnLRP and CP-LRP run the engine's rules, then read relevance as input x gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..engine import gradient_checkpointing as checkpointing
from ..engine import lrp
from ..engine.layer_map import LayerRules
from .base import Method
from .batch import Batch


@dataclass
class LRPMethod(Method):
    """One forward and one backward pass under the engine's rule set ``rules``.

    layer_rules: rules for linear layers by module type (see ``attnlrp.lrp``); gradient_checkpointing: HF
    gradient checkpointing for the pass (same relevance, less memory).
    """

    rules: ClassVar[str]
    single_backward = True
    is_lrp: ClassVar[bool] = True
    layer_rules: LayerRules | None = None
    gradient_checkpointing: bool = False

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        leaves = batch.leaves()
        model = batch.model
        with (
            checkpointing(model, self.gradient_checkpointing),
            lrp(model, method=self.rules, layer_rules=self.layer_rules),
            torch.enable_grad(),
        ):
            batch.evaluate(leaves).sum().backward()
        return {kind: batch.reduce(kind, x * x.grad).detach() for kind, x in leaves.items()}


@dataclass
class AttnLRP(LRPMethod):
    name = "attnlrp"
    description = "AttnLRP (Achtibat et al., ICML 2024): LRP with attention-aware rules; one forward, one backward"
    rules = "attnlrp"


@dataclass
class CPLRP(LRPMethod):
    name = "cp-lrp"
    description = "CP-LRP (Ali et al., ICML 2022): LRP with the attention weights held constant; conserves exactly"
    rules = "cp-lrp"
