"""Relevance inside the model: h * g at chosen module outputs (or inputs), in the same backward."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn

from .devices import input_device


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
        self.modules = {path: m for path, m in model.named_modules() if any(path_matches(p, path) for p in patterns)}
        if not self.modules:
            raise ValueError(
                f"No module path of {type(model).__name__} matches {patterns}; "
                f"paths look like {[p for p, _ in model.named_modules()][1:4]}."
            )
        self.at = at
        self.device = torch.device(device) if device is not None else input_device(model)
        self.relevance: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> Recorder:
        self.relevance.clear()
        for path, module in self.modules.items():
            if self.at == "output":
                self._handles.append(module.register_forward_hook(self._output_hook(path)))
            else:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(path)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _watch(self, path: str, h: Tensor) -> Tensor:
        if not h.requires_grad:
            h = h.detach().requires_grad_()

        def store(grad: Tensor) -> None:
            self.relevance[path] = (h.detach().float() * grad.float()).to(self.device)

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
            return None

        return hook

    def _input_hook(self, path: str):
        def hook(module, args):
            if not torch.is_grad_enabled() or not args or not isinstance(args[0], Tensor):
                return None
            return (self._watch(path, args[0]),) + args[1:]

        return hook

    def totals(self) -> dict[str, float]:
        """Summed relevance per recorded module."""
        return {path: float(r.sum()) for path, r in self.relevance.items()}

    def heads(self, path: str, num_heads: int) -> Tensor:
        """Relevance per attention head, [..., num_heads], from a recording at an o_proj input."""
        r = self.relevance[path]
        return r.reshape(*r.shape[:-1], num_heads, -1).sum(-1)
