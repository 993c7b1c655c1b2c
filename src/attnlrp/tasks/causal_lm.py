"""The causal LM task: the next token (or a teacher-forced answer) of a decoder, explained over its prompt."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..engine.inputs import InputTap, input_embeddings
from ..errors import InputError
from ..methods import Method
from ..methods.batch import Batch
from ..results import Explanation
from .base import Task, check_finite, model_name, one_per_item
from .targets import Answer, Custom, Resolved, Target, as_target
from .text import Item, check_length, display_tokens, encode_all


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


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings (with a device map, the first one)."""
    embeddings = input_embeddings(model)
    param = next(iter(embeddings.parameters()), None) if embeddings is not None else None
    param = param if param is not None else next(model.parameters())
    return param.device


def forward_kwargs(model: nn.Module, ids: Tensor, mask: Tensor, left: bool) -> dict:
    """The forward's arguments for padded ids: the mask, positions that skip left padding, and no cache."""
    parameters = inspect.signature(model.forward).parameters
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if left and "position_ids" in parameters:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if "use_cache" in parameters:
        kwargs["use_cache"] = False
    return kwargs


@dataclass
class Outcome:
    """What one row's forward gave: the resolved target, its value y and the last logit row it reads."""

    target: Resolved
    value: Tensor
    last: Tensor


