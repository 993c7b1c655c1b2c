"""``attnlrp.check``: measure, module by module, whether relevance is conserved through a model.

The op audit (``audit.py``) lists the torch ops the engine routes without a rule, and names each custom
``torch.autograd.Function`` without seeing into it (its forward runs with gradients off, and its backward is its
own). It cannot see writes through ``.data`` or under ``no_grad``, or ops that each have a rule but together
still leak. The check measures instead. It runs a float64 copy of
the model once under CP-LRP, which conserves relevance exactly once the additive constants are gone,
with every bias and learned input-independent constant (position and token-type embeddings, class
tokens) zeroed, and compares the relevance entering each module with the relevance leaving it.

The per-module bookkeeping (``relevance_flow``) is shared with the explicit mode's conservation check,
where the gradient *is* the relevance; here the relevance of a tensor h is h * grad.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import BindingError, InputError, UnruledOpWarning
from . import layer_map, quantized
from .audit import AuditReport, example_arguments
from .binding import binding_of, lrp
from .trees import map_tensors, tensors
from .unsupported import refuse_compiled

#: Reads the relevance of tensor t from its gradient: t * grad (efficient mode) or grad (explicit mode).
RelevanceOf = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ModuleRelevance:
    """Σ relevance that reached a module's output and left through its inputs (summed over its calls).

    ``input_size`` and ``output_size`` are Σ |R|: the scale against which a difference is measured (a
    module whose relevance cancels out to almost nothing is still measured against what passes through).
    """

    path: str
    kind: str
    output: float = 0.0
    input: float = 0.0
    output_size: float = 0.0
    input_size: float = 0.0

    @property
    def created(self) -> float:
        """Σ R_in − Σ R_out: positive where the module creates relevance, negative where it loses some."""
        return self.input - self.output

    @property
    def error(self) -> float:
        """|Σ R_in − Σ R_out| relative to the relevance that passes through (0 where none does)."""
        scale = max(self.input_size, self.output_size)
        return abs(self.created) / scale if scale > 0 else 0.0


@dataclass
class _Call:
    """One call of a module: its own sums, its module's record (summed over calls) and the calls it made."""

    sums: ModuleRelevance
    record: ModuleRelevance
    children: list[_Call] = field(default_factory=list)
    fed: bool = False  # relevance entered: through its arguments, or at a leaf made inside it


class ConservationReport:
    """Every module relevance passed through; ``violations`` are those that create or lose relevance, and
    ``leaks`` those where it happens in the module's own code rather than in a module it calls."""

    def __init__(self, rtol: float):
        self.rtol = rtol
        self.modules: dict[str, ModuleRelevance] = {}
        self.calls: list[_Call] = []  # the outermost calls; each holds the calls it made

    def violations(self) -> list[ModuleRelevance]:
        """Modules whose |Σ R_in − Σ R_out| exceeds rtol · max(Σ |R_in|, Σ |R_out|)."""
        return [m for m in self.modules.values() if m.error > self.rtol]

    def own(self) -> dict[str, float]:
        """Relevance created (positive) or lost (negative) by each module's own code: what it creates
        minus what the modules it calls create."""
        own = dict.fromkeys(self.modules, 0.0)
        pending = list(self.calls)
        while pending:
            call = pending.pop()
            own[call.record.path] += call.sums.created - sum(child.sums.created for child in call.children)
            pending.extend(call.children)
        return own

    def leaks(self) -> list[ModuleRelevance]:
        """The modules whose own code creates or loses relevance beyond the tolerance."""
        own = self.own()
        return [m for m in self.modules.values() if abs(own[m.path]) > self.rtol * max(m.input_size, m.output_size)]

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


def _carries_relevance(t: Any) -> bool:
    return isinstance(t, Tensor) and t.requires_grad and t.is_floating_point()


