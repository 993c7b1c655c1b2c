"""Tiny random transformers for the engine tests (2 layers, hidden 64, vocabulary 100): built in ms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tiny_models import VOCAB, build

from attnlrp.core import rules


def tiny(arch: str = "llama", attn: str = "eager", dtype: torch.dtype = torch.float64, seed: int = 0, **overrides):
    """The architecture matrix's tiny model of a family (see tiny_models.py), alone."""
    return build(arch, attn, seed, dtype=dtype, **overrides).model


def ids(n: int = 10, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


# --- a hand-written LLaMA forward with the rules of rules.md applied explicitly ---------------


def _rms_norm(module, x):
    """LlamaRMSNorm exactly (it computes in float32), with the rms a constant."""
    xf = x.to(torch.float32)
    variance = xf.detach().pow(2).mean(-1, keepdim=True)
    return module.weight * (xf * torch.rsqrt(variance + module.variance_epsilon)).to(x.dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reference_llama_relevance(model, input_ids: torch.Tensor, method: str):
    """(logit, per-token embedding relevance, relevance at each decoder layer's output).

    Written from rules.md alone, with none of the engine's machinery but the rule functions:
    RMSNorm with the rms constant, RoPE and projections linear, uniform rule at q.k^T and A.V
    (AttnLRP) or q, k and the attention weights detached (CP-LRP), the identity rule at SiLU,
    the uniform rule at gate * up (AttnLRP) or the gate detached (CP-LRP).
    """
    inner, cfg = model.model, model.config
    batch, length = input_ids.shape
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // heads
    embeds = inner.embed_tokens.weight[input_ids].detach().clone().requires_grad_()
    with torch.no_grad():
        cos, sin = inner.rotary_emb(embeds, torch.arange(length).unsqueeze(0))
    cos, sin = cos[:, None], sin[:, None]
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)
    h, layer_outputs = embeds, []
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        x = _rms_norm(layer.input_layernorm, h)
        q = F.linear(x, attn.q_proj.weight).view(batch, length, heads, head_dim).transpose(1, 2)
        k = F.linear(x, attn.k_proj.weight).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        v = F.linear(x, attn.v_proj.weight).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        if method == "cp-lrp":
            scores = q.detach() @ k.detach().transpose(2, 3)
        else:
            uq, uk = rules.uniform(q, k.transpose(2, 3))
            scores = uq @ uk
        scores = (scores * head_dim**-0.5).masked_fill(causal, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        if method == "cp-lrp":
            o = weights.detach() @ v
        else:
            uw, uv = rules.uniform(weights, v)
            o = uw @ uv
        h = h + F.linear(o.transpose(1, 2).reshape(batch, length, -1), attn.o_proj.weight)
        x = _rms_norm(layer.post_attention_layernorm, h)
        gate = rules.identity_rule(F.linear(x, mlp.gate_proj.weight), F.silu, torch.sigmoid)
        up = F.linear(x, mlp.up_proj.weight)
        if method == "cp-lrp":
            product = gate.detach() * up
        else:
            ug, uu = rules.uniform(gate, up)
            product = ug * uu
        h = h + F.linear(product, mlp.down_proj.weight)
        h.retain_grad()
        layer_outputs.append(h)
    logits = F.linear(_rms_norm(inner.norm, h), model.lm_head.weight)
    target = logits[0, -1].argmax()
    logits[0, -1, target].backward()
    return (
        logits[0, -1, target].detach(),
        (embeds * embeds.grad).sum(-1).detach(),
        [(o * o.grad).detach() for o in layer_outputs],
    )
