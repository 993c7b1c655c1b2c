"""Which torch ops may run without a rule in the explicit mode, and which break it.

In the explicit mode the backward carries relevance, so an op's plain backward is a valid rule only
when it moves, copies or selects relevance without changing it: reshapes, casts, indexing,
concatenation. Sums, scalings and all non-linear ops need a rule.
"""

from __future__ import annotations

from ..engine import ops

#: Linear ops whose plain gradient adds up or scales relevance: they need the ε-rule (or the identity).
MIXING = frozenset(
    """
    add sub subtract neg negative sum nansum mean nanmean cumsum index_add scatter_add avg_pool1d
    avg_pool2d adaptive_avg_pool1d adaptive_avg_pool2d interpolate batch_norm instance_norm embedding_bag
    sum_to_size
    """.split()
)

#: Plain backward moves relevance unchanged (a permutation, copy, selection or cast).
SAFE = (ops.LINEAR - MIXING) | ops.DROPOUT

#: Plain backward is known to be wrong for relevance.
BREAKS = (
    MIXING
    | frozenset(ops.PRODUCTS)
    | frozenset(ops.ACTIVATIONS)
    | ops.STATISTICS
    | frozenset(
        """
        mul div rdiv rpow einsum softmax log_softmax sigmoid gelu leaky_relu exp log softplus elu selu
        layer_norm rms_norm group_norm normalize scaled_dot_product_attention logsumexp
        """.split()
    )
)


#: Tensor methods that are bookkeeping, not computation.
_NOT_OPS = frozenset("register_hook retain_grad retains_grad backward".split())


def classify(name: str) -> str | None:
    """'safe', 'breaks' or 'unknown' for a canonical op name (see ``ops.op_name``); None for shape queries."""
    if name in _NOT_OPS:
        return None
    if name in SAFE:
        return "safe"
    if name in BREAKS:
        return "breaks"
    if name.startswith(ops.PASSIVE_PREFIXES):
        return None
    return "unknown"
