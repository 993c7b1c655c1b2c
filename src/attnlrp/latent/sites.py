"""Sites and units: where latent features are read in a model, and what one unit of a site is.

A site is one module of the model and the units it gives:

- ``neurons``: the input of an MLP's down projection, one unit per intermediate neuron;
- ``heads``: the input of an attention output projection, one unit per head (its activation is the norm of the
  head's output vector, its relevance the sum over the head's dimensions);
- ``residual``: the dimensions of a module's output (a decoder layer's output is the residual stream);
- ``sae``: the latents of a sparse autoencoder reading a module's output (``attnlrp.latent.SAE``).

Site patterns are module-path globs, as in ``attnlrp.Recorder`` (``"model.layers.*.mlp.down_proj"``); the kind
follows from the module, and ``"pattern@kind"`` overrides it. A unit is ``(site name, index)``.

This module sits at the engine's level (it imports only the engine and the errors), so that ``explain`` can
record sites in the same backward as its input relevance.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.recorder import path_matches
from ..errors import LatentError
from .sae import SAE

KINDS = ("neurons", "heads", "residual", "sae")

#: Names of MLP down projections (their input is the MLP's neurons).
_DOWN = frozenset({"down_proj", "fc2", "dense_4h_to_h", "w2", "fc_out", "w_out", "c_proj", "wo"})
#: Names of attention output projections (their input is the heads' outputs, side by side).
_OUT = frozenset({"o_proj", "out_proj"})


@dataclass(frozen=True)
class Site:
    """One module of a model and the units it gives. ``name`` keys atlases and results."""

    path: str
    kind: str
    width: int
    module: nn.Module = field(compare=False, repr=False)
    sae: SAE | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The module path, with ``@kind`` where the kind is not the one the module implies (``@sae`` for SAEs)."""
        return self.path if self.kind == infer_kind(self.path, self.module) else f"{self.path}@{self.kind}"

    def check_unit(self, index: int) -> int:
        """``index`` as an int, or a LatentError where it is not a unit of this site."""
        return unit_index(index, self.name, self.kind, self.width)


def unit_index(index: Any, site: str, kind: str, width: int) -> int:
    """``index`` as an int, or a LatentError where it is not one of the ``width`` units of ``site``."""
    try:
        if isinstance(index, bool):
            raise TypeError
        index = operator.index(index)
    except TypeError:
        raise LatentError(f"A unit index is an integer, got {index!r} for site {site}.") from None
    if not 0 <= index < width:
        units = {"sae": "latents", "residual": "dimensions"}.get(kind, kind)
        raise LatentError(f"Unit {index} is out of range for site {site}: it has {width} {units} (0..{width - 1}).")
    return index


SiteSpec = str | Site | SAE


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or of transformers' Conv1D (weight [in, out])."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def infer_kind(path: str, module: nn.Module) -> str:
    """The kind a module implies: heads at attention output projections, neurons at MLP down projections, else
    the residual (output) dimensions."""
    names = path.split(".")
    if _is_linear(module):
        last, parents = names[-1], names[:-1]
        in_attention = any("attn" in n or "attention" in n for n in parents)
        if last in _OUT or (in_attention and last in {"c_proj", "dense", "o", "wo"}):
            return "heads"
        if last in _DOWN or (last == "dense" and parents[-1:] == ["output"]):
            return "neurons"
    return "residual"


def _config_value(model: nn.Module, *names: str) -> int | None:
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        for name in names:
            value = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def _width(model: nn.Module, path: str, module: nn.Module, kind: str) -> int:
    if kind == "neurons":
        if not _is_linear(module):
            raise LatentError(f"{path} is a {type(module).__name__}; neuron sites are the inputs of linear layers.")
        return _features(module)[0]
    if kind == "heads":
        heads = _config_value(model, "num_attention_heads", "n_head", "num_heads")
        if not _is_linear(module) or not heads or _features(module)[0] % heads:
            raise LatentError(
                f"Can't split the input of {path} into attention heads; head sites are attention output "
                "projections (o_proj, out_proj) of models whose config gives num_attention_heads."
            )
        return heads
    return _output_width(model, path, module)


