"""The options every command that loads a model takes (which model, in which dtype, on which devices, quietly or
not), and the checked types of every --html and --method option."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --gguf-file, --dtype, --device and --quiet (read by ``attnlrp.cli._load``)."""
    p.add_argument("--model", help="a model folder or hub id (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--gguf-file", help="a GGUF file inside --model (converted once, then cached)")
    p.add_argument("--dtype", help="load the model in this dtype: float32 (default), bfloat16, float16, float64")
    p.add_argument("--device", help="where the model runs: cpu (default), cuda, cuda:1, or auto (spread over devices)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (loading the model, explaining a file)")


def html_path(text: str) -> str:
    """An --html option's path, refused unless it ends in .html or .htm (--html x.png wrote a page into x.png)."""
    path = Path(text)
    if path.suffix.lower() not in (".html", ".htm"):
        raise argparse.ArgumentTypeError(
            f"{text} does not end in .html or .htm, and --html writes an HTML page: give {path.stem or 'page'}.html "
            "(a figure, PNG, SVG or PDF, is saved from Python with .save_figure(path))"
        )
    return text


def method_option(text: str) -> str:
    """A --method: a method's name, with options as its label writes them ("integrated_gradients(steps=64)"), read
    by ``get_method`` (its label is returned); an unknown method or option, or a value it refuses, is a usage error."""
    from .methods import get_method

    try:
        return get_method(text).label
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
