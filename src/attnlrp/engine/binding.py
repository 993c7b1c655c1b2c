"""Binds the rules to one model instance, reversibly: ``with attnlrp.lrp(model): ...``.

Nothing process-wide is touched. The binding adds instance hooks to the model's modules; while one
of those modules runs (and only then) a torch-function mode routes each op through the op table in
``ops.py``. Those modules get an instance-level ``_call_impl`` that closes the scope however their call
ends; inline activation modules an instance-level ``forward``; parameters stop requiring gradients.
Leaving the block removes every hook and restores every attribute it changed.
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..core import rules
from ..core.layer_rules import LayerRule, apply_rule
from ..core.naming import method_key
from ..errors import BindingError, MethodError, UnruledOpError, UnruledOpWarning
from . import layer_map, module_rules, ops, quantized
from .sites import Site, input_sites
from .trees import tensors
from .unsupported import refuse_compiled, refuse_compiling, refuse_unsupported

#: The rule sets the engine binds.
RULE_SETS = ("attnlrp", "cp-lrp")

#: HF activation modules that compute their function inline (not through one torch op).
INLINE_ACTIVATIONS = {
    "GELUActivation": "gelu",
    "NewGELUActivation": "gelu_tanh",
    "GELUTanh": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
    "FastGELUActivation": "gelu_tanh",
    "AccurateGELUActivation": "gelu_tanh",
    "QuickGELUActivation": "quick_gelu",
    "MishActivation": "mish",
    "ReLUSquaredActivation": "relu_squared",
    "BloomGelu": "gelu_tanh",  # tanh GELU written out, or (training) a custom autograd.Function
}

_NORM_CLASS = re.compile(r"Norm$|RMSNorm|LayerNorm")

#: Module types whose forward is one linear op: they run in their parent's scope, without hooks.
_LINEAR_LEAVES = frozenset({nn.Linear, nn.Embedding, nn.Dropout, nn.Identity, nn.Conv1d, nn.Conv2d, nn.Conv3d})

#: Each module of a bound model -> its binding (our own bookkeeping; weak, so models can be freed).
#: The binding of each bound module, held weakly both ways: a model its binding holds (the binding's hooks keep the
#: binding alive as long as the model) is freed with it, even one that stays bound (``attnlrp.compat``).
_BOUND: weakref.WeakKeyDictionary[nn.Module, weakref.ref[Binding]] = weakref.WeakKeyDictionary()


def _bound(module: nn.Module) -> Binding | None:
    ref = _BOUND.get(module)
    return ref() if ref is not None else None


def rule_set(method: str) -> str:
    """The rule set a method name asks for ("attnlrp" or "cp-lrp"), spelled as the registry spells it."""
    found = next((name for name in RULE_SETS if method_key(name) == method_key(method)), None)
    if found is None:
        raise MethodError(f"Unknown LRP method {method!r}: choose one of {', '.join(repr(m) for m in RULE_SETS)}.")
    return found


#: Ops whose handler runs with gradients off too: they switch dropout off.
_DROPOUT_OPS = ops.DROPOUT | {"scaled_dot_product_attention"}


#: Per thread: whether a binding's mode is handling an op. Torch hands an op, and each op its rule runs, on to the
#: modes below the one handling it: those of other bindings whose scope is open too (a bound model that calls another
#: bound model) pass them through, so that each op gets one rule, the innermost binding's.
_handling = threading.local()


class _Mode(TorchFunctionMode):
    def __init__(self, binding: Binding):
        super().__init__()
        self.binding = binding
        self.handlers: dict[Callable, ops.Handler | None] = {}
        self.dropout_ops: dict[Callable, bool] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(_handling, "active", False):
            return func(*args, **kwargs) if kwargs else func(*args)
        try:
            _handling.active = True
            return self._handle(func, args, kwargs)
        finally:
            _handling.active = False

    def _handle(self, func, args, kwargs):
        if torch.is_grad_enabled():  # before any op takes them: what a linear op makes of them is no parameter
            self.binding.hold_weights(args, kwargs)
        try:
            handler = self.handlers[func]
        except KeyError:
            handler = self.handlers[func] = self.binding.handler_for(func)
        except TypeError:  # unhashable callables
            handler = self.binding.handler_for(func)
        if handler is None:
            return func(*args, **kwargs) if kwargs else func(*args)
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            # Dropout is off even without gradients: a reentrant checkpoint runs the forward under
            # no_grad and recomputes it with gradients; both must see the same activations.
            try:
                dropout = self.dropout_ops[func]
            except KeyError:
                dropout = self.dropout_ops[func] = ops.op_name(func) in _DROPOUT_OPS
            except TypeError:
                dropout = ops.op_name(func) in _DROPOUT_OPS
            if not dropout:
                return func(*args, **kwargs)
        return handler(self.binding, func, args, kwargs)


class Binding:
    """The state of one bound model; ``lrp()`` yields it."""

    #: The warning about ops without a rule: what their relevance is, and what to do.
    unruled_meaning = "ran without an LRP rule (plain gradient used)"
    unruled_advice = "attnlrp.audit(model) lists them all; lrp(..., strict=True) raises instead."
    #: Whether the custom autograd.Functions a module runs are looked for (and counted as unruled) now.
    names_functions = True

    def __init__(self, model: nn.Module, method: str, strict: bool):
        self.model = model
        self.method = method
        self.strict = strict
        self.unruled_ops: Counter[tuple[str, str]] = Counter()
        self.ruled_ops: Counter[tuple[str, str]] = Counter()
        self.counting = False
        #: Who bound the model, and how to release it (for the error of binding it twice).
        self.owner = "an enclosing attnlrp.lrp(...) block"
        self.release = "leave that block first, or reuse its binding."
        self._warned: set[tuple[str, str]] = set()
        self._local = threading.local()
        self._mode = _Mode(self)
        self._handles: list[Any] = []
        self._forwards: dict[nn.Module, Any] = {}
        self._calls: dict[nn.Module, Any] = {}
        self._checkpoint_funcs: dict[nn.Module, Any] = {}
        self._param_slots: list[tuple[nn.Module, str, bool]] = []
        self._held: list[tuple[nn.Parameter, bool]] = []  # parameters held outside the model's modules, frozen
        self._paths: dict[nn.Module, str] = {}
        self._norms: set[nn.Module] = set()
        self._sites: dict[nn.Module, list[Site]] = {}

    def __reduce_ex__(self, protocol: Any) -> Any:
        """A bound model's hooks hold its binding: copying or pickling the model reaches this, and is refused."""
        raise BindingError(
            f"{type(self.model).__name__} is bound by {self.owner}, and can't be copied or saved with its binding "
            "(copy.deepcopy, torch.save, pickle): copy or save it unbound, before or after."
        )

    @property
    def inputs(self) -> dict[str, Tensor]:
        """Every input of this thread's last forward pass by kind (read ``.grad`` after the backward): the input
        embeddings (``"tokens"``); an encoder-decoder's ``"source"`` (or ``"audio"`` features) and ``"target"``."""
        return dict(getattr(self._local, "inputs", {}))

    @property
    def embeddings(self) -> Tensor | None:
        """The input embeddings of this thread's last forward pass (read ``.grad`` after the backward), for a
        model with one input; a model with several (an encoder-decoder) has them in ``inputs``."""
        kinds = [site.kind for sites in self._sites.values() for site in sites]
        if len(kinds) > 1:
            raise BindingError(
                f"{type(self.model).__name__} has several inputs ({', '.join(kinds)}), and binding.embeddings would "
                f"hold only one of them: read each from binding.inputs (binding.inputs[{kinds[0]!r}], ...); their "
                "relevances together explain the prediction."
            )
        return getattr(self._local, "inputs", {}).get(kinds[0]) if kinds else None

    # --- scope: which module of ours is running -------------------------------------------

    def _stack(self) -> list[nn.Module]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _enter(self, module: nn.Module) -> None:
        stack = self._stack()
        if not stack:
            refuse_compiling()
            self._local.frames = {}
            self._mode.__enter__()
        stack.append(module)

    def _exit(self, module: nn.Module) -> None:
        stack = self._stack()
        if not any(m is module for m in stack):  # its pre-hook never ran: an earlier pre-hook raised
            return
        while stack.pop() is not module:  # inner modules whose exit an exception skipped
            pass
        if not stack:
            self._mode.__exit__(None, None, None)
            self._local.frames = {}  # no graph node is held after the forward
            self._warn_new_unruled()

    def in_norm(self) -> bool:
        stack = self._stack()
        return bool(stack) and stack[-1] in self._norms

    def path(self) -> str:
        stack = self._stack()
        return self._paths.get(stack[-1], "?") if stack else "?"

    # --- bookkeeping for the audit --------------------------------------------------------

    def note(self, func: Callable, rule: str) -> None:
        if self.counting:
            self.ruled_ops[(self.path(), f"{ops.op_name(func)} [{rule}]")] += 1

    def unruled(self, func: Callable) -> None:
        self._unruled((self.path(), ops.op_name(func)))

    def _unruled(self, key: tuple[str, str]) -> None:
        """Count ``(module path, op)`` as run without a rule (in strict mode: raise)."""
        self.unruled_ops[key] += 1
        if self.strict:
            self._warned.add(key)  # the error says it all: no UnruledOpWarning as the scope unwinds
            raise UnruledOpError(
                f"{key[1]!r} at {key[0] or '<root>'} has no LRP rule and is not known to be linear, so its "
                "relevance would be a plain gradient. Write it with an op that has a rule (for example "
                "torch.nn.functional.gelu instead of 0.5 * x * (1 + torch.erf(x / 2**0.5))), or bind with "
                "strict=False to accept the approximation."
            )

    def _warn_new_unruled(self) -> None:
        new = [key for key in self.unruled_ops if key not in self._warned]
        if not new:
            return
        self._warned.update(new)
        listing = "; ".join(f"{op} at {path or '<root>'}" for path, op in new[:8])
        more = f" and {len(new) - 8} more" if len(new) > 8 else ""
        warnings.warn(
            f"{len(new)} op(s) {self.unruled_meaning}: {listing}{more}. {self.unruled_advice}",
            UnruledOpWarning,
            stacklevel=2,
        )

    # --- attach and detach ----------------------------------------------------------------

    def attach(
        self, modules: list[tuple[str, nn.Module]], layer_rules: dict[nn.Module, LayerRule] | None = None
    ) -> None:
        """Bind every module, all or nothing: where a step fails (even by a KeyboardInterrupt), what the steps
        before it did is undone before the error goes on, and the model is left as it was."""
        scripted = next(((path, m) for path, m in modules if isinstance(m, torch.jit.ScriptModule)), None)
        if scripted is not None:
            path, module = scripted
            what = f"{module.original_name} at {path} of {type(self.model).__name__}" if path else module.original_name
            raise BindingError(
                f"{what} is a TorchScript module (torch.jit.script or trace), whose calls can't be hooked, so it "
                "can't be bound: pass the eager nn.Module it was scripted or traced from."
            )
        try:
            self._attach(modules, layer_rules or {})
        except BaseException:
            self.detach()
            raise

    def _attach(self, modules: list[tuple[str, nn.Module]], layer_rules: dict[nn.Module, LayerRule]) -> None:
        self._layer_rules = layer_rules
        # before the scope opens: its ops would see a parameter given as input before it is known as one
        self._handles.append(self.model.register_forward_pre_hook(self._new_forward, with_kwargs=True))
        for path, module in modules:
            self._paths[module] = path
            _BOUND[module] = weakref.ref(self)
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or _NORM_CLASS.search(type(module).__name__):
                self._norms.add(module)
            if module is self.model or type(module) not in _LINEAR_LEAVES:  # a linear leaf needs no scope
                self._handles.append(module.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._post_hook, with_kwargs=True, always_call=True))
                self._guard(module)
            self._bind_module(path, module)
            for name, param in module._parameters.items():
                if param is not None:
                    self._param_slots.append((module, name, param.requires_grad))
            if isinstance(module, nn.modules.batchnorm._NormBase):
                self._handles += _forward_count_kept(module)
        for module, name, _ in self._param_slots:
            module._parameters[name].requires_grad_(False)
        for site in input_sites(self.model):
            self._sites.setdefault(site.module, []).append(site)
        for module, sites in self._sites.items():
            if sites[0].reads_input:
                self._handles.append(module.register_forward_pre_hook(self._capture_input))
            else:
                self._handles.append(module.register_forward_hook(self._capture_output))
        self._bind_module_rules(modules)

    def _bind_module_rules(self, modules: list[tuple[str, nn.Module]]) -> None:
        """Routers (constant in CP-LRP) and per-layer token embeddings (credited to the input tokens): see
        ``module_rules.py``. The explicit mode brings its own rules."""
        if self.method not in RULE_SETS:
            return
        for path, module in modules:
            cls = type(module).__name__
            if self.method == "cp-lrp" and module_rules.is_router(path, module):
                hook = module_rules.constant_router(self._noter(path, f"{cls} [router constant (cp-lrp)]"))
            elif path.rsplit(".", 1)[-1] in module_rules.PER_LAYER_TOKEN_EMBEDDINGS:
                hook = module_rules.credited_to(
                    lambda: self.embeddings, self._noter(path, f"{cls} [credited to the input tokens]")
                )
            else:
                continue
            self._handles.append(module.register_forward_hook(hook))

    def _noter(self, path: str, rule: str) -> Callable[[], None]:
        def note() -> None:
            if self.counting:
                self.ruled_ops[(path, rule)] += 1

        return note

    def _guard(self, module: nn.Module) -> None:
        """Close what a call of ``module`` opens of the scope however the call ends: the always-called post-hooks
        run only for an Exception, and a KeyboardInterrupt (or another BaseException) in a hook or the forward of
        the model, or of one of its modules called directly, would leave the rules on for the thread's later ops,
        those of other models too. (Only this instance's call is wrapped: ``Module.__call__`` looks it up on it.)"""
        call = module._call_impl

        def guarded(*args, **kwargs):
            depth = len(self._stack())
            try:
                return call(*args, **kwargs)
            finally:
                self._unwind(depth)

        self._calls[module] = module.__dict__.get("_call_impl")
        module._call_impl = guarded

    def _unwind(self, depth: int) -> None:
        """Leave the scope of the modules above the first ``depth`` on this thread's stack (the rules with the
        last of them)."""
        stack = self._stack()
        if len(stack) > depth:
            del stack[depth:]
            if not stack:
                self._mode.__exit__(None, None, None)
                self._local.frames = {}

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        for module, previous in self._forwards.items():
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        for module, previous in self._calls.items():
            if previous is None:
                del module._call_impl
            else:
                module._call_impl = previous
        for module, previous in self._checkpoint_funcs.items():
            module._gradient_checkpointing_func = previous
        for module, name, flag in self._param_slots:
            # the parameter in the slot now: accelerate's offloading hooks swap in a new Parameter
            # (inheriting requires_grad) at every forward
            param = module._parameters.get(name)
            if param is not None and param.is_leaf:
                param.requires_grad_(flag)
        for param, flag in self._held:
            param.requires_grad_(flag)
        self._held.clear()
        for module in self._paths:
            if _bound(module) is self:
                del _BOUND[module]
        self._unwind(0)  # an exception escaped mid-forward with hooks that did not unwind
        self._handles.clear()
        # No reference cycle is left: a detached binding (and the inputs it holds for reading) is freed as soon
        # as nobody holds it, not at the next full garbage collection, which grows rarer as a process lives on.
        self._mode.binding = None

    def hold_weights(self, args: tuple, kwargs: dict | None) -> None:
        """Freeze the parameters among an op's arguments (one level into lists) that the model holds outside its
        modules (experts in a plain list, a model called through a list), as ``attach`` froze its own, until the
        binding ends: weights are constants under LRP, and one that requires grad would count as a factor that
        depends on the input (the uniform rule would give it half of each product). Parameters passed to the model's
        forward are inputs, and keep their gradient."""
        for value in (*args, *kwargs.values()) if kwargs else args:
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, Tensor) and t.requires_grad and t.is_leaf and isinstance(t, nn.Parameter):
                    if any(t is given for given in getattr(self._local, "given", ())):
                        continue
                    self._held.append((t, True))
                    t.requires_grad_(False)
                    if self.counting:
                        self.ruled_ops[(self.path(), "nn.Parameter outside the model's modules [constant]")] += 1

    def handler_for(self, func: Callable) -> ops.Handler | None:
        """The handler of ``func`` in this binding's op table (None: plain autograd is its rule). Selections only
        carry CP-LRP's weight mark: under AttnLRP they are plain."""
        handler = ops.handler_for(func)
        return None if handler is ops.carry_weight and self.method != "cp-lrp" else handler

    def _bind_module(self, path: str, module: nn.Module) -> None:
        """Per-module binding beyond the scope hooks: quantized linear layers get the linear rule, a layer rule
        where one is mapped, else inline activation modules get the identity rule."""
        rule = self._layer_rules.get(module)
        ratio = INLINE_ACTIVATIONS.get(type(module).__name__)
        backend = quantized.backend_of(module)
        if backend is not None:
            self._override_quantized(path, module, backend)
        elif rule is not None:
            self._override_layer(module, rule)
        elif ratio is not None:
            self._override_forward(module, ratio)

    def _override_quantized(self, path: str, module: nn.Module, backend: quantized.Backend) -> None:
        key = (path, f"{type(module).__name__} [linear, {backend.name}]")

        def note() -> None:
            if self.counting:
                self.ruled_ops[key] += 1

        forward = quantized.linear_forward(module, module.forward, backend, path or "<root>", note)
        self._forwards[module] = module.__dict__.get("forward")
        module.forward = forward

    def _override_layer(self, module: nn.Module, rule: LayerRule) -> None:
        previous = module.__dict__.get("forward")
        original = module.forward

        def forward(x: Tensor) -> Tensor:
            if not (torch.is_grad_enabled() and x.requires_grad):
                return original(x)
            if self.counting:
                self.ruled_ops[(self._paths.get(module, "?"), f"{type(module).__name__} [{rule!r}]")] += 1
            return apply_rule(rule, module, original, x)

        self._forwards[module] = previous
        module.forward = forward

    def _override_forward(self, module: nn.Module, ratio_name: str) -> None:
        previous = module.__dict__.get("forward")
        original = module.forward
        ratio = rules.RATIOS[ratio_name]

        def forward(x: Tensor) -> Tensor:
            if not (torch.is_grad_enabled() and x.requires_grad):
                return original(x)
            if self.counting:  # its inner ops run unseen: list the rule under the module's class name
                self.ruled_ops[(self._paths.get(module, "?"), f"{type(module).__name__} [identity]")] += 1
            out = rules.identity_rule(x, original, ratio)
            out._attnlrp_gate = True
            return out

        self._forwards[module] = previous
        module.forward = forward

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._enter(module)
        if self.names_functions and torch.is_grad_enabled():
            # the nodes this module's walk stops at: its inputs' (below), and its finished children's outputs; and
            # those it passes without naming them: what the rules of a composite ran (see ``ruled``)
            frame = ({*_grad_nodes(args), *_grad_nodes(kwargs)}, set(), set())
            self._local.frames.setdefault(module, []).append(frame)
        checkpoint = module.__dict__.get("_gradient_checkpointing_func")
        if checkpoint is not None and module not in self._checkpoint_funcs:
            self._checkpoint_funcs[module] = checkpoint
            module._gradient_checkpointing_func = functools.partial(self._checkpointed, checkpoint, module)

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        try:
            frames = getattr(self._local, "frames", {}).get(module)
            if frames:
                self._find_functions(module, *frames.pop(), _grad_nodes(output))
        finally:
            self._exit(module)

    def ruled(self, args: Any, output: Any) -> None:
        """The nodes a rule made to compute ``output`` from ``args`` are that rule's: the walk of the running
        module (``_find_functions``) passes them without naming a custom function among them as unruled (the
        explicit mode's rules, a user's too, are autograd functions)."""
        stack = self._stack()
        frames = getattr(self._local, "frames", {}).get(stack[-1]) if stack else None
        if not frames:
            return
        inputs, covered, ruled = frames[-1]
        stop, todo = {*inputs, *covered, *_grad_nodes(args)}, _grad_nodes(output)
        while todo:
            node = todo.pop()
            if node in stop or node in ruled:
                continue
            ruled.add(node)
            todo.extend(child for child, _ in node.next_functions if child is not None)

    def _find_functions(self, module: nn.Module, inputs: set, covered: set, ruled: set, outputs: list) -> None:
        """Count the custom ``torch.autograd.Function`` s (not attnlrp's or torch's own) that ``module`` ran as
        unruled: the mode can't see into their forward (it runs with gradients off), and their backward is their
        own. ``module``'s own nodes are those reachable from its outputs before its inputs' nodes and before the
        outputs of the modules it called (``covered``: they walked their own); those in ``ruled`` are a rule's.
        Only the nodes of modules still running are held, so a branch the rules cut off (a gate held constant) is
        freed as it was."""
        seen, todo = set(), list(outputs)
        while todo:
            node = todo.pop()
            if node in seen or node in inputs or node in covered:
                continue
            seen.add(node)
            cls = getattr(node, "_forward_cls", None)
            if cls is not None and node not in ruled and not cls.__module__.startswith(("attnlrp.", "torch.")):
                self._unruled_function(self._paths.get(module, "?"), cls)
            todo.extend(child for child, _ in node.next_functions if child is not None)
        stack = self._stack()
        parent = stack[-2] if len(stack) > 1 and stack[-1] is module else None
        if parent is not None and self._local.frames.get(parent):
            self._local.frames[parent][-1][1].update(outputs)

    def _unruled_function(self, path: str, cls: type) -> None:
        self._unruled((path, f"autograd.Function {cls.__qualname__}"))

    def _checkpointed(self, checkpoint: Callable, module: nn.Module, function: Callable, *args, **kwargs):
        """Run the checkpointed function, and its recomputation in the backward pass, in scope."""

        def scoped(*inner, **inner_kwargs):
            self._enter(module)
            try:
                return function(*inner, **inner_kwargs)
            finally:
                self._exit(module)

        return checkpoint(scoped, *args, **kwargs)

    def _new_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._local.fresh = True  # the next input seen starts this forward's ``inputs``
        self._local.given = [v for v in (*args, *kwargs.values()) if isinstance(v, nn.Parameter)]

    def _keep(self, module: nn.Module, x: Tensor, replace: bool = False) -> Tensor | None:
        """Keep ``x`` as the input of the kind ``module`` serves here (where one module serves several kinds,
        the one whose owner, the encoder or the decoder, is running), and return the tensor the model goes on
        with; None where the kind can't be told. Run again in the same forward on the same tokens, ``module``
        gives the tensor it kept the first time, so that the relevance of both uses adds up in it; on other
        tokens, relevance could not be read from one input, and that is an error. ``replace``: ``x`` takes the
        place of the kept tensor (see ``replaced``)."""
        sites = self._sites[module]
        stack = self._stack()
        owned = [site for site in sites if any(m is site.owner for m in stack)]
        site = sites[0] if len(sites) == 1 else (owned[-1] if owned else None)
        if site is None:
            return None
        if getattr(self._local, "fresh", True) or not hasattr(self._local, "inputs"):
            self._local.inputs, self._local.fresh = {}, False
        kept = self._local.inputs.get(site.kind)
        if kept is not None and kept is not x and not replace:
            if kept.shape == x.shape and torch.equal(kept, x):
                return kept
            raise BindingError(
                f"{self._paths.get(module) or type(module).__name__} ran twice in one forward pass on different "
                f"inputs, and the relevance of the {site.kind!r} input is read from one tensor: explain a model that "
                "embeds its input once (or passes inputs_embeds)."
            )
        self._local.inputs[site.kind] = x
        return x

    def replaced(self, module: nn.Module, x: Tensor) -> None:
        """The model goes on with ``x`` in place of what ``module`` computed (an ``InputTap`` put it there, after
        the capture hook ran): where ``module`` is an input site, ``x`` is this forward's input of its kind, the
        tensor whose relevance is read and to which per-layer token embeddings are credited."""
        if module in self._sites:
            self._keep(module, x, replace=True)

    def _capture_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not isinstance(output, Tensor) or not torch.is_grad_enabled():
            return None
        if not output.requires_grad:
            output = output.detach().requires_grad_()
        else:  # computed from inputs that require grad (pixels of a ViT): keep its grad readable too
            output.retain_grad()
        return self._keep(module, output)

    def _capture_input(self, module: nn.Module, args: tuple) -> Any:
        if not args or not isinstance(args[0], Tensor) or not torch.is_grad_enabled():
            return None
        x = args[0]
        if x.requires_grad:
            # computed from the caller's own leaves: kept as given, with no retained grad (batched backward passes
            # of different sizes would accumulate into it); the caller reads the grad of its leaves
            self._keep(module, x)
            return None
        kept = self._keep(module, x.detach().requires_grad_())
        return None if kept is None else (kept, *args[1:])


