"""From a prompt to an Explanation: tokenisation, chat templates, targets, batching and generation."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .attach import lrp
from .attach.binding import normalize_method
from .methods import Baseline, Batch, method_name, resolve_method
from .results import Explanation, GenerationExplanation
from .targets import Answer, Custom, Resolved, Target, as_target
from .tokens import clean_tokens, scheme_of


class InputError(ValueError):
    """A prompt that can't be explained as given."""


@dataclass
class _Item:
    ids: list[int]
    segments: list[tuple[str, int, int]] = field(default_factory=list)


def _is_chat(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) and len(x) > 0 and all(
        isinstance(m, Mapping) for m in x
    )


def _chat_ids(tokenizer, messages, add_generation_prompt: bool = True) -> list[int]:
    out = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def _encode_chat(tokenizer, messages) -> _Item:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"Chat messages were given, but the tokenizer of {tokenizer.name_or_path or 'this model'} has no chat "
            "template. Pass plain text instead, or set tokenizer.chat_template."
        )
    for m in messages:
        if "role" not in m or "content" not in m:
            raise InputError(f"Each chat message needs 'role' and 'content' keys, got {dict(m)!r}.")
    ids = _chat_ids(tokenizer, messages)
    segments, start = [], 0
    for i in range(len(messages)):
        prefix = _chat_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        end = len(prefix) if ids[: len(prefix)] == prefix else start
        segments.append((f"{i}:{messages[i]['role']}", start, end))
        start = end
    if start < len(ids):
        segments.append(("generation prompt", start, len(ids)))
    return _Item(ids, segments)


def _encode(tokenizer, prompt) -> _Item:
    if _is_chat(prompt):
        return _encode_chat(tokenizer, prompt)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError("The prompt is empty: give some text to explain.")
        ids = tokenizer(prompt).input_ids
    elif isinstance(prompt, Tensor):
        ids = prompt.reshape(-1).tolist()
    elif isinstance(prompt, Sequence) and all(isinstance(i, int) for i in prompt):
        ids = list(prompt)
    else:
        raise InputError(
            f"Can't explain a {type(prompt).__name__}: pass text, a list of token ids, or chat messages "
            "(a list of {'role': ..., 'content': ...} dicts)."
        )
    if not ids:
        raise InputError("The prompt has no tokens: give some text or token ids to explain.")
    return _Item(list(ids))


def _split_batch(tokenizer, inputs) -> tuple[list[_Item], bool]:
    """The prompts as items, and whether a single prompt (not a list) was given."""
    if isinstance(inputs, Tensor) and inputs.dim() == 2:
        return [_encode(tokenizer, row) for row in inputs], False
    if isinstance(inputs, (list, tuple)) and inputs and not _is_chat(inputs) and not all(
        isinstance(i, int) for i in inputs
    ):
        return [_encode(tokenizer, p) for p in inputs], False
    return [_encode(tokenizer, inputs)], True


