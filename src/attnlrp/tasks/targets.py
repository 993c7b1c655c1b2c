"""What to explain: a scalar computed from a model's logits.

``explain(..., target=...)`` accepts None (the top next token), a token string or id, or one of
the objects below. Each resolves, for one sequence, to the scalar y whose relevance is explained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import TargetError


def token_id(tokenizer, token: str | int, spans: bool = True) -> int:
    """The id of exactly one token, or a TargetError saying what is wrong and what to do (with ``spans``, that a
    span of several tokens is explained as an ``Answer``: where the caller takes one)."""
    if isinstance(token, int):
        vocab = len(tokenizer)
        if not 0 <= token < vocab:
            raise TargetError(f"Token id {token} is outside the vocabulary (0..{vocab - 1}).")
        return token
    if not isinstance(token, str) or token == "":
        raise TargetError(f"A target token must be a non-empty string or an id, got {token!r}.")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) == 1:
        return ids[0]
    vocab_id = tokenizer.convert_tokens_to_ids(token)
    if isinstance(vocab_id, int) and vocab_id != tokenizer.unk_token_id and vocab_id is not None:
        return vocab_id
    if not ids:
        raise TargetError(f"Target {token!r} encodes to no token at all.")
    pieces = tokenizer.convert_ids_to_tokens(ids)
    first = f"({pieces[0]!r}, id {ids[0]})"
    raise TargetError(
        f"Target {token!r} is {len(ids)} tokens {pieces}, but one next token is expected. "
        + (
            f"Explain the first {first} by passing target={ids[0]} (--target-id {ids[0]} on the command line), or "
            f"the whole span with target=attnlrp.Answer({token!r}) (--answer)."
            if spans
            else f"Give the first {first} by its id, {ids[0]}."
        )
    )


@dataclass(frozen=True)
class Resolved:
    """A target bound to one sequence: the answer ids to append, and the scalar to explain."""

    label: str
    token_id: int | None
    answer_ids: tuple[int, ...]
    scalar: Callable[[Tensor], Tensor]  # logits [T, V] of the full sequence -> scalar
    #: The target with its tokens fixed, as plain data that ``as_target`` reads back (``Explanation.explained``);
    #: empty for a callable, which can't be written down.
    spec: dict[str, Any] = field(default_factory=dict)


class Target:
    """Base class: subclasses resolve themselves for one prompt."""

    def resolve(self, tokenizer, top_id: int | None = None) -> Resolved:
        """Bind to a tokenizer; ``top_id`` is the model's top next token for this prompt."""
        raise NotImplementedError


@dataclass(frozen=True)
class Token(Target):
    """The logit of one next token (string or id); None means the top-scoring token."""

    token: str | int | None = None

    def resolve(self, tokenizer, top_id: int | None = None) -> Resolved:
        tid = top_id if self.token is None else token_id(tokenizer, self.token)
        return Resolved(
            _label(tokenizer, tid), tid, (), lambda logits: logits[-1, tid], {"kind": "token", "token": tid}
        )


@dataclass(frozen=True)
class Contrast(Target):
    """The target's logit minus an alternative token's logit, or minus the mean logit (``against="mean"``)."""

    token: str | int | None
    against: str | int = "mean"

    def __post_init__(self) -> None:
        if self.token is not None and self.token == self.against:
            raise TargetError(
                f"Contrast({self.token!r}, {self.against!r}) compares a token with itself: its value is 0. Contrast "
                "with another token (or label), or with 'mean'."
            )

    def with_itself(self, name: str, i: int) -> TargetError:
        """The error for this contrast where its two sides name one token or label, ``name`` (id ``i``)."""
        return TargetError(
            f"Contrast({self.token!r}, {self.against!r}) compares {name!r} (id {i}) with itself: its value is 0. "
            "Contrast with another token (or label), or with 'mean'."
        )

    def resolve(self, tokenizer, top_id: int | None = None) -> Resolved:
        tid = top_id if self.token is None else token_id(tokenizer, self.token)
        if self.against == "mean":
            return Resolved(
                f"{_label(tokenizer, tid)} vs mean",
                tid,
                (),
                lambda logits: logits[-1, tid] - logits[-1].mean(),
                {"kind": "contrast", "token": tid, "against": "mean"},
            )
        other = token_id(tokenizer, self.against)
        if other == tid:
            raise self.with_itself(_label(tokenizer, tid), tid)
        return Resolved(
            f"{_label(tokenizer, tid)} vs {_label(tokenizer, other).lstrip()}",
            tid,
            (),
            lambda logits: logits[-1, tid] - logits[-1, other],
            {"kind": "contrast", "token": tid, "against": other},
        )