def _forward_count_kept(norm: nn.Module) -> list[Any]:
    """Hooks that undo what a forward of a batch norm in train mode adds to its count of batches (its running
    statistics the rules leave as they are: see ``ops._batch_norm``), so that only the user's own forwards count."""
    count: list[Tensor] = []

    def before(module: nn.Module, args: tuple) -> None:
        tracked = getattr(module, "num_batches_tracked", None)
        count[:] = [tracked.clone()] if module.training and isinstance(tracked, Tensor) else []

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        if count:
            with torch.no_grad():
                module.num_batches_tracked.copy_(count.pop())

    return [norm.register_forward_pre_hook(before), norm.register_forward_hook(after, always_call=True)]


def _grad_nodes(value: Any) -> list:
    """The autograd nodes that made the tensors in ``value`` (a module's arguments or output), at any depth: a
    custom function's output returned in a dataclass or a deep container still belongs to the module that ran it."""
    return [t.grad_fn for t in tensors(value) if t.grad_fn is not None]


def binding_of(model: nn.Module) -> Binding | None:
    """The binding (an ``lrp`` block or a registered explicit composite) that holds ``model`` or one of its modules."""
    return next((b for b in map(_bound, model.modules()) if b is not None), None)


@contextmanager
def lrp(
    model: nn.Module, method: str = "attnlrp", strict: bool = False, layer_rules: layer_map.LayerRules | None = None
) -> Iterator[Binding]:
    """Bind LRP rules to ``model`` for the duration of the block.

    Inside the block a plain ``backward`` computes the modified gradient, so ``h * h.grad`` is the
    relevance of any tensor h. When the model is called with ``input_ids``, the input embeddings
    are made a leaf that requires grad and are available as ``binding.embeddings``; a model with several
    inputs (an encoder-decoder: source and target, or audio and target) has each in ``binding.inputs``.

    method: "attnlrp" or "cp-lrp". strict: raise on an op without a rule instead of warning.
    layer_rules: rules for linear layers by module type, e.g. ``{nn.Conv2d: Gamma(0.25), nn.Linear: Epsilon()}``
    (first match wins; a list of (types, rule) pairs or a Zennit composite works too); unmapped layers keep LRP-0.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"attnlrp.lrp expects a torch.nn.Module (for example a transformers model), got {type(model).__name__}."
        )
    method = rule_set(method)
    refuse_compiled(model)
    modules = list(model.named_modules())
    refuse_unsupported(model, modules)
    already = next((b for b in (_bound(m) for _, m in modules) if b is not None), None)
    if already is not None:
        raise BindingError(
            f"{type(model).__name__} is already bound by {already.owner} (method={already.method!r}); "
            + already.release
        )
    chosen = layer_map.resolve(layer_rules, modules)
    quantized.check(modules, chosen)
    binding = Binding(model, method, strict)
    binding.attach(modules, chosen)
    try:
        yield binding
    finally:
        binding.detach()
