"""``Composite``: explicit rules for the modules and torch functions of one model instance, reversibly.

Module rules replace the forward of the matching module instances. Function rules are applied by
the engine's scoped torch-function mode (see ``engine/binding.py``): it is entered only while a module
of the bound model runs, so nothing is patched process-wide, and it needs no tracer.
"""

from __future__ import annotations

import functools
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import get_overridable_functions
from torch.utils._pytree import tree_leaves

from ..engine.binding import Binding, binding_of
from ..engine.ops import op_name
from ..engine.recorder import path_matches
from ..errors import BindingError
from .conservation import ConservationReport, conservation_check
from .rules import Rule, ScopedRule, carries_relevance
from .safety import classify

Key = type | str | Callable[..., Any]
Value = Rule | Callable[..., Any]

#: Python's reflected operators, called as (self, other) for ``other <op> self``.
_REFLECTED = frozenset({"__radd__", "__rsub__", "__rmul__", "__rmatmul__", "__rdiv__", "__rtruediv__"})


@functools.cache
def _overridable_names() -> frozenset[str]:
    return frozenset(op_name(f) for fs in get_overridable_functions().values() for f in fs)


def _is_torch_function(func: Callable[..., Any]) -> bool:
    module = getattr(func, "__module__", None) or ""
    return op_name(func) in _overridable_names() or module.startswith(("torch", "_operator"))


def _describe(value: Value) -> str:
    if isinstance(value, Rule):
        return repr(value)
    if isinstance(value, functools.partial):
        params = ", ".join(f"{k}={v!r}" for k, v in value.keywords.items())
        return f"{_describe(value.func)}({params})"
    return getattr(value, "__qualname__", None) or repr(value)


def _in_place(func: Callable[..., Any]) -> Callable[..., Any] | None:
    """The out-of-place Tensor method of an in-place one (``add_``, ``__iadd__``), else None."""
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__i") and name.endswith("__"):
        return getattr(Tensor, "__" + name[3:], None)
    if name.endswith("_") and not name.startswith("_"):
        return getattr(Tensor, name[:-1], None)
    return None