def context_length(model: nn.Module, tokenizer=None) -> int | None:
    """The longest sequence the model accepts, if it says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None


def _check_length(model, tokenizer, length: int) -> None:
    limit = context_length(model, tokenizer)
    if limit is not None and length > limit:
        raise InputError(
            f"The sequence is {length} tokens, but the model's context is {limit} tokens. "
            "Shorten the prompt (or the answer) to fit."
        )


def model_name(model: nn.Module) -> str:
    return str(getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "") or
               type(model).__name__)


def _display(tokenizer, ids: list[int]) -> tuple[list[str], list[str], list[bool]]:
    raw = tokenizer.convert_ids_to_tokens(ids)
    specials = frozenset(getattr(tokenizer, "all_special_tokens", []))
    vocab_sample = raw if len(raw) > 40 else raw + tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), 500))))
    display = clean_tokens(raw, specials, scheme=scheme_of(vocab_sample))
    return raw, display, [t in specials for t in raw]


def _forward_kwargs(model: nn.Module, ids: Tensor, mask: Tensor, left: bool) -> dict:
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if left and "position_ids" in inspect.signature(model.forward).parameters:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if "use_cache" in inspect.signature(model.forward).parameters:
        kwargs["use_cache"] = False
    return kwargs


def _pad(items_ids: list[list[int]], pad_id: int, left: bool) -> tuple[Tensor, Tensor]:
    width = max(len(i) for i in items_ids)
    ids = torch.full((len(items_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items_ids), width), dtype=torch.long)
    for row, seq in enumerate(items_ids):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq)
        mask[row, span] = 1
    return ids, mask


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """HF gradient checkpointing for the duration (HF checkpoints only in training mode; dropout is off in lrp)."""
    if not enabled:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing.")
    # transformers >= 5 renamed the API to activation_checkpointing_* (the old names warn)
    new_api = hasattr(model, "activation_checkpointing_enable")
    was_on = model.is_activation_checkpointing if new_api else model.is_gradient_checkpointing
    was_training = model.training
    # enabling also hooks the input embeddings to require grad (transformers >= 5), and disabling leaves that hook
    had_grad_hook = _has_input_grad_hook(model)
    if new_api:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        if not was_on:
            model.activation_checkpointing_disable() if new_api else model.gradient_checkpointing_disable()
            if not had_grad_hook and _has_input_grad_hook(model):
                model.disable_input_require_grads()


def _has_input_grad_hook(model: nn.Module) -> bool:
    return bool(getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"))


def _device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    param = next(iter(embeddings.parameters()), None) if embeddings is not None else None
    param = param if param is not None else next(model.parameters())
    return param.device


def explain(
    model: nn.Module,
    tokenizer,
    inputs,
    target=None,
    method: str | Baseline = "attnlrp",
    batch_size: int = 8,
    padding_side: str = "right",
    gradient_checkpointing: bool = False,
) -> Explanation | list[Explanation]:
    """Explain a prediction of a causal LM: relevance of each input token.

    inputs: text, token ids, chat messages, or a list of these (explained in batches; returns a list).
    target: None (the top next token), a token string or id, attnlrp.Answer / Contrast / LogProb,
    a callable on the logits [T, V] of one sequence, or a list with one target per prompt.
    method: "attnlrp" or "cp-lrp", or a baseline by name ("gradient", "input_x_gradient",
    "integrated_gradients", "attention", "attention_rollout", "occlusion", "random") or as a configured
    instance (``attnlrp.methods.IntegratedGradients(steps=64)``).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
    method = resolve_method(method)  # fail before any work; results carry the canonical name
    if gradient_checkpointing and isinstance(method, Baseline):
        raise ValueError(f"gradient_checkpointing is for the LRP methods; the {method.name!r} baseline runs without it.")
    if _input_embeddings_missing(model):
        raise InputError(
            f"{type(model).__name__} has no input token embeddings (get_input_embeddings), so token relevance "
            "can't be read; use attnlrp.lrp(model) with your own input tensors."
        )
    items, single = _split_batch(tokenizer, inputs)
    targets = _targets(tokenizer, target, len(items))
    results: list[Explanation] = []
    for start in range(0, len(items), batch_size):
        chunk = slice(start, start + batch_size)
        results.extend(_explain_batch(model, tokenizer, items[chunk], targets[chunk], method, padding_side,
                                      gradient_checkpointing))
    return results[0] if single else results


def _targets(tokenizer, target, count: int) -> list[Target]:
    """One target per prompt; a bad target (several tokens, unknown id) fails now, not after the forward passes."""
    targets = list(target) if isinstance(target, (list, tuple)) else [target] * count
    if len(targets) != count:
        raise ValueError(f"{len(targets)} targets were given for {count} prompts; give one each, or one for all.")
    targets = [as_target(t) for t in targets]
    for t in targets:
        t.resolve(tokenizer, 0)
    return targets


def prepare_batch(model: nn.Module, tokenizer, inputs, target=None,
                  padding_side: str = "right") -> tuple[Batch, list[Resolved]]:
    """One padded batch of prompts with their targets resolved (one forward, no gradients), for baselines and
    evaluation: ``batch.clean`` holds the targets' values, ``batch.values`` runs variants of the embeddings."""
    items, _ = _split_batch(tokenizer, inputs)
    layout = _layout(model, tokenizer, items, _targets(tokenizer, target, len(items)), padding_side)
    batch, resolved, _ = _prepare(model, tokenizer, layout)
    return batch, resolved


def _input_embeddings_missing(model: nn.Module) -> bool:
    getter = getattr(model, "get_input_embeddings", None)
    try:
        return getter is None or getter() is None
    except NotImplementedError:
        return True


