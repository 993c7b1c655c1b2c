"""``nn.MultiheadAttention`` (torchvision's ViT, many custom models) gets the attention rule: the same relevance as
the same attention written out op by op, whose matmuls and softmax the engine rules one at a time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import attnlrp

WIDTH, HEADS, TOKENS = 16, 4, 6


class Explicit(nn.Module):
    """The attention of ``mha`` (batch first) with every op in plain sight."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, x, key_padding_mask=None):
        batch, tokens, _ = x.shape
        w, b = self.mha.in_proj_weight.chunk(3), self.mha.in_proj_bias.chunk(3)
        q, k, v = (F.linear(x, w[i], b[i]).view(batch, tokens, HEADS, -1).transpose(1, 2) for i in range(3))
        scores = q @ k.transpose(-2, -1) / math.sqrt(WIDTH // HEADS)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, WIDTH)
        return self.mha.out_proj(mixed)


class Fused(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention, need_weights: bool):
        super().__init__()
        self.mha, self.need_weights = mha, need_weights

    def forward(self, x, key_padding_mask=None):
        return self.mha(x, x, x, need_weights=self.need_weights, key_padding_mask=key_padding_mask)[0]


def relevance(model, x, mask, method):
    x = x.clone().requires_grad_()
    with attnlrp.lrp(model, method=method):
        y = model(x, key_padding_mask=mask)
        (y[:, 2] * torch.linspace(-1, 1, WIDTH, dtype=x.dtype)).sum().backward()
    return y.detach(), (x * x.grad).detach()


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_multihead_attention_equals_the_explicit_attention(method, need_weights, masked):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_(0, 0.1)
    x = torch.randn(2, TOKENS, WIDTH, dtype=torch.float64)
    mask = torch.tensor([[False] * TOKENS, [False] * 4 + [True] * 2]) if masked else None
    y_fused, r_fused = relevance(Fused(mha, need_weights), x, mask, method)
    y_explicit, r_explicit = relevance(Explicit(mha), x, mask, method)
    torch.testing.assert_close(y_fused, y_explicit, rtol=1e-12, atol=1e-12)
    assert r_explicit.abs().max() > 1e-3
    torch.testing.assert_close(r_fused, r_explicit, rtol=1e-10, atol=1e-12)


def test_multihead_attention_is_ruled_and_reversible():
    mha = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
    x = torch.randn(1, TOKENS, WIDTH)
    with torch.no_grad():
        before = mha(x, x, x)[0]
    report = attnlrp.audit(Fused(mha, need_weights=False), x)
    assert report.ok and report.rules["multi_head_attention_forward [attention kernel]"] == 1, str(report)
    with torch.no_grad():
        assert torch.equal(mha(x, x, x)[0], before), "unbound: the module computes as before"
    assert all(p.requires_grad for p in mha.parameters()), "parameters thawed again"
