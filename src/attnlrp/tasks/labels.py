"""Targets over a classifier's labels: a label name or id, a contrast, a log-probability, or a callable.

``explain(classifier, ..., target=...)`` accepts None (the predicted label), a label name from
``config.id2label``, a label id, ``Contrast(label, other_label_or_"mean")``, ``LogProb(label)`` or a callable
on the logits of one row ([num_labels]). Each resolves, for one row, to a function of that row's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import TargetError
from .targets import Contrast, LogProb, other_task_note


def label_names(config) -> dict[int, str]:
    """The model's labels by id (``config.id2label``, ids as ints), or LABEL_i names where it has none. A head that
    regresses one score names it "score" where its config gives it no name but transformers' default LABEL_0."""
    raw = getattr(config, "id2label", None) or {}
    count = getattr(config, "num_labels", None) or len(raw)
    given = {int(k): str(v) for k, v in raw.items()}
    names = {i: given.get(i, f"LABEL_{i}") for i in range(count)}
    if names == {0: "LABEL_0"} and head_kind(config) == "regression":
        return {0: "score"}
    return names


def label_id(config, label: str | int) -> int:
    """The id of a label given by name or id; a TargetError lists the model's labels where it has no such one."""
    names = label_names(config)
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise TargetError(f"A label must be a name or an id, not {label!r}; the model's labels are {_listing(names)}.")
    if isinstance(label, int):
        if label not in names:
            raise TargetError(f"Label id {label} is not one of the model's labels: {_listing(names)}.")
        return label
    by_name = {name: i for i, name in names.items()}
    if label in by_name:
        return by_name[label]
    folded = {name.lower(): i for name, i in by_name.items()}
    if label.lower() in folded:
        return folded[label.lower()]
    if label.strip().isdigit() and int(label) in names:  # an id given as text (the command line's --label 2)
        return int(label)
    raise TargetError(f"The model has no label {label!r}; its labels are {_listing(names)}.")


def _listing(names: dict[int, str]) -> str:
    shown = ", ".join(f"{i}: {name!r}" for i, name in list(names.items())[:20])
    return "{" + shown + (", ..." if len(names) > 20 else "") + "}"


def head_kind(config) -> str:
    """How the head's outputs read, as transformers trains them: "regression" (scores: one output, or
    ``problem_type="regression"``), "multi_label" (a sigmoid per label) or "single_label" (a softmax)."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression" or (problem is None and getattr(config, "num_labels", 2) == 1):
        return "regression"
    return "multi_label" if problem == "multi_label_classification" else "single_label"


def _log_prob(config, i: int) -> Callable[[Tensor], Tensor]:
    """log p(label i) of one row's logits: a log-sigmoid of its own logit on a multi-label head, else a
    log-softmax (at least float32: fp16/bf16 overflow)."""
    if head_kind(config) == "multi_label":
        return lambda row: torch.nn.functional.logsigmoid(row[i].to(torch.promote_types(row.dtype, torch.float32)))
    return lambda row: torch.log_softmax(row.to(torch.promote_types(row.dtype, torch.float32)), -1)[i]


@dataclass(frozen=True)
class LabelTarget:
    """A target bound to one row: its label text, the label id it names (if one), and its scalar."""

    label: str
    label_id: int | None
    scalar: Callable[[Tensor], Tensor]  # one row's logits [num_labels] -> y


def resolve_label_target(config, target, logits: Tensor) -> LabelTarget:
    """Bind ``target`` to one row whose logits [num_labels] are given (None: the top label; a regression head's one
    output: its score)."""
    names = label_names(config)
    if target is None:
        target = int(logits.detach().argmax())
    if isinstance(target, (str, int)) and not isinstance(target, bool):
        i = label_id(config, target)
        return LabelTarget(names[i], i, lambda row: row[i])
    if isinstance(target, Contrast):
        i = label_id(config, target.token) if target.token is not None else int(logits.detach().argmax())
        if target.against == "mean":
            return LabelTarget(f"{names[i]} vs mean", i, lambda row: row[i] - row.mean())
        j = _contrasted(config, target, i)
        return LabelTarget(f"{names[i]} vs {names[j]}", i, lambda row: row[i] - row[j])
    if isinstance(target, LogProb):
        i = label_id(config, target.token) if target.token is not None else int(logits.detach().argmax())
        return LabelTarget(f"log p({names[i]})", i, _log_prob(config, i))
    if callable(target):
        return LabelTarget(getattr(target, "__name__", "custom"), None, target)
    raise _unsupported(target, names)


def _contrasted(config, target: Contrast, i: int) -> int:
    """The id of the label ``target`` contrasts label ``i`` with; a TargetError where that is label ``i`` again."""
    j = label_id(config, target.against)
    if j == i:
        raise target.with_itself(label_names(config)[i], i)
    return j


def _unsupported(target: Any, names: dict[int, str]) -> TargetError:
    return TargetError(
        f"Unsupported target {target!r} for a classifier: {other_task_note(target)}pass None (the predicted label), "
        f"a label name or id ({_listing(names)}), attnlrp.Contrast(label, other_or_'mean'), attnlrp.LogProb(label), "
        "or a callable on the logits."
    )


def check_label_target(config, target) -> None:
    """Fail now, before any forward pass, on a target a classifier doesn't take or a label the model doesn't have."""
    if not (target is None or isinstance(target, (str, int, Contrast, LogProb)) or callable(target)):
        raise _unsupported(target, label_names(config))
    one_score = getattr(config, "num_labels", 2) == 1
    if head_kind(config) == "regression" and (
        isinstance(target, LogProb) or (one_score and isinstance(target, Contrast))
    ):
        raise TargetError(
            f"This head regresses {'a score' if one_score else 'scores'}, with no probabilities"
            + (" and nothing to contrast it with" if one_score else "")
            + f": {type(target).__name__} has no meaning on it. Explain the score itself (target=None"
            + (")." if one_score else ", or its name or id), or the difference of two with Contrast(a, b).")
        )
    for label in (getattr(target, "token", target), getattr(target, "against", None)):
        if isinstance(label, (str, int)) and not isinstance(label, bool) and label != "mean":
            label_id(config, label)
    if isinstance(target, Contrast) and target.token is not None and target.against != "mean":
        _contrasted(config, target, label_id(config, target.token))  # the predicted label's only after the forward