@dataclass
class _Layout:
    """A padded batch: each prompt's sequence, target and place in its row, and the forward's inputs."""

    sequences: list[list[int]]
    targets: list[Target]
    answers: list[Resolved | None]
    spans: list[slice]
    needed: list[int]  # how many logit rows, up to the sequence's end, each target reads
    kwargs: dict
    where: dict[int, int]  # position -> row among the kept logits

    def reads(self, row: int) -> list[int]:
        """The kept-logit rows that prompt ``row``'s target reads."""
        span = self.spans[row]
        return [self.where[p] for p in range(span.stop - self.needed[row], span.stop)]


def _layout(model, tokenizer, items: list[_Item], targets: list[Target], padding_side: str) -> _Layout:
    answers = [t.resolve(tokenizer) if isinstance(t, Answer) else None for t in targets]
    sequences = [item.ids + list(a.answer_ids if a else ()) for item, a in zip(items, answers)]
    for seq in sequences:
        _check_length(model, tokenizer, len(seq))
    left = padding_side == "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, mask = _pad(sequences, pad_id, left)
    device = _device(model)
    ids, mask = ids.to(device), mask.to(device)
    width = ids.shape[1]
    spans = [slice(width - len(seq), width) if left else slice(0, len(seq)) for seq in sequences]
    # Only the logit rows the targets read: the last one, an answer's rows, or all for a custom target.
    needed = [len(seq) if isinstance(t, Custom) else len(a.answer_ids) + 1 if a else 1
              for seq, t, a in zip(sequences, targets, answers)]
    rows = sorted({p for span, n in zip(spans, needed) for p in range(span.stop - n, span.stop)})
    kwargs = _forward_kwargs(model, ids, mask, left)
    if len(rows) < width and "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = torch.tensor(rows, device=device)
    else:
        rows = list(range(width))
    return _Layout(sequences, targets, answers, spans, needed, kwargs, {p: i for i, p in enumerate(rows)})


def _read_targets(tokenizer, logits: Tensor, layout: _Layout) -> tuple[list[Resolved], list[Tensor], list[Tensor]]:
    """Each prompt's resolved target (None: the top token), its value y, and its last logit row."""
    resolved: list[Resolved] = []
    ys, lasts = [], []
    for row, (t, a) in enumerate(zip(layout.targets, layout.answers)):
        own = logits[row, layout.reads(row)]
        r = a or t.resolve(tokenizer, int(own[-1].detach().argmax()))
        resolved.append(r)
        ys.append(r.scalar(own))
        lasts.append(own[-1].detach().float())
    return resolved, ys, lasts


def _prepare(model, tokenizer, layout: _Layout) -> tuple[Batch, list[Resolved], list[Tensor]]:
    """The batch a baseline runs on, from one forward without gradients; also the resolved targets and last logit rows."""
    with torch.no_grad():
        resolved, ys, lasts = _read_targets(tokenizer, model(**layout.kwargs).logits, layout)
        clean = torch.stack(ys)
        _check_finite(clean)
        ids = layout.kwargs["input_ids"]
        embeds = model.get_input_embeddings()(ids)
    kwargs = layout.kwargs
    batch = Batch(
        model=model, ids=ids, embeds=embeds, spans=layout.spans,
        positions=[span.stop - len(r.answer_ids) - 1 for span, r in zip(layout.spans, resolved)],
        scalars=[r.scalar for r in resolved], reads=[layout.reads(row) for row in range(len(resolved))],
        row_inputs={k: kwargs[k] for k in ("attention_mask", "position_ids") if k in kwargs},
        inputs={k: kwargs[k] for k in ("use_cache", "logits_to_keep") if k in kwargs}, clean=clean,
    )
    return batch, resolved, lasts


