"""The explicit mode (attnlrp.explicit): relevance flows backward as relevance.

(a) each function of ``functional`` against its formula, written out here (float64);
(b) the generic rules (their own vector-Jacobian products) against the functions and formulas;
(c) the Composite: per instance, reversible, function and module keys, summary, conservation check;
(d) the test that matters: with ε → 0 the explicit mode gives the efficient engine's input relevance,
    for every family, AttnLRP and CP-LRP;
(e) the code blocks of docs/explicit.md run.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import EXTENDED, FAMILIES, build
from torch import nn

import attnlrp
from attnlrp.engine.binding import binding_of
from attnlrp.errors import BindingError
from attnlrp.explicit import (
    Composite,
    EpsilonRule,
    IdentityRule,
    StatisticRule,
    StopRelevanceRule,
    TaylorDecompositionRule,
    UniformEpsilonRule,
    UniformRule,
    transformer_composite,
)
from attnlrp.explicit import functional as xf
from attnlrp.explicit.composite import ExplicitBinding
from attnlrp.explicit.presets import subtract

D = torch.float64
EPS = 1e-12


def rand(*shape, seed=0, grad=True):
    x = torch.randn(shape, dtype=D, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(grad)


def stab(z, eps):
    """z + eps * sign(z), sign(0) = 1."""
    return torch.where(z >= 0, z + eps, z - eps)


def backward(out, relevance=None, seed=7):
    """Start the explicit backward with the given output relevance (default: random)."""
    r = rand(*out.shape, seed=seed, grad=False) if relevance is None else relevance
    out.backward(r)
    return r


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --- (a) functional, each against its formula --------------------------------------------------


def test_stabilizer_is_sign_aware_with_sign_of_zero_one():
    z = torch.tensor([-2.0, 0.0, 3.0], dtype=D)
    close(xf.stabilize(z, 0.5), torch.tensor([-2.5, 0.5, 3.5], dtype=D))


def test_linear_epsilon():
    x, w, b = rand(2, 3, 5), rand(4, 5, seed=1, grad=False), rand(4, seed=2, grad=False)
    z = xf.linear_epsilon(x, w, b, epsilon=0.1)
    close(z, F.linear(x, w, b))
    r = backward(z)
    zd = z.detach()
    # R_x_i = sum_j x_i W_ji R_j / (z_j + eps sign z_j)
    close(x.grad, torch.einsum("...i,ji,...j->...i", x.detach(), w, r / stab(zd, 0.1)))
    # with eps -> 0 the bias keeps exactly its share b_j R_j / z_j
    x.grad = None
    z = xf.linear_epsilon(x, w, b, epsilon=1e-15)
    r = backward(z)
    absorbed = (b * r / z.detach()).sum()
    close(x.grad.sum() + absorbed, r.sum(), tol=1e-8)


@pytest.mark.parametrize("carrying", ["both", "left", "right"])
def test_matmul_uniform_epsilon(carrying):
    a = rand(2, 3, 4, grad=carrying != "right")
    b = rand(2, 4, 5, seed=1, grad=carrying != "left")
    z = xf.matmul(a, b, epsilon=0.05)
    close(z, a @ b)
    r = backward(z)
    n = 2 if carrying == "both" else 1
    s = r / stab(z.detach(), 0.05)
    # R_a_ik = a_ik sum_j b_kj s_ij / n ;  R_b_kj = b_kj sum_i a_ik s_ij / n
    if a.requires_grad:
        close(a.grad, torch.einsum("bik,bkj,bij->bik", a.detach(), b.detach(), s) / n)
    if b.requires_grad:
        close(b.grad, torch.einsum("bik,bkj,bij->bkj", a.detach(), b.detach(), s) / n)


def test_matmul_broadcast_and_vector():
    a, b = rand(3, 4), rand(2, 4, 5, seed=1)
    z = xf.matmul(a, b, epsilon=EPS)
    r = backward(z)
    close(a.grad, torch.einsum("ik,bkj,bij->ik", a.detach(), b.detach(), r / stab(z.detach(), EPS)) / 2)
    v, w = rand(4), rand(4, 5, seed=1, grad=False)
    z = xf.matmul(v, w, epsilon=EPS)
    assert z.shape == (5,)
    r = backward(z)
    close(v.grad, v.detach() * (w @ (r / stab(z.detach(), EPS))))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_softmax_rule(temperature):
    x = rand(2, 6)
    s = xf.softmax(x, -1, temperature=temperature)
    close(s, torch.softmax(x / temperature, -1))
    r = backward(s)
    sd, u = s.detach(), x.detach() / temperature
    # R_x = x ⊙ (R_s − s Σ R_s), x the softmax's own input x/T
    close(x.grad, u * (r - sd * r.sum(-1, keepdim=True)))


def test_softmax_masked_and_dtype():
    x = rand(2, 6).detach()
    x[0, 2] = -math.inf
    x.requires_grad_()
    s = xf.softmax(x, dim=-1, dtype=torch.float32)
    assert s.dtype == torch.float32
    backward(s, torch.ones_like(s))
    assert torch.isfinite(x.grad).all() and x.grad[0, 2] == 0
    close(x.grad.sum(-1), (x.detach().nan_to_num(neginf=0) * (1 - 6 * s.detach())).sum(-1).double(), tol=1e-6)


def test_mul2_uniform_and_identity():
    a, b = rand(3, 6), rand(1, 6, seed=1)
    r = backward(xf.mul2(a, b))
    close(a.grad, r / 2)  # R_a = R/2
    close(b.grad, (r / 2).sum(0, keepdim=True))  # R_b = R/2, summed over the broadcast rows
    a.grad = None
    r = backward(xf.mul2(a, b.detach()))
    close(a.grad, r)  # a constant factor: identity
    a.grad = None
    r = backward(xf.mul2(3.0, a))
    close(a.grad, r)


def test_add2_epsilon():
    a, b = rand(3, 6), rand(3, 6, seed=1)
    z = xf.add2(a, b, epsilon=0.01)
    r = backward(z)
    s = r / stab(z.detach(), 0.01)
    close(a.grad, a.detach() * s)  # R_a = a R / (z + eps sign z)
    close(b.grad, b.detach() * s)
    a.grad = None
    z = xf.add2(a, b.detach(), epsilon=EPS)
    r = backward(z)
    zs = stab(z.detach(), EPS)
    close(a.grad, a.detach() * r / zs)
    close(a.grad + b * r / zs, r * z.detach() / zs)  # the constant summand keeps its share


@pytest.mark.parametrize("dim,keepdim", [(-1, False), (-1, True), (None, False), ((0, 2), False)])
def test_mean_epsilon(dim, keepdim):
    x = rand(2, 3, 4)
    z = xf.mean(x, dim, keepdim, epsilon=0.01)
    close(z, x.mean() if dim is None else x.mean(dim, keepdim=keepdim))
    r = backward(z)
    dims = tuple(range(3)) if dim is None else (dim if isinstance(dim, tuple) else (dim,))
    n = math.prod(x.shape[d] for d in dims)
    zk, rk = x.detach().mean(dims, keepdim=True), r.reshape(x.detach().mean(dims, keepdim=True).shape)
    close(x.grad, x.detach() / n * rk / stab(zk, 0.01))  # R_x_i = (x_i / n) R / (z + eps sign z)


def test_layer_norm_centring_is_the_epsilon_rule_of_a_linear_map():
    n = 6
    x, w, b = rand(3, n), rand(n, seed=1, grad=False), rand(n, seed=2, grad=False)
    y = xf.layer_norm(x, (n,), w, b, 1e-5, epsilon=0.01)
    close(y, F.layer_norm(x, (n,), w, b, 1e-5))
    r = backward(y)
    centre = torch.eye(n, dtype=D) - 1.0 / n  # C x = x − mean(x)
    for row in range(3):
        xr = x.detach()[row]
        sigma = torch.sqrt(xr.var(correction=0) + 1e-5)
        m = torch.diag(w / sigma) @ centre  # y = M x + b with sigma frozen
        # R_x_i = sum_j x_i M_ji R_j / (y_j + eps sign y_j)
        close(x.grad[row], xr * (m.T @ (r[row] / stab(y.detach()[row], 0.01))))


def test_rms_norm_identity_and_activation_identity():
    x, w = rand(3, 6), rand(6, seed=1, grad=False)
    y = xf.rms_norm_identity(x, (6,), w, 1e-6)
    close(y, F.rms_norm(x, (6,), w, 1e-6))
    r = backward(y)
    close(x.grad, r)  # R_x = R_y
    for fn, kwargs in ((F.silu, {}), (F.gelu, {"approximate": "tanh"}), (torch.tanh, {})):
        x.grad = None
        y = xf.identity(fn, x, **kwargs)
        close(y, fn(x, **kwargs))
        r = backward(y)
        close(x.grad, r)


@pytest.mark.parametrize("case", ["causal", "float mask", "bool mask, gqa"])
def test_attention_is_its_parts(case):
    kv_heads = 2 if "gqa" in case else 4
    q, k, v = rand(1, 4, 5, 8), rand(1, kv_heads, 5, 8, seed=1), rand(1, kv_heads, 5, 8, seed=2)
    if case == "causal":
        kwargs, mask = dict(is_causal=True), torch.ones(5, 5, dtype=torch.bool).tril()
    elif case == "float mask":
        mask = rand(5, 5, seed=3, grad=False)
        kwargs = dict(attn_mask=mask)
    else:
        mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(4)) > 0.3
        mask[:, 0] = True  # no fully masked row
        kwargs = dict(attn_mask=mask, enable_gqa=True)
    out = xf.scaled_dot_product_attention(q, k, v, epsilon=EPS, **kwargs)
    close(out, F.scaled_dot_product_attention(q, k, v, **kwargs))
    r = backward(out)
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    # the same attention from its parts: uniform ε at q·kᵀ and A·v, the softmax rule between
    kk, vv = (k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)) if kv_heads == 2 else (k, v)
    scores = xf.mul2(xf.matmul(q, kk.transpose(-2, -1), epsilon=EPS), 8**-0.5)
    scores = xf.add2(scores, mask, epsilon=EPS) if mask.is_floating_point() else scores.masked_fill(~mask, -math.inf)
    xf.matmul(xf.softmax(scores, -1), vv, epsilon=EPS).backward(r)
    for got, t in zip(grads, (q, k, v)):
        close(got, t.grad)


def test_attention_query_with_every_key_masked_gets_zeros_as_in_torch():
    q, k, v = rand(1, 2, 5, 8), rand(1, 2, 5, 8, seed=1), rand(1, 2, 5, 8, seed=2)
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[0] = False  # (a left-padded query)
    out = xf.scaled_dot_product_attention(q, k, v, attn_mask=mask, epsilon=EPS)
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    backward(out)
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert q.grad[..., 0, :].abs().max() == 0


def test_attention_with_constant_weights_is_cp_lrp():
    q, k, v = rand(1, 2, 5, 8), rand(1, 2, 5, 8, seed=1), rand(1, 2, 5, 8, seed=2)
    out = xf.scaled_dot_product_attention(q, k, v, is_causal=True, epsilon=EPS, constant_weights=True)
    r = backward(out)
    assert q.grad is None and k.grad is None
    a = torch.softmax(
        (q @ k.transpose(-2, -1) * 8**-0.5).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), -math.inf), -1
    ).detach()
    close(v.grad, v.detach() * (a.transpose(-2, -1) @ (r / stab(out.detach(), EPS))), tol=1e-8)  # ε-rule, out = A v
    close(v.grad.sum(), r.sum(), tol=1e-8)  # conservative


# --- (b) the generic rules, through the function's own vector-Jacobian product -----------------


def test_epsilon_rule_on_a_module_is_linear_epsilon():
    layer = nn.Linear(5, 4).double().requires_grad_(False)
    x = rand(3, 5)
    r = backward(EpsilonRule(0.1)(layer, x))
    expected = x.detach().clone().requires_grad_()
    xf.linear_epsilon(expected, layer.weight, layer.bias, epsilon=0.1).backward(r)
    close(x.grad, expected.grad)


def test_epsilon_rule_on_softmax_is_the_softmax_rule():
    x = rand(2, 6)
    r = backward(EpsilonRule(1e-15)(torch.softmax, x, -1))
    s = torch.softmax(x.detach(), -1)
    close(x.grad, x.detach() * (r - s * r.sum(-1, keepdim=True)), tol=1e-8)


def test_uniform_epsilon_and_uniform_rules():
    a, b = rand(2, 3, 4), rand(2, 4, 5, seed=1)
    r = backward(UniformEpsilonRule(0.05)(torch.matmul, a, b))
    a2, b2 = (t.detach().clone().requires_grad_() for t in (a, b))
    xf.matmul(a2, b2, epsilon=0.05).backward(r)
    close(a.grad, a2.grad)
    close(b.grad, b2.grad)
    c, d = rand(3, 6), rand(3, 6, seed=1)
    r = backward(UniformRule()(torch.mul, c, d))
    close(c.grad, r / 2)
    close(d.grad, r / 2)


def test_identity_rule_and_its_misuse():
    x = rand(3, 6)
    r = backward(IdentityRule()(F.gelu, x))
    close(x.grad, r)
    with pytest.raises(ValueError, match="UniformRule"):
        IdentityRule()(torch.mul, rand(2), rand(2, seed=1)).sum().backward()


def test_stop_relevance_rule():
    x = rand(4)
    weights = StopRelevanceRule()(torch.softmax, x, 0)
    assert not weights.requires_grad
    r = backward(xf.mul2(weights, x))
    close(x.grad, r)  # all relevance through x: the weights are constants


def test_taylor_at_the_input_with_bias_is_the_epsilon_rule():
    layer = nn.Linear(5, 4).double().requires_grad_(False)
    x = rand(3, 5)
    r = backward(TaylorDecompositionRule(epsilon=0.1)(layer, x))
    y = x.detach().clone().requires_grad_()
    EpsilonRule(0.1)(layer, y).backward(r)
    close(x.grad, y.grad)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reference", [0.5, "tensor", "callable"])
def test_taylor_at_a_reference_point(reference, bias):
    w = rand(4, 5, seed=1, grad=False)
    x = rand(3, 5)
    ref = {0.5: 0.5, "tensor": rand(5, seed=3, grad=False), "callable": lambda t: 0.25 * t}[reference]
    rule = TaylorDecompositionRule(ref, bias=bias, epsilon=EPS)
    f = lambda t: torch.tanh(t @ w.T)
    r = backward(rule(f, x))
    xd = x.detach()
    point = (ref(xd) if callable(ref) else torch.as_tensor(ref, dtype=D)).expand_as(xd)
    delta = xd - point
    jacobian_scale = 1 - torch.tanh(point @ w.T) ** 2  # J(x̃) = diag(1 − tanh²(W x̃)) W
    first_order = jacobian_scale * (delta @ w.T)  # J(x̃)(x − x̃)
    d = torch.tanh(xd @ w.T) if bias else first_order
    # R_x_i = sum_j (x_i − x̃_i) J_ji(x̃) R_j / d_j
    close(x.grad, delta * ((jacobian_scale * r / stab(d, EPS)) @ w), tol=1e-8)
    if not bias:  # without the bias term the first-order terms share all relevance
        close(x.grad.sum(), r.sum(), tol=1e-8)


# --- (c) the Composite -------------------------------------------------------------------------


class Toy(nn.Module):
    """A module rule and a function rule, in-place ops on the outputs of both, a reflected subtraction."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 6, bias=False)
        self.second = nn.Linear(6, 6)
        self.act = nn.SiLU()

    def forward(self, x):
        h = self.first(x)
        h += x  # in place, on a module rule's output
        g = self.act(h) * (1.0 - h)  # a reflected subtraction; a product of two input-dependent tensors
        out = self.second(g.view(-1, 6))
        out.mul_(2.0)  # in place, on the output of linear_epsilon
        return out.view(x.shape)