def _output_width(model: nn.Module, path: str, module: nn.Module) -> int:
    """The width of a module's output: a linear layer's out features, an embedding's or a norm's size; a block
    with weights (a decoder layer, an MLP, an attention block) gives the hidden size. A module without weights
    (an activation, dropout, rotary embedding) has its input's width, which can't be told here: refused."""
    if _is_linear(module):
        return _features(module)[1]
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, Sequence) and shape and isinstance(shape[-1], int):
        return shape[-1]
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 1 and not list(module.children()):
        return weight.shape[0]  # a norm (RMSNorm) scales its output dimension by dimension
    if next(module.parameters(), None) is None:
        raise LatentError(
            f"Can't tell the width of {path}'s output: a {type(module).__name__} has no weights to tell it by; give "
            "the linear layer that reads it (its input is a neuron site) or the block it sits in."
        )
    hidden = _config_value(model, "hidden_size", "n_embd", "d_model")
    if hidden is None:
        raise LatentError(
            f"Can't tell the width of {path}'s output from the model's config; give a linear layer as the site."
        )
    return hidden


def _generalised(path: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", path)


def _no_match(model: nn.Module, pattern: str, paths: Sequence[str]) -> LatentError:
    shapes = list(dict.fromkeys(_generalised(p) for p in paths))
    close = difflib.get_close_matches(pattern, shapes, n=4, cutoff=0.5) or difflib.get_close_matches(
        pattern, paths, n=4, cutoff=0.5
    )
    hint = f"close matches: {', '.join(close)}" if close else f"paths look like {', '.join(shapes[1:5])}"
    return LatentError(f"The site pattern {pattern!r} matches no module of {type(model).__name__}; {hint}.")


def _split_kind(spec: str) -> tuple[str, str | None]:
    pattern, _, kind = spec.partition("@")
    if kind and kind not in KINDS[:3]:
        raise LatentError(
            f"Unknown site kind {kind!r} in {spec!r}: use @neurons, @heads or @residual (an SAE is given as the SAE)."
        )
    return pattern, kind or None


def sae_site(model: nn.Module, sae: SAE) -> Site:
    """The site of an SAE's latents: it reads the output of the module ``sae.site``, whose width must be its input's."""
    modules = dict(model.named_modules())
    if sae.site not in modules:
        raise _no_match(model, sae.site, list(modules))
    module = modules[sae.site]
    width = _width(model, sae.site, module, "residual")
    if width != sae.d_in:
        raise LatentError(
            f"The SAE reads {sae.d_in} dimensions, but {sae.site} of {type(model).__name__} gives {width}: it was "
            "trained for another site or model; train or load one for this site."
        )
    return Site(sae.site, "sae", sae.width, module, sae)


def resolve(model: nn.Module, spec: SiteSpec | Iterable[SiteSpec]) -> list[Site]:
    """The sites a spec names: a pattern (``"model.layers.*.mlp.down_proj"``, ``"...@heads"``), an SAE, a Site,
    or a list of these; in the order given (a pattern's matches in module order), without repeats."""
    if isinstance(spec, (str, Site, SAE)):
        spec = [spec]
    try:
        specs = list(spec)
    except TypeError:
        raise LatentError(
            f"A site is a module-path pattern (e.g. 'model.layers.*.mlp.down_proj'), an SAE or a Site, or a list of "
            f"these; not {spec!r}."
        ) from None
    if not specs:
        raise LatentError("No site was given: name one, e.g. 'model.layers.*.mlp.down_proj'.")
    named = list(model.named_modules())
    paths = [p for p, _ in named]
    found: dict[str, Site] = {}
    for item in specs:
        if isinstance(item, Site):
            if not any(m is item.module for _, m in named):
                raise LatentError(
                    f"The site {item.name} was resolved on another model: resolve it on this one "
                    f"(resolve(model, {item.name!r})) or give its name."
                )
            found.setdefault(item.name, item)
            continue
        if isinstance(item, SAE):
            site = sae_site(model, item)
            found.setdefault(site.name, site)
            continue
        if not isinstance(item, str):
            raise LatentError(f"A site is a module-path pattern, an SAE or a Site, not {type(item).__name__}.")
        pattern, kind = _split_kind(item)
        matched = [(p, m) for p, m in named if p and path_matches(pattern, p)]
        if not matched:
            raise _no_match(model, pattern, paths)
        for path, module in matched:
            chosen = kind or infer_kind(path, module)
            site = Site(path, chosen, _width(model, path, module, chosen), module)
            found.setdefault(site.name, site)
    return list(found.values())


def resolve_one(model: nn.Module, spec: SiteSpec) -> Site:
    """The single site a spec names (a unit's site names one module)."""
    sites = resolve(model, spec)
    if len(sites) != 1:
        raise LatentError(
            f"A unit's site names one module, but {spec!r} matches {len(sites)} "
            f"({', '.join(s.name for s in sites[:4])}{', ...' if len(sites) > 4 else ''})."
        )
    return sites[0]


def _precise(x: Tensor) -> Tensor:
    """Recorded values: float32, or float64 where the model computes in float64."""
    return x if x.dtype == torch.float64 else x.float()


def _first(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _with_first(output: Any, value: Tensor) -> Any:
    return value if isinstance(output, Tensor) else (value,) + tuple(output[1:])


class SiteRecorder:
    """Within the block, every forward records each site's activations ``activation[name]`` [B, T, U] and, once
    a backward has run, its relevance ``relevance[name]`` [B, T, U] (float32, or float64 for float64 models; relevance is a * g, summed within
    each head for head sites).

    SAE sites run their SAE inside the forward: the module's output h becomes decode(encode(h)) with the
    reconstruction error added back as a constant, so the forward is unchanged and relevance reaches the input
    only through the latents (a residual site of the same module records this output, in any site order); ``error[name]`` [B, T] holds the error's relevance and ``bias[name]`` [B, T]
    the decoder bias's. ``keep``: also keep the live site tensors in ``live[name]``, for backward passes that
    start at a site.
    """

    def __init__(self, model: nn.Module, sites: Sequence[Site], keep: bool = False):
        self.model = model
        self.sites = list(sites)
        self.keep = keep
        self.activation: dict[str, Tensor] = {}
        self.relevance: dict[str, Tensor] = {}
        self.error: dict[str, Tensor] = {}
        self.bias: dict[str, Tensor] = {}
        self.live: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> SiteRecorder:
        # SAE hooks first: a residual site of the same module then watches the output the rest of the model gets
        # (the SAE's replacement), whatever the order the sites were given in
        for site in sorted(self.sites, key=lambda s: s.kind != "sae"):
            if site.kind in ("neurons", "heads"):
                self._handles.append(site.module.register_forward_pre_hook(self._input_hook(site)))
            else:
                self._handles.append(site.module.register_forward_hook(self._output_hook(site)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        for store in (self.activation, self.relevance, self.error, self.bias, self.live):
            store.clear()

    def _watch(self, site: Site, x: Tensor, activation: Tensor) -> None:
        if activation.shape[-1] != site.width:
            raise LatentError(
                f"Site {site.name} was resolved with {site.width} units, but the model gives it "
                f"{activation.shape[-1]}: give a linear layer or a decoder layer as the site."
            )
        self.activation[site.name] = activation
        if self.keep:
            self.live[site.name] = x
        if x.requires_grad and torch.is_grad_enabled():
            heads = site.width if site.kind == "heads" else None
            value = x.detach()  # the hook must not hold x itself: x -> its hook -> x would keep the graph alive

            def store(grad: Tensor) -> None:
                r = _precise(value * grad)
                self.relevance[site.name] = r.unflatten(-1, (heads, -1)).sum(-1) if heads else r

            x.register_hook(store)

    def _input_hook(self, site: Site):
        def hook(module, args):
            if not args or not isinstance(args[0], Tensor):
                return None
            x = args[0]
            with torch.no_grad():
                a = _precise(x.detach())
                if site.kind == "heads":
                    a = a.unflatten(-1, (site.width, -1)).norm(dim=-1)
            self._watch(site, x, a)
            return None

        return hook

    def _output_hook(self, site: Site):
        def hook(module, args, output):
            h = _first(output)
            if h is None:
                return None
            if site.kind == "residual":
                self._watch(site, h, _precise(h.detach()))
                return None
            return self._through_sae(site, output, h)

        return hook

    def _through_sae(self, site: Site, output: Any, h: Tensor) -> Any:
        sae = site.sae
        z = sae.encode(h)
        self._watch(site, z, _precise(z.detach()))
        if not (z.requires_grad and torch.is_grad_enabled()):
            return None
        recon = sae.decode(z)
        out = h.detach() + (recon - recon.detach())  # exactly h; the backward reaches h through the latents only
        error = (h - recon).detach()

        def store(grad: Tensor) -> None:
            self.error[site.name] = _precise(error * grad).sum(-1)
            self.bias[site.name] = _precise(sae.b_dec.detach().to(grad) * grad).sum(-1)

        out.register_hook(store)
        return _with_first(output, out)
