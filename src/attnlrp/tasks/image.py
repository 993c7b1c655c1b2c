"""The image task: an image model's output (a class, or a vector such as CLIP's image embedding) over its pixels.

Covers Hugging Face ViT, DeiT and CLIP's vision tower, torchvision and timm ViTs, and other image models.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..engine.layer_map import LayerRules
from ..errors import InputError
from ..methods import Method
from ..methods.batch import Batch
from ..results import ImageExplanation
from .base import Task, check_finite, model_name, one_per_item

#: Output fields that hold one vector per image, in order of preference.
_OUTPUTS = ("logits", "image_embeds", "pooler_output")

ImageTarget = int | str | Tensor | Callable[[Tensor], Tensor] | None


def pixel_values(images: Any, processor: Any, channels: int | None) -> Tensor:
    if isinstance(images, Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise InputError(
                f"Pixel values must be [channels, height, width] or [batch, ...], got {tuple(images.shape)}."
            )
        if not images.is_floating_point():
            raise InputError(
                f"Pixel values must be floats as the model takes them (normalised), not {images.dtype}: pass the "
                "images through the model's processor (processor=...), or convert and normalise them."
            )
        return images
    if processor is None:
        raise InputError(
            f"Got {type(images).__name__} images: pass processor= (the model's image processor) to turn them into "
            "pixel values, or pass pixel values as a tensor."
        )
    mode = "L" if channels == 1 else "RGB"
    batch = [open_image(image, mode) for image in (images if isinstance(images, list) else [images])]
    if "images" in inspect.signature(processor).parameters:  # a Hugging Face image processor
        return processor(images=batch, return_tensors="pt")["pixel_values"]
    return torch.stack([processor(image) for image in batch])  # a torchvision transform, one image at a time


def as_image_batch(images: Any) -> tuple[Any, bool]:
    """``images`` as one image, pixel values or a list of images, and whether one image was given: a processor's
    output gives its pixel values, a list of pixel tensors is stacked, and arrays [B, H, W, C] are B images."""
    if isinstance(images, Mapping) and "pixel_values" in images:  # the processor's output (a BatchFeature)
        images = images["pixel_values"]
    if isinstance(images, tuple):
        images = list(images)
    if isinstance(images, list) and images and all(isinstance(image, Tensor) for image in images):
        if not all(image.dim() == 3 for image in images):
            raise InputError("A list of pixel tensors takes one [channels, height, width] tensor per image.")
        return torch.stack(images), False
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), False
    single = (isinstance(images, Tensor) and images.dim() == 3) or not isinstance(images, (Tensor, list))
    return images, single


def open_image(image: Any, mode: str = "RGB") -> Any:
    """A PIL image in ``mode`` (RGB: grayscale, palette and RGBA images converted; "L" for one-channel models), as
    image models take them; a path (not a URL) is opened, and a file that is missing or no image is an InputError
    naming it. Arrays pass as they are."""
    from PIL import Image

    if isinstance(image, os.PathLike) or (
        isinstance(image, str) and not image.startswith(("http:", "https:", "data:"))
    ):
        try:
            image = Image.open(image)
        except OSError as error:
            raise InputError(f"Can't read the image {image}: {error.strerror or error}.") from error
    return image.convert(mode) if isinstance(image, Image.Image) and image.mode != mode else image


def display_images(pixels: Tensor, processor: Any) -> np.ndarray:
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


def _resolve(
    model: nn.Module, target: ImageTarget, vector: Tensor
) -> tuple[Callable[[Tensor], Tensor], str, int | None]:
    """(the explained scalar as a function of one image's output vector, its label, its class index)."""
    if isinstance(target, bool):
        raise InputError(f"target={target} is no class: give a class index or label.")
    if target is None or isinstance(target, (int, str)):
        index = int(vector.detach().argmax()) if target is None else target
        if isinstance(index, str):
            label2id = getattr(getattr(model, "config", None), "label2id", None) or {}
            if index in label2id:
                index = int(label2id[index])
            elif index.strip().isdigit():
                index = int(index)  # a class index given as text (the command line's --label 281)
            elif not label2id:
                raise InputError(
                    f"{type(model).__name__} has no label names (config.id2label), so the label {index!r} can't be "
                    f"found: give a class index, 0..{vector.shape[-1] - 1}."
                )
            else:
                raise InputError(f"Unknown label {index!r}; the model's labels are {sorted(label2id)[:20]}.")
        if not 0 <= index < vector.shape[-1]:
            raise InputError(f"Class index {index} is outside the model's {vector.shape[-1]} outputs.")
        return (lambda v: v[index]), _label(model, index), index
    if isinstance(target, Tensor):
        direction = target.to(vector.device, vector.dtype).reshape(-1)
        if direction.shape != vector.shape:
            raise InputError(f"A target vector must have the output's size {vector.shape[-1]}, not {target.numel()}.")
        return (lambda v: v @ direction), "output · target vector", None
    if callable(target):
        return target, getattr(target, "__name__", "custom"), None
    raise InputError(
        f"Unsupported image target {target!r}: pass None (top class), a class index or label, a vector "
        "(e.g. a CLIP text embedding) or a callable on the output vector."
    )


@dataclass
class Outcome:
    """One image's resolved target: the explained scalar of its output vector, its label and class, and its value."""

    scalar: Callable[[Tensor], Tensor]
    label: str
    index: int | None
    value: float


def _configured_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """The (channels, height, width) a model's config names, where it names them."""
    config = getattr(model, "config", None)
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if not isinstance(channels, int) or not isinstance(size, (int, list, tuple)):
        return None
    return (channels, size, size) if isinstance(size, int) else (channels, *size)


class ImageBatch(Batch):
    """Pixels [B, C, H, W] of an image model; each target reads the model's output vector of its image."""

    def __init__(self, model: nn.Module, pixels: Tensor, targets: list[ImageTarget], processor: Any = None):
        self.targets, self.processor = targets, processor
        # Hugging Face image models take ``pixel_values=``; torchvision and timm models take the tensor itself.
        self.keyword = "pixel_values" in inspect.signature(model.forward).parameters
        super().__init__(model, {"pixels": pixels}, {}, {})

    def _vectors(self, pixels: Tensor) -> Tensor:
        try:
            output = self.model(pixel_values=pixels) if self.keyword else self.model(pixels)
        except ValueError as error:  # transformers' check of the size and channels, deep in the embeddings
            expected = _configured_shape(self.model)
            if expected is None or tuple(pixels.shape[1:]) == expected:
                raise
            fix = (
                "the processor given makes another size: give the model's own image processor"
                if self.processor is not None
                else "pass the images with processor= (the model's image processor resizes them)"
            )
            raise InputError(
                f"{type(self.model).__name__} takes pixel values of {' x '.join(map(str, expected))} (channels, "
                f"height, width), not {' x '.join(map(str, pixels.shape[1:]))}: {fix}, or resize the pixel values."
            ) from error
        return _output_vectors(self.model, output)

    def values(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        vectors = self._vectors(inputs["pixels"])
        return torch.stack([self.outcomes[r].scalar(v) for r, v in zip(rows, vectors)])

    def evaluate(self, inputs: dict[str, Tensor]) -> Tensor:
        vectors = self._vectors(inputs["pixels"])
        if self._outcomes is not None:
            values = torch.stack([o.scalar(v) for o, v in zip(self._outcomes, vectors)])
            check_finite(values.detach(), self)
            return values
        resolved = [_resolve(self.model, t, v) for t, v in zip(self.targets, vectors)]
        values = torch.stack([scalar(v) for (scalar, _, _), v in zip(resolved, vectors)])
        check_finite(values.detach(), self)
        self._outcomes = [Outcome(s, label, index, float(y)) for (s, label, index), y in zip(resolved, values.detach())]
        return values


class ImageClassification(Task):
    """An image model's class (or output vector) over its pixels."""

    name = "image"
    labelled = True
    description = "an image model's class or output vector over its pixels (ViT, DeiT, CLIP's vision tower, ...)"
    options = ()
    default_method = "cp-lrp"  # as usual for vision transformers

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return type(model).__name__.endswith(("ForImageClassification", "ForImageClassificationWithTeacher")) or (
            type(model).__name__.startswith("CLIPVision")
        )

    def __init__(self, model: nn.Module, processor: Any = None):
        super().__init__(model)
        self.processor = processor

    def encode(self, images: Any) -> tuple[list[Tensor], bool]:
        images, single = as_image_batch(images)
        for image in [images] if single else images:
            if isinstance(image, str) and not Path(image).is_file():
                raise InputError(
                    f"{type(self.model).__name__} is an image model, and {image[:60]!r} is text (no such image file): "
                    "give it an image: a file path, a PIL image, an array or pixel values (--image PATH on the "
                    "command line)."
                )
        param = next(self.model.parameters())
        channels = getattr(getattr(self.model, "config", None), "num_channels", None)
        pixels = pixel_values(images, self.processor, channels).to(param.device, param.dtype)
        return list(pixels), single

    def targets(self, target: Any, count: int) -> list[ImageTarget]:
        return one_per_item(target, count, "images")

    def prepare(self, items: Sequence[Tensor], targets: Sequence[ImageTarget]) -> ImageBatch:
        return ImageBatch(self.model, torch.stack(list(items)), list(targets), self.processor)

    def results(self, batch: ImageBatch, relevance: dict, method: Method) -> list[ImageExplanation]:
        rules = describe(getattr(method, "layer_rules", None))
        drawn = display_images(batch.inputs["pixels"], self.processor)
        patch = patch_size(self.model)
        return [
            ImageExplanation(
                scores=relevance["pixels"][row],
                target=o.label,
                value=o.value,
                method=method.name,
                model=model_name(self.model),
                target_index=o.index,
                image=drawn[row],
                rules=rules,
                patch_size=patch,
            )
            for row, o in enumerate(batch.outcomes)
        ]


def patch_size(model: nn.Module) -> int | None:
    """The model's square patch size: Hugging Face's ``config.patch_size``, torchvision's ``patch_size``, timm's
    ``patch_embed.patch_size`` (None where the model has none)."""
    config = getattr(model, "config", None)
    for value in (
        getattr(config, "patch_size", None),
        getattr(getattr(config, "vision_config", None), "patch_size", None),
        getattr(model, "patch_size", None),
        getattr(getattr(model, "patch_embed", None), "patch_size", None),
    ):
        if isinstance(value, (tuple, list)) and len(set(value)) == 1:
            value = value[0]
        if isinstance(value, int):
            return value
    return None


def describe(layer_rules: LayerRules | None) -> str:
    """A short text naming the layer rules, for result titles."""
    if layer_rules is None:
        return ""
    if isinstance(layer_rules, dict):
        return ", ".join(f"{_type_names(k)}: {r!r}" for k, r in layer_rules.items())
    if isinstance(layer_rules, (list, tuple)):
        return ", ".join(f"{_type_names(k)}: {r!r}" for k, r in layer_rules)
    return type(layer_rules).__name__


def _type_names(types: Any) -> str:
    return "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
