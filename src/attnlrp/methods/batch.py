"""The contract between tasks and methods: a ``Batch`` of prepared inputs, and how much runs in one forward.

A task adapter (``attnlrp.tasks``) prepares a Batch; every method (``attnlrp.methods``) runs on the Batch alone,
so any method works with any task. One token budget sets how many rows go into one forward pass, and ``plan``
groups items into batches for every batched run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError

#: Tokens (rows x width) in one forward pass with gradients; passes without gradients take four times as many.
TOKEN_BUDGET = 4096


class Batch:
    """Prepared inputs of one task, and how to run the model on them: everything a method needs.

    inputs: the unperturbed inputs that carry relevance, {kind: [B, ...]}, without gradients (token
    embeddings [B, T, H] for token kinds, pixels [B, C, H, W] for images). spans: for each token kind, each
    row's real positions (padding is outside them), and token_ids their ids. query: for each row, the token
    position whose output the target is read from (the attention baselines look from there), where the task has one.
    """

    #: Input kinds whose second dimension is token positions; every other kind is an image (pixels).
    token_kinds: ClassVar[frozenset[str]] = frozenset({"tokens"})

    def __init__(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        spans: dict[str, list[slice]],
        token_ids: dict[str, Tensor],
        query: list[int] | None = None,
    ):
        self.model = model
        self.inputs = inputs
        self.spans = spans
        self.token_ids = token_ids
        self.query = query
        self._clean: Tensor | None = None
        self._outcomes: list | None = None

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.inputs.values())).device

    def values(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        """The targets' values [M] for stacked variants of the inputs, where ``inputs[kind][m]`` is a variant of
        row ``rows[m]``; the targets must be resolved (``clean`` or ``evaluate`` ran)."""
        raise NotImplementedError

    def evaluate(self, inputs: dict[str, Tensor]) -> Tensor:
        """The targets' values [B] on the whole batch's ``inputs`` (one per row; with gradients if they require
        grad). The first call resolves targets that depend on the outputs (the top token or class) and keeps
        them, with the values, in ``outcomes``."""
        raise NotImplementedError

    def resolve(self) -> None:
        """Resolve the targets that depend on the outputs (one forward without gradients, if none ran yet)."""
        if self._outcomes is None:
            with torch.no_grad():
                self.evaluate(self.inputs)

    @property
    def outcomes(self) -> list:
        """Each row's resolved target and value, from the first forward."""
        self.resolve()
        return self._outcomes

    @property
    def clean(self) -> Tensor:
        """The targets' values [B] on the unperturbed inputs (one forward without gradients, run once)."""
        if self._clean is None:
            with torch.no_grad():
                self._clean = self.evaluate(self.inputs).detach()
        return self._clean

    def leaves(self) -> dict[str, Tensor]:
        """Copies of the inputs that require grad: run ``evaluate`` on them, then read their ``.grad``."""
        return {kind: x.detach().clone().requires_grad_() for kind, x in self.inputs.items()}

    def reduce(self, kind: str, x: Tensor) -> Tensor:
        """Per-position (tokens: [B, T]) or per-pixel (images: [B, H, W]) sums over the feature dimension."""
        return x.sum(-1) if kind in self.token_kinds else x.sum(1)

    def chunks(self, count: int, grad: bool) -> Iterator[slice]:
        """Slices of ``count`` stacked variants, each small enough for one forward within the token budget."""
        width = (
            max(x.shape[1] for k, x in self.inputs.items() if k in self.token_kinds)
            if any(k in self.token_kinds for k in self.inputs)
            else 1
        )
        return chunks(count, width, grad)


def chunks(count: int, width: int, grad: bool) -> Iterator[slice]:
    """Slices of ``count`` stacked rows of ``width`` tokens, each small enough for one forward within the budget."""
    budget = TOKEN_BUDGET if grad else 4 * TOKEN_BUDGET
    size = max(1, budget // max(width, 1))
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def plan(
    lengths: Sequence[int], max_items: int, max_tokens: int | None = None, by_length: bool = False
) -> list[list[int]]:
    """Indices grouped into batches of at most ``max_items``, and, if given, at most ``max_tokens`` padded
    tokens (rows x the longest row); ``by_length`` sorts by length first, so that similar lengths share a batch."""
    if max_items < 1:
        raise InputError(f"A batch needs at least one item: batch_size must be 1 or more, not {max_items}.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if by_length else range(len(lengths))
    groups: list[list[int]] = []
    longest = 0
    for i in order:
        width = max(longest, lengths[i])
        if (
            not groups
            or len(groups[-1]) >= max_items
            or (max_tokens is not None and (len(groups[-1]) + 1) * width > max_tokens)
        ):
            groups.append([])
            width = lengths[i]
        groups[-1].append(i)
        longest = width
    return groups


def readable(relevance: dict[str, Tensor]) -> dict[str, Tensor]:
    """Relevance where results read it: on the CPU (from any device of a device map), half precision as float32."""
    return {
        kind: (r.float() if r.dtype in (torch.float16, torch.bfloat16) else r).cpu() for kind, r in relevance.items()
    }