def toy_composite():
    return Composite(
        {
            "first": EpsilonRule(EPS),
            F.linear: functools.partial(xf.linear_epsilon, epsilon=EPS),
            nn.SiLU: IdentityRule(),
            operator.add: functools.partial(xf.add2, epsilon=EPS),
            torch.sub: functools.partial(subtract, epsilon=EPS),
            operator.mul: xf.mul2,
        }
    )


def toy_by_hand(model, x):
    """The Toy model written with the explicit functions directly."""
    h = xf.add2(xf.linear_epsilon(x, model.first.weight, epsilon=EPS), x, epsilon=EPS)
    g = xf.mul2(xf.identity(F.silu, h), xf.add2(1.0, xf.mul2(h, -1), epsilon=EPS))
    return xf.mul2(xf.linear_epsilon(g, model.second.weight, model.second.bias, epsilon=EPS), 2.0)


def test_composite_applies_module_and_function_rules():
    torch.manual_seed(0)
    model = Toy().double()
    x = rand(2, 6)
    expected = model(x).detach()
    comp = toy_composite()
    with comp.context(model):
        out = model(x)
        r = backward(out)
    close(out.detach(), expected)  # the same forward (the reflected 1.0 - h stays 1.0 - h; h += x stays in place)
    y = x.detach().clone().requires_grad_()
    model.requires_grad_(False)
    toy_by_hand(model, y).backward(r)
    close(x.grad, y.grad)


