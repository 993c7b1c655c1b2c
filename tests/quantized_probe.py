"""Relevance of a quantized model against the same model dequantised to float, before and after ``generate``.

``models``: for each backend configuration, load the bundled SmolLM2-135M-Instruct quantized
(``attnlrp.load_model(quantization_config=...)``, or a GPTQ/AWQ checkpoint GPTQModel makes once), build its float
twin (the float model with every quantized layer's weight replaced by that layer's dequantized weight), and compare
their AttnLRP relevance on a few prompts, before and after one ``model.generate`` (and, after it, their Input x
Gradient). ``layers``: each backend on one
small layer, its input gradient inside ``lrp()`` against the one its kernel implies.

Runs in .venv-quant, which holds the backends (made by `make test`): tests/test_quantized.py and
benchmarks/quantized.py drive it there.

usage: python tests/quantized_probe.py models [NAME ...] | layers [NAME ...]   (one JSON object per line)
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import torch

import attnlrp
from attnlrp.engine import quantized
from attnlrp.loading import cache_dir_for, cache_root, default_model_file

PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "Alice gave Bob a book because he wanted to read it. The book was given to",
    "def fibonacci(n):\n    if n < 2:\n        return",
)


def _bnb(**options):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**options)


def _torchao(kind: str):
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup
    from transformers import TorchAoConfig

    if kind == "int8":
        return TorchAoConfig(Int8WeightOnlyConfig())
    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))


def _quanto(weights: str):
    from transformers import QuantoConfig

    return QuantoConfig(weights=weights)


#: name -> (backend, bits, scheme, quantization config factory). transformers 5.23 refuses HqqConfig ("not available
#: yet"): HQQ layers are made with hqq's own HQQLinear. The GPTQModel rows quantize a checkpoint first.
CONFIGS = {
    "bnb-nf4": ("bitsandbytes", 4, "nf4", lambda: _bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4")),
    "bnb-fp4": ("bitsandbytes", 4, "fp4", lambda: _bnb(load_in_4bit=True, bnb_4bit_quant_type="fp4")),
    "bnb-int8": ("bitsandbytes", 8, "LLM.int8()", lambda: _bnb(load_in_8bit=True)),
    "torchao-int8": ("torchao", 8, "int8 weight-only", lambda: _torchao("int8")),
    "torchao-int4": ("torchao", 4, "int4 weight-only (Intx, group 32)", lambda: _torchao("int4")),
    "quanto-int8": ("optimum-quanto", 8, "qint8", lambda: _quanto("int8")),
    "quanto-int4": ("optimum-quanto", 4, "qint4", lambda: _quanto("int4")),
    "hqq-8": ("hqq", 8, "HQQ 8-bit, group 64", None),
    "hqq-4": ("hqq", 4, "HQQ 4-bit, group 64", None),
    "gptq-4": ("gptqmodel", 4, "GPTQ 4-bit, group 64", None),
    "awq-4": ("gptqmodel", 4, "AWQ 4-bit (GEMM), group 64", None),
}

CALIBRATION = [
    "The Eiffel Tower is located in the city of Paris, the capital of France. " * 6,
    "A quick brown fox jumps over the lazy dog while the cat sleeps in the sun. " * 6,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 6,
    "Quantization stores the weights of a network in a few bits each, with a scale per group. " * 6,
]


def _gptqmodel_checkpoint(name: str) -> str:
    """A GPTQ or AWQ checkpoint of the bundled model, made once with GPTQModel on the CPU and cached."""
    target = cache_root() / "models" / f"SmolLM2-135M-Instruct-{name}"
    if (target / "config.json").is_file():
        return str(target)
    # GPTQModel's default thread pools ask for more CPU workers than a 2-core machine gives them
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from gptqmodel.quantization import FORMAT, METHOD

    source = str(cache_dir_for(default_model_file()))
    attnlrp.load_model()  # converts the bundled GGUF file into that cached float checkpoint if it is not there yet
    method, backend = (METHOD.GPTQ, BACKEND.GPTQ_TORCH) if name == "gptq-4" else (METHOD.AWQ, BACKEND.AWQ_TORCH)
    config = QuantizeConfig(
        bits=4, group_size=64, quant_method=method, format=FORMAT.GPTQ if name == "gptq-4" else FORMAT.GEMM
    )
    model = GPTQModel.load(source, config, device="cpu")
    model.quantize(CALIBRATION, batch_size=1, backend=backend)
    model.save(str(target))
    return str(target)


def _hqq_model(nbits: int):
    """The bundled model with every linear layer of its decoder layers replaced by hqq's HQQLinear."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    model, tokenizer = attnlrp.load_model()
    config = BaseQuantizeConfig(nbits=nbits, group_size=64)
    for parent in list(model.model.layers.modules()):
        for child, layer in list(parent.named_children()):
            if isinstance(layer, torch.nn.Linear):
                setattr(parent, child, HQQLinear(layer, config, compute_dtype=torch.float32, device="cpu"))
    return model, tokenizer


