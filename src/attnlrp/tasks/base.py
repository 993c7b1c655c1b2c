"""The task seam: a task adapter knows a model family's job and hands the methods a ``Batch``.

A task adapter decides how inputs are encoded, which inputs carry relevance (token embeddings of one or
several kinds, pixels), how the model is run, how targets are read from its outputs, and which result comes
back. Every method (``attnlrp.methods``) runs on the ``Batch`` alone, so any method works with any task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..engine.devices import check_placement
from ..engine.unsupported import refuse_compiled
from ..errors import InputError, TargetError
from ..methods import Method
from ..methods.batch import Batch


def check_finite(values: Tensor, batch: Batch | None = None) -> None:
    """A FloatingPointError where an explained value is NaN or infinite; ``batch``: the values are its rows'."""
    if not torch.isfinite(values).all():
        raise FloatingPointError(
            f"The explained value is not finite ({values.tolist()}); the model produced NaN/inf logits"
            + not_finite_advice(batch)
        )


def check_relevance(batch: Batch, relevance: dict[str, Tensor], items: Sequence[int]) -> None:
    """A FloatingPointError naming the items (``items[row]``: the index of the batch's row among the inputs given)
    whose relevance is NaN or infinite at their real positions (their padding is never read)."""
    bad = []
    for row, item in enumerate(items):
        for kind, scores in relevance.items():
            span = batch.spans[kind][row] if kind in batch.spans else slice(None)
            if not torch.isfinite(scores[row, span]).all():
                bad.append(item)
                break
    if bad:
        raise FloatingPointError(
            f"The relevance of input{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} (counting from 0) is "
            f"NaN or infinite, though the explained value{'s are' if len(bad) > 1 else ' is'} finite"
            + not_finite_advice(batch)
        )


def not_finite_advice(batch: Batch | None) -> str:
    """The end of a message on NaN or inf from ``batch``: the likely cause where it is padded, and what avoids it."""
    sides = set()
    for kind, spans in (batch.spans if batch is not None else {}).items():
        width = batch.inputs[kind].shape[1]
        sides |= {"left" for span in spans if span.start} | {"right" for span in spans if span.stop != width}
    if not sides:
        return ". Check the dtype (try float32) and the inputs."
    model = type(batch.model).__name__
    if "left" in sides:
        return (
            f" with left padding: {model}'s attention gives NaN at padding that attends to nothing (eager attention "
            "in float64 does), and the NaN reaches the prompts. Pad on the right (padding_side='right', the "
            "default), or explain in float32 or with SDPA attention."
        )
    return (
        f". Padding in a batch can do it: {model}'s eager attention in float64 gives NaN where a padded position "
        "attends to nothing (a sliding window or local attention can leave it no key). Where it happens only in a "
        "batch, explaining one at a time (batch_size=1), or in float32, avoids it; else check the inputs."
    )


class RowOutput:
    """A batched model output whose ``logits`` are split into rows once (``logits[m]`` is row m's); every other
    field is the output's. Reading row after row out of the whole logits tensor would give the backward one
    full-size zero gradient per row (a batch of 32 LM rows: 32 fills of [32, positions, vocabulary])."""

    def __init__(self, output: Any):
        self.output = output
        self.logits = output.logits.unbind(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.output, name)


def by_row(output: Any) -> Any:
    """``output`` with its logits split into rows (``RowOutput``), where it has logits."""
    return RowOutput(output) if isinstance(getattr(output, "logits", None), Tensor) else output


def scalar(value: Tensor, label: str) -> Tensor:
    """The explained value, checked to be one number (a target callable may return anything)."""
    if not isinstance(value, Tensor):
        raise TargetError(
            f"The target {label!r} returned a {type(value).__name__}, not a tensor: compute it from the logits with "
            "torch operations (a Python number has no gradient to explain)."
        )
    if value.numel() != 1:
        raise TargetError(
            f"The target {label!r} returned a tensor of shape {tuple(value.shape)}, not one number: make it reduce "
            "to a scalar (e.g. with .sum())."
        )
    return value.reshape(())


def unit(model: nn.Module, x: Tensor) -> Tensor:
    """``x`` [..., H] scaled to unit length: with its norm a constant while ``model`` is bound to LRP rules, as it
    is (its gradient through the norm too) for plain gradient methods."""
    from ..core import rules
    from ..engine import binding_of

    return rules.normalize(x, dim=-1) if binding_of(model) is not None else torch.nn.functional.normalize(x, dim=-1)


def similarity(model: nn.Module, a: Tensor, b: Tensor, cosine: bool = True) -> Tensor:
    """The cosine (or dot product) of two input-dependent vectors [..., H]. For plain gradient methods it is the
    similarity as it is; while ``model`` is bound to LRP rules, the norms are constants and the two vectors share
    the product (uniform rule, rules.md), so each holds half of it."""
    from ..core import rules
    from ..engine import binding_of

    if binding_of(model) is None:
        return torch.nn.functional.cosine_similarity(a, b, dim=-1) if cosine else (a * b).sum(-1)
    if cosine:
        a, b = rules.normalize(a, dim=-1), rules.normalize(b, dim=-1)
    a, b = rules.uniform(a, b)
    return (a * b).sum(-1)


