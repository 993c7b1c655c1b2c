"""A causal LM's whole generation explained: every generated token against all tokens before it.

LRP methods share one forward pass over the whole sequence, run in segments over a key-value cache that
keeps the graph, with one vectorised backward per group of generated tokens. Other methods explain each
generated token as the next token of its prefix, in batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from ..engine import lrp
from ..errors import InputError, MethodError
from ..methods import LRPMethod, Method
from ..results import AudioGenerationExplanation, GenerationExplanation
from .base import check_finite, model_name, not_finite_advice
from .causal_lm import CausalLM
from .text import check_length, display_tokens
from .token_batch import input_device


class _HeadInput:
    """The input of the model's output head (LM head) in one forward pass, if it ran exactly once on [1, T, H]."""

    def __init__(self):
        self.seen: list[Tensor | None] = []

    def hook(self, module: nn.Module, args: tuple, output) -> None:
        self.seen.append(args[0] if args and isinstance(args[0], Tensor) else None)

    def input(self, n_rows: int) -> Tensor | None:
        if len(self.seen) != 1 or self.seen[0] is None:
            return None
        h = self.seen[0]
        ok = h.dim() == 3 and h.shape[0] == 1 and h.shape[1] >= n_rows and h.requires_grad and h.is_floating_point()
        return h if ok else None


@contextmanager
def _head_input(model: nn.Module) -> Iterator[_HeadInput]:
    capture = _HeadInput()
    getter = getattr(model, "get_output_embeddings", None)
    try:
        head = getter() if getter is not None else None
    except (NotImplementedError, AttributeError):
        head = None
    if not isinstance(head, nn.Linear):  # only a plain linear head is known to act on each position alone
        yield capture  # nothing captured: input() returns None, the backward starts at the values
        return
    handle = head.register_forward_hook(capture.hook)
    try:
        yield capture
    finally:
        handle.remove()


def _explain_rows(
    matrix: np.ndarray, rows: range, first: int, values: Tensor, hidden: Tensor | None, embeddings: list[Tensor]
) -> None:
    """Fill ``matrix[rows]``: one batched backward from the values of generated tokens ``rows`` (of a segment that
    starts at ``first``) to the input embeddings of every segment up to it."""
    seeds_at = torch.arange(len(rows), device=values.device)
    picked = torch.tensor(list(rows), device=values.device) - first
    if hidden is None:
        origin = values
        seeds = torch.zeros(len(rows), len(values), dtype=values.dtype, device=values.device)
        seeds[seeds_at, picked] = 1
    else:
        # Start below the LM head: it maps each position on its own (a linear map, then at most element-wise
        # scaling or soft-capping), so one cheap backward of the values to the head's input gives each token's
        # seed there, and the batched passes skip multiplying mostly-zero [batch, rows, vocab] seeds by the head.
        (at_hidden,) = torch.autograd.grad(values[picked].sum(), hidden, retain_graph=True)
        offset = hidden.shape[1] - len(values)
        origin = hidden
        seeds = torch.zeros((len(rows), *hidden.shape), dtype=hidden.dtype, device=hidden.device)
        seeds[seeds_at, 0, offset + picked] = at_hidden[0, offset + picked]
    grads = torch.autograd.grad(origin, embeddings, grad_outputs=seeds, is_grads_batched=True, retain_graph=True)
    block = torch.cat([(e * g).sum(-1)[:, 0] for e, g in zip(embeddings, grads)], dim=-1)
    matrix[rows.start : rows.stop, : block.shape[1]] = block.detach().float().cpu().numpy()


def _shared_forward(
    model: nn.Module, method: LRPMethod, sequence: Tensor, n_prompt: int, backward_batch: int
) -> tuple[np.ndarray, list[float], list[float]]:
    """The matrix, values and probabilities of an LRP method, from one forward pass shared by every token."""
    n_new = sequence.shape[0] - n_prompt
    matrix = np.zeros((n_new, sequence.shape[0]), dtype=np.float32)
    inputs = sequence[:-1].unsqueeze(0)
    chosen = sequence[n_prompt:]
    parameters = inspect.signature(model.forward).parameters
    cached = "past_key_values" in parameters
    segment = backward_batch if cached else n_new
    values, probs = [], []
    with lrp(model, method=method.rules, layer_rules=method.layer_rules) as binding, torch.enable_grad():
        embeddings, kwargs, done = [], {"use_cache": cached}, 0
        for first in range(0, n_new, segment):
            last = min(first + segment, n_new)  # this segment's rows predict generated tokens first..last-1
            if "logits_to_keep" in parameters:
                kwargs["logits_to_keep"] = last - first
            with _head_input(model) as head:
                out = model(input_ids=inputs[:, done : n_prompt - 1 + last], **kwargs)
            done = n_prompt - 1 + last
            if cached:
                kwargs["past_key_values"] = out.past_key_values
            embeddings.append(binding.embeddings)
            logits, picked = out.logits[0, -(last - first) :], chosen[first:last].unsqueeze(1)
            seg_values = logits.gather(1, picked)[:, 0]
            check_finite(seg_values.detach())
            values += seg_values.detach().float().tolist()
            probs += torch.softmax(logits.detach().float(), -1).gather(1, picked)[:, 0].tolist()
            for start in range(first, last, backward_batch):
                rows = range(start, min(start + backward_batch, last))
                _explain_rows(matrix, rows, first, seg_values, head.input(last - first), embeddings)
    return matrix, values, probs


