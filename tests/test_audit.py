"""``attnlrp.audit`` and the unruled-op warning / strict error on toy models."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import attnlrp
from attnlrp.core import rules
from attnlrp.engine import binding as binding_module


class InlineSine(nn.Module):
    """A custom activation written inline (a SIREN-style sine): torch.sin has no LRP rule."""

    def forward(self, x):
        return torch.sin(x)


class InlineSwish(nn.Module):
    """SiLU written out: the engine recognises x * sigmoid(x) and gives it SiLU's identity rule."""

    def forward(self, x):
        return x * torch.sigmoid(x)


class Toy(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.block = nn.Sequential(nn.LayerNorm(16), act)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.block(self.inp(x)))


class RootSigmoid(nn.Module):
    """An unruled op in the root module's own forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sin(self.lin(x)).sum(-1)


def _toy(act=None):
    torch.manual_seed(0)
    return Toy(act if act is not None else InlineSine())


def _hooks(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def test_audit_reports_inline_op_with_its_module_path():
    toy = _toy()
    flags = [p.requires_grad for p in toy.parameters()]
    hooks = _hooks(toy)
    report = attnlrp.audit(toy, torch.randn(2, 8))
    assert not report.ok
    assert report.unruled == [("block.1", "sin", 1)]
    assert report.method == "attnlrp"
    # the rules that were applied are listed too
    assert report.rules["layer_norm [norm]"] == 1
    # auditing left the toy as it was
    assert [p.requires_grad for p in toy.parameters()] == flags and _hooks(toy) == hooks
    assert torch._C._len_torch_function_stack() == 0


def test_audit_counts_repeated_calls_and_accepts_tuple_and_dict_inputs():
    toy = _toy()
    toy.block.append(InlineSine())  # a second inline activation at another path
    report = attnlrp.audit(toy, (torch.randn(3, 8),))
    assert sorted(report.unruled) == [("block.1", "sin", 1), ("block.2", "sin", 1)]
    report = attnlrp.audit(toy, {"x": torch.randn(1, 8)}, method="cp-lrp")
    assert report.method == "cp-lrp" and len(report.unruled) == 2


def test_audit_of_root_module_op_reports_root_path():
    report = attnlrp.audit(RootSigmoid(), torch.randn(2, 4))
    assert report.unruled == [("", "sin", 1)]
    assert "sin" in str(report) and "<root>" in str(report)


def test_clean_toy_reports_nothing():
    toy = _toy(nn.SiLU())
    report = attnlrp.audit(toy, torch.randn(2, 8))
    assert report.ok and report.unruled == []
    assert report.rules["silu [identity]"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with attnlrp.lrp(toy, strict=True):
            toy(torch.randn(2, 8, requires_grad=True)).sum().backward()


def test_report_str_is_readable():
    text = str(attnlrp.audit(_toy(), torch.randn(2, 8)))
    lines = text.splitlines()
    assert lines[0] == "attnlrp audit (attnlrp): 1 op(s) without a rule (their relevance is a plain gradient)"
    unruled = [line for line in lines if "UNRULED" in line]
    assert len(unruled) == 1
    assert "sin " in unruled[0] and "at block.1" in unruled[0] and "(1x)" in unruled[0]
    assert any(line.strip().startswith("rule") and "layer_norm [norm]" in line for line in lines)
    assert repr(attnlrp.audit(_toy(), torch.randn(2, 8))) == text
    clean = str(attnlrp.audit(_toy(nn.SiLU()), torch.randn(2, 8)))
    assert clean.splitlines()[0] == "attnlrp audit (attnlrp): every op had a rule or is linear"
    assert "UNRULED" not in clean


def test_lrp_warns_once_per_op_on_forward():
    toy = _toy()
    x = torch.randn(2, 8, requires_grad=True)
    with attnlrp.lrp(toy) as b:
        with pytest.warns(attnlrp.UnruledOpWarning, match=r"sin at block\.1") as record:
            y = toy(x)
        assert len([w for w in record if issubclass(w.category, attnlrp.UnruledOpWarning)]) == 1
        assert "attnlrp.audit" in str(record[0].message) and "strict=True" in str(record[0].message)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the same op again: no second warning
            y2 = toy(x)
        assert b.unruled_ops[("block.1", "sin")] == 2
        y.sum().backward()
    # the plain gradient of the unruled sine was used (cos), the LayerNorm got its rule
    ln = toy.block[0]
    x_ref = x.detach().clone().requires_grad_()
    h = rules.layer_norm(toy.inp(x_ref), ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    toy.out(torch.sin(h)).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert torch.equal(y2, y)


def test_no_warning_without_gradients():
    toy = _toy()
    with attnlrp.lrp(toy) as b, warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            toy(torch.randn(2, 8))
        toy(torch.randn(2, 8))  # parameters are frozen inside the block and x needs no grad
    assert not b.unruled_ops


def test_strict_raises_naming_op_and_path_and_restores():
    toy = _toy()
    flags = [p.requires_grad for p in toy.parameters()]
    hooks = _hooks(toy)
    with pytest.raises(attnlrp.UnruledOpError, match=r"'sin' at block\.1 has no LRP rule") as info:
        with attnlrp.lrp(toy, strict=True), warnings.catch_warnings():
            warnings.simplefilter("error")  # the error, not a warning as well
            toy(torch.randn(2, 8, requires_grad=True))
    assert "strict=False" in str(info.value)
    assert [p.requires_grad for p in toy.parameters()] == flags and _hooks(toy) == hooks
    assert torch._C._len_torch_function_stack() == 0
    assert not any(m in binding_module._BOUND for m in toy.modules())


def test_strict_error_caught_inside_block_leaves_scope_clean():
    toy = _toy()
    with attnlrp.lrp(toy, strict=True) as b:
        with pytest.raises(attnlrp.UnruledOpError):
            toy(torch.randn(2, 8, requires_grad=True))
        assert b._stack() == [] and torch._C._len_torch_function_stack() == 0
        a = torch.randn(3, requires_grad=True)
        (g,) = torch.autograd.grad(torch.sin(a).sum(), a)  # outside the model: no rule, no error
    torch.testing.assert_close(g, torch.cos(a.detach()))


def test_audit_of_tiny_llama_is_clean():
    from _tiny import tiny

    report = attnlrp.audit(tiny("llama"))
    assert report.ok, str(report)
    assert report.rules["silu [identity]"] == 2 and report.rules["softmax [softmax]"] == 2


def test_audit_without_inputs_needs_token_embeddings():
    with pytest.raises(ValueError, match="example_inputs"):
        attnlrp.audit(_toy())
    with pytest.raises(TypeError, match="example_inputs must be"):
        attnlrp.audit(_toy(), "text")


def test_inline_swish_gets_silus_identity_rule():
    # x * sigmoid(x) written inline is recognised: no unruled op, and the same relevance as nn.SiLU
    swish, silu = _toy(InlineSwish()), _toy(nn.SiLU())
    assert attnlrp.audit(swish, torch.randn(2, 8)).ok
    x = torch.randn(4, 8, dtype=torch.float64)
    relevance = []
    for toy in (swish.double(), silu.double()):
        xi = x.clone().requires_grad_()
        with attnlrp.lrp(toy, strict=True):
            toy(xi)[:, 1].sum().backward()
        relevance.append(xi * xi.grad)
    torch.testing.assert_close(relevance[0], relevance[1])
