"""The front ends: ``explain``, ``explain_generation`` and ``explain_image``, each a task adapter x a method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .engine.layer_map import LayerRules
from .methods import Method, get_method
from .methods.batch import plan
from .results import Explanation, GenerationExplanation, ImageExplanation
from .tasks import generation
from .tasks.base import Task
from .tasks.causal_lm import CausalLM
from .tasks.image import ImageClassification, ImageTarget


def run(task: Task, method: Method, items: Sequence[Any], targets: Sequence[Any], batch_size: int) -> list[Any]:
    """Explain ``items`` with ``method`` in batches of at most ``batch_size``: one result per item, in order."""
    results: list[Any] = []
    for group in plan(task.lengths(items), batch_size):
        batch = task.prepare([items[i] for i in group], [targets[i] for i in group])
        method.check(batch)
        results.extend(task.results(batch, method.attribute(batch), method))
    return results


def explain(
    model: nn.Module,
    tokenizer,
    inputs,
    target=None,
    method: str | Method = "attnlrp",
    batch_size: int = 8,
    padding_side: str = "right",
    gradient_checkpointing: bool = False,
) -> Explanation | list[Explanation]:
    """Explain a prediction of a causal LM: relevance of each input token.

    inputs: text, token ids, chat messages, or a list of these (explained in batches; returns a list).
    target: None (the top next token), a token string or id, attnlrp.Answer / Contrast / LogProb,
    a callable on the logits [T, V] of one sequence, or a list with one target per prompt.
    method: any name of ``attnlrp.available_methods()`` ("attnlrp", "cp-lrp", "gradient", "input_x_gradient",
    "integrated_gradients", "attention", "attention_rollout", "occlusion", "random") or a configured method
    (``attnlrp.methods.IntegratedGradients(steps=64)``). gradient_checkpointing: for the LRP methods, HF
    gradient checkpointing during the pass (same relevance, less memory).
    """
    method = get_method(method, **({"gradient_checkpointing": True} if gradient_checkpointing else {}))
    task = CausalLM(model, tokenizer, padding_side)
    items, single = task.encode(inputs)
    results = run(task, method, items, task.targets(target, len(items)), batch_size)
    return results[0] if single else results


def explain_generation(
    model: nn.Module,
    tokenizer,
    prompt,
    max_new_tokens: int = 32,
    method: str | Method = "attnlrp",
    backward_batch: int = 8,
    **generate_kwargs,
) -> GenerationExplanation:
    """Generate (greedy by default), then explain every generated token against all tokens before it.

    With an LRP method, one forward pass over the whole sequence is shared by all generated tokens, run in
    segments of ``backward_batch`` generated tokens over a key-value cache that keeps the graph. Each segment's
    tokens are explained in one vectorised backward that reaches back only through the segments before it
    (more tokens per batch is faster and needs more memory). Any other method explains each generated token as
    the next token of its prefix, ``backward_batch`` prefixes per batch.
    """
    method = get_method(method)  # fail before generating; results carry the canonical name
    return generation.explain_generation(
        model, tokenizer, prompt, method, max_new_tokens, backward_batch, **generate_kwargs
    )


def explain_image(
    model: nn.Module,
    images: Any,
    target: ImageTarget | Sequence[ImageTarget] = None,
    method: str | Method = "cp-lrp",
    layer_rules: LayerRules | None = None,
    processor: Any = None,
    batch_size: int = 16,
) -> ImageExplanation | list[ImageExplanation]:
    """Explain an image model's output: the relevance of each pixel, one backward per batch.

    images: pixel values [C, H, W] or [B, C, H, W] as the model takes them, or PIL images / arrays with
    ``processor=`` (the model's image processor, also used to draw them). target: None (the top class),
    a class index or label, a vector (explains output · vector, e.g. a CLIP text embedding for
    CLIPVisionModelWithProjection), a callable on one image's output vector, or a list with one per image.
    method: "cp-lrp" (default, as usual for vision transformers), "attnlrp" or a baseline that works on pixels
    (see ``attnlrp.available_methods()``); layer_rules (LRP methods): e.g.
    ``{nn.Conv2d: Gamma(0.25), nn.Linear: Gamma(0.05)}``.
    """
    method = get_method(method, **({"layer_rules": layer_rules} if layer_rules is not None else {}))
    task = ImageClassification(model, processor)
    items, single = task.encode(images)
    results = run(task, method, items, task.targets(target, len(items)), batch_size)
    return results[0] if single else results
