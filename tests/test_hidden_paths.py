"""Paths relevance can take without an op saying so: writes in place, statistics of the batch or of each example,
a mask computed from the input, an input embedded twice, and functions whose backward is their own. Each either
gets the rule its out-of-place or eager form gets, or is reported."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from tiny_models import build
from torch import nn

import attnlrp
from attnlrp.errors import BindingError

METHODS = ("attnlrp", "cp-lrp")


def _relevance(model, inputs, method):
    """(Σ input relevance, per-token relevance, the explained logit) of the last position's top logit."""
    with attnlrp.lrp(model, method=method) as binding:
        logits = model(**inputs).logits[0, -1]
        y = logits.max()
        y.backward()
        x = binding.embeddings
    relevance = (x * x.grad).sum(-1)[0].detach()
    return relevance, float(y.detach())


def _input_gradient(model, x, method, pick=torch.sum):
    """The gradient the rules give at the input ``x`` for the value ``pick(model(x))``."""
    leaf = x.clone().requires_grad_()
    with attnlrp.lrp(model, method=method):
        pick(model(leaf)).backward()
    return leaf.grad


def _in_place_swiglu(self, x):
    h = F.silu(self.gate_proj(x))
    h.mul_(self.up_proj(x))
    return self.down_proj(h)


def _augmented_swiglu(self, x):
    h = self.act_fn(self.gate_proj(x))
    h *= self.up_proj(x)
    return self.down_proj(h)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("forward", [_in_place_swiglu, _augmented_swiglu], ids=["mul_", "*="])
def test_a_product_written_in_place_gets_the_rule_of_the_product(method, forward):
    fam = build("llama")
    stock, _ = _relevance(fam.model, fam.inputs, method)
    edited = copy.deepcopy(fam.model)
    for layer in edited.model.layers:
        layer.mlp.forward = types.MethodType(forward, layer.mlp)
    relevance, _ = _relevance(edited, fam.inputs, method)
    torch.testing.assert_close(relevance, stock, rtol=1e-10, atol=1e-12)


class _InPlaceActivation(nn.Module):
    def forward(self, x):
        return F.relu(x, inplace=True)


@pytest.mark.parametrize("method", METHODS)
def test_an_activation_in_place_gets_the_rule_of_the_activation(method):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    in_place = copy.deepcopy(plain)
    in_place[1] = _InPlaceActivation()
    x = torch.randn(2, 6, dtype=torch.float64)
    grads = [_input_gradient(model, x, method, lambda out: out[1, 2]) for model in (plain, in_place)]
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