def test_composite_is_per_instance_and_reversible():
    torch.manual_seed(0)
    model, other = Toy().double(), Toy().double()
    x = rand(2, 6)
    before = model(x).detach()
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    comp = toy_composite()
    with comp.context(model):
        assert all(not p.requires_grad for p in model.parameters())
        z = rand(2, 6, seed=5)
        other(z).sum().backward()  # another instance of the same class runs plain, even inside the block
        assert all(p.grad is not None for p in other.parameters())
        with pytest.raises(BindingError):
            comp.register(other)
        with pytest.raises(BindingError):
            with attnlrp.lrp(model):
                pass
        with pytest.raises(BindingError, match="^Toy is bound by the registered composite 'composite', and can't be"):
            copy.deepcopy(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    assert all(p.requires_grad for p in model.parameters())
    close(model(x).detach(), before)
    comp.register(model)
    comp.remove()
    with attnlrp.lrp(model):  # free again
        pass


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_register_leaves_the_model_as_it_was(monkeypatch, error):
    torch.manual_seed(0)
    model, x = Toy().double(), rand(2, 6)
    before = model(x).detach()
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]
    original, seen = ExplicitBinding._bind_module, []

    def failing(self, path, module):
        seen.append(path)
        if path == "second":  # after the module rule of "first" replaced its forward
            raise error("attach failed")
        return original(self, path, module)

    comp = toy_composite()
    with monkeypatch.context() as patch:
        patch.setattr(ExplicitBinding, "_bind_module", failing)
        with pytest.raises(error, match="attach failed"):
            comp.register(model)
    assert "first" in seen and comp.binding is None
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()] == hooks
    assert all(p.requires_grad for p in model.parameters())
    assert binding_of(model) is None
    close(model(x).detach(), before)
    with comp.context(model):  # and it registers again
        out = model(x)
    close(out.detach(), before)