class Composite:
    """Maps module types, module path or class-name globs, and torch functions to explicit rules.

    ``Composite({nn.Linear: EpsilonRule(), "*RMSNorm": IdentityRule(), torch.matmul: UniformEpsilonRule()})``.
    A module entry takes a ``Rule``, which wraps the module's forward. A function entry (any torch
    function, Tensor method or operator such as ``operator.mul``; all spellings of an op are one
    entry) takes a ``Rule`` or a replacement function with the same signature as the original.
    A string key is a glob matched per dotted component against a module's path; one without a dot also
    matches the module's attribute name (the last component of its path) or its class name. The first
    matching entry wins. A key with a dot (a module path) that matches no module of the model is an error. Register
    it on a model instance with ``register(model)`` / ``remove()`` or ``with composite.context(model): ...``.
    """

    def __init__(self, rules: Mapping[Key, Value], name: str = "composite"):
        self.name = name
        self.module_rules: list[tuple[Key, Rule]] = []
        self.function_rules: dict[str, tuple[Callable[..., Any], Value]] = {}
        for key, value in rules.items():
            if isinstance(key, (type, str)):
                if not isinstance(value, Rule):
                    raise TypeError(f"The rule for module key {key!r} must be a Rule, not {type(value).__name__}.")
                if isinstance(value, ScopedRule):
                    raise TypeError(f"{value!r} rules torch functions, not modules: it can't be the rule for {key!r}.")
                if isinstance(key, type) and not issubclass(key, nn.Module):
                    raise TypeError(f"A type key must be an nn.Module subclass, not {key.__name__}.")
                self.module_rules.append((key, value))
            elif callable(key):
                if not _is_torch_function(key):
                    raise ValueError(
                        f"{getattr(key, '__qualname__', key)!r} is not a torch function, Tensor method or operator, "
                        "so the composite cannot see its calls: add a rule for the module that calls it instead."
                    )
                if not callable(value):
                    raise TypeError(f"The rule for {op_name(key)!r} must be a Rule or a function.")
                self.function_rules.setdefault(op_name(key), (key, value))
            else:
                raise TypeError(f"Composite keys are module types, globs or functions, not {type(key).__name__}.")
        self.binding: ExplicitBinding | None = None
        self._last: ExplicitBinding | None = None

    def module_rule(self, path: str, module: nn.Module) -> tuple[Key, Rule] | None:
        """The (key, rule) entry for a module, if any."""
        cls = type(module).__name__
        for key, rule in self.module_rules:
            if isinstance(key, type):
                if isinstance(module, key):
                    return key, rule
            elif path_matches(key, path) or (
                "." not in key and (fnmatchcase(path.rsplit(".", 1)[-1], key) or fnmatchcase(cls, key))
            ):
                return key, rule
        return None

    # --- registration --------------------------------------------------------------------------

    def register(self, model: nn.Module) -> ExplicitBinding:
        """Apply the rules to ``model`` (this instance only) until ``remove()``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Composite.register expects a torch.nn.Module, got {type(model).__name__}.")
        if self.binding is not None:
            raise BindingError(
                f"This composite is registered on a {type(self.binding.model).__name__}: remove() it first."
            )
        if binding_of(model) is not None:
            raise BindingError(
                f"{type(model).__name__} is already bound (attnlrp.lrp or a composite): leave that first."
            )
        modules = list(model.named_modules())
        for key, _ in self.module_rules:
            if isinstance(key, str) and "." in key and not any(path_matches(key, path) for path, _ in modules if path):
                close = [p for p, _ in modules if p and p.split(".")[-1] == key.split(".")[-1]][:3]
                raise BindingError(
                    f"The composite's key {key!r} matches no module of {type(model).__name__}"
                    + (f" (modules named like it: {', '.join(close)})" if close else "")
                    + ": correct the path, or leave the key out."
                )
        binding = ExplicitBinding(model, self)
        binding.attach(modules)
        self.binding = self._last = binding
        return binding

    def remove(self) -> None:
        """Undo ``register``: every hook, forward and requires_grad flag is restored."""
        if self.binding is not None:
            self.binding.detach()
            self.binding = None

    @contextmanager
    def context(self, model: nn.Module) -> Iterator[ExplicitBinding]:
        """``with composite.context(model) as binding:`` registers for the block (``binding.embeddings``)."""
        binding = self.register(model)
        try:
            yield binding
        finally:
            self.remove()

    @contextmanager
    def conservation_check(self, rtol: float = 1e-4) -> Iterator[ConservationReport]:
        """Σ relevance at each module's input vs output in the next backward pass of the registered model."""
        if self.binding is None:
            raise BindingError(
                "conservation_check needs a registered composite: use it inside composite.context(model)."
            )
        binding = self.binding
        with conservation_check(binding.model, rtol, paused=lambda: binding.suspended) as report:
            yield report

    # --- the summary ---------------------------------------------------------------------------

    def summary(self) -> str:
        """What was replaced, what ran without a rule (safe, known to break LRP, unknown) in the last run."""
        binding = self.binding or self._last
        model = f" on {type(binding.model).__name__}" if binding else " (not registered)"
        lines = [f"Composite {self.name!r}{model}", "  replaced modules (the rule wraps the module's forward):"]
        for path, cls, key, rule in binding.replaced_modules if binding else []:
            calls = binding.calls.get(("module", cls, path), 0)
            lines.append(f"    {path or '<root>':<44} {cls:<24} {rule!r}  [{_key_name(key)}]  {calls} call(s)")
        lines.append("  replaced functions:")
        idle = []
        for name, (_, value) in sorted(self.function_rules.items()):
            paths = [p for (kind, op, p) in binding.calls if kind == "replaced" and op == name] if binding else []
            calls = sum(binding.calls[("replaced", name, p)] for p in paths) if binding else 0
            if calls:
                lines.append(f"    {name:<30} {_describe(value):<48} {calls} call(s) in {len(paths)} module(s)")
            else:
                idle.append(name)
        if idle:
            lines.extend(
                textwrap.wrap(f"not run: {', '.join(idle)}", 110, initial_indent="    ", subsequent_indent="      ")
            )
        for kind, title in (
            ("safe", "safe, no rule needed (relevance only moved, copied or selected)"),
            ("breaks", "KNOWN TO BREAK LRP, ran without a rule"),
            ("unknown", "UNKNOWN, ran without a rule"),
        ):
            seen = Counter()
            for (k, op, path), n in binding.calls.items() if binding else ():
                if k == kind:
                    seen[(op, path)] += n
            lines.append(f"  {title}:" + ("" if seen else " none"))
            if kind == "safe" and seen:
                lines.append("    " + " ".join(sorted({op for op, _ in seen})))
            elif seen:
                lines.extend(f"    {op:<30} at {path or '<root>'}  ({n}x)" for (op, path), n in sorted(seen.items()))
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        return (
            f"Composite({self.name!r}, {len(self.module_rules)} module rule(s), "
            f"{len(self.function_rules)} function rule(s))"
        )


def _key_name(key: Key) -> str:
    return key.__name__ if isinstance(key, type) else str(key)


