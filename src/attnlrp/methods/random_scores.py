"""The random baseline: seeded noise, the floor any attribution method should beat."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import Method
from .batch import Batch


@dataclass
class Random(Method):
    """Standard normal scores; the generator is seeded by ``seed`` and the row's input, so reruns agree."""

    name = "random"
    description = "Seeded standard normal noise: the floor every method should beat"
    needs_backward = False
    seed: int = 0

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        out = {}
        for kind, x in batch.inputs.items():
            shape = x.shape[:2] if kind in batch.token_kinds else (x.shape[0], *x.shape[2:])
            scores = torch.zeros(shape)
            for row in range(len(batch)):
                if kind in batch.token_kinds:
                    span = batch.spans[kind][row]
                    where, key = span, batch.token_ids[kind][row, span].cpu().numpy().astype(np.int64).tobytes()
                else:
                    where, key = slice(None), x[row].detach().float().cpu().numpy().tobytes()
                generator = torch.Generator().manual_seed(zlib.crc32(key, self.seed & 0xFFFFFFFF))
                scores[row, where] = torch.randn(scores[row, where].shape, generator=generator)
            out[kind] = scores
        return out
