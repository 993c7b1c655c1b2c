"""Each rule of rules.md, locally: conservation, the closed forms, and finiteness in half precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlrp.core import rules

#: The activation f belonging to each closed-form ratio f(x)/x of rules.RATIOS.
ACTIVATION_FN = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu_squared": lambda x: F.relu(x) ** 2,
    "tanh": torch.tanh,
    "mish": F.mish,
    "hardswish": F.hardswish,
}

HALF_TYPES = (torch.bfloat16, torch.float16)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Exact zeros, tiny values of both signs (a ratio written as f(x)/(x+tiny) blows up here) and
#: large values that still fit fp16.
EDGE_VALUES = [0.0, -0.0, -1e-30, 1e-30, -1e-8, 1e-8, -1e-4, 1e-4, -0.5, 0.5, -3.0, 3.0, -30.0, 30.0, -6e4, 6e4]


def _seed():
    torch.manual_seed(0)


def test_every_ratio_has_an_activation_under_test():
    # A ratio added to RATIOS without an entry here would escape every test of this file.
    assert set(rules.RATIOS) == set(ACTIVATION_FN)


# --- identity rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(rules.RATIOS))
def test_identity_rule_conserves_relevance_elementwise(name):
    _seed()
    x = (torch.randn(4, 33, dtype=torch.float64) * 3).requires_grad_()
    fn, ratio = ACTIVATION_FN[name], rules.RATIOS[name]
    y = rules.identity_rule(x, fn, ratio)
    assert torch.equal(y.detach(), fn(x.detach())), "forward must be the activation itself"
    g_y = torch.randn_like(y)
    (g_x,) = torch.autograd.grad(y, x, g_y)
    torch.testing.assert_close(x.detach() * g_x, y.detach() * g_y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(rules.RATIOS))
def test_ratio_closed_form_matches_direct_ratio_away_from_zero(name):
    x = torch.cat([torch.linspace(-8, -1e-3, 500), torch.linspace(1e-3, 8, 500)]).double()
    direct = ACTIVATION_FN[name](x) / x
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-5)):
        closed = rules.RATIOS[name](x.to(dtype)).double()
        torch.testing.assert_close(closed, direct, rtol=tol, atol=tol)


def test_tanh_ratio_near_zero_uses_its_limit():
    x = torch.tensor([-1e-2, -1e-3, -1e-30, 0.0, 1e-30, 1e-5, 9.9e-3], dtype=torch.float64)
    expected = torch.where(x == 0, torch.ones_like(x), torch.tanh(x) / torch.where(x == 0, 1.0, x))
    # the series 1 - x**2/3 is accurate to 2x**4/15 (1.3e-9 at the switch, far below float32 eps)
    torch.testing.assert_close(rules.RATIOS["tanh"](x), expected, rtol=2e-9, atol=1e-12)
    assert rules.RATIOS["tanh"](torch.zeros(1)).item() == 1.0


@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_relu_identity_rule(slope):
    _seed()
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    fn = lambda t: F.leaky_relu(t, slope)
    y = rules.identity_rule(x, fn, rules.leaky_relu_ratio(slope))
    g = torch.randn_like(y)
    (g_x,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(x.detach() * g_x, y.detach() * g)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(rules.RATIOS))
def test_identity_rule_is_finite_at_zero_tiny_and_large_inputs(name, dtype):
    x = torch.tensor(EDGE_VALUES, dtype=dtype)
    ratio = rules.RATIOS[name]
    # the ratio itself, in the input dtype and as the backward evaluates it
    assert torch.isfinite(ratio(x)).all(), f"{name} ratio not finite in {dtype}: {ratio(x)}"
    assert torch.isfinite(rules._times_ratio(torch.ones_like(x), ratio, x)).all()
    x = x.clone().requires_grad_()
    y = rules.identity_rule(x, ACTIVATION_FN[name], ratio)
    assert y.dtype == dtype
    # forward: finite wherever f(x) itself fits the dtype (relu(6e4)**2 does not fit fp16)
    fits = ACTIVATION_FN[name](x.detach().double()).abs() <= torch.finfo(dtype).max
    assert fits[:-2].all() and torch.isfinite(y[fits]).all(), f"{name} forward not finite in {dtype}: {y}"
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert g.dtype == dtype
    assert torch.isfinite(g).all(), f"{name} backward not finite in {dtype}: {g}"
    # f(x)/x of every activation here lies in [0, 1] for x < 0 and is at most ~1.1 for x > 0 (up to
    # x itself for relu_squared, which is f(x)/x = relu(x)), so the gradient stays bounded.
    bound = torch.maximum(x.detach().float().abs(), torch.full_like(x, 1.2, dtype=torch.float32))
    assert (g.float().abs() <= bound).all()
    # x = 0 and the tiny inputs: the relevance x * g_x is (numerically) zero, as is y * g_y.
    tiny = x.detach().float().abs() <= 1e-8
    assert (x.detach()[tiny].float() * g[tiny].float()).abs().max() <= 1e-7


# --- uniform split ------------------------------------------------------------------------------


def test_scale_grads_is_identity_forward_and_scales_backward():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (y,) = rules.scale_grads((x,), (0.3,))
    assert torch.equal(y.detach(), x.detach())
    g = torch.randn_like(x)
    (g_x,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(g_x, 0.3 * g)


def test_uniform_split_gives_each_factor_half_elementwise():
    _seed()
    a = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    ua, ub = rules.uniform(a, b)
    y = ua * ub
    g = torch.randn_like(y)
    g_a, g_b = torch.autograd.grad(y, (a, b), g)
    half = 0.5 * y.detach() * g
    torch.testing.assert_close(a.detach() * g_a, half)
    torch.testing.assert_close(b.detach() * g_b, half)


def test_uniform_split_three_factors_and_matmul():
    _seed()
    a, b, c = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(3))
    (alone,) = rules.uniform(a)  # one factor alone: the share is 1
    assert torch.equal(torch.autograd.grad(alone.sum(), a)[0], torch.ones(6, dtype=torch.float64))
    fa, fb, fc = rules.uniform(a, b, c)
    y = fa * fb * fc
    grads = torch.autograd.grad(y.sum(), (a, b, c))
    for t, g in zip((a, b, c), grads):
        torch.testing.assert_close(t.detach() * g, y.detach() / 3)
    # a bilinear matmul: each factor's total relevance is half of the output's
    p = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    up, uq = rules.uniform(p, q)
    z = up @ uq
    g = torch.randn_like(z)
    g_p, g_q = torch.autograd.grad(z, (p, q), g)
    total = (z.detach() * g).sum()
    torch.testing.assert_close((p.detach() * g_p).sum(), 0.5 * total)
    torch.testing.assert_close((q.detach() * g_q).sum(), 0.5 * total)


# --- frozen norms -------------------------------------------------------------------------------


def _frozen_layer_norm_reference(x, weight, bias, eps):
    """LayerNorm with sigma a constant: the centring is differentiated, 1/sigma is not."""
    mean = x.mean(-1, keepdim=True)
    var = x.detach().var(-1, unbiased=False, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_backward_is_jacobian_with_sigma_constant(affine):
    _seed()
    x = (torch.randn(3, 5, 16, dtype=torch.float64) * 2 + 0.7).requires_grad_()
    w = torch.randn(16, dtype=torch.float64) if affine else None
    b = torch.randn(16, dtype=torch.float64) if affine else None
    y = rules.layer_norm(x, (16,), w, b, 1e-5)
    torch.testing.assert_close(y, F.layer_norm(x.detach(), (16,), w, b, 1e-5))
    g = torch.randn_like(y)
    (g_x,) = torch.autograd.grad(y, x, g)
    x_ref = x.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(_frozen_layer_norm_reference(x_ref, w, b, 1e-5), x_ref, g)
    torch.testing.assert_close(g_x, g_ref)
    # and it is not the plain LayerNorm gradient (sigma really is held constant)
    (g_plain,) = torch.autograd.grad(F.layer_norm(x_ref, (16,), w, b, 1e-5), x_ref, g)
    assert not torch.allclose(g_x, g_plain, atol=1e-6)


def test_layer_norm_conserves_relevance_without_bias_including_centring():
    _seed()
    x = (torch.randn(4, 32, dtype=torch.float64) + 3.0).requires_grad_()  # a large mean: centring matters
    w = torch.randn(32, dtype=torch.float64)
    y = rules.layer_norm(x, (32,), w, None, 1e-5)
    g = torch.randn_like(y)
    (g_x,) = torch.autograd.grad(y, x, g)
    # per row (per token): sum_i x_i g_i = sum_j y_j g_j
    torch.testing.assert_close((x.detach() * g_x).sum(-1), (y.detach() * g).sum(-1), rtol=1e-9, atol=1e-9)
    # with a bias, the bias absorbs exactly its share b * g
    b = torch.randn(32, dtype=torch.float64)
    y = rules.layer_norm(x, (32,), w, b, 1e-5)
    (g_x,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close((x.detach() * g_x).sum(-1), ((y.detach() - b) * g).sum(-1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_matches_torch_and_conserves_elementwise(with_weight):
    _seed()
    x = (torch.randn(2, 6, 24, dtype=torch.float64) + 1).requires_grad_()
    w = torch.randn(24, dtype=torch.float64) if with_weight else None
    for eps in (1e-6, None):
        y = rules.rms_norm(x, (24,), w, eps)
        torch.testing.assert_close(y, F.rms_norm(x.detach(), (24,), w, eps))
        g = torch.randn_like(y)
        (g_x,) = torch.autograd.grad(y, x, g)
        # the Jacobian with rms constant is diag(w / rms) ...
        rms = x.detach().pow(2).mean(-1, keepdim=True).add(1e-6 if eps else torch.finfo(x.dtype).eps).sqrt()
        torch.testing.assert_close(g_x, g * (w if with_weight else 1.0) / rms)
        # ... so relevance is conserved element by element
        torch.testing.assert_close(x.detach() * g_x, y.detach() * g)


def test_group_norm_and_normalize_hold_their_statistic():
    _seed()
    x = (torch.randn(2, 6, 5, dtype=torch.float64) + 1).requires_grad_()
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    y = rules.group_norm(x, 3, w, b, 1e-5)
    torch.testing.assert_close(y, F.group_norm(x.detach(), 3, w, b, 1e-5))
    g = torch.randn_like(y)
    (g_x,) = torch.autograd.grad(y, x, g)
    # without bias, per group: sum x g_x = sum (y - b) g
    r_in = (x.detach() * g_x).reshape(2, 3, -1).sum(-1)
    r_out = ((y.detach() - b.reshape(1, 6, 1)) * g).reshape(2, 3, -1).sum(-1)
    torch.testing.assert_close(r_in, r_out)
    y = rules.normalize(x, dim=-1)
    torch.testing.assert_close(y, F.normalize(x.detach(), dim=-1))
    (g_x,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(x.detach() * g_x, y.detach() * g)


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_norms_in_half_precision_match_torch_and_stay_finite(dtype):
    # 500**2 overflows fp16: the statistic must be computed in float32 (as torch does).
    x = torch.tensor([[500.0, -500.0, 1.0, 0.0, -1e-8, 0.0, 3.0, -2.0]], dtype=dtype)
    w = torch.linspace(0.5, 1.5, 8).to(dtype)
    b = torch.linspace(-0.1, 0.1, 8).to(dtype)
    cases = [
        (lambda t: rules.rms_norm(t, (8,), w, None), lambda t: F.rms_norm(t, (8,), w, None)),
        (lambda t: rules.rms_norm(t, (8,), w, 1e-6), lambda t: F.rms_norm(t, (8,), w, 1e-6)),
        (lambda t: rules.layer_norm(t, (8,), w, b, 1e-5), lambda t: F.layer_norm(t, (8,), w, b, 1e-5)),
        (
            lambda t: rules.group_norm(t.reshape(1, 8, 1), 2).flatten(),
            lambda t: F.group_norm(t.reshape(1, 8, 1), 2).flatten(),
        ),
        (lambda t: rules.normalize(t, dim=-1), lambda t: F.normalize(t, dim=-1)),
    ]
    for ours, reference in cases:
        xi = x.clone().requires_grad_()
        y = ours(xi)
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), reference(x).float(), rtol=2e-2, atol=2e-2)
        (g,) = torch.autograd.grad(y, xi, torch.ones_like(y))
        assert g.dtype == dtype and torch.isfinite(g).all()
    # an all-zero row: no NaN from 0/0
    z = torch.zeros(1, 8, dtype=dtype, requires_grad=True)
    for ours, _ in cases:
        y = ours(z)
        (g,) = torch.autograd.grad(y, z, torch.ones_like(y))
        assert torch.isfinite(y).all() and torch.isfinite(g).all()


# --- attention ----------------------------------------------------------------------------------


def _qkv(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    shape = (2, 3, 7, 8)  # batch, heads, tokens, head dim
    return [torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3)]


def _eager_attention(q, k, v, method, causal):
    """The unfused reference: uniform rule on both bilinear matmuls, plain softmax (its own rule)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    if method == "cp-lrp":
        q, k = q.detach(), k.detach()
        scores = q @ k.transpose(-1, -2) * scale
    else:
        uq, uk = rules.uniform(q, k.transpose(-1, -2))
        scores = (uq @ uk) * scale
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if method == "cp-lrp":
        return weights.detach() @ v
    ua, uv = rules.uniform(weights, v)
    return ua @ uv


