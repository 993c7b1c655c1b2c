"""ε, γ, z⁺ and α-β for Linear and Conv2d in the efficient mode, against their explicit formulas (float64).

The explicit side is written here from the formulas alone: each layer is a matrix on (unfolded)
inputs, contributions x_i w_ji are split by sign, and R_i = Σ_j num_ij / den_j · R_j.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlrp
from attnlrp import AlphaBeta, Epsilon, Gamma, ZPlus

EPS = 1e-6


def stab(d):
    return d + EPS * torch.where(d >= 0, 1.0, -1.0).double()


def as_matrix(layer, x):
    """(inputs [N, I], weight [O, I], bias [O], fold) of a Linear or a Conv2d: z = inputs @ weightᵀ + bias."""
    w, b = layer.weight.detach(), layer.bias.detach() if layer.bias is not None else None
    if isinstance(layer, nn.Linear):
        return x, w, b, lambda r: r
    k, n = layer.kernel_size, x.shape[0]
    cols = F.unfold(x, k, padding=layer.padding, stride=layer.stride)  # [B, I, L]
    length = cols.shape[-1]
    inputs = cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def fold(r):
        r = r.reshape(n, length, -1).transpose(1, 2)
        return F.fold(r, x.shape[-2:], k, padding=layer.padding, stride=layer.stride)

    return inputs, w.reshape(w.shape[0], -1), b, fold


def explicit(rule, layer, x, relevance_out):
    """R_x by the rule's formula; relevance_out is [N, O] in the matrix layout."""
    inputs, w, b, fold = as_matrix(layer, x)
    b = torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b
    xp, xn = inputs.clamp(min=0)[:, :, None], inputs.clamp(max=0)[:, :, None]  # [N, I, 1]
    wp, wn = w.T.clamp(min=0)[None], w.T.clamp(max=0)[None]  # [1, I, O]
    wt = w.T[None]
    if isinstance(rule, Epsilon):
        num = inputs[:, :, None] * wt
        z = num.sum(1) + b
        share = num / (z + rule.epsilon * torch.where(z >= 0, 1.0, -1.0).double())[:, None]
    elif isinstance(rule, Gamma):
        g = rule.gamma
        z = (inputs[:, :, None] * wt).sum(1) + b
        up = xp * (wt + g * wp) + xn * (wt + g * wn)  # contributions pushing z up, amplified
        down = xp * (wt + g * wn) + xn * (wt + g * wp)
        share = torch.where((z > 0)[:, None], up / stab(up.sum(1) + b + g * b.clamp(min=0))[:, None], 0.0)
        share = share + torch.where((z < 0)[:, None], down / stab(down.sum(1) + b + g * b.clamp(max=0))[:, None], 0.0)
    else:  # AlphaBeta, ZPlus
        pos, neg = xp * wp + xn * wn, xp * wn + xn * wp
        share = rule.alpha * pos / stab(pos.sum(1) + b.clamp(min=0))[:, None]
        share = share - rule.beta * neg / stab(neg.sum(1) + b.clamp(max=0))[:, None]
    return fold((share * relevance_out[:, None, :]).sum(-1))


def efficient(rule, layer, x, g):
    """R_x = x * x.grad inside lrp(..., layer_rules=...), with the backward signal g at the output."""
    x = x.clone().requires_grad_()
    model = nn.Sequential(layer)
    with attnlrp.lrp(model, layer_rules={type(layer): rule}, strict=True):
        z = model(x)
        z.backward(g)
    return z.detach(), (x * x.grad).detach()


def relevance_matrix(layer, r):
    """[N, O] layout of an output relevance map (Conv2d: [B, O, H, W] -> [B*H*W, O])."""
    return r if isinstance(layer, nn.Linear) else r.flatten(2).transpose(1, 2).reshape(-1, r.shape[1])


def make(kind, bias=True, seed=0):
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(12, 7, bias=bias).double(), torch.randn(3, 12, dtype=torch.float64)
    return nn.Conv2d(3, 5, 3, padding=1, stride=2, bias=bias).double(), torch.randn(2, 3, 7, 7, dtype=torch.float64)


RULES = [Epsilon(0.1), Epsilon(), Gamma(0.25), Gamma(1.0), ZPlus(), AlphaBeta(2, 1), AlphaBeta(1.5, 0.5)]


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_rule_equals_its_explicit_formula(rule, kind):
    layer, x = make(kind)
    g = torch.randn_like(layer(x))
    z, relevance = efficient(rule, layer, x, g)
    expected = explicit(rule, layer, x, relevance_matrix(layer, z * g))
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_gamma_is_the_classic_formula_on_positive_inputs_and_outputs(kind):
    # R_i = Σ_j x_i (w_ij + γ w_ij⁺) / Σ_i x_i (w_ij + γ w_ij⁺) · R_j, no bias, x ≥ 0, z > 0
    layer, x = make(kind, bias=False)
    x = x.abs()
    with torch.no_grad():
        layer.weight.add_(0.3)  # mostly positive weights: every z_j > 0
    z = layer(x)
    assert (z > 0).all()
    g = torch.randn_like(z)
    _, relevance = efficient(Gamma(0.5), layer, x, g)
    inputs, w, _, fold = as_matrix(layer, x)
    modified = w.T + 0.5 * w.T.clamp(min=0)
    num = inputs[:, :, None] * modified[None]
    expected = fold((num / num.sum(1, keepdim=True) * relevance_matrix(layer, z * g)[:, None, :]).sum(-1))
    torch.testing.assert_close(relevance, expected, rtol=1e-5, atol=1e-10)  # the stabiliser: 1e-6 / z


@pytest.mark.parametrize("rule", [Gamma(0.25), ZPlus(), AlphaBeta(2, 1), Epsilon()], ids=repr)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_rule_conserves_without_bias(rule, kind):
    # on post-ReLU-like inputs: z⁺ and α-β lose R_j where output j has no positive (negative) contribution
    layer, x = make(kind, bias=False)
    x = x.abs() + 0.1
    g = torch.randn_like(layer(x))
    z, relevance = efficient(rule, layer, x, g)
    assert float(relevance.sum()) == pytest.approx(float((z * g).sum()), rel=1e-4)


def test_gamma_zero_is_lrp_0():
    layer, x = make("conv")
    g = torch.randn_like(layer(x))
    x = x.clone().requires_grad_()
    layer(x).backward(g)
    for rule in (Gamma(0.0, stabilizer=0.0), Epsilon(0.0)):
        relevance = efficient(rule, layer, x.detach(), g)[1]
        torch.testing.assert_close(relevance, x.detach() * x.grad, rtol=1e-10, atol=1e-14)


def test_rules_map_by_type_and_are_removed_on_exit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with attnlrp.lrp(net, layer_rules=[(nn.Conv2d, Gamma(0.25)), ((nn.Linear, nn.Conv1d), Epsilon())]) as binding:
        binding.counting = True
        net(x.requires_grad_())
    assert {rule for _, rule in binding.ruled_ops} >= {"Conv2d [Gamma(0.25)]", "Linear [Epsilon(1e-06)]"}
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_bad_layer_rules_say_what_to_do():
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    with pytest.raises(TypeError, match="nn.Linear and nn.Conv"):
        with attnlrp.lrp(net, layer_rules={nn.LayerNorm: Gamma()}):
            pass
    with pytest.raises(TypeError, match="not an attnlrp rule"):
        with attnlrp.lrp(net, layer_rules={nn.Linear: 0.25}):
            pass
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        with attnlrp.lrp(net, layer_rules={"linear": Gamma()}):
            pass
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2, 2)