class _Normed(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.up, self.norm, self.down = nn.Linear(6, 8, bias=False), norm, nn.Linear(8, 3, bias=False)

    def forward(self, x):  # x: (batch, positions, 6); the norm's channels are the 8 features
        return self.down(self.norm(self.up(x).transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize(
    "norm",
    [nn.BatchNorm1d(8, affine=False), nn.InstanceNorm1d(8), nn.InstanceNorm1d(8, track_running_stats=True)],
    ids=["batch norm, train mode", "instance norm", "instance norm, tracking"],
)
def test_statistics_of_the_batch_or_the_example_are_held_constant(norm):
    torch.manual_seed(0)
    model = _Normed(norm).double().train()
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    report = attnlrp.check(model, x, target=lambda out: out[1, 2, 0])
    assert report.ok, str(report)  # they leaked 40% as "linear" ops
    expected = model(x)  # (in train mode, a plain forward updates the running statistics)
    before = copy.deepcopy(model.state_dict())
    with attnlrp.lrp(model):
        out = model(x.clone().requires_grad_())
        out[1, 2, 0].backward()
    torch.testing.assert_close(out.detach(), expected.detach())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "running statistics are not updated"


class _MaskedAttention(nn.Module):
    """Attention whose additive mask is computed from the input, eager or with the fused kernel."""

    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused
        self.q, self.k, self.v = (nn.Linear(8, 8, bias=False) for _ in range(3))
        self.b, self.out = nn.Linear(8, 1), nn.Linear(8, 2, bias=False)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        bias = self.b(x).transpose(-1, -2).expand(-1, x.shape[1], -1)
        if self.fused:
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            mixed = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + bias, dim=-1) @ v
        return self.out(mixed)


@pytest.mark.parametrize("method", METHODS)
def test_a_mask_computed_from_the_input_gets_the_same_relevance_in_the_kernel_as_written_out(method):
    torch.manual_seed(0)
    eager = _MaskedAttention(fused=False).double()
    fused = copy.deepcopy(eager)
    fused.fused = True
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    relevance = [(x * _input_gradient(model, x, method, lambda out: out[0, -1, 1])).sum(-1) for model in (eager, fused)]
    torch.testing.assert_close(relevance[1], relevance[0], rtol=1e-10, atol=1e-12)


class _TwiceEmbedded(nn.Module):
    def __init__(self, other_tokens: bool = False):
        super().__init__()
        self.other_tokens = other_tokens
        self.embed, self.mlp, self.head = nn.Embedding(20, 8), nn.Linear(8, 8, bias=False), nn.Linear(8, 20, bias=False)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids):
        again = self.embed((input_ids + 1) % 20 if self.other_tokens else input_ids)
        return self.head(self.mlp(self.embed(input_ids)) + again)


def test_an_input_embedded_twice_gets_the_relevance_of_both_uses_or_an_error():
    torch.manual_seed(0)
    model = _TwiceEmbedded().double()
    ids = torch.tensor([[1, 5, 7, 2]])
    with attnlrp.lrp(model, method="cp-lrp") as binding:
        y = model(ids)[0, -1, 3]
        y.backward()
        x = binding.embeddings
    assert float((x * x.grad).sum().detach()) == pytest.approx(
        float(y.detach()), rel=1e-10
    )  # the first use was dropped
    model.other_tokens = True
    with attnlrp.lrp(model), pytest.raises(BindingError, match="embed ran twice in one forward pass on different"):
        model(ids)


def test_a_quantized_model_is_refused_by_the_check_with_the_fix():
    model = nn.Sequential(nn.Linear(4, 4))
    model.is_quantized = True  # as transformers marks a model loaded with a quantization_config
    with pytest.raises(attnlrp.InputError, match="quantized, and the check runs a float64 copy"):
        attnlrp.check(model, torch.randn(1, 4))


class _FusedNormFunction(torch.autograd.Function):
    """An RMS norm with its exact gradient, as fused kernels ship it: correct for training, no rule for LRP."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (out,) = torch.autograd.grad(leaf * torch.rsqrt(leaf.pow(2).mean(-1, keepdim=True) + 1e-6), leaf, grad)
        return out


class _FusedNorm(nn.Module):
    def forward(self, x):
        return _FusedNormFunction.apply(x)


def test_a_custom_function_where_cp_lrp_holds_all_constant_is_still_named_by_lrp_audit_and_check():
    # On the queries and keys, CP-LRP holds everything constant: a conservation check of CP-LRP can't see
    # what such a function does to AttnLRP's relevance, so it is named wherever it runs.
    fam = build("qwen3")
    for layer in fam.model.model.layers:
        layer.self_attn.q_norm = _FusedNorm()
    expected = [(f"model.layers.{i}.self_attn.q_norm", "autograd.Function _FusedNormFunction", 1) for i in range(2)]
    assert attnlrp.audit(fam.model, fam.inputs["input_ids"]).unruled == expected
    report = attnlrp.check(fam.model, fam.inputs["input_ids"])
    assert not report.leaks and not report.ok and report.audit.unruled == expected
    with pytest.warns(attnlrp.UnruledOpWarning, match=r"autograd.Function _FusedNormFunction at model.layers.0"):
        with attnlrp.lrp(fam.model):  # as explain() runs it
            fam.model(**fam.inputs)
    with attnlrp.lrp(fam.model, strict=True), pytest.raises(attnlrp.UnruledOpError, match="_FusedNormFunction"):
        fam.model(**fam.inputs)


def test_a_bound_batch_norm_keeps_what_the_user_writes_and_counts_only_the_users_forwards():
    torch.manual_seed(0)
    model = _Normed(nn.BatchNorm1d(8)).double().train()
    loaded = {"running_mean": torch.arange(8.0, dtype=torch.float64), "num_batches_tracked": torch.tensor(5)}
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    with attnlrp.lrp(model):
        model.norm.load_state_dict({**model.norm.state_dict(), **loaded})  # e.g. weights loaded into a bound model
        model(x.clone().requires_grad_())[1, 2, 0].backward()
    assert torch.equal(model.norm.running_mean, loaded["running_mean"]) and int(model.norm.num_batches_tracked) == 5
    model(x)  # the user's own forward counts, as ever
    assert int(model.norm.num_batches_tracked) == 6


class _GatedTwice(nn.Module):
    def __init__(self, in_place: bool):
        super().__init__()
        self.in_place = in_place
        self.a, self.b, self.c = (nn.Linear(4, 4, bias=False) for _ in range(3))

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.in_place:
            h *= self.b(x)
        else:
            h = h * self.b(x)
        return h * self.c(x)  # h is no activation's output now: no gate


@pytest.mark.parametrize("method", METHODS)
def test_a_tensor_written_in_place_loses_the_gate_mark_of_what_it_was(method):
    torch.manual_seed(0)
    plain = _GatedTwice(in_place=False).double()
    in_place = copy.deepcopy(plain)
    in_place.in_place = True
    x = torch.randn(2, 4, dtype=torch.float64)
    grads = [_input_gradient(model, x, method) for model in (plain, in_place)]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


class _TorchBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.rand(3) + 0.5), nn.Parameter(torch.randn(3))

    def forward(self, x):  # torch's own form: (input, weight, bias, running_mean, running_var, training, ...)
        return torch.batch_norm(x, self.weight, self.bias, None, None, True, 0.1, 1e-5, False)


def test_torch_batch_norm_takes_its_own_argument_order():
    torch.manual_seed(0)
    model = _TorchBatchNorm().double()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    expected = F.batch_norm(x, None, None, model.weight, model.bias, training=True)
    with attnlrp.lrp(model):
        got = model(x.clone().requires_grad_())
    torch.testing.assert_close(got, expected)