@pytest.mark.parametrize("causal", [False, True])
def test_attention_factors_make_fused_kernel_equal_to_eager_uniform_rule(causal):
    q, k, v = _qkv()
    g = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    out_eager = _eager_attention(q, k, v, "attnlrp", causal)
    grads_eager = torch.autograd.grad(out_eager, (q, k, v), g)
    fq, fk, fv = rules.attention_factors(q, k, v, "attnlrp")
    out_fused = F.scaled_dot_product_attention(fq, fk, fv, is_causal=causal)
    torch.testing.assert_close(out_fused, out_eager)
    grads_fused = torch.autograd.grad(out_fused, (q, k, v), g)
    for t, ge, gf in zip((q, k, v), grads_eager, grads_fused):
        torch.testing.assert_close(t.detach() * gf, t.detach() * ge)
    # and they are not the plain gradient: q, k get 1/4 of it, v 1/2
    plain = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v), g)
    for gp, gf, share in zip(plain, grads_fused, (0.25, 0.25, 0.5)):
        torch.testing.assert_close(gf, share * gp)


def test_attention_factors_cp_lrp_detach_q_and_k_and_conserve_through_v():
    q, k, v = _qkv(1)
    fq, fk, fv = rules.attention_factors(q, k, v, "cp-lrp")
    assert not fq.requires_grad and not fk.requires_grad and fv is v
    out = F.scaled_dot_product_attention(fq, fk, fv, is_causal=True)
    g = torch.randn_like(out)
    (g_v,) = torch.autograd.grad(out, v, g)
    ref_out = _eager_attention(q, k, v, "cp-lrp", causal=True)
    (g_ref,) = torch.autograd.grad(ref_out, v, g)
    torch.testing.assert_close(g_v, g_ref)
    # the attention weights are constants, so all relevance of the output reaches v
    torch.testing.assert_close((v.detach() * g_v).sum(), (out.detach() * g).sum())


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_attention_factors_finite_in_half_precision(dtype):
    q, k, v = _qkv(2, dtype)
    for method in ("attnlrp", "cp-lrp"):
        out = F.scaled_dot_product_attention(*rules.attention_factors(q, k, v, method), is_causal=True)
        grads = torch.autograd.grad(out.float().sum(), [t for t in (q, k, v) if t.requires_grad], allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
        assert grads[-1] is not None and torch.isfinite(grads[-1]).all()