def test_composite_keys():
    torch.manual_seed(0)
    model = Toy().double()
    stop, eps = StopRelevanceRule(), EpsilonRule()
    comp = Composite({"second": stop, "*Linear": eps, torch.mul: xf.mul2, torch.Tensor.__add__: xf.add2})
    assert comp.module_rule("second", model.second)[1] is stop  # path glob, first match wins
    assert comp.module_rule("first", model.first)[1] is eps  # class-name glob
    assert comp.module_rule("act", model.act) is None
    assert comp.module_rule("block.0.first", model.first)[1] is eps  # a glob without a dot: the class name,
    assert Composite({"*first": stop}).module_rule("block.0.first", model.second)[1] is stop  # or attribute name
    assert Composite({"block.*": stop}).module_rule("block.0.first", model.first) is None  # a path: per component
    assert set(comp.function_rules) == {"mul", "add"}  # every spelling of an op is one entry
    with pytest.raises(ValueError, match="not a torch function"):
        Composite({lambda t: t: xf.mul2})
    with pytest.raises(TypeError, match="must be a Rule"):
        Composite({nn.Linear: xf.linear_epsilon})
    with pytest.raises(TypeError, match="rules torch functions, not modules"):
        Composite({nn.Linear: StatisticRule()})
    # a module path that matches nothing is a typo, not a rule that never applies; globs without a dot may miss
    with pytest.raises(BindingError, match=r"key 'block\.\*\.first' matches no module of Toy"):
        Composite({"block.*.first": stop}).register(model)
    with Composite({"*RMSNorm": stop, "first": eps}).context(model):
        pass