@contextmanager
def relevance_flow(
    model: nn.Module, relevance: RelevanceOf, rtol: float, paused: Callable[[], bool] = lambda: False
) -> Iterator[ConservationReport]:
    """Record Σ relevance at every module's inputs and outputs during the next forward and backward pass.

    Each relevance-carrying input is passed to the module as a copy (one per distinct tensor), so that
    its gradient counts only what flowed back through this module; each output is returned as a copy
    too, so that its gradient counts only what flows back from outside the module (an output that the
    module also consumes itself, as BERT's pooler does, is not counted twice). A module that changes an
    input in place for its caller to see would not be seen changing it. An output that
    is a leaf (the input embeddings, made a leaf by the binding) is where relevance enters: it counts as
    an input of every module that was running when it was made. Nothing is recorded while ``paused()``
    (inside an explicit-mode module rule, where gradients are the rule's own Jacobian products).
    Read the report after the backward.
    """
    report = ConservationReport(rtol)
    running: list[_Call] = []

    def count(calls: list[_Call], side: str, t: Tensor) -> None:
        value = t.detach().clone()  # as it is now: the model may change t in place later (out += residual)
        for call in calls:
            call.fed |= side == "input"

        def hook(grad: Tensor) -> None:
            r = relevance(value, grad).double()
            total, size = float(r.sum()), float(r.abs().sum())
            for call in calls:
                for sums in (call.sums, call.record):
                    setattr(sums, side, getattr(sums, side) + total)
                    setattr(sums, f"{side}_size", getattr(sums, f"{side}_size") + size)

        t.register_hook(hook)

    def before(path: str, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        kind = type(module).__name__
        call = _Call(ModuleRelevance(path, kind), report.modules.setdefault(path, ModuleRelevance(path, kind)))
        (running[-1].children if running else report.calls).append(call)
        running.append(call)
        if paused() or not torch.is_grad_enabled():
            return None
        copies: dict[int, Tensor] = {}
        return map_tensors(lambda t: copy_of(t, copies, call, "input"), (args, kwargs))

    def after(path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        call = running.pop() if running else None
        if call is None or paused() or not torch.is_grad_enabled():
            return None
        copies: dict[int, Tensor] = {}
        for t in tensors(output):
            if _carries_relevance(t) and t.grad_fn is None and id(t) not in copies:
                copies[id(t)] = t  # relevance enters here: an input of the modules around this one
                count(list(running), "input", t)
        if not call.fed:  # a lookup (a second token table, rotary tables): nothing enters it to conserve
            return None
        return map_tensors(lambda t: copy_of(t, copies, call, "output"), output)

    def copy_of(t: Any, copies: dict[int, Tensor], call: _Call, side: str) -> Any:
        """A copy of each distinct relevance-carrying tensor (with the tensor's own attributes, such as
        the engine's gate marks), counted on ``side`` of ``call``. A copy, not a view: a later in-place
        op on a view (``out += residual``) would reroute the backward around the view's hook."""
        if not _carries_relevance(t):
            return t
        if id(t) not in copies:
            copies[id(t)] = t.clone()
            copies[id(t)].__dict__.update(t.__dict__)
            count([call], side, copies[id(t)])
        return copies[id(t)]

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(functools.partial(before, path), with_kwargs=True))
        handles.append(module.register_forward_hook(functools.partial(after, path), with_kwargs=True, always_call=True))
    try:
        yield report
    finally:
        for handle in handles:
            handle.remove()


# --- attnlrp.check ----------------------------------------------------------------------------

#: Learned input-independent constants that enter additively, by parameter name (biases aside):
#: position and token-type embeddings, class / distillation / register tokens.
_CONSTANT = re.compile(
    r"(^|[._])(wpe|embed_positions|position_embeddings?|pos_embed\w*|token_type_embeddings"
    r"|cls_token|dist_token|register_tokens)(\.weight)?$"
)


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1].endswith("bias")


def zero_constants(model: nn.Module) -> list[str]:
    """Zero every bias and every learned additive constant of ``model`` in place; their parameter names."""
    zeroed = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.is_floating_point() and (_is_bias(name) or _CONSTANT.search(name)):
                param.zero_()
                zeroed.append(name)
    return zeroed


def _default_target(output: Any) -> Tensor:
    """The largest logit (at the last position of a sequence) of the first sample."""
    logits = getattr(output, "logits", None)
    if not isinstance(logits, Tensor):
        logits = next((t for t in tensors(output) if _carries_relevance(t)), None)
    if logits is None:
        raise ValueError("The model returned no tensor that depends on its inputs: pass target=callable(output).")
    row = logits[0]
    if row.dim() >= 2:
        row = row.reshape(-1, row.shape[-1])[-1]
    return row.max()


