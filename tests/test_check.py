"""``attnlrp.check``: conservation measured module by module, on a float64 copy with biases and learned
constants zeroed, under CP-LRP.

(a) every family of the matrix passes: FAMILIES and the extended matrix (Bloom, DeepSeek-V2/V3, Llama 4,
    OLMoE, Gemma 3n, Falcon, Phi, StableLM, GPT-J, OPT, MPT, CodeGen, GPTBigCode, Cohere 1/2, Granite,
    ModernBERT, DeBERTa-v2, ELECTRA, XLM-R);
(b) it finds what the op audit cannot see: a custom autograd.Function, a write through ``.data``, Bloom's
    GELU without its rule;
(c) the user's model is untouched, and a bound model is refused;
(d) the report: the table, ``ok``, ``leaks``; the shared bookkeeping of the explicit mode;
(e) the rules the extended matrix needed, one by one;
(f) state-space and recurrent models are refused by name;
(g) ``attnlrp audit --check``.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny_models import EXTENDED, FAMILIES, build
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import ModelOutput

import attnlrp
from attnlrp import cli
from attnlrp.core import rules
from attnlrp.engine import binding as binding_module
from attnlrp.engine.check import zero_constants
from attnlrp.engine.unsupported import STATE_SPACE
from attnlrp.errors import BindingError, UnsupportedModelError

# --- (a) the family matrix ----------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES + EXTENDED)
def test_every_family_conserves_through_every_module(name):
    fam = build(name)
    report = attnlrp.check(fam.model, fam.inputs)
    assert report.ok, str(report)
    assert report.audit.unruled == [] and report.leaks == []
    assert report.worst < 1e-6  # float32 casts inside some models (RMSNorm, routers) leave about 1e-8
    assert report.end_to_end.input == pytest.approx(report.target, rel=1e-6)
    assert report.end_to_end.output == pytest.approx(report.target, rel=1e-12)
    assert len(report.flow.modules) > 15


def test_learned_constants_and_biases_are_zeroed_and_named():
    gpt2 = build("gpt2")
    report = attnlrp.check(gpt2.model, gpt2.inputs)
    assert "transformer.wpe.weight" in report.zeroed
    assert "transformer.h.0.attn.c_attn.bias" in report.zeroed
    assert "transformer.wte.weight" not in report.zeroed  # the input embeddings carry the relevance
    vit = build("vit")
    vit = attnlrp.check(vit.model, vit.inputs)
    assert {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"} <= set(vit.zeroed)


# --- (b) what the op audit cannot see -------------------------------------------------------------


class _Gelu(torch.autograd.Function):
    """GELU with its true derivative as the backward: the function mode never sees inside."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1 + torch.erf(x / 2**0.5))
        return grad * (cdf + x * torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5)


class CustomGelu(nn.Module):
    def forward(self, x):
        return _Gelu.apply(x)


