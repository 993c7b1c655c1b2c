"""Occlusion: leave one token out (its input embedding zeroed) and see how much the target drops."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Baseline, Batch


class Occlusion(Baseline):
    """R_t = y(e) - y(e with e_t = 0), for every token of every prompt, in batched forwards without gradients."""

    name = "occlusion"

    def attribute(self, batch: Batch) -> Tensor:
        variants = [(row, t) for row, span in enumerate(batch.spans) for t in range(span.start, span.stop)]
        scores = torch.zeros(batch.ids.shape, dtype=batch.clean.dtype, device=batch.ids.device)
        with torch.no_grad():
            for chunk in batch.chunks(len(variants), grad=False):
                rows, positions = zip(*variants[chunk])
                embeds = batch.embeds[list(rows)].clone()
                embeds[torch.arange(len(rows)), list(positions)] = 0
                scores[list(rows), list(positions)] = batch.clean[list(rows)] - batch.values(embeds, rows)
        return scores