def test_summary_says_what_was_replaced_and_what_breaks():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return torch.cos(torch.exp(self.lin(x).reshape(2, 4)))

    model = Odd().double()
    comp = Composite({nn.Linear: EpsilonRule(), F.softmax: xf.softmax}, name="odd")
    with (
        comp.context(model),
        pytest.warns(attnlrp.UnruledOpWarning, match=r"2 op\(s\) carried relevance without a rule.*exp at <root>; cos"),
    ):
        model(rand(2, 4))
    text = str(comp)
    assert "Composite 'odd' on Odd" in text
    assert re.search(r"lin\s+Linear\s+EpsilonRule\(epsilon=1e-06\)\s+\[Linear\]\s+1 call", text)
    assert "not run: softmax" in text
    assert re.search(r"safe.*:\n\s+reshape", text)
    assert re.search(r"KNOWN TO BREAK LRP.*:\n\s+exp\s+at <root>", text)
    assert re.search(r"UNKNOWN.*:\n\s+cos\s+at <root>", text)


def test_conservation_check_finds_the_layer_with_a_bias():
    model = nn.Sequential(nn.Linear(5, 5, bias=False), nn.ReLU(), nn.Linear(5, 3)).double()
    comp = Composite({nn.Linear: EpsilonRule(EPS), nn.ReLU: IdentityRule()})
    x = rand(4, 5)
    with comp.context(model), comp.conservation_check(rtol=1e-6) as report:
        y = model(x)[0, 0]  # one output (a plain sum outside the composite would copy relevance)
        y.backward(y)
    assert set(report.modules) == {"", "0", "1", "2"}
    assert [m.path for m in report.violations()] == ["", "2"]  # the bias of the last layer absorbs relevance
    m = report.modules["2"]
    assert m.output == pytest.approx(y.item()) and m.input == pytest.approx(x.grad.sum().item())
    assert "loses" in str(report)


# --- (d) the test that matters: explicit (ε → 0) == efficient, every family ----------------------


METHODS = ("attnlrp", "cp-lrp")


@functools.cache
def family(name, attn="eager"):
    return build(name, attn)