class DataScale(nn.Module):
    """A linear layer whose output is doubled through ``.data``, behind autograd's back."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8, bias=False)

    def forward(self, x):
        y = self.lin(x)
        y.data.mul_(2)
        return y


class Net(nn.Module):
    def __init__(self, middle: nn.Module):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(6, 8), middle, nn.Linear(8, 3)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def _x():
    return torch.randn(2, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("middle", "path", "kind", "audited"),
    [
        (CustomGelu(), "act", "CustomGelu", [("act", "autograd.Function _Gelu", 1)]),
        (DataScale(), "act", "DataScale", []),
    ],
)
def test_finds_the_module_the_audit_cannot_see_into(middle, path, kind, audited):
    torch.manual_seed(0)
    report = attnlrp.check(Net(middle), _x())
    assert report.audit.unruled == audited  # the audit names a custom function, and can't see a write through .data
    assert attnlrp.audit(Net(middle), _x()).unruled == audited
    assert not report.ok
    assert [(m.path, m.kind) for m in report.leaks] == [(path, kind)]
    assert {m.path for m in report.flow.violations()} == {"", path}  # the root only contains the leak
    text = str(report)
    assert f"LEAK   {path}" in text and kind in text and "inside <root>" in text and "docs/check.md" in text


@dataclasses.dataclass
class _Out:
    h: torch.Tensor


@dataclasses.dataclass(frozen=True)
class _FrozenOut:
    inner: _Out


@dataclasses.dataclass
class _ModelOut(ModelOutput):
    h: torch.Tensor | None = None


class WrappedGelu(nn.Module):
    """CustomGelu whose output comes back wrapped (a dataclass, a deep list, a model output)."""

    def __init__(self, wrap, unwrap):
        super().__init__()
        self.wrap, self.unwrap = wrap, unwrap

    def forward(self, x):
        return self.wrap(_Gelu.apply(x))


class UnwrappingNet(Net):
    def forward(self, x):
        return self.down(self.act.unwrap(self.act(self.up(x))))


@pytest.mark.parametrize(
    ("wrap", "unwrap"),
    [
        (_Out, lambda o: o.h),
        (lambda h: _FrozenOut(_Out(h)), lambda o: o.inner.h),
        (lambda h: [[[h]]], lambda o: o[0][0][0]),
        (lambda h: {"a": ({"b": h},)}, lambda o: o["a"][0]["b"]),
        (_ModelOut, lambda o: o.h),
    ],
    ids=["dataclass", "frozen-dataclass", "deep-list", "deep-dict", "model-output"],
)
def test_a_custom_function_returned_wrapped_is_found_in_its_module(wrap, unwrap):
    """The audit and the check walk a module's output at any depth: the function and the leak are at ``act`` (a
    dataclass or a container more than two levels deep put the function at <root>, and the check blamed both)."""
    torch.manual_seed(0)
    model = UnwrappingNet(WrappedGelu(wrap, unwrap))
    assert attnlrp.audit(model, _x()).unruled == [("act", "autograd.Function _Gelu", 1)]
    report = attnlrp.check(model, _x())
    assert report.audit.unruled == [("act", "autograd.Function _Gelu", 1)]
    assert [(m.path, m.kind) for m in report.leaks] == [("act", "WrappedGelu")]
    assert {m.path for m in report.flow.violations()} == {"", "act"}


def test_bloom_gelu_custom_function_is_found_without_its_rule_and_conserves_with_it(monkeypatch):
    fam = build("bloom")
    fam.model.train()  # BloomGelu runs its custom autograd.Function in training mode
    report = attnlrp.check(fam.model, fam.inputs)
    assert report.ok, str(report)
    assert fam.model.training  # the copy ran as the model is; the model itself is untouched
    monkeypatch.delitem(binding_module.INLINE_ACTIVATIONS, "BloomGelu")
    report = attnlrp.check(fam.model, fam.inputs)
    assert not report.ok
    assert report.audit.unruled == [
        (f"transformer.h.{i}.mlp.gelu_impl", "autograd.Function GeLUFunction", 1) for i in range(2)
    ]
    assert [m.path for m in report.leaks] == ["transformer.h.0.mlp.gelu_impl", "transformer.h.1.mlp.gelu_impl"]
    assert {m.kind for m in report.leaks} == {"BloomGelu"}
    assert report.end_to_end.error > 1e-4


class _HalfBackward(torch.autograd.Function):
    """A matmul kernel whose backward is off by a factor (as a quantized kernel's might be)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(weight)
        return x @ weight.T

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return 0.5 * grad @ weight, None


class QuirkyLinear(nn.Linear):
    def forward(self, x):
        return _HalfBackward.apply(x, self.weight)


def test_a_layer_rule_fixes_a_linear_layer_with_its_own_kernel():
    torch.manual_seed(0)
    model = Net(QuirkyLinear(8, 8, bias=False))
    report = attnlrp.check(model, _x())
    assert [(m.path, m.kind) for m in report.leaks] == [("act", "QuirkyLinear")]
    fixed = attnlrp.check(model, _x(), layer_rules={QuirkyLinear: attnlrp.Epsilon(1e-12)})
    assert fixed.ok, str(fixed)
    assert fixed.audit.rules["QuirkyLinear [Epsilon(1e-12)]"] == 1


# --- (c) the user's model ---------------------------------------------------------------------


def test_the_model_checked_is_untouched():
    fam = build("gpt2", dtype=torch.float32)
    model = fam.model.train()
    model.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    attnlrp.check(model, fam.inputs)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # biases and wpe not zeroed
    assert float(model.transformer.wpe.weight.detach().abs().sum()) > 0
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert next(model.parameters()).dtype == torch.float32 and model.training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and "forward" not in module.__dict__


def test_a_bound_model_is_refused():
    model = build("llama").model
    with (
        attnlrp.lrp(model),
        pytest.raises(
            BindingError,
            match=r"bound by an enclosing attnlrp.lrp\(...\) block: check it unbound; leave that block first",
        ),
    ):
        attnlrp.check(model)


# --- (d) the report and the shared bookkeeping ----------------------------------------------------------


def test_report_of_a_conserving_model():
    fam = build("llama")
    report = attnlrp.check(fam.model, fam.inputs)
    text = str(report)
    assert text.startswith("attnlrp check of LlamaForCausalLM: conserves relevance (CP-LRP, float64, rtol 1e-06)")
    assert "end to end: target" in text and "attnlrp audit (cp-lrp): every op had a rule" in text
    assert "LEAK" not in text
    top = fam.model(**fam.inputs).logits[0, -1].max()  # the default target: the top logit at the last position
    assert report.target == pytest.approx(float(top.detach()), rel=1e-6)


def test_custom_target_and_tolerance():
    torch.manual_seed(0)
    model = Net(nn.GELU())
    report = attnlrp.check(model, _x(), target=lambda out: out[1, 2])
    twin = copy.deepcopy(model).double()
    assert zero_constants(twin) == ["up.bias", "down.bias"]
    assert report.ok and report.target == pytest.approx(float(twin(_x().double())[1, 2].detach()), rel=1e-12)
    loose = attnlrp.check(Net(CustomGelu()), _x(), rtol=0.5)
    assert not loose.leaks  # the GELU's leak is far below half of what passes through
    assert not loose.ok and not loose.audit.ok  # but its function has no rule under AttnLRP either


def test_relevance_changed_in_place_after_a_module_returns_is_counted_as_returned():
    # Falcon adds the attention output into the MLP's output in place (mlp_output += attention_output).
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False)

        def forward(self, x):
            out = self.a(x)
            out += self.b(x)
            return out

    torch.manual_seed(0)
    report = attnlrp.check(InPlace(), _x())
    assert report.ok, str(report)
    a, b = report.flow.modules["a"], report.flow.modules["b"]
    assert a.output + b.output == pytest.approx(report.target, rel=1e-9)


