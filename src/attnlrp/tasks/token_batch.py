"""Padded token sequences of a text model, run on their real ids and masks: what every text task shares.

The input embeddings are tapped (``engine.inputs.InputTap``), so methods see and perturb them while the model
runs on its real token ids (masks, positions and pooling work as in any call of the model).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.devices import input_device
from ..engine.inputs import InputTap, input_embeddings
from ..engine.sliding_window import sliding_window_masks
from ..errors import InputError
from ..methods.batch import Batch
from .base import by_row, check_finite


def pad(sequences: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[Tensor, Tensor]:
    """Token ids [B, width] padded with ``pad_id`` on the left or right, and the attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq))
        mask[row, span] = 1
    return ids, mask


def pad_id_of(tokenizer) -> int:
    """The padding id: the tokenizer's, else its end-of-sequence id, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


class TokenBatch(Batch):
    """Token sequences padded into one batch (input kind ``tokens``), run with their attention mask.

    Subclasses implement ``resolve_row(output, row)`` (the row's outcome, from the first forward) and
    ``read(output, m, row)`` (the explained scalar of output row ``m``, a variant of row ``row``). ``type_ids``: token type ids per
    sequence (BERT's segments), where the model takes them.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        sequences: list[list[int]],
        left: bool = False,
        type_ids: list[list[int]] | None = None,
        query: list[int] | None = None,
        pad_id: int | None = None,
    ):
        if input_embeddings(model) is None:
            raise InputError(
                f"{type(model).__name__} has no input token embeddings (get_input_embeddings), so token relevance "
                "can't be read; use attnlrp.lrp(model) with your own input tensors."
            )
        self.tokenizer = tokenizer
        self.sequences = sequences
        parameters = inspect.signature(model.forward).parameters
        ids, mask = pad(sequences, pad_id_of(tokenizer) if pad_id is None else pad_id, left)
        device = input_device(model)
        ids, mask = ids.to(device), mask.to(device)
        width = self.width = ids.shape[1]
        spans = [slice(width - len(seq), width) if left else slice(0, len(seq)) for seq in sequences]
        self.row_inputs = {"input_ids": ids, "attention_mask": mask}
        if left and "position_ids" in parameters:
            self.row_inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if type_ids is not None and "token_type_ids" in parameters:
            types, _ = pad(type_ids, 0, left)
            self.row_inputs["token_type_ids"] = types.to(device)
        self.shared: dict[str, Any] = {"use_cache": False} if "use_cache" in parameters else {}
        self.site = input_embeddings(model)
        with torch.no_grad():
            embeds = self.site(ids)
        super().__init__(model, {"tokens": embeds}, {"tokens": spans}, {"tokens": ids}, query)

    def output(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Any:
        """The model's output on stacked input variants of ``rows``."""
        index = torch.as_tensor(list(rows), device=self.device)
        extra = {name: value[index] for name, value in self.row_inputs.items()}
        if bool(extra["attention_mask"].all()):  # no padding: a sliding window needs no T x T mask
            extra["attention_mask"] = sliding_window_masks(self.model, self.width) or extra["attention_mask"]
        with InputTap(self.model, {"tokens": self.site}) as tap:
            tap.replace = dict(inputs)
            return self.model(**extra, **self.shared)

    def resolve_row(self, output: Any, row: int) -> Any:
        """Row ``row``'s outcome (its resolved target and value) from the first forward's output."""
        raise NotImplementedError

    def read(self, output: Any, m: int, row: int) -> Tensor:
        """The explained scalar of output row ``m``, a variant of row ``row`` (whose outcome is resolved)."""
        raise NotImplementedError

    def values(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        self.resolve()
        output = by_row(self.output(inputs, rows))
        return torch.stack([self.read(output, m, r) for m, r in enumerate(rows)])

    def evaluate(self, inputs: dict[str, Tensor]) -> Tensor:
        output = by_row(self.output(inputs, range(len(self))))
        if self._outcomes is None:
            self._outcomes = [self.resolve_row(output, row) for row in range(len(self))]
        values = torch.stack([self.read(output, row, row) for row in range(len(self))])
        check_finite(values.detach(), self)
        return values
