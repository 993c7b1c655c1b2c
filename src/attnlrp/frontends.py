"""The front ends: ``explain``, ``explain_generation`` and ``explain_image``, each a task adapter x a method."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from torch import nn

from .engine.layer_map import LayerRules
from .engine.predicting import predicting
from .engine.recorder import recorders
from .errors import InputError
from .methods import Method, get_method
from .methods.batch import TOKEN_BUDGET, plan, readable
from .results import Explanation, GenerationExplanation, ImageExplanation
from .tasks import (
    TASKS,
    ImageClassification,
    Seq2Seq,
    Task,
    VisionLanguage,
    generation,
    seq2seq,
    task_for,
    vision_language,
)
from .tasks.base import check_relevance
from .tasks.image import ImageTarget


def run(
    task: Task, method: Method, items: Sequence[Any], targets: Sequence[Any], batch_size: int, readout: Any = None
) -> list[Any]:
    """Explain ``items`` with ``method`` in batches of at most ``batch_size`` items of similar length (less padding)
    and at most ``TOKEN_BUDGET`` padded tokens (long prompts share a batch with fewer others): one result per
    item, in the items' order. ``readout`` (``attnlrp.latent.readout.LatentReadout``) also gives each result the
    most relevant units of its sites, from the same backward. Relevance that is NaN or infinite at an item's real
    positions is a FloatingPointError naming the items (``tasks.base.check_relevance``)."""
    for recorder in recorders(task.model):
        recorder.check_run(method, len(items))
    results: list[Any] = [None] * len(items)
    with predicting(task.model, method):
        for group in plan(task.lengths(items), batch_size, TOKEN_BUDGET, by_length=True):
            batch = task.prepare([items[i] for i in group], [targets[i] for i in group])
            method.check(batch)
            with readout.recording(batch, method) if readout is not None else nullcontext() as sites:
                relevance = readable(method.attribute(batch))  # half precision read as float32
            check_relevance(batch, relevance, group)
            found = task.results(batch, relevance, method)
            if readout is not None:
                readout.annotate(found, batch, sites)
            for i, result in zip(group, found):
                results[i] = result
    return results


def make_task(model: nn.Module, tokenizer, task: str | None = None, **options: Any) -> Task:
    """The task adapter for ``model`` (the one named by ``task``, else the one its class and config say), built
    with the options given (None means not given); an option the task doesn't take is an InputError."""
    cls = task_for(model, task)
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in cls.options:
            takers = [name for name, other in TASKS.items() if key in other.options]
            raise InputError(
                f"{key}= was given, but {type(model).__name__} is explained as the {cls.name!r} task, which takes "
                f"no {key}: leave it out"
                + (f" (it is for the {', '.join(map(repr, takers))} tasks)." if takers else ".")
            )
    return cls(model, tokenizer, **given)


def explain(
    model: nn.Module,
    tokenizer,
    inputs,
    target=None,
    method: str | Method | None = None,
    batch_size: int = 8,
    padding_side: str | None = None,
    gradient_checkpointing: bool = False,
    *,
    task: str | None = None,
    pair: Any = None,
    pooling: str | None = None,
    similarity: str | None = None,
    images: Any = None,
    sampling_rate: int | None = None,
    latent: Any = None,
    atlas: Any = None,
) -> Explanation | list[Explanation]:
    """Explain a model's prediction: the relevance of each input token.

    The task comes from the model (``task=`` names one): a causal LM's next token or answer, a classifier's
    label (of a text, a text pair or one token), the similarity of two texts' embeddings, a vision-language
    model's next token or answer (over its image and text), or a CLIP model's image-text similarity.

    inputs: text, token ids, chat messages, or a list of these (explained in batches; returns a list).
    target: causal LMs: None (the top next token), a token string or id, attnlrp.Answer / Contrast / LogProb, a
    callable on the logits [T, V] of one sequence; classifiers: None (the predicted label), a label name or
    id, attnlrp.Contrast / LogProb over labels, attnlrp.TokenLabel(position_or_word) for token classifiers;
    similarity: None, or attnlrp.Direction(vector). A list gives one target per input.
    method: the task's default (AttnLRP; CP-LRP for image classifiers), or any name of
    ``attnlrp.available_methods()`` ("attnlrp", "cp-lrp", "gradient", "input_x_gradient",
    "integrated_gradients", "attention", "attention_rollout", "occlusion", "random") or a configured method
    (``attnlrp.methods.IntegratedGradients(steps=64)``). gradient_checkpointing: for the LRP methods, HF
    gradient checkpointing during the pass (same relevance, less memory). batch_size: the most inputs in one
    pass; inputs of similar length share a pass, and a pass holds at most ``attnlrp.methods.batch.TOKEN_BUDGET``
    padded tokens (so long prompts run with fewer others). padding_side: causal LMs, "right"
    (default) or "left". pair: classifiers and similarity, the second text (or one per input). pooling
    ("mean", "cls" or "last"; default: the model's) and similarity ("cosine" or "dot"): sentence similarity;
    CLIP takes "cosine" or "logit".
    images: vision-language and CLIP models (pass their processor as ``tokenizer``), one image (PIL or array) for
    every input or a list with one per input; the result's ``image`` holds the pixels' relevance.
    sampling_rate: audio models (Whisper), the rate of the waveforms given; one the model doesn't hear is refused.
    latent: LRP methods, sites of latent units (``"model.layers.*.mlp.down_proj"``, an ``attnlrp.latent.SAE``,
    or a list): each result's ``units`` lists each site's most relevant units for the prediction, labelled from
    ``atlas`` (an ``attnlrp.latent.FeatureAtlas``) when one is given.
    """
    method = get_method(
        method if method is not None else task_for(model, task).default_method,
        **({"gradient_checkpointing": True} if gradient_checkpointing else {}),
    )
    task = make_task(
        model,
        tokenizer,
        task,
        padding_side=padding_side,
        pair=pair,
        pooling=pooling,
        similarity=similarity,
        images=images,
        sampling_rate=sampling_rate,
    )
    readout = None
    if latent is not None or atlas is not None:
        from .latent.readout import LatentReadout  # the latent layer loads on first use

        readout = LatentReadout(model, latent, atlas)
    items, single = task.encode(inputs)
    results = run(task, method, items, task.targets(target, len(items)), batch_size, readout)
    return results[0] if single else results


