"""The causal LM task: the next token (or a teacher-forced answer) of a decoder, explained over its prompt."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.inputs import input_embeddings
from ..errors import InputError
from ..methods import Method
from ..results import Explanation
from .base import Task, first_token, model_name, one_per_item, scalar, task_for
from .targets import Answer, Custom, Resolved, Target, as_target
from .text import Item, check_length, display_tokens, encode_all
from .token_batch import TokenBatch


@dataclass
class Outcome:
    """What one row's forward gave: the resolved target, its value y and the last logit row it reads."""

    target: Resolved
    value: float
    last: Tensor


class CausalLMBatch(TokenBatch):
    """Padded prompts (with their answers) of a causal LM; the targets read chosen rows of the logits."""

    def __init__(self, model: nn.Module, tokenizer, items: list[Item], targets: list[Target], padding_side: str):
        self.items = items
        self.targets = targets
        self.answers = [t.resolve(tokenizer) if isinstance(t, Answer) else None for t in targets]
        sequences = [item.ids + list(a.answer_ids if a else ()) for item, a in zip(items, self.answers)]
        for seq in sequences:
            check_length(model, tokenizer, len(seq))
        width = max(len(s) for s in sequences)
        left = padding_side == "left"
        spans = [slice(width - len(seq), width) if left else slice(0, len(seq)) for seq in sequences]
        query = [span.stop - (len(a.answer_ids) if a else 0) - 1 for span, a in zip(spans, self.answers)]
        super().__init__(model, tokenizer, sequences, left=left, query=query)
        # Only the logit rows the targets read: the last one, an answer's rows, or all for a custom target.
        self.needed = [
            len(seq) if isinstance(t, Custom) else len(a.answer_ids) + 1 if a else 1
            for seq, t, a in zip(sequences, targets, self.answers)
        ]
        positions = [range(span.stop - n, span.stop) for span, n in zip(spans, self.needed)]
        rows = sorted({p for own in positions for p in own})
        if len(rows) < width and "logits_to_keep" in inspect.signature(model.forward).parameters:
            # on the CPU: it indexes the last hidden states wherever a device map put them (CPU indices index any device)
            self.shared["logits_to_keep"] = torch.tensor(rows)
        else:
            rows = list(range(width))
        where = {p: i for i, p in enumerate(rows)}  # position -> row among the kept logits
        # Where prompts end at different positions, the output head reads each prompt's own rows only (the last
        # repeated where a prompt needs fewer): it never runs on another prompt's positions.
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        longest = max(self.needed)
        self.head = head if isinstance(head, nn.Module) and longest < len(rows) else None
        self.picks = torch.tensor(
            [[where[p] for p in own] + [where[own[-1]]] * (longest - len(own)) for own in positions]
        )

    def reads(self, row: int) -> list[int]:
        """The rows of the head's output that prompt ``row``'s target reads."""
        if self.head is not None:
            return list(range(self.needed[row]))
        return self.picks[row, : self.needed[row]].tolist()

    @contextmanager
    def own_rows_at_head(self, rows: Sequence[int]) -> Iterator[None]:
        """While the model runs on variants of ``rows``: the output head reads only each prompt's own positions."""
        if self.head is None:
            yield
            return
        picks = self.picks[list(rows)]

        def cut(module: nn.Module, args: tuple) -> tuple:
            hidden = args[0]
            if hidden.dim() != 3 or hidden.shape[0] != len(picks):
                raise RuntimeError(
                    f"{type(self.model).__name__} called its output head on hidden states of shape "
                    f"{tuple(hidden.shape)}, not [prompts, kept positions, hidden]; explain one prompt at a time."
                )
            index = picks.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            return (hidden.gather(1, index), *args[1:])

        handle = self.head.register_forward_pre_hook(cut)
        try:
            yield
        finally:
            handle.remove()

    def output(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Any:
        with self.own_rows_at_head(rows):
            return with_logits(self.model, super().output(inputs, rows))

    def resolve_row(self, output, row: int) -> Outcome:
        own = output.logits[row][self.reads(row)]
        resolved = self.answers[row] or self.targets[row].resolve(self.tokenizer, first_token(self.model, own[-1]))
        value = scalar(resolved.scalar(own), resolved.label)
        return Outcome(resolved, float(value.detach()), own[-1].detach().float())

    def read(self, output, m: int, row: int) -> Tensor:
        outcome = self._outcomes[row]
        return scalar(outcome.target.scalar(output.logits[m][self.reads(row)]), outcome.target.label)


def with_logits(model: nn.Module, output: Any) -> Any:
    """``output`` read as a language model's: a plain torch module may return its logits tensor itself."""
    if isinstance(output, Tensor):
        output = SimpleNamespace(logits=output)
    logits = getattr(output, "logits", None)
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        got = f"logits of shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(output).__name__
        raise InputError(
            f"{type(model).__name__} returned {got}; a language model is read from its logits [batch, tokens, "
            "vocabulary]: return them, or an output with .logits (or pick another task with task=)."
        )
    return output


class CausalLM(Task):
    """The next token, a chosen token, a contrast, a log-probability or a whole answer of a decoder-only LM.

    inputs: text, token ids, chat messages, or a list of these. targets: see ``attnlrp.tasks.targets``.
    """

    name = "causal-lm"
    description = "the next token or an answer of a decoder-only LM (…ForCausalLM, …LMHeadModel)"
    options = ("padding_side",)
    fields = ("target", "target_id", "log_prob", "contrast", "answer", "chat", "system")

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        if not hasattr(model, "config"):  # a plain torch module: explained as a language model, as it always was
            return True
        return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")) and not getattr(
            model.config, "is_encoder_decoder", False
        )

    def __init__(self, model: nn.Module, tokenizer, padding_side: str | None = None):
        padding_side = padding_side or "right"
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
                    value=outcome.value,
                    method=method.name,
                    model=model_name(self.model),
                    token_ids=list(seq),
                    special=special,
                    target_id=r.token_id,
                    explained={**r.spec, "context": len(item.ids)} if r.answer_ids else r.spec,
                    logit=float(last[r.token_id]) if r.token_id is not None else None,
                    prob=float(torch.softmax(last, -1)[r.token_id]) if r.token_id is not None else None,
                    segments=segments,
                    context=len(item.ids) if r.answer_ids else None,
                )
            )
        return out


def check_causal_lm(model: nn.Module) -> None:
    """Refuse a model of another task where a causal LM's next token is what is measured (the evaluation)."""
    found = task_for(model)
    if found is not CausalLM:
        raise InputError(
            f"{type(model).__name__} is a {found.name!r} model, and the evaluation measures a causal LM's next "
            "token (its suites are prompts and their answers): evaluate a causal LM (…ForCausalLM)."
        )


def prepare_batch(model: nn.Module, tokenizer, inputs, target=None, padding_side: str = "right") -> CausalLMBatch:
    """One padded batch of prompts and their targets, for evaluation: ``batch.clean`` holds the targets' values
    (one forward without gradients, which also resolves them), ``batch.values`` runs variants of the embeddings."""
    check_causal_lm(model)
    task = CausalLM(model, tokenizer, padding_side)
    items, _ = task.encode(inputs)
    return task.prepare(items, task.targets(target, len(items)))
