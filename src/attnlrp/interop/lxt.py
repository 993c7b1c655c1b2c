"""LXT-style entry points over the attnlrp engine, so LXT code moves over by changing imports.

LXT patches a transformers module process-wide. attnlrp never does: here the transformers module
is imported *from this package* instead, e.g. ``from attnlrp.compat import modeling_llama``. Its model
classes are the transformers classes, except that every model they load or build is bound to the engine
(instance hooks only); models created elsewhere are untouched. ``monkey_patch`` also accepts a model
instance directly.

    from attnlrp.compat import modeling_llama, monkey_patch, pdf_heatmap, clean_tokens
    monkey_patch(modeling_llama, verbose=True)            # or monkey_patch(modeling_llama, cp_LRP)
    model = modeling_llama.LlamaForCausalLM.from_pretrained(path)
"""

from __future__ import annotations

import copyreg
import importlib
import types
from typing import Any

from torch import nn

from ..engine import binding_of, lrp, rule_set
from ..errors import BindingError
from ..render.latex import pdf_heatmap
from ..results.tokens import clean_tokens as _clean_tokens

attnlrp = "attnlrp"
cp_LRP = "cp-lrp"

#: The attribute of a model bound by monkey_patch that holds the open lrp() block binding it (on the model
#: itself, not in a registry: a model no one holds any more is freed with its binding).
_BLOCK = "_attnlrp_compat_block"


def clean_tokens(tokens: list[str]) -> list[str]:
    """Readable token strings (``Ġ``/``▁``/``##``/byte tokens resolved), ready for ``pdf_heatmap``."""
    return _clean_tokens(list(tokens))


def _bind(model: nn.Module, method: str, verbose: bool) -> nn.Module:
    unpatch(model)
    block = lrp(model, method=method)
    binding = block.__enter__()
    binding.owner = "attnlrp.compat (monkey_patch, or a model loaded from a compat module)"
    binding.release = "release it first with attnlrp.compat.unpatch(model)."
    model.__dict__[_BLOCK] = block
    if verbose:
        print(f"attnlrp: {type(model).__name__} bound with {method} (undo with attnlrp.compat.unpatch(model))")
    return model


def unpatch(model: nn.Module) -> None:
    """Release a model bound by ``monkey_patch`` or loaded from a compat module."""
    block = model.__dict__.pop(_BLOCK, None)
    if block is not None:
        block.__exit__(None, None, None)


class _CompatModule(types.ModuleType):
    """A transformers modeling module whose PreTrainedModel classes bind the models they load."""

    def __init__(self, module: types.ModuleType):
        super().__init__(module.__name__.rsplit(".", 1)[-1], module.__doc__)
        self._module = module
        self._method = "attnlrp"
        self._verbose = False
        self._classes: dict[str, type] = {}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        from transformers import PreTrainedModel

        if isinstance(value, type) and issubclass(value, PreTrainedModel):
            if name not in self._classes:
                self._classes[name] = _binding_subclass(value, self)
            return self._classes[name]
        return value


def _binding_subclass(cls: type, owner: _CompatModule) -> type:
    def __init__(self, *args, **kwargs):  # a model built with the class itself is bound too, as LXT's are
        cls.__init__(self, *args, **kwargs)
        if type(self) is subclass:
            _bind(self, owner._method, owner._verbose)

    def from_pretrained(klass, *args, **kwargs):
        return _bind(super(subclass, klass).from_pretrained(*args, **kwargs), owner._method, owner._verbose)

    def _from_config(klass, *args, **kwargs):
        return _bind(super(subclass, klass)._from_config(*args, **kwargs), owner._method, owner._verbose)

    def __reduce_ex__(self, protocol):  # pickled (torch.save, deepcopy) as the transformers class it extends
        bound = binding_of(self)
        if bound is not None:
            raise BindingError(
                f"{cls.__name__} is bound by {bound.owner}, and its rules can't be saved or copied with it "
                f"(save_pretrained works bound): {bound.release}"
            )
        _, _, *rest = cls.__reduce_ex__(self, protocol)  # the state, rebuilt as an instance of ``cls``
        return (copyreg._reconstructor, (cls, object, None), *rest)

    subclass = type(
        cls.__name__,
        (cls,),
        {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__init__": __init__,
            "from_pretrained": classmethod(from_pretrained),
            "_from_config": classmethod(_from_config),
            "__reduce_ex__": __reduce_ex__,
        },
    )
    return subclass


def monkey_patch(target: Any, patch_map: str = "attnlrp", verbose: bool = False) -> Any:
    """Bind LRP rules, LXT-style.

    target: a module from ``attnlrp.compat`` (e.g. ``modeling_llama``): models it loads or builds afterwards
    are bound; or a model instance, bound at once. patch_map (LXT's name): ``attnlrp`` (default) or ``cp_LRP``.
    """
    method = rule_set(patch_map)
    if isinstance(target, nn.Module):
        return _bind(target, method, verbose)
    if isinstance(target, _CompatModule):
        target._method, target._verbose = method, verbose
        if verbose:
            print(f"attnlrp: models loaded from {target.__name__} will be bound with {method}")
        return target
    if isinstance(target, types.ModuleType):
        raise TypeError(
            f"attnlrp never patches {target.__name__} process-wide. Import it from attnlrp.compat instead "
            f"(from attnlrp.compat import {target.__name__.rsplit('.', 1)[-1]}), or pass a model instance: "
            "monkey_patch(model)."
        )
    raise TypeError(f"monkey_patch expects a compat module or a torch model, not {type(target).__name__}.")


def __getattr__(name: str) -> _CompatModule:
    """``attnlrp.compat.modeling_<family>``: the transformers module of that family, binding what it loads."""
    if not name.startswith("modeling_"):
        raise AttributeError(f"module 'attnlrp.compat' has no attribute {name!r}")
    family = name[len("modeling_") :]
    try:
        module = importlib.import_module(f"transformers.models.{family}.{name}")
    except ModuleNotFoundError as error:
        raise AttributeError(f"transformers has no module models.{family}.{name}") from error
    compat = _CompatModule(module)
    globals()[name] = compat
    return compat


__all__ = ["attnlrp", "clean_tokens", "cp_LRP", "monkey_patch", "pdf_heatmap", "unpatch"]