def explain_generation(
    model: nn.Module,
    tokenizer,
    prompt,
    max_new_tokens: int = 32,
    method: str | Method = "attnlrp",
    backward_batch: int = 8,
    *,
    images: Any = None,
    **generate_kwargs,
) -> GenerationExplanation:
    """Generate (greedy by default), then explain every generated token against all tokens before it.

    Generation runs without a forced end (``forced_eos_token_id``, which BART's and Marian's configs set:
    ``generate()`` then puts the end token in place of the last token ``max_new_tokens`` allows, whatever the
    model predicts), so every token explained is one the model chose; pass ``forced_eos_token_id=`` to force it.

    With an LRP method, one forward pass over the whole sequence is shared by all generated tokens, run in
    segments of ``backward_batch`` generated tokens over a key-value cache that keeps the graph. Each segment's
    tokens are explained in one vectorised backward that reaches back only through the segments before it
    (more tokens per batch is faster and needs more memory). Any other method explains each generated token as
    the next token of its prefix, ``backward_batch`` prefixes per batch.

    Vision-language models take their processor as ``tokenizer`` and the image as ``images``; each generated
    token is explained as the next token of its prefix, over the image and the tokens before it.

    Encoder-decoders (T5, BART, Marian; Whisper with its processor as ``tokenizer`` and audio as ``prompt``) are
    explained over their source and the decoder's tokens before each generated token; an LRP method runs one
    forward over the whole generation, shared by every token.
    """
    method = get_method(method)  # fail before generating; results carry the canonical name
    if recorders(model):
        raise InputError(
            "A Recorder holds one forward pass, and a generation explains each token in a backward of its own: "
            "inside the block, explain one prefix per call with attnlrp.explain."
        )
    config = generate_kwargs.get("generation_config") or getattr(model, "generation_config", None)
    sequences = generate_kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", None) or 1)
    if sequences != 1:
        raise InputError(
            f"explain_generation explains one generated sequence, and num_return_sequences={sequences!r} asks for "
            "more (the others were dropped): leave it out (or set it to 1), and call explain_generation once for "
            "each sequence (with do_sample=True, each call samples its own)."
        )
    for name, value in (("backward_batch", backward_batch), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a whole number, 1 or more, not {value!r}.")
    if not callable(getattr(model, "generate", None)):
        raise InputError(
            f"{type(model).__name__} doesn't generate text (it has no generate()): explain_generation takes causal "
            "LMs, encoder-decoders and vision-language models. Explain its prediction with attnlrp.explain "
            "(`attnlrp explain` on the command line)."
        )
    generate_kwargs.setdefault("forced_eos_token_id", None)
    with predicting(model, method):  # generated as predicted, dropout off
        if images is not None or VisionLanguage.accepts(model):
            task = make_task(model, tokenizer, images=images)  # a text-only model refuses the image here
            if not isinstance(task, VisionLanguage):
                raise InputError(f"{type(model).__name__} doesn't generate text: explain it with attnlrp.explain.")
            prefixes, generated = vision_language.generate(task, prompt, max_new_tokens, **generate_kwargs)
            steps = run(task, method, prefixes, task.targets(generated, len(generated)), backward_batch)
            return vision_language.generation_result(task, steps, generated)  # run() checked each step
        explained = seq2seq.explain_generation if Seq2Seq.accepts(model) else generation.explain_generation
        return generation.check_steps(
            explained(model, tokenizer, prompt, method, max_new_tokens, backward_batch, **generate_kwargs)
        )


def explain_image(
    model: nn.Module,
    images: Any,
    target: ImageTarget | Sequence[ImageTarget] = None,
    method: str | Method | None = None,
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
    method = get_method(
        method if method is not None else ImageClassification.default_method,
        **({"layer_rules": layer_rules} if layer_rules is not None else {}),
    )
    if hasattr(model, "config") and not ImageClassification.accepts(model):  # a Hugging Face model of another task
        other = next((cls for cls in TASKS.values() if cls.accepts(model)), None)
        if other is not None:
            raise InputError(
                f"{type(model).__name__} is a {other.name} model, not an image classifier: explain it with "
                "attnlrp.explain(model, processor, inputs" + (", images=...)." if "images" in other.options else ").")
            )
    task = ImageClassification(model, processor)
    items, single = task.encode(images)
    results = run(task, method, items, task.targets(target, len(items)), batch_size)
    return results[0] if single else results