class ExplicitBinding(Binding):
    """A composite registered on one model: the engine's scoped binding with the composite's op table."""

    unruled_meaning = "carried relevance without a rule of the composite (their plain backward is no relevance rule)"
    unruled_advice = "print(composite) lists them; give each op, or the module that calls it, a rule in the composite."

    def __init__(self, model: nn.Module, composite: Composite):
        super().__init__(model, method="explicit", strict=False)
        self.owner = f"the registered composite {composite.name!r}"
        self.release = "remove() it first, or leave its context() block."
        self.composite = composite
        self.replaced_modules: list[tuple[str, str, Key, Rule]] = []
        #: (kind, op or class name, module path) -> calls; kind: module, replaced, safe, breaks or unknown
        self.calls: Counter[tuple[str, str, str]] = Counter()

    # --- inside a module rule, everything runs plain (the rule differentiates the module itself) ----

    @property
    def suspended(self) -> bool:
        return getattr(self._local, "suspended", 0) > 0

    @property
    def names_functions(self) -> bool:
        """Custom autograd functions are looked for outside module rules (inside, the rule is the module's)."""
        return not self.suspended

    def _unruled_function(self, path: str, cls: type) -> None:
        self.calls[("unknown", f"autograd.Function {cls.__qualname__}", path)] += 1  # listed by the summary
        super()._unruled_function(path, cls)

    def _plain(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            self._local.suspended = getattr(self._local, "suspended", 0) + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._local.suspended -= 1

        return run

    # --- module rules --------------------------------------------------------------------------

    def _bind_module(self, path: str, module: nn.Module) -> None:
        entry = self.composite.module_rule(path, module)
        if entry is None:
            return
        key, rule = entry
        cls = type(module).__name__
        self.replaced_modules.append((path, cls, key, rule))
        original = module.forward
        plain, ruled = self._plain(original), self._plain(rule)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.suspended or not torch.is_grad_enabled():
                return original(*args, **kwargs)
            if _carrying(args, kwargs):
                self.calls[("module", cls, path)] += 1
            out = ruled(plain, *args, **kwargs)
            self.ruled((args, kwargs), out)  # the rule's own autograd functions are no unruled ones
            return out

        self._forwards[module] = module.__dict__.get("forward")
        module.forward = forward

    # --- function rules (called by the engine's torch-function mode) ---------------------------

    def handler_for(self, func: Callable[..., Any]) -> Callable[..., Any] | None:
        name = op_name(func)
        entry = self.composite.function_rules.get(name)
        if entry is not None:
            return functools.partial(_replaced, name=name, value=entry[1])
        kind = classify(name)
        return None if kind is None else functools.partial(_observed, name=name, kind=kind)


def _carrying(args: tuple, kwargs: dict) -> bool:
    return any(carries_relevance(t) for t in tree_leaves((args, kwargs)))


def _observed(binding: ExplicitBinding, func, args, kwargs, *, name: str, kind: str):
    """Counts an op without a rule that receives relevance; one known to break LRP, or unknown, whose output
    carries relevance is also reported (a warning when the forward ends)."""
    out = func(*args, **kwargs)
    if not binding.suspended and _carrying(args, kwargs):
        binding.calls[(kind, name, binding.path())] += 1
        if kind != "safe" and any(carries_relevance(t) for t in tree_leaves(out)):
            binding.unruled(func)
    return out


def _replaced(binding: ExplicitBinding, func, args, kwargs, *, name: str, value: Value):
    if binding.suspended or not _carrying(args, kwargs):
        return func(*args, **kwargs)
    binding.calls[("replaced", name, binding.path())] += 1
    out_of_place = _in_place(func)
    if out_of_place is not None:  # compute out of place, then write into the tensor it modifies
        target = args[0]
        result = _apply(binding, value, out_of_place, (target.clone(),) + tuple(args[1:]), kwargs)
        binding.ruled((args, kwargs), result)
        return target.copy_(result)
    out = _apply(binding, value, func, args, kwargs)
    binding.ruled((args, kwargs), out)  # the rule's own autograd functions (a user's too) are no unruled ones
    return out


def _apply(binding: ExplicitBinding, value: Value, func, args: tuple, kwargs: dict):
    if isinstance(value, ScopedRule):
        return value.scoped(binding, func, *args, **kwargs)
    if isinstance(value, Rule):
        return value(func, *args, **kwargs)
    if getattr(func, "__name__", "") in _REFLECTED:  # other <op> self: the replacement takes (other, self)
        args = (args[1], args[0]) + tuple(args[2:])
    # torch.nn.functional's warning bookkeeping (softmax passes it on), not an argument
    kwargs = {k: v for k, v in kwargs.items() if k != "_stacklevel"}
    return value(*args, **kwargs)