# --- (e) the rules the extended matrix needed -------------------------------------------------------


class Elementwise(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    ("fn", "low"),
    [
        (lambda x: x**3, -2.0),
        (torch.square, -2.0),
        (lambda x: torch.pow(x, 0.5), 0.0),  # x^p with a non-integer p: on x >= 0, where it is defined
        (torch.sqrt, 0.0),
        (lambda x: torch.clamp(x, -0.5, 0.7), -2.0),
        (lambda x: x.clamp(min=0.1), -2.0),
    ],
    ids=["pow3", "square", "pow0.5", "sqrt", "clamp", "clamp_min"],
)
@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_powers_and_clamps_get_the_identity_rule(fn, low, method):
    gen = torch.Generator().manual_seed(1)
    x = (low + (2.0 - low) * torch.rand(4, 5, dtype=torch.float64, generator=gen)).requires_grad_()
    g = torch.rand(4, 5, dtype=torch.float64, generator=gen)
    with attnlrp.lrp(Elementwise(fn), method=method, strict=True) as bound:
        bound.model(x).backward(g)
    torch.testing.assert_close(x.detach() * x.grad, fn(x.detach()) * g)  # R_x = R_out, element by element


def test_normalising_factors_are_constants_and_norms_keep_their_plain_gradient():
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()

    def rms_scaled(t):  # t / rms(t) outside a norm module: the factor is a constant, R_x = R_out
        return t * torch.rsqrt((t * t).mean(-1, keepdim=True)) * torch.reciprocal(t.std(-1, keepdim=True).detach())

    with attnlrp.lrp(Elementwise(rms_scaled), strict=True) as bound:
        out = bound.model(x)
        out.sum().backward()
    torch.testing.assert_close(x.detach() * x.grad, out.detach())
    x.grad = None
    with attnlrp.lrp(Elementwise(lambda t: t.std(-1) + torch.linalg.vector_norm(t, dim=-1)), strict=True) as bound:
        out = bound.model(x)  # degree-1 homogeneous: Σ x ∂f/∂x = f (Euler), the plain gradient conserves
        out.sum().backward()
    assert float((x * x.grad).detach().sum()) == pytest.approx(float(out.detach().sum()), rel=1e-12)


