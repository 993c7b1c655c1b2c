"""Every error and warning attnlrp raises on purpose, in one place.

Each message names the problem and the fix. They subclass the built-in exception a caller would
expect (``ValueError`` for bad arguments, ``RuntimeError`` for a model that can't be bound), so
``except ValueError`` keeps working, and ``except attnlrp.AttnLRPError`` catches them all.
"""

from __future__ import annotations


class AttnLRPError(Exception):
    """Base class of attnlrp's own errors."""


class InputError(AttnLRPError, ValueError):
    """An input (prompt, image, argument) that can't be explained as given."""


class TargetError(AttnLRPError, ValueError):
    """A target that can't be resolved against the tokenizer or the model's outputs."""


class MethodError(AttnLRPError, ValueError):
    """An unknown attribution method, or one that can't run on this model or task."""


class ResultFileError(AttnLRPError, ValueError):
    """A file that is not a readable attnlrp result."""


class BindingError(AttnLRPError, RuntimeError):
    """The model can't be bound as asked."""


class UnsupportedModelError(BindingError):
    """A model whose layers attnlrp has no LRP rules for (state-space and recurrent layers), refused by name."""


class UnruledOpError(AttnLRPError, RuntimeError):
    """An op without an LRP rule ran inside a model bound with ``strict=True``."""


class QuantizedLayerError(AttnLRPError, RuntimeError):
    """A quantized layer the linear rule can't cover: an unknown backend, or a weight it can't dequantize."""


class ModelNotBuiltError(AttnLRPError, FileNotFoundError):
    """A model of ``attnlrp.zoo`` (fine-tuned or converted here) that has not been built into the cache yet."""


class LatentError(AttnLRPError, ValueError):
    """A latent site, unit, corpus or sparse autoencoder that can't be used as given (``attnlrp.latent``)."""


class SteeringError(BindingError):
    """A model that can't be steered as asked: already steered, or bound by an ``lrp`` block."""


class UnruledOpWarning(UserWarning):
    """Ops without an LRP rule ran inside a bound model; their relevance is a plain gradient."""


class ZennitRelevanceWarning(UserWarning):
    """A Zennit rule gave relevance to exactly-zero inputs, which ``x * grad`` can't carry."""
