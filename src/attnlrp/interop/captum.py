"""AttnLRP and CP-LRP as Captum attribution methods (captum is optional: ``pip install captum``).

- ``AttnLRP`` / ``CPLRP``: the relevance of the forward function's floating inputs (embeddings, pixels), with the
  contract of Captum's ``InputXGradient``: ``attribute(inputs, target=..., additional_forward_args=...)``.
- ``LayerAttnLRP`` / ``LayerCPLRP``: the relevance at a layer's output (or input), with the contract of Captum's
  ``LayerGradientXActivation``; on the input embeddings this explains integer token ids. Captum's
  ``LLMGradientAttribution`` takes them as they are (with ``TextTokenInput``).
- ``LLMLRPAttribution``: Captum's ``LLMGradientAttribution`` for the two layer methods, which also takes
  ``TextTemplateInput`` (relevance summed over the tokens of each template value).

LRP relevance is input x gradient under the LRP rules, so each class runs Captum's own input x gradient (or
layer gradient x activation) with the rules bound to the model by ``attnlrp.lrp`` for that call only: nothing
is patched, and the model is restored when the call returns. The model bound is ``model=`` if given, else the
forward function itself (or the module a bound method belongs to), or the outermost transformers model inside
it: Captum's and Inseq's wrappers compute the target (a log-softmax, a selected logit) around the model, and
that part stays plain autograd, as in ``attnlrp.explain``. ``has_convergence_delta()`` is True:
``return_convergence_delta=True`` also returns y - Σ R per example (zero where the rules conserve, e.g. CP-LRP
on a model without biases).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..engine import lrp
from ..errors import InputError

try:
    from captum._utils.common import _run_forward
    from captum.attr import (
        InputXGradient,
        LayerGradientXActivation,
        LLMAttributionResult,
        LLMGradientAttribution,
        TextTemplateInput,
        TextTokenInput,
    )
except ModuleNotFoundError as error:  # pragma: no cover - the message is the point
    raise ImportError("attnlrp.interop.captum needs Captum: pip install 'captum>=0.8'") from error


def bound_module(forward_func: Callable, model: nn.Module | None, owner: str) -> nn.Module:
    """The module the rules bind to: ``model``, else the forward function's module (its outermost transformers
    model where it wraps one)."""
    if model is not None:
        return model
    module = forward_func if isinstance(forward_func, nn.Module) else getattr(forward_func, "__self__", None)
    if not isinstance(module, nn.Module):
        raise InputError(
            f"{owner} binds the LRP rules to a torch module, but its forward function "
            f"{getattr(forward_func, '__name__', type(forward_func).__name__)!r} is a plain function: "
            f"pass the model too, {owner}(forward_func, ..., model=model)."
        )
    outermost = [m for m in module.modules() if isinstance(m, PreTrainedModel)]
    outermost = [m for m in outermost if not any(m is not o and m in set(o.modules()) for o in outermost)]
    if len(outermost) > 1:
        names = ", ".join(type(m).__name__ for m in outermost)
        raise InputError(
            f"The forward function runs {len(outermost)} transformers models ({names}), and the rules would bind only "
            f"one: pass the module that holds them all, {owner}(forward_func, ..., model=module)."
        )
    return outermost[0] if outermost else module


def _logged_like_captum(method: Callable) -> Callable:
    """``method`` with ``__wrapped__``, as Captum's own ``attribute`` methods have under their usage-logging
    decorator: ``NoiseTunnel`` (SmoothGrad, VarGrad) calls ``attribute.__wrapped__(self, ...)``."""

    @functools.wraps(method)
    def attribute(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return attribute


def _rows(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def _detached(attributions: Any) -> Any:
    """Relevance as plain values (Captum's layer product keeps the graph of the layer's output)."""
    if isinstance(attributions, Tensor):
        return attributions.detach()
    return type(attributions)(_detached(a) for a in attributions)


class _Rules:
    """What both kinds share: the rule set, the binding for one call, the convergence delta."""

    rules: ClassVar[str]
    forward_func: Callable
    model: nn.Module | None

    @contextmanager
    def bound(self) -> Iterator[None]:
        with lrp(bound_module(self.forward_func, self.model, type(self).__name__), method=self.rules):
            yield

    def has_convergence_delta(self) -> bool:
        return True

    def compute_convergence_delta(self, attributions: Tensor | tuple[Tensor, ...], output: Tensor) -> Tensor:
        """y - Σ R per example: ``output`` holds the explained value of each example ([B] or [B, 1])."""
        parts = attributions if isinstance(attributions, tuple) else (attributions,)
        total = sum(_rows(part) for part in parts)
        return output.flatten().to(total.dtype) - total

    def finish(
        self, attributions: Any, inputs: Any, target: Any, additional_forward_args: Any, return_convergence_delta: bool
    ) -> Any:
        """The relevance Captum computed, detached; with ``return_convergence_delta`` also y - Σ R, from one more
        forward without gradients (while the rules are bound: they change no forward value)."""
        attributions = _detached(attributions)
        if not return_convergence_delta:
            return attributions
        batch = (inputs[0] if isinstance(inputs, tuple) else inputs).shape[0]
        with torch.no_grad():
            output = _run_forward(self.forward_func, inputs, target, additional_forward_args)
        if output.numel() != batch:
            raise InputError(
                f"The convergence delta needs one explained value per example, but the forward function gives "
                f"{output.numel()} for {batch} examples: return one output per example, or give the target that "
                "selects it (target=label)."
            )
        return attributions, self.compute_convergence_delta(attributions, output)


class InputRelevance(_Rules, InputXGradient):
    """LRP relevance of the forward function's floating inputs: Captum's ``InputXGradient`` under the rules."""

    def __init__(self, forward_func: Callable, model: nn.Module | None = None):
        super().__init__(forward_func)
        self.model = model

    @_logged_like_captum
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        """Relevance of each input element (the inputs' shapes); with ``return_convergence_delta`` also y - Σ R."""
        for x in inputs if isinstance(inputs, tuple) else (inputs,):
            if not torch.is_floating_point(x):
                raise InputError(
                    f"{type(self).__name__} explains floating inputs (embeddings, pixels), not {x.dtype} tensors: "
                    f"for token ids use Layer{type(self).__name__}(forward_func, model.get_input_embeddings())."
                )
        with self.bound():
            attributions = super().attribute(inputs, target, additional_forward_args)
            return self.finish(attributions, inputs, target, additional_forward_args, return_convergence_delta)


class LayerRelevance(_Rules, LayerGradientXActivation):
    """LRP relevance at a layer's output (or input): Captum's ``LayerGradientXActivation`` under the rules."""

    def __init__(self, forward_func: Callable, layer: nn.Module, model: nn.Module | None = None):
        super().__init__(forward_func, layer)
        self.model = model

    @_logged_like_captum
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        return_convergence_delta: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        """Relevance of each element of the layer's output (its input with ``attribute_to_layer_input``); with
        ``return_convergence_delta`` also y - Σ R. ``grad_kwargs`` go to ``torch.autograd.grad``, as in Captum."""
        if return_convergence_delta and not isinstance(self.layer, nn.Module):
            raise InputError(
                "The convergence delta compares the output with the relevance at one layer: give one layer, not a "
                "list, or leave return_convergence_delta out."
            )
        with self.bound():
            attributions = super().attribute(
                inputs, target, additional_forward_args, attribute_to_layer_input, grad_kwargs=grad_kwargs
            )
            return self.finish(attributions, inputs, target, additional_forward_args, return_convergence_delta)


class AttnLRP(InputRelevance):
    """AttnLRP (Achtibat et al., ICML 2024) in Captum: ``AttnLRP(forward_func, model=None).attribute(inputs, ...)``."""

    rules = "attnlrp"


class CPLRP(InputRelevance):
    """CP-LRP (Ali et al., ICML 2022) in Captum: ``CPLRP(forward_func, model=None).attribute(inputs, ...)``."""

    rules = "cp-lrp"


class LayerAttnLRP(LayerRelevance):
    """AttnLRP at a layer: ``LayerAttnLRP(forward_func, layer, model=None).attribute(inputs, ...)``."""

    rules = "attnlrp"


class LayerCPLRP(LayerRelevance):
    """CP-LRP at a layer: ``LayerCPLRP(forward_func, layer, model=None).attribute(inputs, ...)``."""

    rules = "cp-lrp"


# --- Captum's LLM flow, with template inputs ---------------------------------------------------------------


class LLMLRPAttribution(LLMGradientAttribution):
    """Captum's ``LLMGradientAttribution`` for ``LayerAttnLRP`` / ``LayerCPLRP``, taking ``TextTemplateInput`` too.

    ``TextTokenInput`` runs Captum's own flow unchanged. A ``TextTemplateInput`` runs it on the filled-in
    template's tokens, then sums the relevance of each value's tokens (a token belongs to the value it overlaps
    most; tokens of the fixed template text and special tokens belong to none, as in Captum's perturbation
    methods). A value mask groups values as Captum does: the values of a group share the group's relevance.
    Targets are the log-probabilities of the target tokens, as in ``LLMGradientAttribution``.
    """

    SUPPORTED_METHODS = (LayerRelevance,)
    SUPPORTED_INPUTS = (TextTokenInput, TextTemplateInput)

    def attribute(
        self, inp: Any, target: str | Tensor | None = None, gen_args: dict | None = None, **kwargs: Any
    ) -> LLMAttributionResult:
        if not isinstance(inp, TextTemplateInput):
            return super().attribute(inp, target, gen_args, **kwargs)
        prompt = inp.to_model_input()
        tokens = TextTokenInput(prompt, self.tokenizer)
        per_token = super().attribute(tokens, target, gen_args, **kwargs)
        owners = token_features(self.tokenizer, prompt, tokens.inp_tensor[0].tolist(), value_spans(inp))
        grouping = torch.zeros(len(owners), inp.n_itp_features, dtype=per_token.token_attr.dtype)
        for position, value in enumerate(owners):
            if value is not None:
                grouping[position, inp.formatted_mask[value] if inp.mask is not None else value] = 1.0
        token_attr = inp.format_attr(per_token.token_attr.cpu() @ grouping)
        return LLMAttributionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=inp.values,
            output_tokens=per_token.output_tokens,
            inp=inp,
        )


