"""Which torch op gets which rule: the op table of the engine.

Every op that runs inside a bound model while gradients are on is looked up here once (by the
function object) and given a handler. Ops not named here and not proven linear are unruled: they
run with their plain gradient and are reported by the audit.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..core import rules

if TYPE_CHECKING:
    from .binding import Binding

Handler = Callable[["Binding", Callable, tuple, dict], Any]

#: Ops whose output is linear in each tensor argument that carries relevance (or a selection of
#: it): plain autograd is already the LRP-0 rule for them.
LINEAR = frozenset(
    """
    add sub subtract neg negative positive cat concat concatenate stack hstack vstack dstack
    view view_as reshape reshape_as transpose swapaxes swapdims t permute movedim moveaxis
    contiguous clone to float double half bfloat16 type type_as cpu cuda requires_grad
    unsqueeze squeeze flatten unflatten expand expand_as broadcast_to repeat repeat_interleave
    tile split split_with_sizes tensor_split chunk unbind narrow narrow_copy select index_select
    gather getitem setitem masked_fill masked_scatter masked_select where index_add index_copy
    index_fill index_put put scatter scatter_add sum nansum mean nanmean cumsum roll flip fliplr
    flipud rot90 pad constant_pad_nd diagonal diag_embed tril triu unfold as_strided
    take_along_dim take topk sort max min amax amin max_pool1d max_pool2d avg_pool1d avg_pool2d
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_max_pool1d adaptive_max_pool2d interpolate
    pixel_shuffle pixel_unshuffle copy detach zero fill align_as
    embedding embedding_bag one_hot sum_to_size new_tensor view_as_real view_as_complex
    """.split()
)

#: Products of tensor factors (weights are constants inside a bound model): uniform rule when
#: two or more factors carry relevance, plain gradient otherwise. Value: the factors, by position and
#: by keyword (BLOOM calls ``alibi.baddbmm(batch1=q, batch2=k)``).
PRODUCTS: dict[str, dict[int, str]] = {
    "matmul": {0: "input", 1: "other"},
    "mm": {0: "input", 1: "mat2"},
    "bmm": {0: "input", 1: "mat2"},
    "dot": {0: "input", 1: "tensor"},
    "vdot": {0: "input", 1: "other"},
    "inner": {0: "input", 1: "other"},
    "outer": {0: "input", 1: "vec2"},
    "mv": {0: "input", 1: "vec"},
    "tensordot": {0: "a", 1: "b"},
    "linear": {0: "input", 1: "weight"},
    "bilinear": {0: "input1", 1: "input2", 2: "weight"},
    "conv1d": {0: "input", 1: "weight"},
    "conv2d": {0: "input", 1: "weight"},
    "conv3d": {0: "input", 1: "weight"},
    "conv_transpose1d": {0: "input", 1: "weight"},
    "conv_transpose2d": {0: "input", 1: "weight"},
    "addmm": {1: "mat1", 2: "mat2"},
    "baddbmm": {1: "batch1", 2: "batch2"},
    "addbmm": {1: "batch1", 2: "batch2"},
    "addmv": {1: "mat", 2: "vec"},
    "addcmul": {1: "tensor1", 2: "tensor2"},
    # MoE experts (transformers' default "grouped_mm" experts implementation): input @ weight per group
    "grouped_mm": {0: "mat_a", 1: "mat_b"},
    "grouped_mm_fallback": {0: "input", 1: "weight"},
}

ACTIVATIONS = {
    "silu": "silu",
    "relu": "relu",
    "tanh": "tanh",
    "mish": "mish",
    "hardswish": "hardswish",
}

#: Ops that compute a normalising statistic; inside a norm module their output is a constant.
STATISTICS = frozenset(
    "pow square rsqrt sqrt var std var_mean std_mean norm vector_norm linalg_vector_norm reciprocal".split()
)

#: The exponent p of the element-wise powers among the statistics (pow reads it from its argument).
_EXPONENTS = {"square": 2, "sqrt": 0.5, "rsqrt": -0.5, "reciprocal": -1}

#: Statistics that are positively homogeneous of degree 1 (f(a x) = a f(x), a > 0): by Euler's theorem
#: Σ x ∂f/∂x = f, so their plain gradient passes exactly the relevance of their output.
HOMOGENEOUS = frozenset("std std_mean norm vector_norm linalg_vector_norm".split())


def exponent_of(name: str, args: tuple, kwargs: dict) -> float | None:
    """The exponent p of an element-wise power among the statistics (x^p), None where it is not a number."""
    p = _EXPONENTS.get(name, _arg(args, kwargs, 1, "exponent") if name == "pow" else None)
    return None if isinstance(p, bool) or not isinstance(p, (int, float)) else p


#: Clamping: an element-wise function that is the identity between its bounds.
CLAMPS = frozenset("clamp clip clamp_min clamp_max".split())

DROPOUT = frozenset("dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout".split())

#: Linear ops that select or reshape their first argument: a weight (a sigmoid's output, CP-LRP) stays a weight
#: through them, as routing weights pass through gather and indexing on their way to the signal they weigh.
SELECTIONS = frozenset(
    """
    gather getitem index_select take_along_dim view view_as reshape reshape_as unsqueeze squeeze flatten expand
    expand_as repeat repeat_interleave transpose permute contiguous to type_as float double half bfloat16 clone
    select narrow split chunk unbind tensor_split masked_fill
    """.split()
)


def op_name(func: Callable) -> str:
    """A canonical name: ``Tensor.__rmul__``, ``torch.mul`` and ``Tensor.mul_`` are all ``mul``."""
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith("i") and name[1:] in {"add", "sub", "mul", "truediv", "div", "matmul"}:
            name = name[1:]
        if name.startswith("r") and name[1:] in {"add", "sub", "mul", "matmul"}:
            name = name[1:]
    name = name.rstrip("_").lstrip("_")
    return {"multiply": "mul", "truediv": "div", "divide": "div", "true_divide": "div"}.get(name, name)


def _requires_grad(x: Any) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


def _arg(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    if position < len(args):
        return args[position]
    return kwargs.get(name, default)


# --- handlers --------------------------------------------------------------------------------


def _products(factors: dict[int, str]) -> Handler:
    def handle(binding: Binding, func, args, kwargs):
        slots = [p if p < len(args) else name for p, name in factors.items()]
        carrying = [s for s in slots if _requires_grad(args[s] if isinstance(s, int) else kwargs.get(s))]
        if len(carrying) < 2:
            return func(*args, **kwargs)
        args, kwargs = list(args), dict(kwargs)

        def run(values: list[Tensor]) -> Any:
            for s, value in zip(carrying, values):
                if isinstance(s, int):
                    args[s] = value
                else:
                    kwargs[s] = value
            return func(*args, **kwargs)

        return _product(binding, func, [args[s] if isinstance(s, int) else kwargs[s] for s in carrying], run)

    return handle


def _einsum(binding: Binding, func, args, kwargs):
    operands = list(args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
    carrying = [i for i, t in enumerate(operands) if _requires_grad(t)]
    if len(carrying) < 2:
        return func(*args, **kwargs)

    def run(values: list[Tensor]) -> Any:
        for i, value in zip(carrying, values):
            operands[i] = value
        return func(args[0], *operands, **kwargs)

    return _product(binding, func, [operands[i] for i in carrying], run)


def _product(binding: Binding, func, factors: list[Tensor], run: Callable[[list[Tensor]], Any]) -> Any:
    """``run`` on the input-dependent factors of a matrix product or einsum (two or more), ruled: CP-LRP holds a
    sigmoid weight among them constant (routing weights; of weights alone all but one, and the product is a
    weight); the factors left share the product by the uniform rule."""
    weights = [i for i, f in enumerate(factors) if _weight(f)]
    carrying = list(range(len(factors)))
    if binding.method == "cp-lrp" and weights:
        binding.note(func, "gate (cp-lrp)")
        alone = len(weights) == len(factors)
        held = weights[1:] if alone else weights
        factors = [f.detach() if i in held else f for i, f in enumerate(factors)]
        carrying = [i for i in carrying if i not in held]
        if len(carrying) < 2:
            out = run(factors)
            return _weighing(out) if alone else out
    binding.note(func, "uniform")
    for i, f in zip(carrying, rules.uniform(*(factors[i] for i in carrying))):
        factors[i] = f
    return run(factors)


def _weight(x: Any) -> bool:
    """Whether ``x`` is a weight (CP-LRP): a sigmoid's output, selected, reshaped, scaled or normalised."""
    return getattr(x, "_attnlrp_weight", False)


