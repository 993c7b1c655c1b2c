"""Relevance inside the model: h * g at chosen module outputs (or inputs), in the same backward."""

from __future__ import annotations

import weakref
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from .devices import input_device

#: The Recorders recording each model, while their blocks run.
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, list[Recorder]] = weakref.WeakKeyDictionary()


def recorders(model: nn.Module) -> list[Recorder]:
    """The Recorders whose blocks are recording ``model``."""
    return list(_ACTIVE.get(model, []))


class Recordings(dict):
    """The recorded relevance by module path; a path with none names why."""

    def __missing__(self, path: str) -> Tensor:
        raise KeyError(
            f"No relevance was recorded at {path!r}: no backward pass reached it since the block's last forward (a "
            "module whose output is not a tensor, or that ran on no tensor, records nothing)."
        )


def path_matches(pattern: str, path: str) -> bool:
    """Glob per dotted component: ``model.layers.*`` matches ``model.layers.3``, not its children."""
    parts, names = pattern.split("."), path.split(".")
    return len(parts) == len(names) and all(fnmatchcase(n, p) for p, n in zip(parts, names))


class Recorder:
    """Records relevance (h * dL/dh, float32) at module outputs or inputs during a backward pass.

    ``with Recorder(model, "model.layers.*") as rec, attnlrp.lrp(model): ...`` then
    ``rec.relevance["model.layers.0"]``. Use ``at="input"`` on ``o_proj`` for per-head relevance
    (see ``heads``) or on ``down_proj`` for per-neuron relevance.

    ``device``: where the recordings are kept. By default, where the model's inputs are (``engine.devices``), so
    with a device map the relevance of every layer, on whichever device the layer ran, lies beside the input
    relevance; ``device="cpu"`` keeps them in CPU memory.

    A Recorder holds one forward pass: each forward of the model starts afresh. Inside the block, ``explain``
    takes one input per call (loop over them; ``explain(..., latent=...)`` reads units of many) and a method of one
    backward pass (an LRP method, the gradient, input x gradient).
    """

    def __init__(
        self,
        model: nn.Module,
        modules: str | list[str],
        at: str = "output",
        device: str | torch.device | None = None,
    ):
        if at not in ("output", "input"):
            raise ValueError(f"at must be 'output' or 'input', not {at!r}.")
        patterns = [modules] if isinstance(modules, str) else list(modules)
        paths = [path for path, _ in model.named_modules()]
        unmatched = [p for p in patterns if not any(path_matches(p, path) for path in paths)]
        if unmatched:
            raise ValueError(
                f"No module path of {type(model).__name__} matches {unmatched}; paths look like {paths[1:4]}."
            )
        self.modules = {path: m for path, m in model.named_modules() if any(path_matches(p, path) for p in patterns)}
        self.model = model
        self.at = at
        self.device = torch.device(device) if device is not None else input_device(model)
        self.relevance: dict[str, Tensor] = Recordings()
        self._handles: list[Any] = []

    def __enter__(self) -> Recorder:
        self.relevance.clear()
        _ACTIVE.setdefault(self.model, []).append(self)
        self._handles.append(self.model.register_forward_pre_hook(lambda module, args: self.relevance.clear()))
        for path, module in self.modules.items():
            if self.at == "output":
                self._handles.append(module.register_forward_hook(self._output_hook(path)))
            else:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(path), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        active = _ACTIVE.get(self.model, [])
        if self in active:
            active.remove(self)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def check_run(self, method: Any, count: int) -> None:
        """An ``explain`` call inside the block: one input, and a method of one backward pass (else an error)."""
        if count != 1:
            raise InputError(
                f"A Recorder holds one forward pass, and {count} inputs were given: inside the block, explain one "
                "input per call (a loop), or read the units of many with explain(..., latent=...)."
            )
        if not method.single_backward:
            raise InputError(
                f"A Recorder reads h * grad of one backward pass, and the {method.name!r} method runs "
                "other passes: record with an LRP method (or the gradient, input_x_gradient)."
            )

    def _watch(self, path: str, h: Tensor) -> Tensor:
        if not h.requires_grad:
            h = h.detach().requires_grad_()
        value = h.detach()  # the hook holds the values, not h: h -> its node -> the hook -> h would never be freed

        def store(grad: Tensor) -> None:
            self.relevance[path] = (value.float() * grad.float()).to(self.device)

        h.register_hook(store)
        return h

    def _output_hook(self, path: str):
        def hook(module, args, output):
            if not torch.is_grad_enabled():
                return None
            if isinstance(output, Tensor):
                return self._watch(path, output)
            if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
                return (self._watch(path, output[0]),) + output[1:]
            if isinstance(output, dict) and output and isinstance(first := next(iter(output.values())), Tensor):
                output[next(iter(output))] = self._watch(path, first)  # a ModelOutput: its first field
                return output
            return None

        return hook

    def _input_hook(self, path: str):
        def hook(module, args, kwargs):
            if not torch.is_grad_enabled():
                return None
            if args and isinstance(args[0], Tensor):
                return (self._watch(path, args[0]), *args[1:]), kwargs
            if isinstance(kwargs.get("hidden_states"), Tensor):  # transformers passes it by keyword
                return args, {**kwargs, "hidden_states": self._watch(path, kwargs["hidden_states"])}
            return None

        return hook

    def totals(self) -> dict[str, float]:
        """Summed relevance per recorded module."""
        return {path: float(r.sum()) for path, r in self.relevance.items()}

    def heads(self, path: str, num_heads: int) -> Tensor:
        """Relevance per attention head, [..., num_heads], from a recording at an o_proj input."""
        r = self.relevance[path]
        if r.shape[-1] % num_heads:
            raise ValueError(f"{path} has {r.shape[-1]} features, which {num_heads} heads don't divide.")
        return r.reshape(*r.shape[:-1], num_heads, -1).sum(-1)