@dataclass
class CheckReport:
    """The outcome of ``attnlrp.check``: conservation per module, end to end, and the op audit."""

    model: str
    rtol: float
    target: float
    flow: ConservationReport
    audit: AuditReport
    zeroed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def end_to_end(self) -> ModuleRelevance:
        """The whole model: Σ relevance of its inputs against that of its output (the target)."""
        return self.flow.modules[""]

    @property
    def leaks(self) -> list[ModuleRelevance]:
        """The modules whose own code loses or creates relevance (not only the modules they call)."""
        return self.flow.leaks()

    @property
    def worst(self) -> float:
        """The largest relative conservation error over all modules, the whole model included."""
        return max((m.error for m in self.flow.modules.values()), default=0.0)

    @property
    def ok(self) -> bool:
        """Relevance is conserved through every module and every op had a rule."""
        return not self.flow.violations() and not self.flow.leaks() and self.audit.ok

    def __str__(self) -> str:
        leaks = {m.path for m in self.flow.leaks()}
        rows = {m.path: m for m in self.flow.violations()} | {m.path: m for m in self.flow.leaks()}
        own = self.flow.own()
        whole = self.end_to_end
        biases = sum(_is_bias(name) for name in self.zeroed)
        verdict = f"{len(leaks)} module(s) lose or create relevance" if rows else "conserves relevance"
        lines = [
            f"attnlrp check of {self.model}: {verdict} (CP-LRP, float64, rtol {self.rtol:g})",
            f"  zeroed for the check: {biases} bias(es), {len(self.zeroed) - biases} learned constant(s)"
            + "".join(f" {name}" for name in self.zeroed if not _is_bias(name)),
            f"  end to end: target {self.target:+.6g}, input relevance {whole.input:+.6g}, "
            f"relative error {whole.error:.2g}; {len(self.flow.modules)} modules checked, worst {self.worst:.2g}",
            *(f"  note: {note}" for note in self.notes),
        ]
        if rows:
            lines.append(
                f"  {'':<7}{'module':<44} {'class':<28} {'R out':>11} {'R in':>11} {'rel. error':>10} {'own':>8}"
            )
            for m in sorted(rows.values(), key=lambda m: (m.path not in leaks, m.path)):
                scale = max(m.input_size, m.output_size)
                lines.append(
                    f"  {'LEAK' if m.path in leaks else 'inside':<7}{m.path or '<root>':<44} {m.kind:<28} "
                    f"{m.output:>+11.4g} {m.input:>+11.4g} {m.error:>10.2g} {abs(own[m.path]) / scale:>8.2g}"
                )
            lines.append("  LEAK: this module's own code loses or creates relevance (own: relative to what passes")
            lines.append("  through); inside: a module it calls does. docs/check.md says how to add a rule.")
        lines.extend("  " + line for line in str(self.audit).splitlines())
        return "\n".join(lines)

    __repr__ = __str__


def check(
    model: nn.Module,
    example_inputs: Any = None,
    rtol: float = 1e-6,
    target: Callable[[Any], Tensor] | None = None,
    layer_rules: layer_map.LayerRules | None = None,
) -> CheckReport:
    """Check that CP-LRP conserves relevance through every module of ``model``.

    A float64 copy of the model, with every bias and learned additive constant zeroed (the user's model
    is not touched), runs once on ``example_inputs`` under CP-LRP, which conserves relevance exactly on
    such a model. The report lists each module whose input relevance differs from its output relevance by
    more than ``rtol`` (relative to the relevance passing through), the modules where the leak is, the
    end-to-end conservation, and the op audit of the same run. ``report.ok`` is True when nothing leaks.

    example_inputs: as for ``attnlrp.audit`` (token ids, a float input, a tuple, or a dict of forward
    arguments; by default eight token ids). target: maps the model's output to the explained scalar; by
    default the largest logit at the last position of the first sample. layer_rules: as for ``lrp``, to
    check a layer rule given to a module the check flagged. The copy costs the model's size in float64:
    check a small instance of an architecture (a config with two layers).
    """
    refuse_compiled(model)
    bound = binding_of(model)
    if bound is not None:
        raise BindingError(f"{type(model).__name__} is bound by {bound.owner}: check it unbound; {bound.release}")
    if getattr(model, "is_quantized", False) or any(quantized.backend_of(m) is not None for m in model.modules()):
        raise InputError(
            f"{type(model).__name__} is quantized, and the check runs a float64 copy, which a quantized model can't be "
            "cast to: check the same architecture unquantized (a small config, or the model loaded without its "
            "quantization_config); attnlrp.audit(model) works on the quantized model."
        )
    twin = copy.deepcopy(model).to(torch.float64)
    notes = _float64_experts(twin)
    zeroed = zero_constants(twin)
    args, kwargs = example_arguments(twin, _in_float64(example_inputs))
    pick = target or _default_target
    with (
        lrp(twin, method="cp-lrp", layer_rules=layer_rules) as binding,
        relevance_flow(twin, lambda t, grad: t * grad, rtol) as flow,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UnruledOpWarning)
        binding.counting = True
        with torch.enable_grad():
            y = pick(twin(*args, **kwargs))
            y.backward()
    return CheckReport(
        model=type(model).__name__,
        rtol=rtol,
        target=float(y.detach()),
        flow=flow,
        audit=AuditReport.of(binding),
        zeroed=zeroed,
        notes=notes,
    )


def _float64_experts(model: nn.Module) -> list[str]:
    """transformers' default MoE experts kernel, grouped_mm, has no float64 kernel on CPU: the copy runs
    batched_mm, which computes the same (tests/test_families.py compares the two)."""
    config = getattr(model, "config", None)
    if getattr(config, "_experts_implementation", None) != "grouped_mm":
        return []
    model.set_experts_implementation("batched_mm")
    return ["MoE experts run with batched_mm (grouped_mm has no float64 kernel)"]


def _in_float64(inputs: Any) -> Any:
    return map_tensors(lambda t: t.double() if t.is_floating_point() else t, inputs)
