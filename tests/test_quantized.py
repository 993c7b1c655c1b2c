"""Quantized linear layers inside lrp(): the rule of a linear map whatever kernel runs, and a clear error where
attnlrp can't give one.

The fast tests use a stand-in layer whose kernel has no autograd formula (like bitsandbytes' 4-bit CPU kernel after
a no-grad call). The ``venv`` tests run tests/quantized_probe.py in .venv-quant (bitsandbytes, torchao,
optimum-quanto, HQQ and GPTQModel; `make test` creates it): each backend on one layer, then the bundled SmolLM2
quantized by each backend against its float twin, before and after ``generate``.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import attnlrp
from attnlrp.engine import quantized

ROOT = Path(__file__).resolve().parents[1]
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"


class PackedLinear(nn.Module):
    """A stand-in for a quantized layer: int8 codes and a scale per row, and a kernel without autograd."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        scale = weight.abs().amax(1) / 127
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("codes", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = bias

    def dequantized(self) -> torch.Tensor:
        return self.codes.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # a custom kernel: its output carries no gradient
            y = x @ self.dequantized().T
            return y + self.bias if self.bias is not None else y


@pytest.fixture
def stand_in_backend(monkeypatch):
    """PackedLinear registered as a backend's layer class, as bitsandbytes' Linear4bit is."""
    backend = quantized.Backend("stand-in", lambda layer: layer.dequantized())
    monkeypatch.setitem(quantized._LAYER_CLASSES, (PackedLinear.__module__.partition(".")[0], "PackedLinear"), backend)
    return backend


def small_model(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    first, second = torch.randn(16, 8, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    return nn.Sequential(
        PackedLinear(first, torch.randn(16, dtype=torch.float64) if bias else None), nn.ReLU(), PackedLinear(second)
    )


def input_gradient(model: nn.Module, x: torch.Tensor, **options) -> torch.Tensor:
    leaf = x.clone().requires_grad_()
    with attnlrp.lrp(model, **options):
        model(leaf * 1.0).sum().backward()
    return leaf.grad


def test_a_kernel_without_autograd_gets_the_gradient_of_its_linear_map(stand_in_backend):
    model = small_model()
    x = torch.randn(5, 8, dtype=torch.float64)
    first, second = model[0].dequantized(), model[2].dequantized()
    hidden = x @ first.T + model[0].bias
    expected = ((hidden > 0) * second.sum(0)) @ first  # the ReLU's identity rule is its gradient here

    gradient = input_gradient(model, x)

    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-12)


def test_the_relevance_of_a_bias_free_model_is_conserved(stand_in_backend):
    model = small_model(bias=False)
    x = torch.randn(1, 8, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    with attnlrp.lrp(model):
        y = model(leaf * 1.0).sum()
        y.backward()
    assert float((leaf.detach() * leaf.grad).sum()) == pytest.approx(float(y.detach()), rel=1e-10)


def test_without_the_binding_the_stand_in_gives_no_gradient(stand_in_backend):
    """What the rule fixes: outside lrp() the kernel's output does not require grad."""
    x = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    assert not small_model()(x).requires_grad


def test_the_audit_lists_quantized_layers_under_their_rule(stand_in_backend):
    report = str(attnlrp.audit(small_model(), torch.randn(2, 8, dtype=torch.float64)))
    assert "PackedLinear [linear, stand-in]" in report
    assert "every op had a rule or is linear" in report


def test_leaving_the_block_restores_every_layer(stand_in_backend):
    model = small_model()
    input_gradient(model, torch.randn(2, 8, dtype=torch.float64))
    assert all("forward" not in layer.__dict__ for layer in model)
    assert not model(torch.randn(2, 8, dtype=torch.float64, requires_grad=True)).requires_grad


def test_no_grad_calls_inside_the_block_run_the_kernel_alone(stand_in_backend):
    model = small_model()
    x = torch.randn(2, 8, dtype=torch.float64)
    with attnlrp.lrp(model), torch.no_grad():
        y = model(x)
    torch.testing.assert_close(y, small_model()(x))


def test_a_weight_that_does_not_reproduce_the_kernel_is_an_error(monkeypatch):
    """A backend version whose weights are read in a wrong layout: an error in the backward, never a wrong map."""
    wrong = quantized.Backend("stand-in", lambda layer: layer.dequantized().flip(1))
    monkeypatch.setitem(quantized._LAYER_CLASSES, (PackedLinear.__module__.partition(".")[0], "PackedLinear"), wrong)
    with pytest.raises(attnlrp.QuantizedLayerError, match=r"^2 \(stand-in PackedLinear\).*layout attnlrp does not"):
        input_gradient(small_model(), torch.randn(4, 8, dtype=torch.float64))


def test_an_unknown_quantized_linear_layer_is_refused_before_binding():
    """No backend registered for PackedLinear: its integer weights mark it as quantized, and lrp() refuses it."""
    model = small_model()
    with pytest.raises(attnlrp.QuantizedLayerError, match=r"^0 is a quantized linear layer of an unsupported backend"):
        with attnlrp.lrp(model):
            pass
    assert attnlrp.engine.binding.binding_of(model) is None
    assert all(not layer._forward_pre_hooks and "forward" not in layer.__dict__ for layer in model)


def test_a_layer_rule_on_a_quantized_layer_is_refused(monkeypatch, stand_in_backend):
    class QuantizedLinear(nn.Linear):  # bitsandbytes' and quanto's layers subclass nn.Linear
        pass

    key = (QuantizedLinear.__module__.partition(".")[0], "QuantizedLinear")
    monkeypatch.setitem(quantized._LAYER_CLASSES, key, stand_in_backend)
    model = nn.Sequential(QuantizedLinear(4, 4))
    with pytest.raises(attnlrp.QuantizedLayerError, match=r"Epsilon.*onto 0, a stand-in quantized QuantizedLinear"):
        with attnlrp.lrp(model, layer_rules={nn.Linear: attnlrp.Epsilon()}):
            pass
    assert "forward" not in model[0].__dict__


def test_float_layers_have_no_backend():
    assert quantized.backend_of(nn.Linear(2, 2)) is None
    assert quantized.backend_of(nn.Conv1d(2, 2, 1)) is None


# --- the real backends, in .venv-quant ------------------------------------------------------------------------


def run_probe(*arguments: str) -> dict:
    assert QUANT_PYTHON.exists(), "the quantization environment is missing: run `make test` (it creates .venv-quant)"
    done = subprocess.run(
        [str(QUANT_PYTHON), str(ROOT / "tests" / "quantized_probe.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=3000,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = {}
    for line in done.stdout.splitlines():
        if line.startswith('{"') and line.endswith("}"):  # the probe's lines, not a library's printouts
            figures.update(json.loads(line))
    return figures


@pytest.fixture(scope="module")
def layers() -> dict:
    return run_probe("layers")


@pytest.fixture(scope="module")
def models() -> dict:
    return run_probe("models")


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
MODELS = [*LAYERS, "gptq-4", "awq-4"]


@pytest.mark.venv
def test_binding_a_float_model_imports_no_backend(layers):
    assert layers["imports"] == []


@pytest.mark.venv
@pytest.mark.parametrize("name", LAYERS)
def test_each_backend_layer_gets_the_gradient_its_kernel_implies(layers, name):
    figures = layers[name]
    assert figures["backend"] is not None and figures["restored"]
    # bitsandbytes' CPU kernels compute in bfloat16 (4-bit, after the first no-grad call) or round the
    # activations to int8 (LLM.int8()); the others are exact in float32
    tolerance = 5e-3 if name.startswith("bnb-") else 1e-5
    assert figures["before"]["error"] < tolerance
    assert figures["after"]["error"] < tolerance


@pytest.mark.venv
@pytest.mark.parametrize("name", ["bnb-nf4", "bnb-fp4"])
def test_without_the_rule_bitsandbytes_4bit_gives_no_gradient_after_a_no_grad_call(layers, name):
    """The failure this rule fixes: plain autograd breaks once the layer has switched to its CPU kernel."""
    plain = layers[name]["after"]["plain_error"]
    assert plain is None or plain > 0.5


@pytest.mark.venv
@pytest.mark.parametrize("name", MODELS)
def test_relevance_equals_the_float_twins_before_and_after_generate(models, name):
    figures = models[name]
    assert figures["quantized_layers"] >= 210 and figures["nonzero"]  # 7 linear layers in each of 30 decoder layers
    for stage in ("before", "after"):
        # LLM.int8() rounds every activation to int8 as well, so its forward itself moves off the float twin
        assert figures[stage]["correlation"] >= (0.995 if name == "bnb-int8" else 0.999), (stage, figures[stage])
        assert figures[stage]["max_error"] < (0.15 if name == "bnb-int8" else 0.05), (stage, figures[stage])
    # a gradient method too gets the linear map's gradient (before, where the kernel had none, the scores were
    # near zero: correlations of 0.12 and -0.17 for bnb-nf4); LLM.int8()'s rounded activations move it more
    assert figures["gradient_after"]["correlation"] >= (0.8 if name == "bnb-int8" else 0.99), figures["gradient_after"]


def test_gradient_methods_get_the_gradient_of_the_linear_map_through_quantized_layers(stand_in_backend):
    model = small_model()
    x = torch.randn(5, 8, dtype=torch.float64)
    with quantized.linear_gradients(model):
        leaf = x.clone().requires_grad_()
        model(leaf).sum().backward()
    first, second = model[0].dequantized(), model[2].dequantized()
    expected = (((x @ first.T + model[0].bias) > 0) * second.sum(0)) @ first
    torch.testing.assert_close(leaf.grad, expected, rtol=1e-12, atol=1e-12)
    assert "forward" not in model[0].__dict__, "the layers are restored"


def test_a_kernel_that_rounds_activations_is_checked_on_unit_vectors_not_on_the_input():
    # One large input row (SmolLM2's massive activations; Integrated Gradients' full-scale copy beside its
    # scaled-down ones) makes int8 rounding per tensor zero the other rows: the kernel's output then differed from
    # x Wᵀ by 100%, and the check read that as a weight layout it doesn't know (relative errors of 1 and inf).
    torch.manual_seed(0)
    layer = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(64, 32)), {nn.Linear}, dtype=torch.qint8)
    x = torch.randn(20, 64) * 0.01
    x[19] *= 10_000
    with quantized.linear_gradients(layer):
        leaf = x.clone().requires_grad_()
        layer(leaf).sum().backward()
    weight = layer[0].weight().dequantize()
    torch.testing.assert_close(leaf.grad, weight.sum(0).expand(20, -1))


def test_torch_dynamic_quantization_is_a_backend_for_the_rules_and_the_gradient_methods(tokenizer):
    from conftest import build_tiny_lm

    float_model = build_tiny_lm(tokenizer, dtype=torch.float32)
    model = copy.deepcopy(float_model)
    for layer in model.model.layers:
        layer.mlp = torch.ao.quantization.quantize_dynamic(layer.mlp, {nn.Linear}, dtype=torch.qint8)
    prompt = "The Eiffel Tower is located in the city of"
    for method in ("cp-lrp", "input_x_gradient"):
        ours, reference = (attnlrp.explain(m, tokenizer, prompt, method=method) for m in (model, float_model))
        assert np.corrcoef(ours.scores, reference.scores)[0, 1] > 0.95, method  # the kernel's gradient is none
    assert ours.total == pytest.approx(reference.total, rel=0.05)
    assert "[linear, torch dynamic quantization]" in str(attnlrp.audit(model))
    with pytest.raises(attnlrp.InputError, match="is quantized, and the check runs a float64 copy"):
        attnlrp.check(model)
    # a layer rule for every linear layer covers the quantized ones too: refused by name, as for bitsandbytes (they
    # were left at LRP-0 without a word), and so is the quantized class mapped itself (a TypeError of nn.Linear)
    for key in (nn.Linear, torch.ao.nn.quantized.dynamic.Linear):
        with pytest.raises(attnlrp.QuantizedLayerError, match=r"model.layers.0.mlp.gate_proj, a torch dynamic"):
            with attnlrp.lrp(model, layer_rules={key: attnlrp.Epsilon()}):
                pass
