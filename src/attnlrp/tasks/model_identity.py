"""Telling models apart by their weights, not their names: an atlas or a dataset run's results of one checkpoint
are refused by another saved under the same folder name (a fine-tune), and taken by the same weights under
another name or path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch
from torch import nn

from ..engine.devices import offloaded_weights
from ..errors import InputError

#: Values sampled from each parameter, evenly spread over it.
SAMPLES = 4
#: Relative difference within which two samples are the same weight: bfloat16's rounding is at most 2⁻⁹ (0.2%),
#: while a fine-tune moves some of the sampled values more than this.
TOLERANCE = 4e-3


def weight_sample(model: nn.Module) -> dict[str, list[float]]:
    """A few values of each floating-point parameter of ``model`` (matrices, and the vectors of biases and norms,
    which a fine-tune may change alone) by parameter name, in the dtype the model computes in. A parameter that a
    device map offloaded (on the meta device until its module runs) is read where accelerate's hook loads it from
    (CPU memory or the offload folder), so a model gives the same sample with or without a device map; one on the
    meta device that no hook loads is an InputError (its weights are nowhere to be read, and leaving it out would
    make models that differ there look the same). Quantized (integer) parameters are left out."""
    stores = offloaded_weights(model)
    sample = {}
    for name, param in model.named_parameters():
        if param.dim() < 1 or not param.is_floating_point():
            continue
        values = _stored(name, stores) if param.is_meta else param.detach()
        flat = values.to(param.dtype).reshape(-1)
        index = torch.arange(SAMPLES, device=flat.device) * (flat.numel() - 1) // (SAMPLES - 1)  # exact integers
        sample[name] = [float(v) for v in flat[index].float().cpu()]
    return sample


def _stored(name: str, stores: dict[str, Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """The offloaded values of parameter ``name``, from the map of the innermost module above it that holds it."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        store = stores.get(".".join(parts[:cut]))
        if store is not None:
            try:
                return store[".".join(parts[cut:])]
            except KeyError:
                continue
    raise InputError(
        f"Parameter {name} is on the meta device and no accelerate hook loads it, so the model's weights can't be "
        "told apart from another's: load the model with its weights (from_pretrained without device_map='meta', "
        "or with an offloading device map and offload_folder)."
    )


def same_weights(a: dict[str, list[float]], b: dict[str, list[float]]) -> bool | None:
    """Whether two samples are of the same weights (in any dtype); None where they share no matrix to compare."""
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    for name in common:
        x, y = torch.tensor(a[name], dtype=torch.float64), torch.tensor(b[name], dtype=torch.float64)
        if x.shape != y.shape or not torch.allclose(x, y, rtol=TOLERANCE, atol=TOLERANCE * float(x.abs().max())):
            return False
    return True


def weights_digest(model: nn.Module) -> str:
    """The sample of ``weight_sample`` as a short digest: equal for the same weights in the same dtype."""
    return hashlib.sha256(json.dumps(weight_sample(model), sort_keys=True).encode()).hexdigest()[:16]