def _explain_batch(model, tokenizer, items: list[_Item], targets: list[Target], method: str | Baseline,
                   padding_side: str, checkpointing: bool) -> list[Explanation]:
    layout = _layout(model, tokenizer, items, targets, padding_side)
    if isinstance(method, Baseline):
        batch, resolved, lasts = _prepare(model, tokenizer, layout)
        ys = list(batch.clean)
        relevance = method.attribute(batch).detach().float().cpu().numpy()
    else:
        with gradient_checkpointing(model, checkpointing), lrp(model, method=method) as binding, torch.enable_grad():
            logits = model(**layout.kwargs).logits
            resolved, ys, lasts = _read_targets(tokenizer, logits, layout)
            _check_finite(torch.stack([y.detach() for y in ys]))
            torch.stack(ys).sum().backward()
            embeddings = binding.embeddings
            relevance = (embeddings * embeddings.grad).sum(-1).detach().float().cpu().numpy()
    out = []
    for row, (item, seq, span, r, y, last) in enumerate(zip(items, layout.sequences, layout.spans, resolved, ys, lasts)):
        raw, display, special = _display(tokenizer, seq)
        segments = list(item.segments)
        if r.answer_ids:
            segments = (segments or [("prompt", 0, len(item.ids))]) + [("answer", len(item.ids), len(seq))]
        out.append(Explanation(
            tokens=raw, display=display, scores=relevance[row, span], target=r.label, value=float(y.detach()),
            method=method_name(method), model=model_name(model), token_ids=list(seq), special=special,
            target_id=r.token_id, logit=float(last[r.token_id]) if r.token_id is not None else None,
            prob=float(torch.softmax(last, -1)[r.token_id]) if r.token_id is not None else None,
            segments=segments,
        ))
    return out


def _check_finite(values: Tensor) -> None:
    if not torch.isfinite(values).all():
        raise FloatingPointError(
            f"The explained value is not finite ({values.tolist()}); the model produced NaN/inf logits. "
            "Check the dtype (try float32) and the inputs."
        )


class _HeadInput:
    """The input of the model's output head (LM head) in one forward pass, if it ran exactly once on [1, T, H]."""

    def __init__(self):
        self.seen: list[Tensor] = []

    def hook(self, module: nn.Module, args: tuple, output) -> None:
        if args and isinstance(args[0], Tensor):
            self.seen.append(args[0])
        else:
            self.seen.append(None)

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


def _explain_rows(matrix: np.ndarray, rows: range, first: int, values: Tensor, hidden: Tensor | None,
                  embeddings: list[Tensor]) -> None:
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


def explain_generation(
    model: nn.Module,
    tokenizer,
    prompt,
    max_new_tokens: int = 32,
    method: str = "attnlrp",
    backward_batch: int = 8,
    **generate_kwargs,
) -> GenerationExplanation:
    """Generate (greedy by default), then explain every generated token against all tokens before it.

    One forward pass over the whole sequence is shared by all generated tokens, run in segments of
    ``backward_batch`` generated tokens over a key-value cache that keeps the graph. Each segment's tokens are
    explained in one vectorised backward that reaches back only through the segments before it (more tokens
    per batch is faster and needs more memory).
    """
    method = normalize_method(method)  # fail before generating; results carry the canonical name
    item = _encode(tokenizer, prompt)
    _check_length(model, tokenizer, len(item.ids) + max_new_tokens)
    device = _device(model)
    prompt_ids = torch.tensor([item.ids], device=device)
    generate_kwargs.setdefault("do_sample", False)
    if tokenizer.pad_token_id is not None:
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    with torch.no_grad():
        sequence = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                  max_new_tokens=max_new_tokens, **generate_kwargs)[0]
    n_prompt, n_new = len(item.ids), sequence.shape[0] - len(item.ids)
    if n_new == 0:
        raise InputError("The model generated no token (it stopped at once); nothing to explain.")
    matrix = np.zeros((n_new, sequence.shape[0]), dtype=np.float32)
    inputs = sequence[:-1].unsqueeze(0)
    chosen = sequence[n_prompt:]
    parameters = inspect.signature(model.forward).parameters
    cached = "past_key_values" in parameters
    segment = backward_batch if cached else n_new
    values, probs = [], []
    with lrp(model, method=method) as binding, torch.enable_grad():
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
            logits, picked = out.logits[0, -(last - first):], chosen[first:last].unsqueeze(1)
            seg_values = logits.gather(1, picked)[:, 0]
            _check_finite(seg_values.detach())
            values += seg_values.detach().float().tolist()
            probs += torch.softmax(logits.detach().float(), -1).gather(1, picked)[:, 0].tolist()
            for start in range(first, last, backward_batch):
                rows = range(start, min(start + backward_batch, last))
                _explain_rows(matrix, rows, first, seg_values, head.input(last - first), embeddings)
    ids = sequence.tolist()
    raw, display, special = _display(tokenizer, ids)
    return GenerationExplanation(
        tokens=raw, display=display, matrix=matrix, prompt_length=n_prompt, values=values,
        method=method, model=model_name(model), token_ids=ids, special=special, probs=probs,
    )
