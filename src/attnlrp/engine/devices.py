"""Where a model's weights are and where it computes: device maps and accelerate's offloading hooks.

With a device map (``from_pretrained(..., device_map=...)``, ``accelerate.dispatch_model``) each module's weights
lie on a GPU, in CPU memory or on disk (then its parameters are on the meta device until it runs), and accelerate's
hook on the module runs it on its *execution device*, moving its inputs there first. Explanations follow the same
rule: the inputs go to the execution device of the input embeddings, targets are read where the LM head put its
logits, and relevance recorded inside the model is gathered on one device.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from ..errors import InputError
from .inputs import input_embeddings


def _hooks(module: nn.Module) -> Iterator[object]:
    """accelerate's hooks on ``module`` (a SequentialHook's parts one by one)."""
    pending = [getattr(module, "_hf_hook", None)]
    while pending:
        hook = pending.pop(0)
        if hook is not None:
            yield hook
            pending.extend(getattr(hook, "hooks", ()))


def _as_device(device: int | str | torch.device) -> torch.device:
    """accelerate names devices by index (the accelerator's), by string or as torch devices."""
    if isinstance(device, int):
        accelerator = getattr(torch, "accelerator", None)
        current = accelerator.current_accelerator() if accelerator is not None else None
        return torch.device(current.type if current is not None else "cuda", device)
    return torch.device(device)


def execution_device(module: nn.Module) -> torch.device | None:
    """Where ``module`` computes: its accelerate hook's execution device, else where its first materialised weight
    (parameter or buffer) is; None where it has neither."""
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return _as_device(device)
    tensors = itertools.chain(module.parameters(), module.buffers())
    return next((t.device for t in tensors if not t.is_meta), None)


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the execution device of its input embeddings (with a device map, the first
    device; with the embeddings offloaded, the device they run on), else of the model."""
    embeddings = input_embeddings(model)
    device = execution_device(embeddings) if embeddings is not None else None
    return device or execution_device(model) or torch.device("cpu")


def _offloading(module: nn.Module) -> bool:
    return any(getattr(hook, "offload", False) for hook in _hooks(module))


def offloads(model: nn.Module) -> bool:
    """Whether accelerate's hooks load some of ``model``'s weights (from CPU memory or disk) as its modules run."""
    return any(_offloading(module) for module in model.modules())


def offloaded_weights(model: nn.Module) -> dict[str, Mapping[str, torch.Tensor]]:
    """The weights accelerate's hooks load into ``model``'s modules as they run (from CPU memory or disk), by the
    path of the module whose hook holds them: each map's keys are parameter names under that module."""
    return {
        path: hook.weights_map
        for path, module in model.named_modules()
        for hook in _hooks(module)
        if getattr(hook, "weights_map", None) is not None
    }


def unloaded_parameters(model: nn.Module) -> list[str]:
    """Parameters on the meta device that no accelerate hook loads (from CPU memory or disk) when their module
    runs: weights that were never loaded."""
    offloaded = [name for name, module in model.named_modules() if _offloading(module)]
    return [
        name
        for name, p in model.named_parameters()
        if p.is_meta and not any(not prefix or name.startswith(prefix + ".") for prefix in offloaded)
    ]


def split_without_hooks(placed: dict[str, torch.device], embeddings: str | None) -> str | None:
    """What is wrong with a model whose modules lie on several devices and that has no accelerate hooks to move
    inputs and activations between them (``placed``: module path -> device of its weights; ``embeddings``: the
    path of its input embeddings), or None where one device holds it all."""
    devices = sorted({str(d) for d in placed.values()})
    if len(devices) < 2:
        return None
    home = placed.get(embeddings) if embeddings is not None else None
    home = home if home is not None else next(iter(placed.values()))
    away = next(path for path, d in placed.items() if d != home)
    inputs = f"its input embeddings ({embeddings}) are on {home}, where the inputs go" if embeddings else ""
    return (
        f"its weights are on {', '.join(devices)}: {inputs}{', but ' if inputs else ''}{away} is on {placed[away]}, "
        "and no accelerate hook moves inputs and activations between devices. Load it with a device map "
        "(from_pretrained(..., device_map=...) or accelerate.dispatch_model(model, device_map)), which moves them, "
        "or put the whole model on one device (model.to(...))."
    )


def check_placement(model: nn.Module) -> None:
    """An InputError where ``model`` can't run as placed: weights never loaded (meta, no offloading hook), or
    modules on several devices with nothing that moves the inputs and activations between them."""
    name = type(model).__name__
    if unloaded_parameters(model):
        raise InputError(
            f"{name} has parameters on the meta device (no weights loaded), so it can't run: load it with its weights "
            "(from_pretrained without device_map='meta', or with an offloading device map)."
        )
    if any(True for module in model.modules() for _ in _hooks(module)):
        return  # accelerate moves inputs and activations to each module's execution device
    embeddings = input_embeddings(model)
    placed, embeddings_path = {}, None
    for path, module in model.named_modules():
        embeddings_path = path if module is embeddings else embeddings_path
        weight = next(itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)), None)
        if weight is not None:
            placed[path] = weight.device
    problem = split_without_hooks(placed, embeddings_path)
    if problem:
        raise InputError(f"{name} can't be explained as placed: {problem}")
