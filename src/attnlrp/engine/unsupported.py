"""Architectures the engine has no rules for, refused by name rather than explained approximately.

State-space, recurrent and linear-attention layers (Mamba, Mamba2, the Mamba layers of Jamba, Bamba,
Zamba, Falcon-H1 and other hybrids, RWKV, RecurrentGemma, gated delta nets) compute their output through
an input-dependent recurrence: exponentials and softplus of the input set its decay, and its gates
multiply the signal. The engine would give those ops a plain gradient, which is not LRP and does not
conserve relevance. MambaLRP (Jafari et al., NeurIPS 2024) gives rules for Mamba's; until attnlrp
implements such rules, ``lrp()`` refuses these models.

Compiled models are refused too: the rules run op by op in Python, and a graph that ``torch.compile`` traced
runs its ops without them (the relevance would be a plain gradient, or the compiler fails on the scope's hooks).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import InputError, UnsupportedModelError

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


#: Why a compiled model can't be explained (the end of every refusal of one).
_COMPILED_WHY = "the rules run op by op, where a compiled graph would skip them."


def refuse_compiled(model: nn.Module) -> None:
    """Raise ``InputError`` for a model that ``torch.compile`` wrapped (``torch.compile(model)``) or compiled in
    place (``model.compile()``, or a compiled submodule), naming how to get the plain model back."""
    for path, module in model.named_modules():
        original = getattr(module, "_orig_mod", None)
        if isinstance(original, nn.Module):  # torch.compile's wrapper, OptimizedModule
            where = "" if not path else f" at {path} of {type(model).__name__}"
            raise InputError(
                f"{type(original).__name__}{where} was given compiled (torch.compile): explain the model itself "
                f"(compiled._orig_mod); {_COMPILED_WHY}"
            )
        if getattr(module, "_compiled_call_impl", None) is not None:  # nn.Module.compile, in place
            name = f"model.{path}" if path else "model"
            where = "" if not path else f" at {path} of {type(model).__name__}"
            raise InputError(
                f"{type(module).__name__}{where} was compiled in place ({name}.compile()): undo it with "
                f"{name}._compiled_call_impl = None, or explain an instance that was never compiled; {_COMPILED_WHY}"
            )


#: Dynamo's frame callback, set while a compiled call runs (in the frames it runs eagerly too); where torch has no
#: reader for it, only tracing is caught.
_frame_callback = getattr(torch._C._dynamo.eval_frame, "get_eval_frame_callback", lambda: None)


def refuse_compiling() -> None:
    """Raise ``InputError`` where the bound model runs inside ``torch.compile`` (the model was bound, and its
    compiled wrapper called). While Dynamo traces, raising makes it run the frame eagerly instead, and there its
    frame callback shows the compiled call."""
    if torch.compiler.is_compiling() or _frame_callback() is not None:
        raise InputError(
            "A bound model ran inside torch.compile (its compiled wrapper was called, or a compiled function "
            f"called it): call the model itself inside the lrp block; {_COMPILED_WHY}"
        )
