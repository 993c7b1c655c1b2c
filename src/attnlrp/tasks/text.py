"""Text in, token ids out: prompts, token ids and chat messages encoded, with their segments; display tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..errors import InputError
from ..results.tokens import clean_tokens, scheme_of


@dataclass
class Item:
    """One encoded input: its token ids and named segments (name, start, end), e.g. one per chat message or the
    two texts of a pair; where the tokenizer gives them, token type ids and each word with its first token."""

    ids: list[int]
    segments: list[tuple[str, int, int]] = field(default_factory=list)
    type_ids: list[int] | None = None
    words: list[tuple[str, int]] = field(default_factory=list)


def is_chat(x) -> bool:
    """Whether ``x`` is chat messages: a non-empty list of {'role': ..., 'content': ...} mappings."""
    return isinstance(x, Sequence) and not isinstance(x, str) and len(x) > 0 and all(isinstance(m, Mapping) for m in x)


def _chat_ids(tokenizer, messages, add_generation_prompt: bool = True) -> list[int]:
    out = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def _common_length(a: list[int], b: list[int]) -> int:
    """How many tokens ``a`` and ``b`` share from the start."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _preamble(tokenizer, first: Mapping) -> int:
    """How many tokens the template puts before the first message's own turn (a BOS; a default system prompt
    where the messages have none): where the rendering of the first message with the generation prompt parts
    from the one without it (the end of the turn, whatever the template adds after a last turn), less one turn,
    which a second copy of the message measures. 0 where the template refuses two turns of one role in a row."""
    try:
        closed = _chat_ids(tokenizer, [first], add_generation_prompt=False)
        once = _chat_ids(tokenizer, [first])
        twice = _chat_ids(tokenizer, [first, first])
    except Exception:  # templates raise what they like (jinja's TemplateError, ValueError)
        return 0
    turn, end = len(twice) - len(once), _common_length(closed, once)
    start = end - turn
    if turn <= 0 or start < 0 or once[start:end] != twice[end : end + turn]:
        return 0
    return start


def _encode_chat(tokenizer, messages) -> Item:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"Chat messages were given, but the tokenizer of {tokenizer.name_or_path or 'this model'} has no chat "
            "template. Pass plain text instead, or set tokenizer.chat_template."
        )
    for m in messages:
        if "role" not in m or "content" not in m:
            raise InputError(f"Each chat message needs 'role' and 'content' keys, got {dict(m)!r}.")
    ids = _chat_ids(tokenizer, messages)
    start = _preamble(tokenizer, messages[0])
    segments = [("template", 0, start)] if start else []
    for i in range(len(messages)):
        prefix = _chat_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        end = max(start, _common_length(prefix, ids))  # what a template adds after a last turn is not the turn's
        segments.append((f"{i}:{messages[i]['role']}", start, end))
        start = end
    if start < len(ids):
        segments.append(("generation prompt", start, len(ids)))
    return Item(ids, segments)


def encode(tokenizer, prompt) -> Item:
    """One prompt (text, token ids or chat messages) as an Item."""
    if is_chat(prompt):
        return _encode_chat(tokenizer, prompt)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError("The prompt is empty: give some text to explain.")
        ids = tokenizer(prompt).input_ids
    elif isinstance(prompt, Tensor):
        ids = _known_ids(tokenizer, prompt.reshape(-1).tolist())
    elif isinstance(prompt, Sequence) and all(isinstance(i, int) for i in prompt):
        ids = _known_ids(tokenizer, list(prompt))
    else:
        raise InputError(
            f"Can't explain a {type(prompt).__name__}: pass text, a list of token ids, or chat messages "
            "(a list of {'role': ..., 'content': ...} dicts)."
        )
    if not ids:
        raise InputError("The prompt has no tokens: give some text or token ids to explain.")
    return Item(list(ids))


def _known_ids(tokenizer, ids: list[int]) -> list[int]:
    """Token ids checked against the vocabulary (an id outside it would index past the embedding table)."""
    vocab = len(tokenizer)
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise InputError(f"Token id {bad} is outside the vocabulary (0..{vocab - 1}); pass ids the tokenizer made.")
    return ids


def encode_all(tokenizer, inputs) -> tuple[list[Item], bool]:
    """The prompts as items, and whether a single prompt (not a list) was given."""
    if isinstance(inputs, Tensor) and inputs.dim() == 2:
        _check_unpadded(tokenizer, inputs)
        return [encode(tokenizer, row) for row in inputs], False
    if isinstance(inputs, (list, tuple)) and not inputs:
        raise InputError("The list of prompts is empty: give at least one prompt.")
    if (
        isinstance(inputs, (list, tuple))
        and inputs
        and not is_chat(inputs)
        and not all(isinstance(i, int) for i in inputs)
    ):
        return [encode(tokenizer, p) for p in inputs], False
    return [encode(tokenizer, inputs)], True


def _check_unpadded(tokenizer, ids: Tensor) -> None:
    """Refuse rows of token ids that were padded to one length: each row is explained whole, its padding too (the
    attention mask that says where padding is was left behind)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None or len(ids) < 2:
        return
    is_pad = ids == pad
    # one end-of-text token where it pads too ends a text (a beginning one begins it): only more are padding
    ends = (int(pad == getattr(tokenizer, "eos_token_id", None)), int(pad == getattr(tokenizer, "bos_token_id", None)))
    runs = [
        tuple(n if n > text else 0 for n, text in zip((int(r.flip(0).cumprod(0).sum()), int(r.cumprod(0).sum())), ends))
        for r in is_pad.long()
    ]  # (trailing, leading) pad tokens of each row
    trailing, leading = {r[0] for r in runs}, {r[1] for r in runs}
    if len(trailing) > 1 or len(leading) > 1:
        row = max(range(len(runs)), key=lambda r: max(runs[r]))
        raise InputError(
            f"These token ids look padded (row {row} has {max(runs[row])} padding tokens at one end), and a tensor's "
            "rows are explained whole, padding too: pass a list of unpadded id lists, or the texts (attnlrp pads "
            "them itself)."
        )


def context_length(model: nn.Module, tokenizer=None) -> int | None:
    """The longest sequence the model accepts, if it says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None


def check_length(model: nn.Module, tokenizer, length: int) -> None:
    """An InputError where a sequence of ``length`` tokens exceeds the model's context."""
    limit = context_length(model, tokenizer)
    if limit is not None and length > limit:
        raise InputError(
            f"The sequence is {length} tokens, but the model's context is {limit} tokens. "
            "Shorten the prompt (or the answer) to fit."
        )


def display_tokens(tokenizer, ids: list[int]) -> tuple[list[str], list[str], list[bool]]:
    """(raw tokens, display strings, which are special tokens) for token ids. Special are the tokenizer's special
    tokens and the added tokens it marks special (Whisper's ``<|startoftranscript|>``, ``<|notimestamps|>``)."""
    raw = tokenizer.convert_ids_to_tokens(ids)
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials = frozenset(getattr(tokenizer, "all_special_tokens", [])) | {
        token.content for token in added.values() if getattr(token, "special", False)
    }
    # the scheme is the tokenizer's: its first 500 tokens tell it (a prompt's own tokens may not: CJK text has no Ġ)
    vocab_sample = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), 500))))
    display = clean_tokens(raw, specials, scheme=scheme_of(raw + vocab_sample))
    return raw, display, [t in specials for t in raw]
