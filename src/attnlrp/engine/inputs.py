"""The inputs that carry relevance: finding a model's input embeddings, and tapping module outputs.

An ``InputTap`` reads (as leaves whose ``.grad`` is the backward signal) or replaces what chosen
modules return during a forward pass. Tasks tap the input embeddings this way, so every method
runs the model on its real inputs (token ids, masks) and still sees, or perturbs, the embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError


def input_embeddings(model: nn.Module) -> nn.Module | None:
    """The model's input token embedding module (``get_input_embeddings``), or None where it has none."""
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        embeddings = getter()
    except (NotImplementedError, AttributeError):
        return None
    return embeddings if isinstance(embeddings, nn.Module) else None


class InputTap:
    """Within the block, the outputs of ``sites`` ({kind: module}) in each forward of ``model``:

    - ``replace[kind]``, when set, is returned instead of what the module computed (a perturbed input);
    - otherwise, with gradients on, the output becomes a leaf that requires grad;
    - either way it is kept in ``seen[kind]`` (read ``seen[kind].grad`` after a backward).

    A forward of ``model`` in which a site never gave its tensor is an InputError: the model computes that input
    elsewhere, so what the tap gives or reads would not be the model's input (zero relevance, or none). So is a
    site that computes another shape than the input given for it: the model reorders, pads or cuts its token ids.

    One module may serve several kinds (T5's embedding serves the encoder and then the decoder): give it under
    each kind, in the order of its calls within one forward.
    """

    def __init__(self, model: nn.Module, sites: Mapping[str, nn.Module]):
        self.model = model
        self.kinds: dict[nn.Module, list[str]] = {}
        for kind, module in sites.items():
            self.kinds.setdefault(module, []).append(kind)
        self.replace: dict[str, Tensor] = {}
        self.seen: dict[str, Tensor] = {}
        self._calls: dict[nn.Module, int] = {}
        self._ran: set[str] = set()
        self._handles: list[Any] = []

    def __enter__(self) -> InputTap:
        self._handles.append(self.model.register_forward_pre_hook(self._reset))
        self._handles.append(self.model.register_forward_hook(self._check))
        for module in self.kinds:
            self._handles.append(module.register_forward_hook(self._output))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _model_name(self) -> str:
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        return type(self.model).__name__ + (f" (model type {model_type!r})" if model_type else "")

    def _reset(self, module: nn.Module, args: tuple) -> None:
        self._calls.clear()
        self._ran.clear()

    def _check(self, module: nn.Module, args: tuple, output: Any) -> None:
        """After each forward of the model: an InputError where a site gave no tensor in it."""
        for site, kinds in self.kinds.items():
            missing = [kind for kind in kinds if kind not in self._ran]
            if missing:
                path = next((name for name, m in self.model.named_modules() if m is site), "?")
                raise InputError(
                    f"{self._model_name()} ran a forward in which its {' and '.join(missing)} input module "
                    f"({type(site).__name__} at {path or '<root>'}) "
                    "gave no tensor, so attnlrp can't read or perturb that input (its relevance would be zero or "
                    "missing): the model embeds its inputs with other modules, which this task can't follow; "
                    "explain it with attnlrp.lrp(model) on inputs of your own."
                )

    def _output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        kinds = self.kinds[module]
        call = self._calls.get(module, 0)
        self._calls[module] = call + 1
        if call >= len(kinds) or not isinstance(output, Tensor):
            return None
        kind = kinds[call]
        value = self.replace.get(kind)
        if value is not None:
            if value.shape != output.shape:
                given, computed = tuple(value.shape), tuple(output.shape)
                how = (
                    "reorders its token ids (sequence first)"
                    if sorted(given) == sorted(computed)
                    else "pads or cuts its token ids (to a multiple of an attention window, say)"
                )
                raise InputError(
                    f"{self._model_name()} computed its {kind} input in shape {computed}, where attnlrp gives "
                    f"{given}: the model {how} before embedding them, so attnlrp can't put its inputs there and "
                    "doesn't support this model; explain it with attnlrp.lrp(model) on inputs of your own."
                )
            output = value
            from .binding import binding_of  # binding imports this module (through sites)

            binding = binding_of(self.model)
            if binding is not None:
                binding.replaced(module, output)
        elif torch.is_grad_enabled() and not output.requires_grad:
            output = output.detach().requires_grad_()
        self.seen[kind] = output
        self._ran.add(kind)
        return output