def relevance_both_ways(fam, method, epsilon=EPS):
    """(efficient x·grad, explicit grad, binding of the explicit run) of the top logit's input relevance."""
    model = fam.model
    if fam.is_vision:
        key, x0 = "pixel_values", fam.inputs["pixel_values"]
    else:  # the token embeddings as input (Gemma3 scales them inside its embedding module)
        key, x0 = "inputs_embeds", model.get_input_embeddings()(fam.inputs["input_ids"]).detach()

    def top(logits):
        return logits[0, -1].max() if fam.is_decoder else logits[0].max()

    x = x0.clone().requires_grad_()
    with attnlrp.lrp(model, method=method):
        top(model(**{key: x}).logits).backward()
    efficient = (x * x.grad).detach()
    x = x0.clone().requires_grad_()
    with transformer_composite(method, epsilon=epsilon).context(model) as binding:
        y = top(model(**{key: x}).logits)
        y.backward(y)
    return efficient, x.grad, binding


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FAMILIES)
def test_explicit_equals_efficient_as_epsilon_goes_to_zero(name, method):
    efficient, explicit, binding = relevance_both_ways(family(name), method)
    # 3e-7 at most (OLMo2): the ε of 1e-12 at near-zero denominators, and HF's float32 norms and softmax
    assert rel_err(explicit, efficient) < 1e-6
    assert not [key for key in binding.calls if key[0] in ("breaks", "unknown")]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", EXTENDED)
def test_explicit_equals_efficient_on_the_extended_families(name, method):
    with warnings.catch_warnings():
        warnings.simplefilter("error", attnlrp.UnruledOpWarning)  # nothing that carries relevance is left unruled
        efficient, explicit, _ = relevance_both_ways(family(name), method)
    assert rel_err(explicit, efficient) < 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["gpt2", "distilbert"])
def test_explicit_equals_efficient_exactly_at_epsilon_zero(name, method):
    # No float32 casts inside these models and no zero denominators: the two modes are one computation.
    efficient, explicit, _ = relevance_both_ways(family(name), method, epsilon=0.0)
    assert rel_err(explicit, efficient) < 1e-13


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_explicit_sdpa_equals_efficient(name):
    for method in METHODS:
        efficient, explicit, binding = relevance_both_ways(family(name, "sdpa"), method)
        assert rel_err(explicit, efficient) < 1e-6
        assert binding.calls[
            (
                "replaced",
                "scaled_dot_product_attention",
                binding.model.base_model_prefix
                + (".layers.0.self_attn" if name == "llama" else ".encoder.layer.0.attention.self"),
            )
        ]


def toy_both_ways(model, x0, method):
    """(efficient x·grad, explicit grad, binding, y) of a toy model's output [0, 0], the engine strict."""
    x = x0.clone().requires_grad_()
    with attnlrp.lrp(model, method=method, strict=True):
        model(x)[0, 0].backward()
    efficient = (x * x.grad).detach()
    x = x0.clone().requires_grad_()
    with transformer_composite(method, epsilon=EPS).context(model) as binding:
        y = model(x)[0, 0]
        y.backward(y)
    return efficient, x.grad, binding, y


class WrittenNorm(nn.Module):
    """A norm written out with pow and rsqrt, as Cohere's LayerNorm and Llama 4's L2 norm are: its class name ends
    in Norm, so its statistics are constants in both modes."""

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-6)


class Statistics(nn.Module):
    """The written-out norm, then statistics outside any norm: Gemma 3n's cut-off at mean + std, a clamp, a
    square root of a mean square, a reciprocal scale, and (``variance=True``) a variance, which has no rule."""

    def __init__(self, variance: bool = False):
        super().__init__()
        self.norm, self.variance = WrittenNorm(), variance
        self.lin, self.out = nn.Linear(6, 6, bias=False), nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = self.lin(self.norm(x))
        h = torch.relu(h - (h.mean(-1, keepdim=True) + h.std(-1, keepdim=True) * 0.5)).clamp(max=2.0) + h
        h = h * torch.sqrt(h.square().mean(-1, keepdim=True) + 1e-6)
        h = h * torch.reciprocal(h.norm(dim=-1, keepdim=True)) ** 2
        return self.out(h * h.var(-1, keepdim=True) if self.variance else h)


@pytest.mark.parametrize("method", METHODS)
def test_statistics_are_ruled_as_in_the_engine(method):
    torch.manual_seed(0)
    model = Statistics().double()
    with warnings.catch_warnings():
        warnings.simplefilter("error", attnlrp.UnruledOpWarning)
        efficient, explicit, binding, _ = toy_both_ways(model, rand(4, 6, grad=False), method)
    assert rel_err(explicit, efficient) < 1e-8
    calls = {op for kind, op, _ in binding.calls if kind == "replaced"}
    assert {"pow", "std", "clamp", "sqrt", "square", "reciprocal", "norm"} <= calls  # rsqrt: of a constant
    assert not [key for key in binding.calls if key[0] in ("breaks", "unknown")]


