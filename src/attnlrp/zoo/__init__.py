"""Real models built here (fine-tunes, conversions) and cached under ``attnlrp.loading.cache_root()``.

``attnlrp.load_model(name)`` looks each name of ``MODELS`` up here. A family is one module of this package
with its build and load functions; add its names to ``MODELS`` as ``name: "module:function"`` (the loader,
called with ``load_model``'s keyword arguments, returns ``(model, tokenizer)``). Modules are imported on
first use, so one family's missing packages never break another's.
"""

from __future__ import annotations

import importlib
from typing import Any

MODELS: dict[str, str] = {
    "minilm": "classifiers:load_base",
    "minilm-sentiment": "classifiers:load_sentiment",
    "minilm-ner": "classifiers:load_ner",
    "whisper-tiny.en": "whisper:load",
}


def load(name: str, **options: Any):
    """``(model, tokenizer)`` of the zoo model ``name`` (one of ``MODELS``), read from its cache."""
    module, function = MODELS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)(**options)