class VarMeanNorm(nn.Module):
    def forward(self, x):
        var, mean = torch.var_mean(x, -1, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + 1e-5)


def test_a_norm_written_with_var_mean_keeps_its_centring_linear():
    model = nn.Sequential(nn.Linear(6, 6, bias=False), VarMeanNorm(), nn.Linear(6, 3, bias=False))
    report = attnlrp.check(model, _x())
    assert report.ok, str(report)
    assert report.audit.rules["var_mean [norm statistic]"] == 1


class SigmoidMoE(nn.Module):
    """Two experts weighted by a sigmoid top-1 router written out (gather, normalisation, scaling), as in
    DeepSeek-V3; nothing is named "router"."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(6, 2, bias=False)
        self.experts = nn.ModuleList(nn.Linear(6, 6, bias=False) for _ in range(2))
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        scores = self.gate(x).sigmoid()
        index = scores.topk(1, dim=-1).indices
        weight = scores.gather(-1, index) / scores.sum(-1, keepdim=True) * 2.5
        outs = torch.stack([e(x) for e in self.experts], -2)
        chosen = outs.gather(-2, index.unsqueeze(-1).expand(-1, 1, 6)).squeeze(-2)
        return self.head(chosen * weight)


def test_sigmoid_routing_weights_are_constants_in_cp_lrp():
    torch.manual_seed(0)
    report = attnlrp.check(SigmoidMoE(), _x())
    assert report.ok, str(report)
    # the weights stay weights through gather, normalisation and scaling: held constant where they multiply
    assert report.audit.rules["mul [gate (cp-lrp)]"] == 1 and report.audit.rules["mul [uniform]"] == 0
    model = SigmoidMoE().double()
    with attnlrp.lrp(model, method="cp-lrp"), attnlrp.Recorder(model, "gate") as rec:
        model(_x().double().requires_grad_()).max().backward()
    assert "gate" not in rec.relevance  # no backward pass reached the router
    # AttnLRP keeps the softmax rule at the sigmoid: relevance reaches the gate, and is not conserved
    model = SigmoidMoE().double()
    with attnlrp.lrp(model, method="attnlrp"), attnlrp.Recorder(model, "gate") as rec:
        model(_x().double()).max().backward()
    assert float(rec.relevance["gate"].abs().sum()) > 0


@pytest.mark.parametrize("sigmoid", [nn.Sigmoid(), nn.SiLU()], ids=["sigmoid", "silu"])
def test_a_sigmoid_activation_passes_its_relevance_in_cp_lrp(sigmoid):
    """A sigmoid between two linear layers is an activation, not a gate: CP-LRP gives it the identity rule (it was
    held constant, which cut the branch off: no relevance reached the input, and strict raised torch's own error)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), sigmoid, nn.Linear(8, 3, bias=False)).double()
    report = attnlrp.check(model, _x())
    assert report.ok, str(report)
    x = _x().double().requires_grad_()
    with attnlrp.lrp(model, method="cp-lrp", strict=True):
        y = model(x).max()
        y.backward()
    assert torch.allclose((x * x.grad).sum(), y.detach())
    zero = torch.zeros(1, 8, dtype=torch.float64, requires_grad=True)  # sigmoid(0)/0: no relevance, and no NaN
    with attnlrp.lrp(model[1:], method="cp-lrp"):
        model[1:](zero).sum().backward()
    assert torch.isfinite(zero.grad).all()


class GatedBySigmoid(nn.Module):
    """An activation times a sigmoid gate, as a product or a matrix product (``how``), in either order."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.act, self.gate = nn.Linear(6, 8, bias=False), nn.Linear(6, 8, bias=False)
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        act, gate = F.silu(self.act(x)), torch.sigmoid(self.gate(x))
        if self.how == "act * gate":
            return self.head(act * gate)
        if self.how == "gate * act":
            return self.head(gate * act)
        return self.head(torch.einsum("bi,bi->bi", act, gate.gather(1, torch.arange(8).expand(len(x), 8))))


def test_a_sigmoid_gate_is_held_in_cp_lrp_whatever_the_order_or_product_and_as_the_explicit_mode_holds_it():
    # both factors were gates: act * gate held the activation, gate * act the sigmoid; einsum split the two
    from attnlrp.explicit.presets import transformer_composite

    found = {}
    for how in ("act * gate", "gate * act", "einsum"):
        torch.manual_seed(0)
        model = GatedBySigmoid(how).double()
        x = _x().double().requires_grad_()
        with attnlrp.lrp(model, method="cp-lrp"):
            y = model(x).max()
            y.backward()
        found[how] = (x * x.grad).detach()
        assert torch.allclose(found[how].sum(), y.detach()), how
        if how == "einsum":  # the explicit mode holds weights in products only (docs/explicit.md)
            continue
        explicit = _x().double().requires_grad_()
        with transformer_composite("cp-lrp", epsilon=1e-12).context(model):
            z = model(explicit).max()
            z.backward(z)
        assert torch.allclose(explicit.grad, found[how], atol=1e-9), how
    assert torch.allclose(found["act * gate"], found["gate * act"]) and torch.allclose(
        found["einsum"], found["gate * act"]
    )


def test_a_sigmoid_near_zero_in_half_precision_has_a_finite_gradient():
    # sigmoid(x)/x exceeds float16's range for |x| < 8e-6: its backward was inf (and with a gradient above 1, too)
    x = torch.tensor([3e-6, 1e-5, 0.0, -2e-7], dtype=torch.float16, requires_grad=True)
    (rules.identity_rule(x, torch.sigmoid, rules.sigmoid_ratio) * 4).sum().backward()
    assert torch.isfinite(x.grad).all()


class TwoWeights(nn.Module):
    """Two sigmoid weights multiplied by a matrix product, beside a plain path."""

    def __init__(self):
        super().__init__()
        self.a, self.g, self.head = (
            nn.Linear(6, 8, bias=False),
            nn.Linear(6, 8, bias=False),
            nn.Linear(8, 3, bias=False),
        )

    def forward(self, x):
        outer = torch.bmm(torch.sigmoid(self.a(x))[:, :, None], torch.sigmoid(self.g(x))[:, None, :]).sum(1)
        return self.head(outer + self.a(x))


def test_a_matrix_product_of_two_sigmoid_weights_conserves_in_cp_lrp():
    # both were held constant: the product's relevance was lost (Σ R = 0.06 of y = 0.72)
    torch.manual_seed(0)
    model = TwoWeights().double()
    x = _x().double().requires_grad_()
    with attnlrp.lrp(model, method="cp-lrp"):
        y = model(x).max()
        y.backward()
    assert torch.allclose((x * x.grad).sum(), y.detach())


class AltUpLike(nn.Module):
    """Gemma 3n's AltUp correction in small: coefficients 1 + W tanh(router(x)) that scale the signal."""

    def __init__(self, router_name: str):
        super().__init__()
        self.router_name = router_name
        self.add_module(router_name, nn.Linear(6, 2, bias=False))
        self.coefs, self.head = nn.Linear(2, 6, bias=False), nn.Linear(6, 3, bias=False)

    def forward(self, x):
        coefs = self.coefs(torch.tanh(getattr(self, self.router_name)(x))) + 1.0
        return self.head(x * coefs)


def test_routers_are_constants_in_cp_lrp():
    torch.manual_seed(0)
    report = attnlrp.check(AltUpLike("modality_router"), _x())
    assert report.ok, str(report)
    assert report.audit.rules["Linear [router constant (cp-lrp)]"] == 1
    torch.manual_seed(0)
    unnamed = attnlrp.check(AltUpLike("mixer"), _x())  # the same model, its router not named so
    assert [m.path for m in unnamed.leaks] == [""]  # the constant 1.0 takes its share under the uniform rule


def test_credit_gives_each_row_of_x_the_relevance_of_the_same_row_of_p():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=gen).requires_grad_()
    x.data[0, 1] = 0  # a padding row: receives nothing
    p = torch.randn(2, 5, 12, dtype=torch.float64, generator=gen)
    g = torch.randn(2, 5, 12, dtype=torch.float64, generator=gen)
    out = rules.credit(p, x)
    assert torch.equal(out, p)
    out.backward(g)
    rho = (p * g).sum(-1)
    rho[0, 1] = 0
    torch.testing.assert_close((x * x.grad).sum(-1).detach(), rho)