def _per_step(
    model: nn.Module, tokenizer, method: Method, sequence: Tensor, n_prompt: int, batch_size: int
) -> tuple[np.ndarray, list[float], list[float]]:
    """The matrix, values and probabilities of any method: each generated token as the next token of its prefix."""
    ids = sequence.tolist()
    task = CausalLM(model, tokenizer)
    matrix = np.zeros((len(ids) - n_prompt, len(ids)), dtype=np.float32)
    values, probs = [], []
    for start in range(0, len(matrix), batch_size):
        steps = range(start, min(start + batch_size, len(matrix)))
        items, _ = task.encode([ids[: n_prompt + i] for i in steps])
        batch = task.prepare(items, task.targets([ids[n_prompt + i] for i in steps], len(items)))
        method.check(batch)
        for i, exp in zip(steps, task.results(batch, method.attribute(batch), method)):
            matrix[i, : len(exp.scores)] = exp.scores
            values.append(exp.value)
            probs.append(exp.prob)
    return matrix, values, probs


def check_steps(result: GenerationExplanation) -> GenerationExplanation:
    """``result``, or a FloatingPointError naming its generated tokens whose relevance over what they saw (the
    prompt and the tokens generated before them; an audio's frames) is NaN or infinite."""
    steps = np.arange(len(result.matrix))[:, None]
    seen = np.arange(result.matrix.shape[1])[None, :] < result.prompt_length + steps
    bad = ~np.isfinite(np.where(seen, result.matrix, 0)).all(1)
    if isinstance(result, AudioGenerationExplanation):
        bad |= ~np.isfinite(result.frames).all(1)
    if bad.any():
        raise FloatingPointError(
            f"The relevance of generated token(s) {', '.join(map(str, np.flatnonzero(bad)))} (counting from 0) is "
            "NaN or infinite, though the explained values are finite" + not_finite_advice(None)
        )
    return result


def refuse_checkpointing(method: Method) -> None:
    """explain_generation shares one forward pass among all generated tokens: gradient checkpointing can't keep it."""
    if isinstance(method, LRPMethod) and method.gradient_checkpointing:
        raise MethodError(
            "explain_generation keeps one forward pass for every generated token, which gradient checkpointing "
            "can't keep; leave gradient_checkpointing off (backward_batch sets the memory)."
        )


def explain_generation(
    model: nn.Module,
    tokenizer,
    prompt,
    method: Method,
    max_new_tokens: int = 32,
    backward_batch: int = 8,
    **generate_kwargs,
) -> GenerationExplanation:
    """Generate (greedy by default), then explain every generated token with ``method`` (see
    ``attnlrp.explain_generation``)."""
    refuse_checkpointing(method)
    task = CausalLM(model, tokenizer)
    items, single = task.encode(prompt)
    if not single:
        raise InputError(f"explain_generation continues one prompt, not {len(items)}: call it once per prompt.")
    (item,) = items
    check_length(model, tokenizer, len(item.ids) + max_new_tokens)
    prompt_ids = torch.tensor([item.ids], device=input_device(model))
    generate_kwargs.setdefault("do_sample", False)
    if tokenizer.pad_token_id is not None:
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    with torch.no_grad():
        sequence = model.generate(
            prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=max_new_tokens, **generate_kwargs
        )[0]
    n_prompt = len(item.ids)
    if sequence.shape[0] == n_prompt:
        raise InputError("The model generated no token (it stopped at once); nothing to explain.")
    if isinstance(method, LRPMethod):
        matrix, values, probs = _shared_forward(model, method, sequence, n_prompt, backward_batch)
    else:
        matrix, values, probs = _per_step(model, tokenizer, method, sequence, n_prompt, backward_batch)
    ids = sequence.tolist()
    raw, display, special = display_tokens(tokenizer, ids)
    return GenerationExplanation(
        tokens=raw,
        display=display,
        matrix=matrix,
        prompt_length=n_prompt,
        values=values,
        method=method.name,
        model=model_name(model),
        token_ids=ids,
        special=special,
        probs=probs,
        # a chat's messages, as explain names them, and what was generated after them
        segments=[*item.segments, ("generated", n_prompt, len(ids))] if item.segments else [],
    )
