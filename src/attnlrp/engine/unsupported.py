"""Architectures the engine has no rules for, refused by name rather than explained approximately.

State-space, recurrent and linear-attention layers (Mamba, Mamba2, the Mamba layers of Jamba, Bamba,
Zamba, Falcon-H1 and other hybrids, RWKV, RecurrentGemma, gated delta nets) compute their output through
an input-dependent recurrence: exponentials and softplus of the input set its decay, and its gates
multiply the signal. The engine would give those ops a plain gradient, which is not LRP and does not
conserve relevance. MambaLRP (Jafari et al., NeurIPS 2024) gives rules for Mamba's; until attnlrp
implements such rules, ``lrp()`` refuses these models.
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import UnsupportedModelError

#: Module classes of state-space, recurrent and linear-attention layers (transformers' names).
STATE_SPACE = re.compile(
    r"Mamba\w*(Mixer|Layer|Block)$"  # Mamba, Mamba2, FalconMamba, Jamba, Zamba, GraniteMoeHybrid, NemotronH
    r"|^(Bamba|FalconH1)Mixer$"
    r"|^Rwkv(SelfAttention|FeedForward)$"
    r"|^RecurrentGemmaRecurrentBlock$"
    r"|GatedDeltaNet$|LinearDeltaAttention$|^Glm5NextTextLinearAttention$"  # Qwen3-Next, Kimi Linear, ...
    r"|^xLSTMModel$"
)


def refuse_unsupported(model: nn.Module, modules: list[tuple[str, nn.Module]]) -> None:
    """Raise ``UnsupportedModelError`` naming the model type and its first state-space or recurrent layer."""
    found = next(((path, m) for path, m in modules if STATE_SPACE.search(type(m).__name__)), None)
    if found is None:
        return
    path, layer = found
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    kind = f" (model type {model_type!r})" if model_type else ""
    raise UnsupportedModelError(
        f"{type(model).__name__}{kind} has state-space or recurrent layers ({type(layer).__name__} at "
        f"{path or '<root>'}), for which attnlrp has no LRP rules: their selective scan and gates would get a "
        "plain gradient, which does not conserve relevance. Explain a transformer model instead; MambaLRP "
        "(Jafari et al., NeurIPS 2024) rules for these layers are not implemented."
    )
