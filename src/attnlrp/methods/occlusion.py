"""Occlusion: leave one token out (its input embedding zeroed) and see how much the target drops."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Method
from .batch import Batch


@dataclass
class Occlusion(Method):
    """R_t = y(x) - y(x with x_t = 0), for every token of every row, in batched forwards without gradients."""

    name = "occlusion"
    description = "Occlusion: how much the target drops when one token's embedding is zeroed"
    token_inputs_only = True
    needs_backward = False

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        out = {}
        for kind, x in batch.inputs.items():
            variants = [(row, t) for row, span in enumerate(batch.spans[kind]) for t in range(span.start, span.stop)]
            scores = torch.zeros(x.shape[:2], dtype=batch.clean.dtype, device=x.device)
            with torch.no_grad():
                for chunk in batch.chunks(len(variants), grad=False):
                    rows, positions = zip(*variants[chunk])
                    inputs = {k: v[list(rows)] for k, v in batch.inputs.items()}
                    inputs[kind] = inputs[kind].clone()
                    inputs[kind][torch.arange(len(rows)), list(positions)] = 0
                    scores[list(rows), list(positions)] = batch.clean[list(rows)] - batch.values(inputs, rows)
            out[kind] = scores
        return out