def _weighing(out: Any) -> Any:
    """``out`` marked as a weight (each piece of a split)."""
    for piece in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(piece, Tensor) and piece.requires_grad:
            piece._attnlrp_weight = True
    return out


def carry_weight(binding: Binding, func, args, kwargs):
    """A linear op (see ``SELECTIONS``): plain, and a weight stays a weight (written in place, it stays one)."""
    out = func(*args, **kwargs)
    return _weighing(out) if _weight(args[0] if args else kwargs.get("input")) else out


def _mul(binding: Binding, func, args, kwargs):
    a, b = args[0], args[1]
    if not (_requires_grad(a) and _requires_grad(b)):
        out = func(*args, **kwargs)
        return _weighing(out) if _weight(a) or _weight(b) else out  # a weight scaled by a constant
    if a is b and binding.in_norm():
        binding.note(func, "norm statistic")
        return func(a.detach(), b.detach(), *args[2:], **kwargs)
    for gate, other in ((a, b), (b, a)):
        source = getattr(gate, "_attnlrp_gate_input", None)
        if source is not None and source() is other:  # x * sigmoid(x): SiLU written out, identity rule
            binding.note(func, "identity (self-gated)")
            return _held_constant(func, args, kwargs, gate)
    if binding.method == "cp-lrp":
        # a weight first (a sigmoid's output is a gate too): in act * sigmoid(g), the sigmoid is held either way
        gate = next((f for f in (a, b) if _weight(f)), None)
        if gate is None:
            gate = next((f for f in (a, b) if getattr(f, "_attnlrp_gate", False)), None)
        if gate is not None:
            binding.note(func, "gate (cp-lrp)")
            out = _held_constant(func, args, kwargs, gate)
            return _weighing(out) if _weight(a) and _weight(b) else out  # a product of weights is one
    binding.note(func, "uniform")
    a, b = rules.uniform(a, b)
    return func(a, b, *args[2:], **kwargs)


