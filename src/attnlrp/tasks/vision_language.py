"""Vision-language models (LLaVA-style, Qwen2-VL-style, Idefics3/SmolVLM-style): a next token, an answer or a
generation, explained over the image's pixels and the prompt's tokens together.

The model runs on its real token ids and masks; the tokens' input embeddings are tapped (as for a causal LM) and
the image is an input kind of its own, ``pixels`` [B, C, H, W]: the image as the model sees it (resized and
normalised by the processor). A ``PixelLayout`` turns those pixels into the model's pixel inputs with
differentiable ops only (Qwen2-VL's flattened patches are cut from them), so every method sees and perturbs one
picture per prompt. The model writes its image features over the image placeholder tokens, so those tokens carry
no relevance of their own; results show their run as one placeholder token, and the image's relevance in
``Explanation.image``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..engine.inputs import InputTap
from ..errors import InputError
from ..methods import Method
from ..results import Explanation, GenerationExplanation, ImageExplanation
from .base import model_name
from .causal_lm import CausalLM, CausalLMBatch
from .image import display_images, open_image, patch_size
from .targets import Target
from .text import check_length, display_tokens, is_chat


class PixelLayout:
    """How a model family takes its pixels: the picture in a processor's output, and the model's pixel inputs."""

    def picture(self, encoded: dict[str, Tensor]) -> Tensor:
        """The one image of a processor's output as the model sees it: [C, H, W]."""
        raise NotImplementedError

    def model_inputs(self, pixels: Tensor, sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """The model's keyword inputs for images [M, C, H, W], each padded at the bottom and right from its real
        (height, width) in ``sizes``; differentiable in ``pixels``."""
        raise NotImplementedError


class WholeImages(PixelLayout):
    """``pixel_values`` [B, C, H, W], one fixed-size image per prompt (LLaVA and the like)."""

    def picture(self, encoded: dict[str, Tensor]) -> Tensor:
        return encoded["pixel_values"][0]

    def model_inputs(self, pixels: Tensor, sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        if len(set(sizes)) > 1:
            raise InputError(
                f"The processor made images of different sizes {sorted(set(sizes))}, which this model can't take in "
                "one batch; explain them with batch_size=1."
            )
        return {"pixel_values": pixels}


@dataclass(frozen=True)
class MergedPatches(PixelLayout):
    """Qwen2-VL's ``pixel_values``: every image cut into patches of ``patch`` pixels, grouped ``merge`` x ``merge``
    (one token each), each patch repeated ``temporal`` times as video frames and flattened to one row; with
    ``image_grid_thw`` (frames, rows, columns of patches) per image."""

    patch: int
    merge: int
    temporal: int

    def patches(self, image: Tensor) -> Tensor:
        """[C, H, W] -> the rows the processor makes of it: [H*W / patch², C * temporal * patch²]."""
        c, h, w = image.shape
        p, m = self.patch, self.merge
        grid = image.reshape(c, h // (p * m), m, p, w // (p * m), m, p).permute(1, 4, 2, 5, 0, 3, 6)
        frames = grid.unsqueeze(5).expand(*grid.shape[:5], self.temporal, p, p)
        return frames.reshape((h // p) * (w // p), c * self.temporal * p * p)

    def picture(self, encoded: dict[str, Tensor]) -> Tensor:
        frames, rows, columns = (int(n) for n in encoded["image_grid_thw"][0])
        p, m = self.patch, self.merge
        flat = encoded["pixel_values"]
        if frames != 1:
            raise InputError(f"Expected one image, got {frames} frames (a video); explain images only.")
        c = flat.shape[1] // (self.temporal * p * p)
        grid = flat.reshape(rows // m, columns // m, m, m, c, self.temporal, p, p)[:, :, :, :, :, 0]
        image = grid.permute(4, 0, 2, 5, 1, 3, 6).reshape(c, rows * p, columns * p)
        if not torch.equal(self.patches(image), flat):
            raise InputError(
                "The processor's pixel_values are not laid out as Qwen2-VL's patches (patch_size "
                f"{p}, merge_size {m}, temporal_patch_size {self.temporal}); use the model's own processor."
            )
        return image

    def model_inputs(self, pixels: Tensor, sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        rows = [self.patches(image[:, :h, :w]) for image, (h, w) in zip(pixels, sizes)]
        grid = [[1, h // self.patch, w // self.patch] for h, w in sizes]
        return {"pixel_values": torch.cat(rows), "image_grid_thw": torch.tensor(grid, device=pixels.device)}


class MaskedImages(PixelLayout):
    """``pixel_values`` [B, images, C, H, W] with ``pixel_attention_mask`` [B, images, H, W] marking the real pixels
    (Idefics3, SmolVLM), one image per prompt, not split into tiles."""

    def picture(self, encoded: dict[str, Tensor]) -> Tensor:
        real = encoded["pixel_attention_mask"][0, 0].bool()
        return encoded["pixel_values"][0, 0, :, : int(real.any(1).sum()), : int(real.any(0).sum())]

    def model_inputs(self, pixels: Tensor, sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        mask = torch.zeros(pixels.shape[0], 1, *pixels.shape[2:], dtype=torch.bool, device=pixels.device)
        for m, (h, w) in enumerate(sizes):
            mask[m, 0, :h, :w] = True
        return {"pixel_values": pixels.unsqueeze(1), "pixel_attention_mask": mask}


def layout_for(processor: Any, encoded: dict[str, Tensor]) -> PixelLayout:
    """The layout of a processor's output for one image: Qwen2-VL's merged patches, whole images, or images with a
    pixel mask (Idefics3)."""
    pixels = encoded.get("pixel_values")
    shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else None
    if "image_grid_thw" in encoded:
        images = processor.image_processor
        return MergedPatches(images.patch_size, images.merge_size, images.temporal_patch_size)
    if shape is not None and len(shape) == 4 and shape[0] == 1:
        return WholeImages()
    if shape is not None and len(shape) == 5 and shape[:2] == (1, 1) and "pixel_attention_mask" in encoded:
        return MaskedImages()
    raise InputError(
        f"The processor gave pixel_values of shape {shape} for one image; attnlrp explains models that take one "
        "image per prompt whole ([1, C, H, W], LLaVA-style; [1, 1, C, H, W] with a pixel mask, Idefics3-style) or "
        "as Qwen2-VL's patches. If the processor cuts the image into tiles, turn that off "
        "(processor.image_processor.do_image_splitting = False)."
    )


@dataclass
class Prompt:
    """One prompt of a vision-language model: its token ids (the image placeholder expanded by the processor),
    its image as the model sees it [C, H, W], and named segments."""

    ids: list[int]
    image: Tensor
    segments: list[tuple[str, int, int]] = field(default_factory=list)


class VisionLanguageBatch(CausalLMBatch):
    """Prompts with their images (kind ``pixels``, padded to the largest) and targets read from the logits."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        items: list[Prompt],
        targets: list[Target],
        layout: PixelLayout,
        image_token_id: int,
    ):
        super().__init__(model, tokenizer, items, targets, "right")
        self.layout = layout
        self.sizes = [(int(item.image.shape[1]), int(item.image.shape[2])) for item in items]
        height, width = max(h for h, _ in self.sizes), max(w for _, w in self.sizes)
        embeds = self.inputs["tokens"]
        pixels = torch.zeros(len(items), items[0].image.shape[0], height, width, dtype=embeds.dtype, device=self.device)
        for row, item in enumerate(items):
            pixels[row, :, : item.image.shape[1], : item.image.shape[2]] = item.image
        self.inputs["pixels"] = pixels
        if "mm_token_type_ids" in inspect.signature(model.forward).parameters:  # Qwen2-VL: which tokens are image
            self.row_inputs["mm_token_type_ids"] = (self.row_inputs["input_ids"] == image_token_id).long()

    def model_inputs(self, pixels: Tensor, rows: Sequence[int]) -> dict[str, Tensor]:
        """The model's inputs for ``rows`` (token ids, masks) with ``pixels`` [M, C, H, W] as their images."""
        index = torch.as_tensor(list(rows), device=self.device)
        inputs = {name: value[index] for name, value in self.row_inputs.items()}
        return {**inputs, **self.layout.model_inputs(pixels, [self.sizes[r] for r in rows])}

    def output(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Any:
        extra = self.model_inputs(inputs["pixels"], rows)
        with self.own_rows_at_head(rows), InputTap(self.model, {"tokens": self.site}) as tap:
            tap.replace = {"tokens": inputs["tokens"]}
            return self.model(**extra, **self.shared)


def image_token_id(model: nn.Module) -> int:
    """The id of the image placeholder token the model writes its image features over."""
    config = model.config
    found = getattr(config, "image_token_id", None)
    found = found if found is not None else getattr(config, "image_token_index", None)
    if found is None:
        raise InputError(f"{type(model).__name__}'s config names no image token (image_token_id).")
    return int(found)


def image_run(ids: Sequence[int], token_id: int) -> slice | None:
    """Where the image's placeholders lie in ``ids``: the first run of ``token_id`` (one image per prompt)."""
    if token_id not in ids:
        return None
    start = stop = list(ids).index(token_id)
    while stop < len(ids) and ids[stop] == token_id:
        stop += 1
    return slice(start, stop)


def collapse_image(exp: Explanation, token_id: int) -> Explanation:
    """``exp`` with the image's run of placeholder tokens shown as its first token, holding the run's sum."""
    run = image_run(exp.token_ids, token_id)
    if run is None:
        return exp
    keep = [*range(run.start + 1), *range(run.stop, len(exp))]
    scores = exp.scores.astype(np.float64)
    scores[run.start] = scores[run].sum()
    shift = run.stop - run.start - 1

    def moved(p: int) -> int:
        return p if p <= run.start else max(run.start + 1, p - shift)

    return replace(
        exp,
        tokens=[exp.tokens[i] for i in keep],
        display=[exp.display[i] for i in keep],
        scores=scores[keep],
        token_ids=[exp.token_ids[i] for i in keep],
        special=[exp.special[i] for i in keep],
        segments=[(name, moved(a), moved(b)) for name, a, b in exp.segments],
        context=moved(exp.context) if exp.context is not None else None,
    )


class VisionLanguage(CausalLM):
    """The next token, a chosen token, a contrast or a whole answer of a vision-language model, over the image's
    pixels and the prompt's tokens.

    The second argument is the model's processor (``AutoProcessor``); ``images``: one image (PIL or array) for
    every prompt, or a list with one per prompt. Each prompt is text holding the processor's image placeholder
    once (``processor.image_token``), or chat messages whose content has one ``{"type": "image"}`` part.
    """

    name = "vision-language"
    description = "a next token or an answer of a vision-language model over image and text (LLaVA, Qwen2-VL, ...)"
    options = ("images",)
    fields = ("target", "target_id", "log_prob", "contrast", "answer", "image", "chat", "system")

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        config = getattr(model, "config", None)
        name = type(model).__name__
        return (
            name in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values()
            and not name.endswith(("ForCausalLM", "LMHeadModel"))  # the causal LM's (some take no image at all)
            and not getattr(config, "is_encoder_decoder", False)
        )

    def __init__(self, model: nn.Module, processor: Any, images: Any = None):
        if not (hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")):
            raise InputError(
                f"A vision-language model is explained with its processor (AutoProcessor.from_pretrained(...)) as "
                f"the second argument, not a {type(processor).__name__}."
            )
        if images is None:
            raise InputError(
                f"{type(model).__name__} is a vision-language model: give the image with images=... (one for every "
                "prompt, or a list with one per prompt)."
            )
        super().__init__(model, processor.tokenizer)
        self.processor = processor
        self.images = images
        self.image_token_id = image_token_id(model)
        self.layout: PixelLayout | None = None
        token = getattr(processor, "image_token", None)
        given = processor.tokenizer.convert_tokens_to_ids(token) if isinstance(token, str) else None
        if given is not None and self.image_token_id is not None and given != self.image_token_id:
            raise InputError(
                f"The processor ({type(processor).__name__}) marks images with {token!r} (id {given}), but "
                f"{type(model).__name__} reads id {self.image_token_id}: pass the model's own processor "
                "(AutoProcessor.from_pretrained of the model's folder)."
            )

    def encode(self, inputs: Any) -> tuple[list[Prompt], bool]:
        single = isinstance(inputs, str) or is_chat(inputs)
        prompts = [inputs] if single else list(inputs)
        if not prompts:
            raise InputError("No prompts were given: pass a prompt or a list of prompts.")
        images = self.images if isinstance(self.images, (list, tuple)) else [self.images] * len(prompts)
        if len(images) != len(prompts):
            raise InputError(
                f"{len(images)} images were given for {len(prompts)} prompts; give one each, or one for all."
            )
        return [self._encode(p, image) for p, image in zip(prompts, images)], single

    def _encode(self, prompt: Any, image: Any) -> Prompt:
        if is_chat(prompt):
            if not getattr(self.processor, "chat_template", None):
                raise InputError("Chat messages were given, but the processor has no chat template; pass plain text.")
            prompt = self.processor.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"A prompt is text or chat messages, not {prompt!r}.")
        placeholder = getattr(self.processor, "image_token", None)
        if placeholder and prompt.count(placeholder) != 1:
            raise InputError(
                f"The prompt holds the image placeholder {placeholder!r} {prompt.count(placeholder)} times; put it "
                f"once where the image goes, e.g. {placeholder + ' What is shown?'!r} (see the model's prompt format)."
            )
        encoded = self.processor(text=[prompt], images=[open_image(image)], return_tensors="pt")
        layout = layout_for(self.processor, encoded)
        if self.layout is None:
            self.layout = layout
        ids = [int(i) for i in encoded["input_ids"][0]]
        return Prompt(ids, layout.picture(encoded))

    def prepare(self, items: Sequence[Prompt], targets: Sequence[Target]) -> VisionLanguageBatch:
        return VisionLanguageBatch(
            self.model, self.tokenizer, list(items), list(targets), self.layout, self.image_token_id
        )

    def results(self, batch: VisionLanguageBatch, relevance: dict, method: Method) -> list[Explanation]:
        drawn = display_images(batch.inputs["pixels"], self.processor.image_processor)
        patch = patch_size(self.model)
        out = []
        for row, exp in enumerate(super().results(batch, relevance, method)):
            h, w = batch.sizes[row]
            image = ImageExplanation(
                scores=relevance["pixels"][row, :h, :w],
                target=exp.target,
                value=exp.value,
                method=method.name,
                model=exp.model,
                image=drawn[row, :h, :w],
                patch_size=patch,
            )
            out.append(replace(collapse_image(exp, self.image_token_id), image=image))
        return out


def generate(
    task: VisionLanguage, prompt: Any, max_new_tokens: int, **generate_kwargs
) -> tuple[list[Prompt], list[int]]:
    """Generate (greedy by default) from one prompt and its image: (one prefix per generated token, the generated
    ids), so that each generated token is explained as the next token of its prefix."""
    items, single = task.encode(prompt)
    if not single:
        raise InputError(f"explain_generation continues one prompt, not {len(items)}: call it once per prompt.")
    (item,) = items
    model, tokenizer = task.model, task.tokenizer
    check_length(model, tokenizer, len(item.ids) + max_new_tokens)
    start = task.prepare([item], task.targets(None, 1))
    generate_kwargs.setdefault("do_sample", False)
    if tokenizer.pad_token_id is not None:
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    with torch.no_grad():
        inputs = start.model_inputs(start.inputs["pixels"], [0])
        sequence = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)[0].tolist()
    n_prompt = len(item.ids)
    if len(sequence) == n_prompt:
        raise InputError("The model generated no token (it stopped at once); nothing to explain.")
    return [Prompt(sequence[:i], item.image) for i in range(n_prompt, len(sequence))], sequence[n_prompt:]


def generation_result(
    task: VisionLanguage, steps: Sequence[Explanation], generated: Sequence[int]
) -> GenerationExplanation:
    """One result of a generation from its steps' explanations (each generated token over its prefix)."""
    ids = [*steps[-1].token_ids, generated[-1]]  # the image's placeholders already shown as one token
    raw, display, special = display_tokens(task.tokenizer, ids)
    matrix = np.zeros((len(steps), len(ids)), dtype=np.float32)
    for i, step in enumerate(steps):
        matrix[i, : len(step.scores)] = step.scores
    return GenerationExplanation(
        tokens=raw,
        display=display,
        matrix=matrix,
        prompt_length=len(ids) - len(steps),
        values=[step.value for step in steps],
        method=steps[0].method,
        model=model_name(task.model),
        token_ids=ids,
        special=special,
        probs=[step.prob for step in steps],
        image_matrix=np.stack([step.image.scores for step in steps]),
        image_rgb=steps[0].image.image,
        patch_size=steps[0].image.patch_size,
    )