def first_token(model: nn.Module, logits: Tensor) -> int:
    """The top next token among those ``generate()`` may emit first: the generation config's ``suppress_tokens``
    and ``begin_suppress_tokens`` (Whisper's) are left out, as they are when generating."""
    config = getattr(model, "generation_config", None)
    banned = [
        i
        for i in (
            *(getattr(config, "suppress_tokens", None) or ()),
            *(getattr(config, "begin_suppress_tokens", None) or ()),
        )
        if 0 <= i < logits.shape[-1]
    ]
    if banned:
        logits = logits.detach().clone()
        logits[banned] = float("-inf")
    return int(logits.detach().argmax())


def dtype_name(model: nn.Module) -> str:
    """The dtype a model computes in, as settings record it ("float32", "bfloat16", ...)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def model_name(model: nn.Module) -> str:
    """The name results carry for a model: its hub id or folder, else its class."""
    return str(
        getattr(model, "name_or_path", "")
        or getattr(getattr(model, "config", None), "_name_or_path", "")
        or type(model).__name__
    )


#: Every task adapter by name, in the order ``task_for`` tries them.
TASKS: dict[str, type[Task]] = {}


class Task:
    """A task adapter: turns a model's inputs into Batches and relevance into results.

    Subclasses set ``name`` (they register under it) and ``description``, and implement ``accepts`` (whether a
    model does this job, from its class and config), ``encode`` (user inputs -> items, and whether one was
    given alone), ``targets`` (the target argument -> one checked target per item), ``prepare`` (items and
    targets -> Batch) and ``results`` (Batch and relevance -> one result per item).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: The keyword options the adapter takes (``explain(..., pair=...)``); others are an error.
    options: ClassVar[tuple[str, ...]] = ()
    #: What an input line's fields (and the command line's options) may say of what to explain on this task's
    #: models; the others of ``attnlrp.dataset.WHAT_TO_EXPLAIN`` are refused by name. None: the task reads no lines.
    fields: ClassVar[tuple[str, ...] | None] = None
    #: The method used where none is given.
    default_method: ClassVar[str] = "attnlrp"
    #: Whether the model predicts labels (classes): a ``label`` names the one explained.
    labelled: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            TASKS[cls.name] = cls

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether ``model`` does this task (``task_for`` asks each adapter in turn)."""
        return False

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected a torch.nn.Module (for example a transformers model), got {type(model).__name__}."
            )
        check_placement(model)  # weights loaded (or offloaded), on one device or moved by accelerate's hooks
        self.model = model

    def encode(self, inputs: Any) -> tuple[list[Any], bool]:
        raise NotImplementedError

    def targets(self, target: Any, count: int) -> list[Any]:
        raise NotImplementedError

    def prepare(self, items: Sequence[Any], targets: Sequence[Any]) -> Batch:
        raise NotImplementedError

    def results(self, batch: Batch, relevance: dict[str, Any], method: Method) -> list[Any]:
        raise NotImplementedError

    def lengths(self, items: Sequence[Any]) -> list[int]:
        """Each item's size in tokens, for batch plans (1 each where items have no tokens)."""
        return [len(getattr(item, "ids", ())) or 1 for item in items]


def one_per_item(target: Any, count: int, what: str = "prompts", given: str = "targets") -> list[Any]:
    """``target`` repeated for every item, or the given list of one target (or pair: ``given``) per item; numpy
    and 0-d tensor integers (``logits.argmax()``) become ints, and a 1-d integer tensor or array
    (``logits.argmax(-1)``) is one integer per item."""
    if _integer_vector(target):
        target = target.tolist()
    targets = list(target) if isinstance(target, (list, tuple)) else [target] * count
    if len(targets) != count:
        raise InputError(f"{len(targets)} {given} were given for {count} {what}; give one each, or one for all.")
    return [_plain_integer(t) for t in targets]


def _integer_vector(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and np.issubdtype(value.dtype, np.integer)
    return (
        isinstance(value, Tensor) and value.dim() == 1 and not value.is_floating_point() and value.dtype != torch.bool
    )


def _plain_integer(value: Any) -> Any:
    if isinstance(value, np.integer) or (
        isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    ):
        return int(value)
    return value


def task_for(model: nn.Module, name: str | None = None) -> type[Task]:
    """The task adapter for ``model``: the one named (``"sequence-classification"``, ...), else the first that
    accepts the model."""
    refuse_compiled(model)
    if name is not None:
        key = str(name).lower().replace("_", "-")
        if key not in TASKS:
            raise InputError(f"Unknown task {name!r}: choose one of {', '.join(map(repr, TASKS))}.")
        chosen = TASKS[key]
        found = next((cls for cls in TASKS.values() if cls.accepts(model)), None)
        if found is not None and not chosen.accepts(model):
            if not hasattr(model, "config"):
                raise InputError(
                    f"{type(model).__name__} is a plain torch module (no transformers config), which the {key!r} "
                    f"task can't read: explain it as a language model (task={found.name!r}, returning logits "
                    "[batch, tokens, vocabulary]), or with attnlrp.lrp(model) and your own inputs."
                )
            raise InputError(
                f"{type(model).__name__} is a {found.name!r} model, and the {key!r} task can't read its outputs: "
                f"leave task= out (or give {found.name!r})."
            )
        return chosen
    found = next((cls for cls in TASKS.values() if cls.accepts(model)), None)
    if found is None:
        listing = "; ".join(f"{cls.name!r}: {cls.description}" for cls in TASKS.values())
        raise InputError(
            f"Can't tell which task {type(model).__name__} does, so attnlrp doesn't know how to read a target from "
            f"it. The task adapters are: {listing}. Pick one with task=..., or explain it with attnlrp.lrp(model) "
            "directly."
        )
    return found
