"""Quantized linear layers in a bound model: the rule of a linear map, whatever kernel computes it.

A quantized linear layer computes y = x Wᵀ + b from a compressed W with a backend's own kernel. Some of those
kernels have no autograd formula: bitsandbytes' 4-bit CPU kernel, which a layer switches to after its first
no-grad forward (``generate``, ``audit``), gives no gradient at all. The layer is still linear in x, so inside
``lrp()`` it keeps its kernel for the value and gets its own backward, g_x = g_y W, with W dequantized in the
backward and freed after: plain autograd of a linear map, which is the LRP-0 rule.

Backends are told apart by class names (the layer's, or its weight's for torchao), so nothing here imports a
backend that is not installed. A linear layer that stores integer weights for a backend not listed here is
refused when the model is bound, never run with a gradient that may be zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import QuantizedLayerError

#: Rows compared between the kernel and the dequantized weight in the backward.
_CHECKED_ROWS = 16


@dataclass(frozen=True)
class Backend:
    """A quantization library: its name, how to dequantize one of its layers, and how far its kernel may be from
    x Wᵀ + b with the dequantized W (the median relative error over input rows; a weight read in a wrong layout is
    off by about 1)."""

    name: str
    weight: Callable[[nn.Module], Tensor]  # the layer's W, [out_features, in_features], in floating point
    tolerance: float = 0.05  # kernels that compute in bfloat16 are off by about 3e-3
    #: Whether the kernel rounds its input too (to int8, per tensor or row). Such a kernel is checked on unit
    #: vectors, which it rounds exactly: on real inputs one large activation can round every other row to zero.
    rounds_activations: bool = False


def _bnb_4bit(module: nn.Module) -> Tensor:
    weight = module.weight
    state = weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        return _bnb_4bit_cpu_packed(weight.data, state)
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight.data, state)


def _bnb_4bit_cpu_packed(packed: Tensor, state) -> Tensor:
    """W from the layout bitsandbytes' CPU kernel repacks a 4-bit weight into at its first no-grad forward:
    [N, K/2] bytes, each run of 32 bytes holding 32 (low nibble) then 32 (high nibble) codes of a tile of 32 rows
    by 2 columns; scales (absmax) per block of ``blocksize`` inputs, stored [K / blocksize, N]."""
    rows, columns = state.shape
    runs = packed.reshape(-1, 32)
    codes = torch.cat([runs & 0xF, runs >> 4], dim=-1)
    codes = codes.reshape(rows // 32, columns // 2, 32, 2).transpose(1, 2).reshape(rows, columns)
    scales = state.absmax.float().T.repeat_interleave(state.blocksize, dim=1)
    return state.code.float()[codes.long()] * scales


def _bnb_8bit(module: nn.Module) -> Tensor:
    """LLM.int8(): int8 rows with one absmax scale each (on the layer's state once it has run, else on its weight)."""
    codes = module.state.CB if module.state.CB is not None else module.weight.CB
    scales = module.state.SCB if module.state.SCB is not None else module.weight.SCB
    return codes.float() * (scales.float()[:, None] / 127)


def _tensor_dequantize(module: nn.Module) -> Tensor:
    """torchao and optimum-quanto keep W as a quantized tensor subclass that dequantizes itself."""
    dequantize = getattr(module.weight, "dequantize", None)
    return dequantize() if callable(dequantize) else _kernel_probe(module)


def _kernel_probe(module: nn.Module, block: int = 2048) -> Tensor:
    """W read off the layer's own kernel: its outputs for the unit vectors, less the bias. Exact for any kernel and
    any layout, at the cost of one matrix product of in_features² × out_features. The unit vectors require grad,
    so that a kernel which converts its weights for inference at a no-grad call (GPTQModel's CPU kernels) does not."""
    n = module.in_features
    columns = []
    for start in range(0, n, block):
        rows = min(block, n - start)
        units = torch.zeros(rows, n, device=_device(module))
        units[torch.arange(rows), torch.arange(start, start + rows)] = 1.0
        columns.append(module.forward(units.requires_grad_()).float())
    w = torch.cat(columns).T
    bias = getattr(module, "bias", None)
    return w - bias.float()[:, None] if isinstance(bias, Tensor) else w


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _hqq(module: nn.Module) -> Tensor:
    return module.dequantize()


#: Backends whose layers have a class of their own: (the top-level package, the class name) -> backend.
_LAYER_CLASSES = {
    ("bitsandbytes", "Linear4bit"): Backend("bitsandbytes", _bnb_4bit),
    ("bitsandbytes", "Linear8bitLt"): Backend("bitsandbytes", _bnb_8bit, rounds_activations=True),  # LLM.int8()
    ("optimum", "QLinear"): Backend("optimum-quanto", _tensor_dequantize),
    ("hqq", "HQQLinear"): Backend("hqq", _hqq),
    # GPTQ and AWQ: some thirty kernels, each with its own layout, which the CPU ones change at the first no-grad call
    ("gptqmodel", "BaseQuantLinear"): Backend("gptqmodel", _kernel_probe),
}

#: torchao keeps nn.Linear and swaps its weight for a tensor subclass.
_TORCHAO = Backend("torchao", _tensor_dequantize)
#: torch's own dynamic quantization (torch.ao.quantization.quantize_dynamic): int8 W packed, read by weight().
_TORCH_DYNAMIC = Backend(
    "torch dynamic quantization", lambda module: module.weight().dequantize(), rounds_activations=True
)


def _package(cls: type) -> str:
    return cls.__module__.partition(".")[0]


def backend_of(module: nn.Module) -> Backend | None:
    """The quantization backend of a linear layer (None for a float layer or any other module)."""
    for cls in type(module).__mro__:
        backend = _LAYER_CLASSES.get((_package(cls), cls.__name__))
        if backend is not None:
            return backend
    if isinstance(module, nn.Linear) and _package(type(module.weight)) == "torchao":
        return _TORCHAO
    if type(module).__module__.startswith("torch.ao.nn.quantized.dynamic") and type(module).__name__ == "Linear":
        return _TORCH_DYNAMIC
    return None


def _stores_integers(module: nn.Module) -> bool:
    """Whether the module holds an integer matrix of its own (packed weights), not just index vectors."""
    tensors = [*module._parameters.values(), *module._buffers.values()]
    integer = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
    packed = hasattr(module, "_packed_params")  # torch.ao's quantized layers keep W in a packed object
    return packed or any(t is not None and t.dim() >= 2 and t.dtype in integer for t in tensors)


def check(modules: list[tuple[str, nn.Module]], layer_rules: dict[nn.Module, object]) -> None:
    """Refuse, before anything is bound, what the linear rule can't cover: a linear layer with integer weights
    from a backend not listed here, and a layer rule (ε, γ, …) mapped onto a quantized layer."""
    inside: list[str] = []  # paths of the quantized layers found: their own parts are theirs to run
    for path, module in modules:
        backend = backend_of(module)
        if backend is not None:
            inside.append(path + ".")
        if any(path.startswith(prefix) for prefix in inside):
            continue
        if backend is None and "linear" in type(module).__name__.lower() and _stores_integers(module):
            raise QuantizedLayerError(
                f"{path} is a quantized linear layer of an unsupported backend ({type(module).__module__}."
                f"{type(module).__name__}): attnlrp can't dequantize its weight for the backward, and its kernel may "
                "give no gradient. Use bitsandbytes, torchao, optimum-quanto, HQQ or GPTQModel, or dequantize the "
                "model first (model.dequantize(), or load it without quantization_config)."
            )
        if backend is not None and module in layer_rules:
            raise QuantizedLayerError(
                f"layer_rules maps {layer_rules[module]!r} onto {path}, a {backend.name} quantized "
                f"{type(module).__name__}; layer rules need a float weight. Leave quantized layers out of layer_rules "
                "(they get the LRP-0 rule of a linear map), or dequantize the model first (model.dequantize())."
            )


@contextmanager
def linear_gradients(model: nn.Module) -> Iterator[None]:
    """For the duration, each quantized linear layer of ``model`` computes with its kernel and passes back the
    gradient of its dequantized linear map: the plain gradient that gradient methods need, which a backend's CPU
    kernel may not give at all (bitsandbytes and GPTQModel after a no-grad call). ``lrp()`` does the same for the
    rules."""
    saved = []
    try:
        for path, module in model.named_modules():
            backend = backend_of(module)
            if backend is not None:
                saved.append((module, module.__dict__.get("forward")))
                module.forward = linear_forward(module, module.forward, backend, path or "<root>", lambda: None)
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def linear_forward(
    module: nn.Module, original: Callable[..., Tensor], backend: Backend, where: str, note: Callable[[], None]
) -> Callable[..., Tensor]:
    """A forward for ``module`` whose value is ``original``'s (the backend's kernel) and whose backward is that of
    x ↦ x Wᵀ + b with W dequantized; ``note`` is called for each pass the rule applies to (the audit counts it)."""

    def forward(x: Tensor, *args, **kwargs) -> Tensor:
        if not (torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad):
            return original(x, *args, **kwargs)
        note()
        return _QuantizedLinear.apply(x, lambda t: original(t, *args, **kwargs), module, backend, where)

    return forward


class _QuantizedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, run: Callable[[Tensor], Tensor], module: nn.Module, backend: Backend, where: str):
        y = run(x)
        ctx.module, ctx.backend, ctx.where, ctx.x_dtype = module, backend, where, x.dtype
        if backend.rounds_activations:
            columns = torch.linspace(0, x.shape[-1] - 1, _CHECKED_ROWS, device=x.device).long().unique()
            x_rows = torch.zeros(len(columns), x.shape[-1], dtype=x.dtype, device=x.device)
            x_rows[torch.arange(len(columns)), columns] = 1.0
            y_rows = run(x_rows)
        else:  # copies: views would keep the whole input alive
            x_rows, y_rows = (
                x.reshape(-1, x.shape[-1])[:_CHECKED_ROWS].clone(),
                y.reshape(-1, y.shape[-1])[:_CHECKED_ROWS].clone(),
            )
        ctx.save_for_backward(x_rows, y_rows)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        x_rows, y_rows = ctx.saved_tensors
        with torch.no_grad():
            weight = ctx.backend.weight(ctx.module)
            dtype = torch.promote_types(torch.promote_types(weight.dtype, g.dtype), torch.float32)
            weight = weight.to(dtype)
            _check_kernel(ctx, weight, x_rows.to(dtype), y_rows.to(dtype))
            g_x = g.to(dtype) @ weight
        return g_x.to(ctx.x_dtype), None, None, None, None


def _check_kernel(ctx, weight: Tensor, x: Tensor, y: Tensor) -> None:
    """The dequantized W must reproduce the kernel's own output on the first rows of the input: a backend version
    that stores W in a layout read wrongly here is an error, not a wrong explanation."""
    bias = getattr(ctx.module, "bias", None)
    bias = bias() if callable(bias) else bias  # torch.ao's quantized layers read it with bias()
    expected = y - bias.to(y.dtype) if isinstance(bias, Tensor) else y
    errors = (x @ weight.T - expected).norm(dim=-1) / expected.norm(dim=-1).clamp_min(1e-12)
    error = float(errors.median())
    if error > ctx.backend.tolerance:
        raise QuantizedLayerError(
            f"{ctx.where} ({ctx.backend.name} {type(ctx.module).__name__}): its dequantized weight does not reproduce "
            f"the layer's output (relative error {error:.2g}), so this {ctx.backend.name} version stores weights in a "
            "layout attnlrp does not know. Install the version pinned by attnlrp's [quantized] extra, or dequantize "
            "the model first (model.dequantize())."
        )