def _held_constant(func, args, kwargs, gate: Tensor):
    """The product with ``gate`` (one of the two factors) detached."""
    a, b = args[0], args[1]
    a, b = (a.detach(), b) if gate is a else (a, b.detach())
    return func(a, b, *args[2:], **kwargs)


def _div(binding: Binding, func, args, kwargs):
    num, den = args[0], args[1]
    if not _requires_grad(den):
        out = func(*args, **kwargs)
        return _weighing(out) if _weight(num) else out
    if _requires_grad(num):
        binding.note(func, "normalisation")
        out = func(num, den.detach(), *args[2:], **kwargs)
        return _weighing(out) if _weight(num) else out
    return _unruled(binding, func, args, kwargs)


def _identity(binding: Binding, func, args, kwargs, ratio: rules.Ratio):
    """An element-wise activation f: backward g * f(x)/x. Its output may gate a product (see _mul)."""
    x = args[0]
    if not _requires_grad(x):
        return func(*args, **kwargs)
    binding.note(func, "identity")
    rest = args[1:]
    out = rules.identity_rule(x, lambda t: func(t, *rest, **kwargs), ratio)
    out._attnlrp_gate = True
    return out


def _activation(ratio_name: str) -> Handler:
    ratio = rules.RATIOS[ratio_name]
    return lambda binding, func, args, kwargs: _identity(binding, func, args, kwargs, ratio)


def _gelu(binding: Binding, func, args, kwargs):
    tanh_form = _arg(args, kwargs, 1, "approximate", "none") == "tanh"
    return _identity(binding, func, args, kwargs, rules.RATIOS["gelu_tanh" if tanh_form else "gelu"])


def _leaky_relu(binding: Binding, func, args, kwargs):
    slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
    return _identity(binding, func, args, kwargs, rules.leaky_relu_ratio(slope))


def _softmax(binding: Binding, func, args, kwargs):
    out = func(*args, **kwargs)
    if not out.requires_grad:
        return out
    if binding.method == "cp-lrp":
        binding.note(func, "attention weights constant (cp-lrp)")
        return out.detach()
    binding.note(func, "softmax")
    return out