def load(name: str):
    """(model, tokenizer) of one configuration, quantized."""
    backend = CONFIGS[name][0]
    if backend == "gptqmodel":
        return attnlrp.load_model(_gptqmodel_checkpoint(name), dtype=torch.float32, device_map="cpu")
    if backend == "hqq":
        return _hqq_model(int(name[4:]))
    return attnlrp.load_model(quantization_config=CONFIGS[name][3]())


def float_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The bundled float model holding ``model``'s parameters: each quantized layer's dequantized weight, and every
    other parameter as it is (AWQ folds its activation scales into the norms before the layers)."""
    twin, _ = attnlrp.load_model()
    sources = dict(model.named_modules())
    with torch.no_grad():
        for path, layer in twin.named_modules():
            source = sources[path]
            backend = quantized.backend_of(source)
            if backend is not None:
                layer.weight.copy_(backend.weight(source))
                if layer.bias is not None:
                    layer.bias.copy_(source.bias)
                continue
            for name, parameter in layer.named_parameters(recurse=False):
                parameter.copy_(getattr(source, name))
    return twin


def relevance(model, tokenizer, targets: list[int] | None = None) -> list[attnlrp.Explanation]:
    """AttnLRP explanations of the prompts (for the given target ids, else each prompt's top next token)."""
    return attnlrp.explain(model, tokenizer, list(PROMPTS), target=targets)


def compare(explanations: list[attnlrp.Explanation], reference: list[attnlrp.Explanation]) -> dict:
    """The worst correlation of the relevance over the prompts, its per-token error relative to each prompt's
    largest score (median and maximum over all tokens), and the largest relative difference of the explained
    logit (how far the two forward passes are apart)."""
    scores = [np.asarray(e.scores, dtype=np.float64) for e in explanations]
    ref = [np.asarray(e.scores, dtype=np.float64) for e in reference]
    errors = np.concatenate([np.abs(s - r) / np.abs(r).max() for s, r in zip(scores, ref)])
    return {
        "correlation": min(float(np.corrcoef(s, r)[0, 1]) for s, r in zip(scores, ref)),
        "median_error": float(np.median(errors)),
        "max_error": float(errors.max()),
        "logit_error": max(abs(e.value - r.value) / abs(r.value) for e, r in zip(explanations, reference)),
    }


def measure(name: str, original: torch.nn.Module | None = None) -> dict:
    """The figures of one configuration: relevance against the float twin before and after generate."""
    backend, bits, scheme, _ = CONFIGS[name]
    model, tokenizer = load(name)
    layers = [type(m).__name__ for m in model.modules() if quantized.backend_of(m) is not None]
    before = relevance(model, tokenizer)
    targets = [e.target_id for e in before]
    twin = float_twin(model)
    reference = relevance(twin, tokenizer, targets)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    after = relevance(model, tokenizer, targets)
    gradients = [  # a gradient method after generate: the kernels' own backward may be gone by now
        attnlrp.explain(m, tokenizer, list(PROMPTS), target=targets, method="input_x_gradient") for m in (model, twin)
    ]
    out = {
        "backend": backend,
        "bits": bits,
        "scheme": scheme,
        "layers": sorted(set(layers)),
        "quantized_layers": len(layers),
        "before": compare(before, reference),
        "after": compare(after, reference),
        "gradient_after": compare(*gradients),
        "nonzero": bool(all(np.abs(e.scores).max() > 0 for e in before + after)),
    }
    if original is not None:  # the float32 model it was quantized from: what quantization itself changes
        out["vs_float32"] = compare(before, relevance(original, tokenizer, targets))
    return out


def _layer(name: str, base: torch.nn.Linear) -> torch.nn.Module:
    """``base`` quantized by one backend's own API (a layer, or nn.Linear with a quantized weight for torchao)."""
    state = base.state_dict()
    if name.startswith("bnb-"):
        import bitsandbytes as bnb

        if name == "bnb-int8":
            layer = bnb.nn.Linear8bitLt(base.in_features, base.out_features, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(
                base.in_features, base.out_features, quant_type=name[4:], compute_dtype=torch.float32
            )
        layer.load_state_dict(state)
        return layer.to("cpu")
    if name.startswith("torchao-"):
        from torchao.quantization import quantize_

        quantize_(base, _torchao(name[8:]).quant_type)
        return base
    if name.startswith("quanto-"):
        from optimum.quanto import freeze, qint4, qint8, quantize

        holder = torch.nn.Sequential(base)  # quanto replaces the children of the module it is given
        quantize(holder, weights=qint8 if name == "quanto-int8" else qint4)
        freeze(holder)
        return holder[0]
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    config = BaseQuantizeConfig(nbits=int(name[4:]), group_size=64)
    return HQQLinear(base, config, compute_dtype=torch.float32, device="cpu")


def _input_gradient(model: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, bound: bool) -> torch.Tensor | None:
    """d(Σ g ⊙ model(x))/dx, inside lrp() or with plain autograd (zeros where no gradient reaches x; None where
    the backward fails)."""
    leaf = x.clone().requires_grad_()
    x = leaf * 1.0  # inside a model the layer's input is never a leaf
    if bound:
        with attnlrp.lrp(model):
            (model(x) * g).sum().backward()
    else:
        try:
            y = model(x)
            if y.requires_grad:
                (y * g).sum().backward()
        except RuntimeError:  # bitsandbytes' 4-bit CPU kernel adding a bias to an output autograd can't follow
            return None
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)


def layer_figures(name: str) -> dict:
    """One layer of a backend: under lrp() its input gradient must be g W, with W read off its own kernel (the
    outputs for the unit vectors), before and after the no-grad call that makes some kernels switch layouts."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(_layer(name, torch.nn.Linear(256, 128))).eval().requires_grad_(False)
    layer = model[0]
    x, g = torch.randn(2, 6, 256), torch.randn(2, 6, 128)
    figures = {"class": type(layer).__name__, "backend": getattr(quantized.backend_of(layer), "name", None)}
    for stage in ("before", "after"):
        if stage == "after":
            with torch.no_grad():
                model(torch.randn(3, 256))
        with torch.no_grad():
            kernel_weight = quantized._kernel_probe(layer)
        expected = g @ kernel_weight
        ruled = _input_gradient(model, x, g, bound=True)
        plain = _input_gradient(model, x, g, bound=False)
        figures[stage] = {
            "error": float((ruled - expected).norm() / expected.norm()),
            "plain_error": None if plain is None else float((plain - expected).norm() / expected.norm()),
        }
    figures["restored"] = "forward" not in layer.__dict__
    return figures


def imports_of_a_float_model() -> list[str]:
    """The backends that binding a float model imports (none: layers are recognised by class names)."""
    before = set(sys.modules)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4, requires_grad=True)
    with attnlrp.lrp(model):
        model(x).sum().backward()
    backends = ("bitsandbytes", "torchao", "optimum", "hqq", "gptqmodel")
    return sorted(m for m in set(sys.modules) - before if m.partition(".")[0] in backends)


LAYERS = [
    "bnb-nf4",
    "bnb-fp4",
    "bnb-int8",
    "torchao-int8",
    "torchao-int4",
    "quanto-int8",
    "quanto-int4",
    "hqq-8",
    "hqq-4",
]


def main(mode: str, names: list[str]) -> None:
    """Prints one JSON object per line, {name: figures}, as each configuration is done."""
    if mode == "layers":
        print(json.dumps({"imports": imports_of_a_float_model()}))  # first: before anything imports a backend
        warnings.simplefilter("ignore")
        for name in names or LAYERS:
            print(json.dumps({name: layer_figures(name)}), flush=True)
    else:
        warnings.simplefilter("ignore")
        original, _ = attnlrp.load_model()
        for name in names or CONFIGS:
            print(json.dumps({name: measure(name, original)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
