"""What a unit writes: its direction in the residual stream, read through the unembedding (promoted and
suppressed output tokens).

The reading is a logit lens: the direction times the final norm's weight, through the output embedding; the
norm's scale (which depends on the whole residual stream) is left out. Heads have no fixed direction (their
output depends on the values they read), so they get none.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .sites import Site

_FINAL_NORMS = frozenset({"norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f"})


def _final_norm_weight(model: nn.Module, hidden: int) -> Tensor | None:
    found = None
    for path, module in model.named_modules():
        names = path.split(".")
        if names[-1] in _FINAL_NORMS and not any(n.isdigit() for n in names):
            found = module
    weight = getattr(found, "weight", None)
    if not isinstance(weight, Tensor) or weight.shape != (hidden,):
        return None
    return 1 + weight if "Gemma" in type(found).__name__ else weight


def output_directions(model: nn.Module, site: Site) -> Tensor | None:
    """Each unit's direction in the residual stream [U, H], or None where a unit has no fixed one (heads) or the
    site doesn't write into the residual stream."""
    unembedding = getattr(model, "get_output_embeddings", lambda: None)()
    if unembedding is None or not isinstance(getattr(unembedding, "weight", None), Tensor):
        return None
    hidden = unembedding.weight.shape[1]
    if site.kind == "neurons":
        weight = site.module.weight
        directions = weight.t() if isinstance(site.module, nn.Linear) else weight  # Conv1D: [in, out]
    elif site.kind == "residual":
        directions = torch.eye(site.width, dtype=unembedding.weight.dtype)
    elif site.kind == "sae":
        directions = site.sae.W_dec
    else:
        return None
    return directions.detach() if directions.shape[1] == hidden else None


def promoted_tokens(
    model: nn.Module, site: Site, units: list[int] | None = None, count: int = 10, chunk: int = 256
) -> dict[str, Tensor]:
    """Per unit (of ``units``, else all), the ``count`` output tokens its direction promotes and suppresses most:
    ``up_ids``, ``up_values``, ``down_ids``, ``down_values`` [U, count]; empty where the site has no directions.
    A whole site costs a [U, H] x [H, vocabulary] product."""
    directions = output_directions(model, site)
    if directions is None:
        return {}
    if units is not None:
        directions = directions[units]
    unembedding = model.get_output_embeddings().weight.detach()
    weight = _final_norm_weight(model, unembedding.shape[1])
    out: dict[str, list[Tensor]] = {"up_ids": [], "up_values": [], "down_ids": [], "down_values": []}
    with torch.no_grad():
        for start in range(0, len(directions), chunk):
            d = directions[start : start + chunk].to(unembedding)
            if weight is not None:
                d = d * weight.detach().to(d)
            logits = d @ unembedding.t()
            up, down = logits.topk(count, dim=-1), (-logits).topk(count, dim=-1)
            out["up_ids"].append(up.indices.cpu())
            out["up_values"].append(up.values.float().cpu())
            out["down_ids"].append(down.indices.cpu())
            out["down_values"].append(-down.values.float().cpu())
    return {key: torch.cat(v) for key, v in out.items()}