class ComplexRotary(nn.Module):
    """A rotary embedding written in complex numbers, as DeepSeek-V2's and Llama 4's: x · e^{iθ} per pair."""

    def __init__(self):
        super().__init__()
        self.q, self.out = nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, x):
        angles = torch.arange(2, dtype=x.dtype) + 0.3
        q = torch.view_as_complex(self.q(x).reshape(-1, 2, 2))
        return self.out(torch.view_as_real(q * torch.polar(torch.ones_like(angles), angles)).flatten(1))


@pytest.mark.parametrize("method", METHODS)
def test_a_complex_product_is_the_epsilon_rule_on_real_pairs(method):
    torch.manual_seed(0)
    model = ComplexRotary().double()
    efficient, explicit, binding, y = toy_both_ways(model, rand(3, 4, grad=False), method)
    assert rel_err(explicit, efficient) < 1e-8
    assert binding.calls[("replaced", "mul", "")] == 1
    assert explicit.sum().item() == pytest.approx(y.item(), rel=1e-8)  # no bias: all of y reaches x


def test_a_statistic_without_a_rule_is_reported():
    model = Statistics(variance=True).double()
    with (
        transformer_composite("attnlrp").context(model),
        pytest.warns(attnlrp.UnruledOpWarning, match=r"1 op\(s\) carried relevance without a rule.*: var at <root>"),
    ):
        model(rand(2, 6))


class SigmoidGates(nn.Module):
    """A sigmoid gate (qwen2_moe's shared expert), then SiLU written out as h * sigmoid(h)."""

    def __init__(self):
        super().__init__()
        self.g, self.u = nn.Linear(6, 1, bias=False), nn.Linear(6, 6, bias=False)

    def forward(self, x):
        h = torch.sigmoid(self.g(x)) * self.u(x)
        return h * torch.sigmoid(h)


@pytest.mark.parametrize("method", METHODS)
def test_sigmoid_gates_as_in_the_engine(method):
    torch.manual_seed(0)
    model = SigmoidGates().double()
    efficient, explicit, binding, _ = toy_both_ways(model, rand(4, 6, grad=False), method)
    assert rel_err(explicit, efficient) < 1e-8
    assert binding.calls[("replaced", "sigmoid", "")] == 2


def test_padded_batch_sdpa():
    # Left padding: the first queries of the second row see no key at all (torch's sdpa gives them zeros).
    fam = family("llama", "sdpa")
    model, ids = fam.model, torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    x0 = model.get_input_embeddings()(ids).detach()
    results = {}
    for method in METHODS:
        x = x0.clone().requires_grad_()
        with attnlrp.lrp(model, method=method):
            model(inputs_embeds=x, attention_mask=mask).logits[1, -1].max().backward()
        efficient = (x * x.grad).detach()
        x = x0.clone().requires_grad_()
        with transformer_composite(method, epsilon=EPS).context(model):
            y = model(inputs_embeds=x, attention_mask=mask).logits[1, -1].max()
            y.backward(y)
        results[method] = rel_err(x.grad, efficient)
        assert x.grad[1, :4].abs().max() == 0 and x.grad[0].abs().max() == 0
    assert max(results.values()) < 1e-6


# --- (e) the documentation runs ----------------------------------------------------------------


def test_docs_code_blocks_run():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "explicit.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/explicit.md", "exec"), namespace)


class _OwnBackward(torch.autograd.Function):
    """tanh forward, its own backward (half of the gradient): in a model, a fused kernel's activation without a
    relevance rule; in a composite, a user's own rule written as an autograd function (as LXT-style rules are)."""

    @staticmethod
    def forward(ctx, x):
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, grad):
        return grad / 2


def test_a_composites_rule_written_as_an_autograd_function_is_not_called_unruled():
    class Tanh(torch.nn.Module):
        def forward(self, x):
            return torch.tanh(x)

    comp = Composite({torch.tanh: lambda x: _OwnBackward.apply(x)})
    model = Tanh()
    with comp.context(model) as binding:
        model(torch.randn(3, requires_grad=True))
    assert not any("autograd.Function" in op for _, op in binding.unruled_ops), binding.unruled_ops


class _FusedAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4, bias=False)

    def forward(self, x):
        return _OwnBackward.apply(self.lin(x))


