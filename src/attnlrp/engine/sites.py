"""Where a model's inputs enter: one site per input kind, found from the model's own getters.

- a decoder or an encoder: ``"tokens"`` (``get_input_embeddings``);
- an encoder-decoder: ``"source"`` (the encoder's token embedding) and ``"target"`` (the decoder's); a speech
  encoder-decoder (Whisper) has ``"audio"`` instead of ``"source"``: the input features its first layer reads.

A site's tensor is the output of its module (the embeddings), or, for ``"audio"``, the module's input (the
features themselves). The binding reads every site (``binding.inputs``); task adapters tap them. A second
lookup of the same tokens (Gemma 3n's per-layer embedding) is no site of its own: ``module_rules`` credits its
relevance to the tokens' input embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .inputs import input_embeddings


@dataclass(frozen=True, eq=False)
class Site:
    """One input kind: the module where it enters, and the sub-model that calls it (the encoder, the
    decoder or the model), which tells kinds apart where one module serves several."""

    kind: str
    module: nn.Module
    owner: nn.Module
    reads_input: bool = False  # the kind is the module's input (audio features), not its output


def _part(model: nn.Module, name: str) -> nn.Module | None:
    getter = getattr(model, name, None)
    if not callable(getter):
        return None
    try:
        part = getter()
    except (NotImplementedError, AttributeError, TypeError):
        return None
    return part if isinstance(part, nn.Module) else None


def input_sites(model: nn.Module) -> list[Site]:
    """Every input site of ``model`` (none where it has no input embeddings it names)."""
    sites: list[Site] = []
    config = getattr(model, "config", None)
    encoder, decoder = _part(model, "get_encoder"), _part(model, "get_decoder")
    if getattr(config, "is_encoder_decoder", False) and encoder is not None and decoder is not None:
        source, target = input_embeddings(encoder), input_embeddings(decoder)
        if isinstance(source, nn.Embedding):
            sites.append(Site("source", source, encoder))
        elif source is not None:  # a convolution over audio features (Whisper's conv1)
            sites.append(Site("audio", source, encoder, reads_input=True))
        if target is not None:
            sites.append(Site("target", target, decoder))
    else:
        tokens = input_embeddings(model)
        if tokens is not None:
            sites.append(Site("tokens", tokens, model))
    return sites
