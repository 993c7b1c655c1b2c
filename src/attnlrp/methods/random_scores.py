"""The random baseline: seeded noise, the floor any attribution method should beat."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import Baseline, Batch


@dataclass
class Random(Baseline):
    """Standard normal scores; the generator is seeded by ``seed`` and the prompt's token ids, so reruns agree."""

    name = "random"
    seed: int = 0

    def attribute(self, batch: Batch) -> Tensor:
        scores = torch.zeros(batch.ids.shape)
        for row, span in enumerate(batch.spans):
            ids = batch.ids[row, span].cpu().numpy().astype(np.int64)
            generator = torch.Generator().manual_seed(zlib.crc32(ids.tobytes(), self.seed & 0xFFFFFFFF))
            scores[row, span] = torch.randn(len(ids), generator=generator)
        return scores