def _sigmoid(binding: Binding, func, args, kwargs):
    """sigmoid(x) = softmax([x, 0])[0]: a weight where it multiplies the signal, an activation where it doesn't.

    The output is tagged as a gate, so that a product of it with another input-dependent factor holds it constant
    in CP-LRP (a shared-expert gate, GLU, gated attention; see ``_mul``), and ``x * sigmoid(x)`` (SiLU written out)
    gets SiLU's identity rule. Otherwise, AttnLRP: the softmax rule, its plain gradient. CP-LRP: the identity rule
    of the other element-wise activations (backward g * sigmoid(x)/x), so that a sigmoid activation passes on its
    relevance. In CP-LRP the output is also a weight: it stays one through selection, reshaping, scaling and
    normalisation (``SELECTIONS``, ``_mul``, ``_div``), so that routing weights written out (DeepSeek-V3's: a gather,
    a normalisation and a scaling before they multiply the experts' outputs) are held constant too.
    """
    x = args[0]
    if binding.method == "cp-lrp":
        out = _weighing(_identity(binding, func, args, kwargs, rules.sigmoid_ratio))
    else:
        out = func(*args, **kwargs)
        if not (isinstance(out, Tensor) and out.requires_grad):
            return out
        binding.note(func, "softmax (two-way)")
        out._attnlrp_gate = True
    if _requires_grad(x):
        out._attnlrp_gate_input = weakref.ref(x)
    return out


def _sdpa(binding: Binding, func, args, kwargs):
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    kwargs = {key: val for key, val in kwargs.items() if key not in ("query", "key", "value")}
    kwargs["dropout_p"] = 0.0  # dropout is off, with or without gradients (checkpointed forwards run without)
    rest = args[3:]
    if len(rest) >= 2:  # dropout_p given positionally
        rest = rest[:1] + (0.0,) + rest[2:]
        kwargs.pop("dropout_p")
    mask = rest[0] if rest else kwargs.get("attn_mask")
    if not any(_requires_grad(t) for t in (q, k, v, mask)):
        return func(q, k, v, *rest, **kwargs)
    binding.note(func, "attention kernel")
    q, k, v = rules.attention_factors(q, k, v, binding.method)
    if _requires_grad(mask):
        mask = rules.attention_mask_factor(mask, binding.method)
        rest, kwargs = ((mask, *rest[1:]), kwargs) if rest else (rest, {**kwargs, "attn_mask": mask})
    return func(q, k, v, *rest, **kwargs)


_MHA_PARAMETERS = tuple(inspect.signature(torch.nn.functional.multi_head_attention_forward).parameters)


def _multi_head_attention(binding: Binding, func, args, kwargs):
    """``nn.MultiheadAttention``'s functional form: the attention rule where query, key and value enter (their
    projections are linear, so scaling or detaching there is the rule at q, k and v), then the function as written."""
    call = dict(zip(_MHA_PARAMETERS, args), **kwargs)
    q, k, v = call["query"], call["key"], call["value"]
    if not any(_requires_grad(t) for t in (q, k, v, call.get("attn_mask"))):
        return func(*args, **kwargs)
    binding.note(func, "attention kernel")
    call["query"], call["key"], call["value"] = rules.attention_factors(q, k, v, binding.method)
    if _requires_grad(call.get("attn_mask")):
        call["attn_mask"] = rules.attention_mask_factor(call["attn_mask"], binding.method)
    call["dropout_p"] = 0.0
    return func(**call)


def _layer_norm(binding: Binding, func, args, kwargs):
    if not _requires_grad(args[0]):
        return func(*args, **kwargs)
    binding.note(func, "norm")
    return rules.layer_norm(
        args[0],
        _arg(args, kwargs, 1, "normalized_shape"),
        _arg(args, kwargs, 2, "weight"),
        _arg(args, kwargs, 3, "bias"),
        _arg(args, kwargs, 4, "eps", 1e-5),
    )


def _rms_norm(binding: Binding, func, args, kwargs):
    if not _requires_grad(args[0]):
        return func(*args, **kwargs)
    binding.note(func, "norm")
    return rules.rms_norm(
        args[0],
        _arg(args, kwargs, 1, "normalized_shape"),
        _arg(args, kwargs, 2, "weight"),
        _arg(args, kwargs, 3, "eps"),
    )


def _group_norm(binding: Binding, func, args, kwargs):
    if not _requires_grad(args[0]):
        return func(*args, **kwargs)
    binding.note(func, "norm")
    return rules.group_norm(
        args[0],
        _arg(args, kwargs, 1, "num_groups"),
        _arg(args, kwargs, 2, "weight"),
        _arg(args, kwargs, 3, "bias"),
        _arg(args, kwargs, 4, "eps", 1e-5),
    )


