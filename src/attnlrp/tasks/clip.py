"""CLIP: the similarity of an image and a text, explained on both the image's pixels and the text's tokens.

The text tower runs on its real token ids and masks with its token embeddings tapped (kind ``tokens``); the
image tower runs on the pixels (kind ``pixels``). Under LRP the similarity follows the rules of ``rules.md`` as
sentence similarity does: the normalisations hold the norms constant, and the dot product of the two
input-dependent embeddings is a product of two factors, so the image and the text each get half of it (uniform
rule). Plain gradient methods see the similarity as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.inputs import InputTap, input_embeddings
from ..errors import InputError, TargetError
from ..methods import Method
from ..methods.batch import Batch
from ..results import Explanation, ImageExplanation
from .base import Task, check_finite, model_name, one_per_item, similarity
from .image import as_image_batch, display_images, patch_size, pixel_values
from .text import check_length, display_tokens
from .token_batch import pad, pad_id_of

#: What ``similarity=`` may name: the cosine of the two embeddings, or the model's logit (cosine x logit scale).
SIMILARITIES = ("cosine", "logit")


@dataclass
class Pair:
    """One text (its token ids) and its image as the model sees it [C, H, W]."""

    ids: list[int]
    image: Tensor


class ClipBatch(Batch):
    """Texts (kind ``tokens``, padded on the right) and their images (kind ``pixels``); each row's value is the
    similarity of its text's and its image's embeddings."""

    def __init__(self, model: nn.Module, tokenizer, items: list[Pair], similarity: str):
        self.items, self.similarity = items, similarity
        self.text_model = model.text_model
        self.site = input_embeddings(self.text_model)
        device = self.site.weight.device
        ids, mask = pad([item.ids for item in items], pad_id_of(tokenizer), left=False)
        self.row_inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        with torch.no_grad():
            embeds = self.site(self.row_inputs["input_ids"])
        pixels = torch.stack([item.image for item in items]).to(device, embeds.dtype)
        spans = [slice(0, len(item.ids)) for item in items]
        super().__init__(model, {"tokens": embeds, "pixels": pixels}, {"tokens": spans}, {"tokens": ids.to(device)})

    def values(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        index = torch.as_tensor(list(rows), device=self.device)
        with InputTap(self.text_model, {"tokens": self.site}) as tap:
            tap.replace = {"tokens": inputs["tokens"]}
            text = self.model.get_text_features(**{k: v[index] for k, v in self.row_inputs.items()}).pooler_output
        image = self.model.get_image_features(pixel_values=inputs["pixels"]).pooler_output
        score = similarity(self.model, text, image)
        return score * self.model.logit_scale.detach().exp() if self.similarity == "logit" else score

    def evaluate(self, inputs: dict[str, Tensor]) -> Tensor:
        values = self.values(inputs, range(len(self)))
        check_finite(values.detach(), self)
        if self._outcomes is None:
            self._outcomes = [float(v) for v in values.detach()]
        return values


class ClipSimilarity(Task):
    """The similarity of an image and a text in a CLIP model, with relevance on the image's pixels and the text's
    tokens.

    The second argument is the model's processor (``CLIPProcessor``); inputs: a text or a list of texts;
    ``images``: one image for every text, or a list with one per text (files, PIL images, arrays, pixel values
    as the processor makes them, or the processor's output). similarity: "cosine" (default) or "logit"
    (the model's ``logits_per_image``: the cosine times the learned logit scale).
    """

    name = "clip"
    description = "the similarity of an image and a text (CLIPModel)"
    options = ("images", "similarity")
    fields = ("image",)

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """CLIP-style dual encoders: two towers and a logit scale (SigLIP's added logit bias is not CLIP's)."""
        towers = all(hasattr(model, name) for name in ("text_model", "get_text_features", "get_image_features"))
        return towers and hasattr(model, "logit_scale") and not hasattr(model, "logit_bias")

    def __init__(self, model: nn.Module, processor: Any, images: Any = None, similarity: str | None = None):
        super().__init__(model)
        similarity = similarity or "cosine"
        if similarity not in SIMILARITIES:
            raise InputError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))}, not {similarity!r}.")
        if not (hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")):
            raise InputError(
                "A CLIP model is explained with its processor (CLIPProcessor.from_pretrained(...)) as the second "
                f"argument, not a {type(processor).__name__}."
            )
        if images is None:
            raise InputError("CLIP explains the similarity of an image and a text: give the image with images=...")
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.images, self.similarity = images, similarity

    def encode(self, inputs: Any) -> tuple[list[Pair], bool]:
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InputError(f"CLIP explains non-empty texts: pass a string or a list of strings, not {inputs!r}.")
        images, one = as_image_batch(self.images)  # images, arrays, pixel values or the processor's output
        pixels = pixel_values(images, self.processor.image_processor, None)
        if one:
            pixels = pixels.expand(len(texts), *pixels.shape[1:])
        if len(pixels) != len(texts):
            raise InputError(f"{len(pixels)} images were given for {len(texts)} texts; give one each, or one for all.")
        items = []
        for text, image in zip(texts, pixels):
            ids = list(self.tokenizer(text)["input_ids"])
            check_length(self.model.text_model, self.tokenizer, len(ids))
            items.append(Pair(ids, image))
        return items, single

    def targets(self, target: Any, count: int) -> list[None]:
        targets = one_per_item(target, count, "texts")
        if any(t is not None for t in targets):
            raise TargetError(
                "CLIP explains the similarity of each text with its image: leave target out (similarity= chooses "
                "the cosine or the model's logit)."
            )
        return targets

    def prepare(self, items: Sequence[Pair], targets: Sequence[None]) -> ClipBatch:
        return ClipBatch(self.model, self.tokenizer, list(items), self.similarity)

    def results(self, batch: ClipBatch, relevance: dict, method: Method) -> list[Explanation]:
        drawn = display_images(batch.inputs["pixels"], self.processor.image_processor)
        patch = patch_size(self.model)
        label = "cosine similarity" if self.similarity == "cosine" else "logit (cosine x logit scale)"
        out = []
        for row, (item, value) in enumerate(zip(batch.items, batch.outcomes)):
            raw, display, special = display_tokens(self.tokenizer, item.ids)
            image = ImageExplanation(
                scores=relevance["pixels"][row],
                target=label,
                value=value,
                method=method.name,
                model=model_name(self.model),
                image=drawn[row],
                patch_size=patch,
            )
            out.append(
                Explanation(
                    tokens=raw,
                    display=display,
                    scores=relevance["tokens"][row, batch.spans["tokens"][row]],
                    target=label,
                    value=value,
                    method=method.name,
                    model=model_name(self.model),
                    token_ids=item.ids,
                    special=special,
                    image=image,
                )
            )
        return out
