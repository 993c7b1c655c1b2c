"""The tensors in a module's arguments and outputs, at any depth: in tuples, lists, dicts and transformers' model
outputs (torch's pytree), and in the fields of dataclasses (which the pytree leaves whole). Other objects (caches)
are not searched."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor
from torch.utils._pytree import tree_leaves, tree_map


def _dataclass(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def tensors(value: Any, _seen: frozenset[int] = frozenset()) -> Iterator[Tensor]:
    """Every tensor in ``value`` (a dataclass that holds itself, directly or not, is searched once)."""
    for leaf in tree_leaves(value):
        if isinstance(leaf, Tensor):
            yield leaf
        elif _dataclass(leaf) and id(leaf) not in _seen:
            for f in dataclasses.fields(leaf):
                yield from tensors(getattr(leaf, f.name), _seen | {id(leaf)})


def map_tensors(fn: Callable[[Tensor], Any], value: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """``value`` with ``fn(t)`` in place of each tensor t; a dataclass whose tensors change is a shallow copy (one
    that holds itself is left as it is below its first appearance)."""

    def leaf(x: Any) -> Any:
        if isinstance(x, Tensor):
            return fn(x)
        if not _dataclass(x) or id(x) in _seen:
            return x
        fields = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
        mapped = {name: map_tensors(fn, v, _seen | {id(x)}) for name, v in fields.items()}
        if all(mapped[name] is v for name, v in fields.items()):
            return x
        new = copy.copy(x)
        for name, v in mapped.items():
            object.__setattr__(new, name, v)  # frozen dataclasses too
        return new

    return tree_map(leaf, value)