@dataclass(frozen=True)
class LogProb(Target):
    """log p(token) = y_t - logsumexp(y). Its gradient e_t - p makes the relevance explain y_t minus the
    probability-weighted mean logit; the entropy of p is the part no input accounts for."""

    token: str | int | None = None

    def resolve(self, tokenizer, top_id: int | None = None) -> Resolved:
        tid = top_id if self.token is None else token_id(tokenizer, self.token)
        # at least float32 for the softmax (fp16/bf16 overflow), never below the logits' own precision
        return Resolved(
            f"log p({_label(tokenizer, tid)})",
            tid,
            (),
            lambda logits: torch.log_softmax(logits[-1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)[
                tid
            ],
            {"kind": "log_prob", "token": tid},
        )


@dataclass(frozen=True)
class Answer(Target):
    """A whole answer, teacher-forced after the prompt; y is the sum of its tokens' logits."""

    answer: str | Sequence[int]

    def resolve(self, tokenizer, top_id: int | None = None) -> Resolved:
        ids = (
            tuple(tokenizer.encode(self.answer, add_special_tokens=False))
            if isinstance(self.answer, str)
            else tuple(int(i) for i in self.answer)
        )
        if not ids:
            raise TargetError(f"Answer {self.answer!r} encodes to no token; give a non-empty answer.")
        for i in ids:
            token_id(tokenizer, i)  # an id outside the vocabulary is named
        n = len(ids)
        index = torch.tensor(ids)

        def scalar(logits: Tensor) -> Tensor:
            rows = logits[-n - 1 : -1]
            return rows.gather(1, index.to(rows.device).unsqueeze(1)).sum()

        return Resolved(tokenizer.decode(list(ids)), None, ids, scalar, {"kind": "answer", "answer": list(ids)})


@dataclass(frozen=True)
class Custom(Target):
    """Any callable from the logits of the sequence ([T, V]) to a scalar."""

    fn: Callable[[Tensor], Tensor]
    label: str = "custom"

    def resolve(self, tokenizer, top_id: int | None = None) -> Resolved:
        return Resolved(self.label, None, (), self.fn)


def other_task_note(target: Any) -> str:
    """For a target made for another task (``TokenLabel``, ``Direction``): which models take it."""
    made_for = getattr(target, "made_for", None)
    return f"{type(target).__name__} is for {made_for}, and this model is not one; " if made_for else ""


#: The targets ``Resolved.spec`` writes down, by kind.
_FROM_SPEC: dict[str, Callable[[dict[str, Any]], Target]] = {
    "token": lambda spec: Token(spec["token"]),
    "contrast": lambda spec: Contrast(spec["token"], spec["against"]),
    "log_prob": lambda spec: LogProb(spec["token"]),
    "answer": lambda spec: Answer(spec["answer"]),
}


def _from_spec(spec: dict[str, Any]) -> Target:
    """The target an explanation's ``explained`` writes down."""
    if not spec:
        raise TargetError(
            "This explanation's target was a callable, which its file can't hold (explained is empty): pass the "
            "callable itself as the target."
        )
    try:
        return _FROM_SPEC[spec["kind"]](spec)
    except KeyError as error:
        raise TargetError(
            f"{spec!r} is not a target an explanation wrote (its explained field): pass Explanation.explained "
            f"as it is, with kind one of {', '.join(map(repr, _FROM_SPEC))}."
        ) from error


def as_target(target) -> Target:
    """Normalise the ``target=`` argument of ``explain``: an explanation's ``explained`` (a dict) is read back."""
    if isinstance(target, Target):
        return target
    if isinstance(target, dict):
        return _from_spec(target)
    if target is None or (isinstance(target, (str, int)) and not isinstance(target, bool)):
        return Token(target)
    if callable(target):
        return Custom(target, getattr(target, "__name__", "custom"))
    raise TargetError(
        f"Unsupported target {target!r}: {other_task_note(target)}pass None, a token string or id, "
        "attnlrp.Answer(...), attnlrp.Contrast(...), attnlrp.LogProb(...), a callable on the logits, or an "
        "explanation's explained."
    )


def _label(tokenizer, tid: int) -> str:
    return tokenizer.decode([tid])
