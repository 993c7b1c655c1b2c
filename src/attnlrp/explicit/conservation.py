"""Conservation check: Σ relevance at each module's input against its output, in one explicit backward pass."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils._pytree import tree_map

from .rules import carries_relevance


@dataclass
class ModuleRelevance:
    """Σ relevance that reached a module's output and left through its inputs (summed over its calls)."""

    path: str
    kind: str
    output: float = 0.0
    input: float = 0.0

    @property
    def created(self) -> float:
        """Σ R_in − Σ R_out: positive where the module creates relevance, negative where it loses some."""
        return self.input - self.output


class ConservationReport:
    """Every module that relevance passed through; ``violations`` are those that create or lose relevance."""

    def __init__(self, rtol: float):
        self.rtol = rtol
        self.modules: dict[str, ModuleRelevance] = {}

    def violations(self) -> list[ModuleRelevance]:
        """Modules with |Σ R_in − Σ R_out| > rtol · max(|Σ R_in|, |Σ R_out|)."""
        return [
            m for m in self.modules.values() if abs(m.created) > self.rtol * max(abs(m.input), abs(m.output), 1e-300)
        ]

    def __str__(self) -> str:
        bad = self.violations()
        lines = [
            f"conservation check (rtol {self.rtol:g}): {len(self.modules)} module(s) checked, "
            f"{len(bad)} create or lose relevance"
        ]
        lines += [
            f"  {m.path or '<root>':<44} {m.kind:<24} out {m.output:+.6g}  in {m.input:+.6g}  "
            f"{'creates' if m.created > 0 else 'loses'} {abs(m.created):.3g}"
            for m in bad
        ]
        return "\n".join(lines)

    __repr__ = __str__


@contextmanager
def conservation_check(
    model: nn.Module, rtol: float = 1e-4, paused: Callable[[], bool] = lambda: False
) -> Iterator[ConservationReport]:
    """Record Σ relevance (the gradient, in the explicit mode) at every module's inputs and outputs.

    Each relevance-carrying input is passed to the module as a fresh view, so that its gradient counts
    only what flowed back through this module. Nothing is recorded while ``paused()`` is true (inside a
    module rule, where gradients are the rule's own Jacobian products). Read the report after the backward.
    """
    report = ConservationReport(rtol)

    def watch(path: str, module: nn.Module, side: str, t: Any) -> Any:
        if not carries_relevance(t):
            return t
        record = report.modules.setdefault(path, ModuleRelevance(path, type(module).__name__))
        if side == "input":
            t = t.view_as(t)
        t.register_hook(lambda grad: setattr(record, side, getattr(record, side) + float(grad.double().sum())))
        return t

    def before(path: str, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if paused():
            return None
        return tree_map(lambda t: watch(path, module, "input", t), (args, kwargs))

    def after(path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not paused():
            tree_map(lambda t: watch(path, module, "output", t), output)

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(functools.partial(before, path), with_kwargs=True))
        handles.append(module.register_forward_hook(functools.partial(after, path), with_kwargs=True))
    try:
        yield report
    finally:
        for handle in handles:
            handle.remove()