def test_gemma3n_per_layer_token_embeddings_are_credited_to_the_tokens():
    fam = build("gemma3n")
    with attnlrp.lrp(fam.model, method="cp-lrp") as bound:
        bound.counting = True
        y = fam.model(**fam.inputs).logits[0, -1].max()
        y.backward()
    x = bound.embeddings
    assert float((x * x.grad).detach().sum()) == pytest.approx(float(y.detach()), rel=1e-6)  # what explain() reads
    assert (
        bound.ruled_ops[
            ("model.embed_tokens_per_layer", "Gemma3nTextScaledWordEmbedding [credited to the input tokens]")
        ]
        == 1
    )


# --- (f) state-space and recurrent models -------------------------------------------------------------

_STATE_SPACE = {
    "mamba": dict(hidden_size=64, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
    "mamba2": dict(hidden_size=64, state_size=8, num_hidden_layers=2, expand=2, num_heads=8, head_dim=16, n_groups=1),
    "falcon_mamba": dict(hidden_size=64, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
    "jamba": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        num_experts_per_tok=1,
        mamba_d_state=8,
        mamba_dt_rank=8,
    ),
    "rwkv": dict(
        hidden_size=64, num_hidden_layers=2, attention_hidden_size=64, intermediate_size=128, context_length=32
    ),
}


@pytest.mark.parametrize("model_type", list(_STATE_SPACE))
def test_state_space_and_recurrent_models_are_refused_by_name(model_type):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(model_type, vocab_size=100, **_STATE_SPACE[model_type])
    )
    for call in (lambda: attnlrp.lrp(model).__enter__(), lambda: attnlrp.audit(model), lambda: attnlrp.check(model)):
        with pytest.raises(UnsupportedModelError, match=f"model type '{model_type}'.*no LRP rules"):
            call()
    assert attnlrp.engine.binding_of(model) is None  # nothing was bound