#: ``torch.batch_norm`` and ``torch.instance_norm`` take (input, weight, bias, running_mean, running_var, ...);
#: their ``torch.nn.functional`` forms take (input, running_mean, running_var, weight, bias, ...).
_NORM_POSITIONS = {"functional": (1, 2, 3, 4), "torch": (3, 4, 1, 2)}


def _norm_arguments(func, args: tuple, kwargs: dict) -> tuple:
    """(running_mean, running_var, weight, bias) of a batch or instance norm call, in either form."""
    form = "functional" if getattr(func, "__module__", "") == "torch.nn.functional" else "torch"
    names = ("running_mean", "running_var", "weight", "bias")
    return tuple(_arg(args, kwargs, p, n) for p, n in zip(_NORM_POSITIONS[form], names))


def _batch_norm(binding: Binding, func, args, kwargs):
    """With running statistics (eval mode): an affine map, linear. With the batch's own (train mode): the norm
    rule, the variance held constant and the centring linear, as for a layer norm; the running statistics are
    left as they are (a bound model comes out unchanged)."""
    x = args[0]
    if not _arg(args, kwargs, 5, "training", False):
        return func(*args, **kwargs)  # running statistics (torch says so where they are missing)
    if _requires_grad(x):
        binding.note(func, "norm")
    _, _, weight, bias = _norm_arguments(func, args, kwargs)
    return rules.batch_norm(x, weight, bias, _arg(args, kwargs, 7, "eps", 1e-5))


def _instance_norm(binding: Binding, func, args, kwargs):
    """Each example's own statistics per channel: the group norm with a group per channel (statistics constant);
    with running statistics instead (``use_input_stats=False``), an affine map."""
    x = args[0]
    if not _arg(args, kwargs, 5, "use_input_stats", True):
        return func(*args, **kwargs)
    if _requires_grad(x):
        binding.note(func, "norm")
    _, _, weight, bias = _norm_arguments(func, args, kwargs)
    return rules.group_norm(x, x.shape[1], weight, bias, _arg(args, kwargs, 7, "eps", 1e-5))


def _normalize(binding: Binding, func, args, kwargs):
    if not _requires_grad(args[0]):
        return func(*args, **kwargs)
    binding.note(func, "norm")
    return rules.normalize(
        args[0], _arg(args, kwargs, 1, "p", 2.0), _arg(args, kwargs, 2, "dim", 1), _arg(args, kwargs, 3, "eps", 1e-12)
    )


def _dropout(binding: Binding, func, args, kwargs):
    return args[0] if isinstance(args[0], Tensor) else func(*args, **kwargs)


def _statistic(binding: Binding, func, args, kwargs):
    """Inside a norm module: a constant. Outside: a power x^p with p > 0 gets the identity rule, a
    normalising factor (p <= 0: rsqrt, reciprocal) is a constant, a degree-1 homogeneous statistic (a norm,
    a standard deviation) keeps its plain gradient; a variance has no rule there."""
    if not _requires_grad(args[0]):  # a constant base (2 ** x): no rule
        return _unruled(binding, func, args, kwargs)
    if binding.in_norm():
        binding.note(func, "norm statistic")
        return _detached(func(*args, **kwargs))
    name = op_name(func)
    if name in HOMOGENEOUS:
        binding.note(func, "homogeneous (plain)")
        return func(*args, **kwargs)
    p = exponent_of(name, args, kwargs)
    if p is None:
        return _unruled(binding, func, args, kwargs)
    if p <= 0:
        binding.note(func, "normalising factor constant")
        return func(*args, **kwargs).detach()
    return _identity(binding, func, args, kwargs, rules.power_ratio(p))


def _detached(out):
    """The statistic held constant; of (var, mean) or (std, mean) only the first: the centring stays linear."""
    if isinstance(out, tuple):
        return type(out)((out[0].detach(), *out[1:]))
    return out.detach()


def _clamp(binding: Binding, func, args, kwargs):
    """clamp(x, min, max): the identity rule, R_x = R_out (bounds are constants)."""
    rest = args[1:]
    return _identity(binding, func, args, kwargs, rules.output_ratio(lambda t: func(t, *rest, **kwargs)))


def _unruled(binding: Binding, func, args, kwargs):
    return _report_if_unruled(binding, func, func(*args, **kwargs))


def _report_if_unruled(binding: Binding, func, out):
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    if isinstance(first, Tensor) and first.requires_grad and first.is_floating_point():
        binding.unruled(func)
    return out


