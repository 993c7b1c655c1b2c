"""Sliding-window attention at long context without a T x T mask.

transformers builds a dense boolean mask [B, 1, T, T] for the sliding-window layers of models such as Gemma 2
and 3 (one per forward, 1 GiB at 32k tokens), and torch's CPU attention turns it into a float mask of the
query's dtype in every call (4 GiB in float32). FlexAttention's block masks avoid that, but it has no
backward on the CPU. ``sliding_window_masks`` instead hands such a model a mask that holds no data: it
answers ``scaled_dot_product_attention`` by running the fused kernel over blocks of queries, each against
the keys its window reaches, with a small local mask. The result and its gradient are those of the dense
mask (the kernel's own backward runs on each block), so every rule of the engine applies unchanged: the
engine's attention rule scales q, k and v before the call reaches the mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Queries per block: each block reads at most BLOCK + window - 1 keys.
BLOCK = 512


class SlidingWindowMask(Tensor):
    """A causal sliding-window mask (query i sees keys i - window < j <= i) for one sequence of ``length``
    tokens without padding, which only ``scaled_dot_product_attention`` reads. Any other use of it (where
    transformers would read mask values) is an error, never a silently different mask."""

    window: int
    length: int

    @staticmethod
    def __new__(cls, window: int, length: int) -> SlidingWindowMask:
        mask = Tensor._make_subclass(cls, torch.empty(0, dtype=torch.bool), False)
        mask.window, mask.length = window, length
        return mask

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"SlidingWindowMask(window={self.window}, length={self.length})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            return _banded_attention(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("to", "detach", "cpu", "cuda", "__get__", "__reduce_ex__", "__deepcopy__", "__repr__"):
            result = super().__torch_function__(func, types, args, kwargs)
            if isinstance(result, SlidingWindowMask):
                result.window, result.length = args[0].window, args[0].length
            return result
        raise TypeError(
            f"{func.__name__} got a SlidingWindowMask, which only scaled_dot_product_attention reads: this model "
            "reads its attention mask in another way, so explain it without attnlrp's sliding-window masks."
        )


def _banded_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: SlidingWindowMask,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    window, length = attn_mask.window, attn_mask.length
    if query.shape[-2] != length or key.shape[-2] != length or is_causal:
        raise ValueError(
            f"A SlidingWindowMask for {length} tokens met queries of {query.shape[-2]} and keys of {key.shape[-2]} "
            "tokens: it serves one forward over the whole sequence, without a key-value cache."
        )
    blocks = []
    for start in range(0, length, BLOCK):
        stop = min(start + BLOCK, length)
        first = max(0, start - window + 1)
        q_at = torch.arange(start, stop, device=query.device)[:, None]
        k_at = torch.arange(first, stop, device=query.device)[None, :]
        local = (k_at <= q_at) & (k_at > q_at - window)
        blocks.append(
            F.scaled_dot_product_attention(
                query[..., start:stop, :],
                key[..., first:stop, :],
                value[..., first:stop, :],
                attn_mask=local,
                dropout_p=dropout_p,
                scale=scale,
                enable_gqa=enable_gqa,
            )
        )
    return torch.cat(blocks, dim=-2)


#: Model types checked to take a precomputed mask per layer type and to attend causally in their sliding-window
#: layers (Gemma 3's vision-language model is not among them: its image tokens see each other both ways).
CAUSAL_TYPES = frozenset({"gemma3_text"})


def sliding_window_masks(model: nn.Module, length: int) -> dict[str, Tensor | None] | None:
    """The ``attention_mask=`` that runs unpadded sequences of ``length`` tokens through ``model`` with no T x T
    mask: ``{"full_attention": None, "sliding_attention": SlidingWindowMask(...)}`` (full layers then use the
    causal kernel with no mask at all). None where the model has no sliding window shorter than the sequence,
    runs another attention implementation than SDPA, or is not of ``CAUSAL_TYPES`` (its own masks are right)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in CAUSAL_TYPES:
        return None
    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or ())
    if (
        not window
        or window >= length
        or "sliding_attention" not in types
        or not types <= {"sliding_attention", "full_attention"}
    ):
        return None
    if config._attn_implementation != "sdpa" or getattr(config, "use_bidirectional_attention", False):
        return None
    return {"full_attention": None, "sliding_attention": SlidingWindowMask(window, length)}
