"""``attnlrp.audit``: run a model once under the rules and report every op that had none, and every custom
``torch.autograd.Function`` (its forward runs with gradients off, where the rules can't see it, and its
backward is its own: a plain gradient, whatever the function computes)."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UnruledOpWarning
from .binding import Binding, lrp
from .inputs import input_embeddings
from .unsupported import refuse_compiled


@dataclass
class AuditReport:
    """What ran inside the model: unruled ops with their module paths, and the rules applied."""

    method: str
    unruled: list[tuple[str, str, int]] = field(default_factory=list)
    rules: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.unruled

    def __str__(self) -> str:
        lines = [
            f"attnlrp audit ({self.method}): "
            + (
                "every op had a rule or is linear"
                if self.ok
                else f"{len(self.unruled)} op(s) without a rule (their relevance is a plain gradient)"
            )
        ]
        for path, op, count in self.unruled:
            lines.append(f"  UNRULED  {op:<28} at {path or '<root>'}  ({count}x)")
        for rule, count in sorted(self.rules.items()):
            lines.append(f"  rule     {rule:<40} {count}x")
        return "\n".join(lines)

    __repr__ = __str__

    @classmethod
    def of(cls, binding: Binding) -> AuditReport:
        """The report of what ran in ``binding`` while it was counting."""
        report = cls(method=binding.method)
        report.unruled = [(path, op, n) for (path, op), n in binding.unruled_ops.items()]
        for (_, rule), n in binding.ruled_ops.items():
            report.rules[rule] += n
        return report


def example_arguments(model: nn.Module, example_inputs: Any) -> tuple[tuple, dict]:
    """Forward arguments from ``example_inputs`` (float tensors made to require grad); by default eight token ids
    (a speech encoder's log-mel features instead), and four decoder ids for an encoder-decoder."""
    if example_inputs is None:
        return (), {**_example_source(model), **example_decoder(model)}
    if isinstance(example_inputs, dict):
        kwargs = {k: _with_grad(v) for k, v in example_inputs.items()}
        return (), kwargs
    if isinstance(example_inputs, Tensor):
        return (_with_grad(example_inputs),), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(_with_grad(x) for x in example_inputs), {}
    raise TypeError(
        f"example_inputs must be a tensor, a tuple of tensors or a dict, not {type(example_inputs).__name__}."
    )


def _example_source(model: nn.Module) -> dict[str, Tensor]:
    config = getattr(model, "config", None)
    if getattr(model, "main_input_name", "input_ids") == "input_features":  # Whisper: mel bins x the frames it hears
        bins, positions = getattr(config, "num_mel_bins", None), getattr(config, "max_source_positions", None)
        if isinstance(bins, int) and isinstance(positions, int):
            features = torch.randn(1, bins, 2 * positions, generator=torch.Generator().manual_seed(0))
            return {"input_features": _with_grad(features.to(next(model.parameters()).dtype))}
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":  # an image model: one image it takes
        size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
        if isinstance(size, int) and isinstance(channels, int):
            pixels = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
            return {"pixel_values": _with_grad(pixels.to(next(model.parameters()).dtype))}
    embeddings = input_embeddings(model)
    if embeddings is None or not hasattr(embeddings, "num_embeddings"):
        raise ValueError(
            f"{type(model).__name__} has no token embeddings to build example inputs from: "
            "pass example_inputs (a tensor, or a dict of forward arguments)."
        )
    return {"input_ids": torch.arange(8).remainder(embeddings.num_embeddings).unsqueeze(0)}


def example_decoder(model: nn.Module) -> dict[str, Tensor]:
    """An encoder-decoder's decoder ids: its start token and three more (none for other models)."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False):
        return {}
    vocab = getattr(config, "vocab_size", None) or 4
    start = getattr(config, "decoder_start_token_id", None)
    ids = torch.tensor([[start if isinstance(start, int) else 0, 1, 2, 3]]).remainder(vocab)
    return {"decoder_input_ids": ids}


def _with_grad(x: Any) -> Any:
    if isinstance(x, Tensor) and x.is_floating_point() and not x.requires_grad:
        return x.detach().clone().requires_grad_()
    return x


def audit(model: nn.Module, example_inputs: Any = None, method: str = "attnlrp") -> AuditReport:
    """Run ``model`` once on ``example_inputs`` inside ``lrp(model, method)`` and report its ops.

    example_inputs: token ids, a float input tensor, a tuple of them, or a dict of forward
    arguments; by default eight token ids. Float inputs are made to require grad.
    """
    refuse_compiled(model)
    args, kwargs = example_arguments(model, example_inputs)
    with lrp(model, method=method) as binding, warnings.catch_warnings():
        warnings.simplefilter("ignore", UnruledOpWarning)
        binding.counting = True
        with torch.enable_grad():
            model(*args, **kwargs)
    return AuditReport.of(binding)