@pytest.mark.parametrize(
    "cls",
    [
        "MambaMixer",
        "Mamba2Mixer",
        "JambaMambaMixer",
        "ZambaMambaMixer",
        "Zamba2MambaMixer",
        "BambaMixer",
        "FalconH1Mixer",
        "GraniteMoeHybridMambaLayer",
        "NemotronHMamba2Mixer",
        "RwkvSelfAttention",
        "RecurrentGemmaRecurrentBlock",
        "Qwen3NextGatedDeltaNet",
        "KimiLinearDeltaAttention",
    ],
)
def test_state_space_layer_classes_are_known(cls):
    assert STATE_SPACE.search(cls)


@pytest.mark.parametrize("cls", ["LlamaAttention", "KimiLinearAttention", "Qwen3NextAttention", "MambaRMSNorm"])
def test_attention_layers_are_not_taken_for_state_space_layers(cls):
    assert not STATE_SPACE.search(cls)


# --- (g) attnlrp audit --check ------------------------------------------------------------------------


class _LeakyLM(nn.Module):
    """A token model with a custom autograd.Function inside: the check fails on it."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed, self.act, self.head = nn.Embedding(vocab, 8), CustomGelu(), nn.Linear(8, vocab, bias=False)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids):
        return self.head(self.act(self.embed(input_ids)))


@pytest.mark.parametrize("leaky", [False, True])
def test_cli_audit_check(leaky, tiny_lm, tokenizer, monkeypatch, capsys):
    torch.manual_seed(0)
    model = _LeakyLM(len(tokenizer)) if leaky else tiny_lm
    monkeypatch.setattr(cli, "_load", lambda args: (model, tokenizer))
    code = cli.main(["audit", "--check"])
    out = capsys.readouterr().out
    assert code == (1 if leaky else 0)
    assert "attnlrp audit (cp-lrp)" in out
    assert ("LEAK   act" in out) if leaky else ("conserves relevance" in out)


def test_the_tree_walk_visits_a_dataclass_that_holds_itself_once():
    from attnlrp.engine.trees import map_tensors, tensors

    @dataclasses.dataclass
    class Node:
        value: torch.Tensor
        parent: object = None

    node = Node(torch.ones(2))
    node.parent = node  # a RecursionError in every module hook before
    assert len(list(tensors((node,)))) == 1
    assert torch.equal(map_tensors(lambda t: t * 2, [node])[0].value, torch.full((2,), 2.0))
