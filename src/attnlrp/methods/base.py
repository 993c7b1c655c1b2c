"""The method registry: every attribution method is one registered class with one contract.

A method takes a prepared ``Batch`` (see ``attnlrp.methods.batch``) and returns the relevance of each input kind
it carries (``{"tokens": [B, T]}``, ``{"pixels": [B, H, W]}``, or several). Subclasses register themselves
under their ``name`` when they are defined; ``get_method`` is the one place that turns a name into a method.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields, is_dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..core.naming import method_key
from ..errors import MethodError
from .batch import Batch

#: Every method class by its key (see ``method_key``), in the order they were defined.
REGISTRY: dict[str, type[Method]] = {}


class Method:
    """An attribution method. Subclasses set ``name`` and ``description`` and implement ``attribute``.

    Capabilities, stated on the class: ``is_lrp`` (it runs the engine's rules, so it takes
    ``gradient_checkpointing`` and ``layer_rules``), ``token_inputs_only`` (it needs positions of tokens,
    not pixels), ``single_backward`` (one forward and one backward pass, which a ``Recorder`` can read),
    ``needs_backward`` (it runs a backward pass: not under ``torch.inference_mode()``, and for a gradient method
    not on a model bound to LRP rules).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    is_lrp: ClassVar[bool] = False
    token_inputs_only: ClassVar[bool] = False
    single_backward: ClassVar[bool] = False
    needs_backward: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[method_key(cls.name)] = cls

    def attribute(self, batch: Batch) -> dict[str, Tensor]:
        """The relevance of each input kind of the batch: {kind: [B, ...]} (padding positions are ignored)."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The name, with the options set away from their defaults: ``integrated_gradients(steps=8)``. Results
        of one configuration are kept apart from another's under it (an evaluation's journal)."""
        if not is_dataclass(self):
            return self.name
        default = type(self)()
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def check(self, batch: Batch) -> None:
        """Raise a MethodError where this method has no meaning for the batch's inputs."""
        if self.token_inputs_only and any(kind not in batch.token_kinds for kind in batch.inputs):
            others = [c.name for c in REGISTRY.values() if not c.token_inputs_only]
            raise MethodError(
                f"The {self.name!r} method scores token positions, but this task's inputs include "
                f"{', '.join(k for k in batch.inputs if k not in batch.token_kinds)}; choose a method that works on "
                f"them: {', '.join(map(repr, others))}."
            )


def method_names() -> list[str]:
    """Every registered method's name: the LRP methods first, then the baselines, as defined."""
    return [cls.name for cls in sorted(REGISTRY.values(), key=lambda c: not c.is_lrp)]


def available_methods() -> dict[str, str]:
    """Each registered method's name with a one-line description of it."""
    return {name: REGISTRY[method_key(name)].description for name in method_names()}


def get_method(method: str | Method, **options: Any) -> Method:
    """The method a name stands for, configured with ``options`` (a Method instance is taken as it is). A name
    may carry options as its ``label`` writes them, ``"integrated_gradients(steps=64)"``.

    Options a method doesn't take are an error that names the methods that do.
    """
    if isinstance(method, Method):
        if options:
            raise MethodError(
                f"Options {sorted(options)} can't be applied to a configured {method!r}; give them to its constructor."
            )
        return method
    method, written = _read_label(method)
    twice = sorted(set(written) & set(options))
    if twice:
        raise MethodError(f"{', '.join(twice)} is given twice, in the method's name and as an option: give it once.")
    options = {**written, **options}
    cls = REGISTRY.get(method_key(method))
    if cls is None:
        lrp = [c.name for c in REGISTRY.values() if c.is_lrp]
        others = [c.name for c in REGISTRY.values() if not c.is_lrp]
        raise MethodError(
            f"Unknown LRP method {method!r}: choose one of {', '.join(map(repr, lrp))}, "
            f"or a baseline: {', '.join(map(repr, others))}."
        )
    unknown = sorted(set(options) - _options(cls))
    if unknown:
        takers = [c for c in REGISTRY.values() if set(unknown) <= _options(c)]
        which = ("the LRP methods" if takers and all(c.is_lrp for c in takers) else "the methods") + (
            f" ({', '.join(repr(c.name) for c in takers)})" if takers else " of other tasks"
        )
        raise MethodError(f"{', '.join(unknown)} is for {which}; the {cls.name!r} method runs without it.")
    return cls(**options)


#: A label with options: a name, then ``name=value`` pairs in parentheses
_LABEL = re.compile(r"([^()]*)\((.*)\)", re.S)


def _read_label(text: str) -> tuple[str, dict[str, Any]]:
    """A method's name and options from a ``label``, ``"integrated_gradients(steps=64)"`` (values are literals);
    a name without parentheses has no options."""
    found = _LABEL.fullmatch(str(text).strip())
    if found is None:
        return text, {}
    name, written = found.groups()
    try:
        call = ast.parse(f"f({written})", mode="eval").body
        options = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords} if isinstance(call, ast.Call) else {}
    except (SyntaxError, ValueError):
        call = None
    if not isinstance(call, ast.Call) or call.args or None in options:
        raise MethodError(
            f"{text!r} doesn't read as a method with options: write them as name=value with literal values, "
            "e.g. integrated_gradients(steps=64)."
        )
    return name.strip(), options


def _options(cls: type[Method]) -> set[str]:
    """The options a method class takes (its dataclass fields)."""
    return {f.name for f in fields(cls)} if is_dataclass(cls) else set()