def _leading_positional(handler: Handler) -> Handler:
    """The handler, called with ``input`` and ``other`` given by keyword (``F.silu(input=x)``,
    ``torch.mul(x, other=y)``) moved to their positions, where the handlers read them."""

    def handle(binding: Binding, func, args, kwargs):
        if kwargs and len(args) < 2 and ("input" in kwargs or "other" in kwargs):
            kwargs = dict(kwargs)
            for position, name in enumerate(("input", "other")):
                if len(args) == position and name in kwargs:
                    args = (*args, kwargs.pop(name))
        return handler(binding, func, args, kwargs)

    return handle


_SPECIAL: dict[str, Handler] = {
    name: _leading_positional(handler)
    for name, handler in {
        "mul": _mul,
        "div": _div,
        "einsum": _einsum,
        "gelu": _gelu,
        "leaky_relu": _leaky_relu,
        "softmax": _softmax,
        "sigmoid": _sigmoid,
        "scaled_dot_product_attention": _sdpa,
        "multi_head_attention_forward": _multi_head_attention,
        "layer_norm": _layer_norm,
        "rms_norm": _rms_norm,
        "group_norm": _group_norm,
        "batch_norm": _batch_norm,
        "instance_norm": _instance_norm,
        "normalize": _normalize,
        **{name: _activation(ratio) for name, ratio in ACTIVATIONS.items()},
        **{name: _products(factors) for name, factors in PRODUCTS.items()},
        **dict.fromkeys(DROPOUT, _dropout),
        **dict.fromkeys(STATISTICS, _statistic),
        **dict.fromkeys(CLAMPS, _clamp),
    }.items()
}

#: Attribute reads, shape queries and the like: never a tensor that carries relevance.
PASSIVE_PREFIXES = (
    "size",
    "dim",
    "numel",
    "shape",
    "dtype",
    "device",
    "is_",
    "get",
    "item",
    "tolist",
    "stride",
    "data_ptr",
    "element_size",
    "__",
)


def _out_of_place(func: Callable) -> Callable | None:
    """The out-of-place form of an op that writes into its first argument (``Tensor.mul_``, ``__imul__``)."""
    raw = getattr(func, "__name__", "") or ""
    if raw.startswith("__i") and raw.endswith("__"):
        return getattr(Tensor, f"__{raw[3:-2]}__", None)
    if raw.endswith("_") and not raw.endswith("__"):
        return getattr(Tensor, raw[:-1], None)
    return None


#: Marks a handler's result carries for the handlers of the ops that use it (see _mul).
_TAGS = ("_attnlrp_gate", "_attnlrp_gate_input", "_attnlrp_weight")


def _in_place(handler: Handler, out_of_place: Callable | None) -> Handler:
    """The handler for an op that may write into its first argument (``h.mul_(u)``, ``h *= u``, ``F.relu(h,
    inplace=True)``): the op out of place under its rule, on a copy of that argument, and the result copied into
    it. Run in place, the rule's own tensors (views that scale the backward, detached factors) would be written
    instead, cutting the argument from the graph the rule builds."""

    def handle(binding: Binding, func, args, kwargs):
        target = args[0] if args else None
        writes = out_of_place is not None or kwargs.get("inplace") is True
        if not (writes and isinstance(target, Tensor) and torch.is_grad_enabled()):
            return handler(binding, func, args, kwargs)
        if not any(_requires_grad(a) for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        copy = target.clone()
        for tag in _TAGS:  # a gate stays a gate (see _mul)
            if hasattr(target, tag):
                setattr(copy, tag, getattr(target, tag))
        args = tuple(copy if a is target else a for a in args)
        result = handler(
            binding, out_of_place or func, args, {**kwargs, "inplace": False} if "inplace" in kwargs else kwargs
        )
        target.copy_(result)
        for tag in _TAGS:  # the target is what the result is now: its tags, and none of its own old ones
            if hasattr(result, tag):
                setattr(target, tag, getattr(result, tag))
            elif hasattr(target, tag):
                delattr(target, tag)
        return target

    return handle


def handler_for(func: Callable) -> Handler | None:
    """The handler for ``func``; None for ops that are linear (plain autograd is their rule)."""
    name = op_name(func)
    if name in SELECTIONS:
        return carry_weight
    if name in _SPECIAL:
        return _in_place(_SPECIAL[name], _out_of_place(func))
    if name in LINEAR or name.startswith(PASSIVE_PREFIXES):
        return None
    return _unruled