_MARK = re.compile("\ue000(\\d+)\ue001")


def value_spans(inp: TextTemplateInput) -> list[list[tuple[int, int]]]:
    """The character spans of each template value in the filled-in text (a value may fill several slots)."""
    marks = [f"\ue000{i}\ue001" for i in range(len(inp.values))]
    marked = inp.format_fn(**dict(zip(inp.dict_keys, marks))) if inp.dict_keys else inp.format_fn(*marks)
    spans: list[list[tuple[int, int]]] = [[] for _ in inp.values]
    text, start = [], 0
    for i, piece in enumerate(_MARK.split(marked)):
        if i % 2:  # a mark's index
            value = inp.values[int(piece)]
            spans[int(piece)].append((start, start + len(value)))
            piece = value
        text.append(piece)
        start += len(piece)
    if "".join(text) != inp.to_model_input():
        raise InputError(
            "The template changes the values it is given (it does more than put them in place), so their tokens "
            "can't be found in the text: use a format string, or a function that inserts the values unchanged."
        )
    return spans


def token_features(tokenizer, text: str, ids: list[int], spans: list[list[tuple[int, int]]]) -> list[int | None]:
    """For each token of ``text``, the template value it overlaps most (None: template text or a special token)."""
    try:
        encoding = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError as error:
        raise InputError(
            "TextTemplateInput needs the tokenizer's character offsets, which only fast tokenizers give: load it "
            "with AutoTokenizer.from_pretrained(..., use_fast=True)."
        ) from error
    if list(encoding["input_ids"]) != list(ids):
        raise InputError(
            "The tokenizer called on the text gives other ids than tokenizer.encode(text): the template's values "
            "can't be matched to the tokens the model reads."
        )
    owners: list[int | None] = []
    for start, end in encoding["offset_mapping"]:
        overlaps = [
            (max(min(end, stop) - max(start, begin) for begin, stop in value_span), value)
            for value, value_span in enumerate(spans)
            if value_span
        ]
        best = max(overlaps, default=(0, None))
        owners.append(best[1] if best[0] > 0 else None)
    return owners
