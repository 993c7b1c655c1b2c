"""From images to ImageExplanations: ViT, DeiT, CLIP's vision tower, torchvision and timm ViTs, other image models.

CP-LRP is the default here (attention weights held constant), as usual for vision transformers;
``lrp()`` itself keeps AttnLRP as its default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .attach import lrp
from .attach.binding import normalize_method
from .attach.layer_map import LayerRules
from .explain import InputError, _check_finite, model_name
from .image_results import ImageExplanation

#: Output fields that hold one vector per image, in order of preference.
_OUTPUTS = ("logits", "image_embeds", "pooler_output")

ImageTarget = int | str | Tensor | Callable[[Tensor], Tensor] | None


def _pixels(images: Any, processor: Any) -> Tensor:
    if isinstance(images, Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise InputError(
                f"Pixel values must be [channels, height, width] or [batch, ...], got {tuple(images.shape)}."
            )
        return images
    if processor is None:
        raise InputError(
            f"Got {type(images).__name__} images: pass processor= (the model's image processor) to turn them into "
            "pixel values, or pass pixel values as a tensor."
        )
    batch = list(images) if isinstance(images, (list, tuple)) else [images]
    return processor(images=batch, return_tensors="pt")["pixel_values"]


def _display(pixels: Tensor, processor: Any) -> np.ndarray:
    """uint8 [B, H, W, 3] for drawing: the processor's normalisation undone, else each image min-max scaled."""
    x = pixels.detach().float().cpu()
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - low) / (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    x = x.clamp(0, 1).permute(0, 2, 3, 1)
    if x.shape[-1] != 3:
        x = x.mean(-1, keepdim=True).repeat(1, 1, 1, 3)
    return (x * 255).round().to(torch.uint8).numpy()


def _run(model: nn.Module, x: Tensor) -> Any:
    """Hugging Face image models take ``pixel_values=``; torchvision and timm models take the tensor itself."""
    if "pixel_values" in inspect.signature(model.forward).parameters:
        return model(pixel_values=x)
    return model(x)


def _output_vectors(model: nn.Module, output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    for name in _OUTPUTS:
        value = getattr(output, name, None)
        if isinstance(value, Tensor):
            return value
    raise InputError(
        f"{type(model).__name__} returned no {', '.join(_OUTPUTS)}: explain_image needs one vector per image "
        "(a classifier, or CLIP's vision tower)."
    )


def _label(model: nn.Module, index: int) -> str:
    labels = getattr(getattr(model, "config", None), "id2label", None) or {}
    return str(labels.get(index, index))


def _resolve(model: nn.Module, target: ImageTarget, vector: Tensor) -> tuple[Tensor, str, int | None]:
    """(the explained scalar, its label, its class index) for one image's output vector."""
    if target is None or isinstance(target, (int, str)):
        index = int(vector.detach().argmax()) if target is None else target
        if isinstance(index, str):
            label2id = getattr(getattr(model, "config", None), "label2id", None) or {}
            if index not in label2id:
                raise InputError(f"Unknown label {index!r}; the model's labels are {sorted(label2id)[:20]}.")
            index = int(label2id[index])
        if not 0 <= index < vector.shape[-1]:
            raise InputError(f"Class index {index} is outside the model's {vector.shape[-1]} outputs.")
        return vector[index], _label(model, index), index
    if isinstance(target, Tensor):
        direction = target.to(vector.device, vector.dtype).reshape(-1)
        if direction.shape != vector.shape:
            raise InputError(f"A target vector must have the output's size {vector.shape[-1]}, not {target.numel()}.")
        return vector @ direction, "output · target vector", None
    if callable(target):
        return target(vector), getattr(target, "__name__", "custom"), None
    raise InputError(
        f"Unsupported image target {target!r}: pass None (top class), a class index or label, a vector "
        "(e.g. a CLIP text embedding) or a callable on the output vector."
    )


def explain_image(
    model: nn.Module,
    images: Any,
    target: ImageTarget | Sequence[ImageTarget] = None,
    method: str = "cp-lrp",
    layer_rules: LayerRules | None = None,
    processor: Any = None,
    batch_size: int = 16,
) -> ImageExplanation | list[ImageExplanation]:
    """Explain an image model's output: the relevance of each pixel, one backward per batch.

    images: pixel values [C, H, W] or [B, C, H, W] as the model takes them, or PIL images / arrays with
    ``processor=`` (the model's image processor, also used to draw them). target: None (the top class),
    a class index or label, a vector (explains output · vector, e.g. a CLIP text embedding for
    CLIPVisionModelWithProjection), a callable on one image's output vector, or a list with one per image.
    method: "cp-lrp" (default) or "attnlrp"; layer_rules: e.g. ``{nn.Conv2d: Gamma(0.25), nn.Linear: Gamma(0.05)}``.
    """
    method = normalize_method(method)
    single = isinstance(images, Tensor) and images.dim() == 3 or not isinstance(images, (Tensor, list, tuple))
    pixels = _pixels(images, processor)
    targets = list(target) if isinstance(target, (list, tuple)) else [target] * len(pixels)
    if len(targets) != len(pixels):
        raise ValueError(f"{len(targets)} targets were given for {len(pixels)} images; give one each, or one for all.")
    param = next(model.parameters())
    pixels = pixels.to(param.device, param.dtype)
    drawn = _display(pixels, processor)
    rules = _describe(layer_rules)
    patch = getattr(getattr(model, "config", None), "patch_size", None)
    results = []
    for start in range(0, len(pixels), batch_size):
        x = pixels[start : start + batch_size].detach().clone().requires_grad_()
        with lrp(model, method=method, layer_rules=layer_rules), torch.enable_grad():
            vectors = _output_vectors(model, _run(model, x))
            resolved = [_resolve(model, t, v) for t, v in zip(targets[start : start + len(x)], vectors)]
            ys = torch.stack([y for y, _, _ in resolved])
            _check_finite(ys.detach())
            ys.sum().backward()
        relevance = (x * x.grad).sum(1).detach().float().cpu().numpy()
        for row, (y, label, index) in enumerate(resolved):
            results.append(ImageExplanation(
                scores=relevance[row], target=label, value=float(y.detach()), method=method, model=model_name(model),
                target_index=index, image=drawn[start + row], rules=rules,
                patch_size=patch if isinstance(patch, int) else None,
            ))
    return results[0] if single else results


def _describe(layer_rules: LayerRules | None) -> str:
    if layer_rules is None:
        return ""
    if isinstance(layer_rules, dict):
        return ", ".join(f"{_type_names(k)}: {r!r}" for k, r in layer_rules.items())
    if isinstance(layer_rules, (list, tuple)):
        return ", ".join(f"{_type_names(k)}: {r!r}" for k, r in layer_rules)
    return type(layer_rules).__name__


def _type_names(types: Any) -> str:
    return "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
