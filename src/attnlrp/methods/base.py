"""The contract between ``explain`` and the baseline attribution methods: a prepared batch and a registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

#: Baseline methods by name, filled as their classes are defined.
BASELINES: dict[str, type[Baseline]] = {}


@dataclass
class Batch:
    """A padded batch of prompts whose targets are resolved: everything a baseline needs to run the model."""

    model: nn.Module
    ids: Tensor  # [B, T] token ids, padded
    embeds: Tensor  # [B, T, H] input embeddings of ``ids`` (no grad)
    spans: list[slice]  # each prompt's tokens within its row
    positions: list[int]  # the position whose output each target is read from (it predicts the next token)
    scalars: list[Callable[[Tensor], Tensor]]  # each prompt's target: its logit rows [n, V] -> y
    reads: list[list[int]]  # each prompt's rows among the kept logits
    row_inputs: dict[str, Tensor]  # model inputs with one row per prompt (attention mask, position ids)
    inputs: dict  # model inputs shared by all rows (use_cache, logits_to_keep)
    clean: Tensor  # [B] the targets' values on the unperturbed inputs
    token_budget: int = 4096  # tokens per forward with gradients; four times as many without

    def values(self, embeds: Tensor, rows: Sequence[int]) -> Tensor:
        """The targets' values [M] for stacked embeddings [M, T, H], where ``embeds[m]`` is a variant of prompt ``rows[m]``."""
        index = torch.as_tensor(list(rows), device=self.ids.device)
        extra = {name: value[index] for name, value in self.row_inputs.items()}
        logits = self.model(inputs_embeds=embeds, **extra, **self.inputs).logits
        return torch.stack([self.scalars[r](logits[m, self.reads[r]]) for m, r in enumerate(index.tolist())])

    def chunks(self, count: int, grad: bool) -> Iterator[slice]:
        """Slices of ``count`` stacked variants, each small enough for one forward within the token budget."""
        budget = self.token_budget if grad else 4 * self.token_budget
        size = max(1, budget // self.ids.shape[1])
        for start in range(0, count, size):
            yield slice(start, min(start + size, count))

    def __len__(self) -> int:
        return self.ids.shape[0]


class Baseline:
    """An attribution method other than LRP; each subclass registers itself under its ``name``."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        BASELINES[cls.name] = cls

    def attribute(self, batch: Batch) -> Tensor:
        """Relevance [B, T] of each position of each prompt (padding positions are ignored)."""
        raise NotImplementedError