class CausalLMBatch(Batch):
    """Padded prompts (with their answers) of a causal LM; the targets read chosen rows of the logits."""

    def __init__(self, model: nn.Module, tokenizer, items: list[Item], targets: list[Target], padding_side: str):
        self.tokenizer = tokenizer
        self.items = items
        self.targets = targets
        self.answers = [t.resolve(tokenizer) if isinstance(t, Answer) else None for t in targets]
        self.sequences = [item.ids + list(a.answer_ids if a else ()) for item, a in zip(items, self.answers)]
        for seq in self.sequences:
            check_length(model, tokenizer, len(seq))
        left = padding_side == "left"
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        ids, mask = pad(self.sequences, pad_id, left)
        device = input_device(model)
        ids, mask = ids.to(device), mask.to(device)
        width = ids.shape[1]
        spans = [slice(width - len(seq), width) if left else slice(0, len(seq)) for seq in self.sequences]
        # Only the logit rows the targets read: the last one, an answer's rows, or all for a custom target.
        self.needed = [
            len(seq) if isinstance(t, Custom) else len(a.answer_ids) + 1 if a else 1
            for seq, t, a in zip(self.sequences, targets, self.answers)
        ]
        rows = sorted({p for span, n in zip(spans, self.needed) for p in range(span.stop - n, span.stop)})
        kwargs = forward_kwargs(model, ids, mask, left)
        if len(rows) < width and "logits_to_keep" in inspect.signature(model.forward).parameters:
            kwargs["logits_to_keep"] = torch.tensor(rows, device=device)
        else:
            rows = list(range(width))
        self.where = {p: i for i, p in enumerate(rows)}  # position -> row among the kept logits
        self.row_inputs = {k: kwargs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in kwargs}
        self.shared = {k: kwargs[k] for k in ("use_cache", "logits_to_keep") if k in kwargs}
        self.site = input_embeddings(model)
        with torch.no_grad():
            embeds = self.site(ids)
        query = [span.stop - (len(a.answer_ids) if a else 0) - 1 for span, a in zip(spans, self.answers)]
        super().__init__(model, {"tokens": embeds}, {"tokens": spans}, {"tokens": ids}, query)

    def reads(self, row: int) -> list[int]:
        """The kept-logit rows that prompt ``row``'s target reads."""
        span = self.spans["tokens"][row]
        return [self.where[p] for p in range(span.stop - self.needed[row], span.stop)]

    def logits(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        """The kept logits [M, kept, V] of stacked input variants of ``rows``."""
        index = torch.as_tensor(list(rows), device=self.device)
        extra = {name: value[index] for name, value in self.row_inputs.items()}
        with InputTap(self.model, {"tokens": self.site}) as tap:
            tap.replace = dict(inputs)
            return self.model(**extra, **self.shared).logits

    def values(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        logits = self.logits(inputs, rows)
        scalars = [self.outcomes[r].target.scalar for r in rows]
        return torch.stack([scalar(logits[m, self.reads(r)]) for m, (r, scalar) in enumerate(zip(rows, scalars))])

    def evaluate(self, inputs: dict[str, Tensor]) -> Tensor:
        logits = self.logits(inputs, range(len(self)))
        if self._outcomes is None:
            self._outcomes = []
            for row, (t, a) in enumerate(zip(self.targets, self.answers)):
                own = logits[row, self.reads(row)]
                resolved = a or t.resolve(self.tokenizer, int(own[-1].detach().argmax()))
                self._outcomes.append(Outcome(resolved, resolved.scalar(own), own[-1].detach().float()))
            values = torch.stack([o.value for o in self._outcomes])
        else:
            values = torch.stack(
                [o.target.scalar(logits[row, self.reads(row)]) for row, o in enumerate(self._outcomes)]
            )
        check_finite(values.detach())
        return values


class CausalLM(Task):
    """The next token, a chosen token, a contrast, a log-probability or a whole answer of a decoder-only LM.

    inputs: text, token ids, chat messages, or a list of these. targets: see ``attnlrp.tasks.targets``.
    """

    name = "causal-lm"

    def __init__(self, model: nn.Module, tokenizer, padding_side: str = "right"):
        super().__init__(model)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
        if input_embeddings(model) is None:
            raise InputError(
                f"{type(model).__name__} has no input token embeddings (get_input_embeddings), so token relevance "
                "can't be read; use attnlrp.lrp(model) with your own input tensors."
            )
        self.tokenizer = tokenizer
        self.padding_side = padding_side

    def encode(self, inputs) -> tuple[list[Item], bool]:
        return encode_all(self.tokenizer, inputs)

    def targets(self, target, count: int) -> list[Target]:
        """One target per prompt; a bad target (several tokens, unknown id) fails now, not after the forward."""
        targets = [as_target(t) for t in one_per_item(target, count)]
        for t in targets:
            t.resolve(self.tokenizer, 0)
        return targets

    def prepare(self, items: Sequence[Item], targets: Sequence[Target]) -> CausalLMBatch:
        return CausalLMBatch(self.model, self.tokenizer, list(items), list(targets), self.padding_side)

    def results(self, batch: CausalLMBatch, relevance: dict, method: Method) -> list[Explanation]:
        out = []
        rows = zip(batch.items, batch.sequences, batch.spans["tokens"], batch.outcomes)
        for row, (item, seq, span, outcome) in enumerate(rows):
            raw, display, special = display_tokens(self.tokenizer, seq)
            r, last = outcome.target, outcome.last
            segments = list(item.segments)
            if r.answer_ids:
                segments = (segments or [("prompt", 0, len(item.ids))]) + [("answer", len(item.ids), len(seq))]
            out.append(
                Explanation(
                    tokens=raw,
                    display=display,
                    scores=relevance["tokens"][row, span],
                    target=r.label,
                    value=float(outcome.value.detach()),
                    method=method.name,
                    model=model_name(self.model),
                    token_ids=list(seq),
                    special=special,
                    target_id=r.token_id,
                    logit=float(last[r.token_id]) if r.token_id is not None else None,
                    prob=float(torch.softmax(last, -1)[r.token_id]) if r.token_id is not None else None,
                    segments=segments,
                )
            )
        return out


def prepare_batch(model: nn.Module, tokenizer, inputs, target=None, padding_side: str = "right") -> CausalLMBatch:
    """One padded batch of prompts and their targets, for evaluation: ``batch.clean`` holds the targets' values
    (one forward without gradients, which also resolves them), ``batch.values`` runs variants of the embeddings."""
    task = CausalLM(model, tokenizer, padding_side)
    items, _ = task.encode(inputs)
    return task.prepare(items, task.targets(target, len(items)))