def test_a_custom_autograd_function_in_the_model_is_reported_as_in_the_engine():
    model = nn.Sequential(_FusedAct(), nn.Linear(4, 1, bias=False)).double()
    comp = Composite({nn.Linear: EpsilonRule(EPS)}, name="fused")
    with (
        comp.context(model) as binding,
        pytest.warns(
            attnlrp.UnruledOpWarning, match=r"1 op\(s\) carried relevance.*autograd.Function _OwnBackward at 0"
        ),
    ):
        model(rand(2, 4))
    assert binding.unruled_ops == {("0", "autograd.Function _OwnBackward"): 1}
    assert re.search(r"UNKNOWN.*:\n\s+autograd.Function _OwnBackward\s+at 0\s+\(1x\)", str(comp))
    # the engine names it at the same module
    assert attnlrp.audit(model, rand(2, 4, grad=False)).unruled == [("0", "autograd.Function _OwnBackward", 1)]
    # a rule for the module that runs it, or for a module around it, takes it over: nothing is reported
    for outer in (_FusedAct, nn.Sequential):
        comp = Composite({outer: EpsilonRule(EPS), nn.Linear: EpsilonRule(EPS)})
        with comp.context(model) as binding, warnings.catch_warnings():
            warnings.simplefilter("error", attnlrp.UnruledOpWarning)
            model(rand(2, 4))
        assert not binding.unruled_ops, outer


class _HalfRule(EpsilonRule):
    """A user's module rule that runs an autograd function of its own (defined here, not in attnlrp)."""

    def __call__(self, fn, *args, **kwargs):
        return _OwnBackward.apply(fn(*args, **kwargs))


def test_a_users_rule_written_as_an_autograd_function_is_not_reported_wherever_it_rules():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Tanh(), nn.Linear(4, 1, bias=False)).double()
    for rules in ({nn.Tanh: _HalfRule()}, {torch.tanh: lambda x: _OwnBackward.apply(x)}, {torch.tanh: _HalfRule()}):
        comp = Composite({nn.Linear: EpsilonRule(EPS), **rules})
        with comp.context(model) as binding, warnings.catch_warnings():
            warnings.simplefilter("error", attnlrp.UnruledOpWarning)
            model(rand(2, 4))
        assert not binding.unruled_ops, rules


class _FusedActivation(nn.Module):
    def forward(self, x):
        return _OwnBackward.apply(x) * x


def test_a_custom_function_in_a_transformer_is_named_by_the_ready_composite_as_by_the_audit():
    fam = build("qwen3")
    for layer in fam.model.model.layers:
        layer.mlp.act_fn = _FusedActivation()
    expected = {(f"model.layers.{i}.mlp.act_fn", "autograd.Function _OwnBackward"): 1 for i in range(2)}
    with transformer_composite("attnlrp").context(fam.model) as binding:
        with pytest.warns(attnlrp.UnruledOpWarning, match="autograd.Function _OwnBackward at model.layers.0"):
            fam.model(**fam.inputs)
    assert dict(binding.unruled_ops) == expected
    assert attnlrp.audit(fam.model, fam.inputs["input_ids"]).unruled == [(*key, n) for key, n in expected.items()]


class _ListedExperts(nn.Module):
    """Experts in a plain Python list, and a gate held there too: parameters the model does not register."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 8, bias=False), nn.Linear(8, 1, bias=False)
        self.experts = [nn.Linear(8, 8, bias=False) for _ in range(2)]
        self.held = [nn.Parameter(torch.randn(8))]

    def forward(self, x):
        h = self.inp(x) * self.held[0]  # a product with a constant: the uniform rule must give h all of it
        return self.out(sum(expert(h) for expert in self.experts))


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp", "uniform"])
def test_parameters_held_outside_the_modules_are_constants_and_get_their_flag_back(method):
    torch.manual_seed(0)
    net = _ListedExperts().double()
    net.experts = [e.double() for e in net.experts]
    net.held = [nn.Parameter(net.held[0].detach().double())]
    held = [net.held[0], *(e.weight for e in net.experts)]
    for x in (rand(1, 4), nn.Parameter(rand(1, 4, seed=1, grad=False))):  # a parameter given as input is an input
        if method == "uniform":  # a uniform product would give a weight that requires grad half: Σ R = y / 2
            comp = Composite(
                {
                    torch.mul: UniformRule(),
                    F.linear: EpsilonRule(0.0),
                    operator.add: functools.partial(xf.add2, epsilon=0.0),
                }
            )
        else:
            comp = transformer_composite(method, epsilon=0.0)
        with comp.context(net):
            y = net(x)[0, 0]
            assert not any(p.requires_grad for p in held)  # constants, as the registered weights are
            y.backward(y)
        close(x.grad.sum(), y.detach())  # a linear net of constants: relevance is conserved
        assert all(p.requires_grad and p.grad is None for p in held)
        assert all(p.requires_grad for p in net.parameters())
