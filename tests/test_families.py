"""The architecture matrix: every supported family, built tiny from its config, in float64.

The families of ``FAMILIES`` run every test below; those of ``EXTENDED`` (Bloom, DeepSeek, Llama 4, OLMoE,
Gemma 3n, Falcon, ...) run the audit here and ``attnlrp.check`` in tests/test_check.py.

(a) CP-LRP conserves the explained logit at the input and at every layer boundary (biases zero;
    learned position / token-type embeddings kept and accounted for through the Recorder).
(b) eager and sdpa attention give the same input relevance, for both methods.
(c) the engine equals an independent reference of one block, written here from rules.md.
(d) the audit finds no op without a rule; MoE experts are covered in every implementation.
(e) AttnLRP: the input relevance is finite and in the range observed on these models.
(f) explain_generation: its segments over a graph-keeping key-value cache give the same relevance as one forward.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from tiny_models import DECODERS, EXTENDED, FAMILIES, MOE, SEQ, build, zero_biases, zero_vit_constants

import attnlrp

METHODS = ("cp-lrp", "attnlrp")


@functools.cache
def bias_free(name):
    """The family with every bias zero (and ViT's CLS token and position embeddings, bare parameters
    that no Recorder can watch). Other learned additive inputs stay and are accounted for."""
    fam = build(name)
    zero_biases(fam.model)
    if fam.is_vision:
        zero_vit_constants(fam.model)
    return fam


def explain(fam, method, record=()):
    """Explain the top logit (at the last position for decoders).

    Returns the logit, the input relevance x * grad (token embeddings, or pixels for ViT), the
    Recorder (layer outputs plus ``record``) and the binding (with its op counts)."""
    inputs = dict(fam.inputs)
    if fam.is_vision:
        inputs["pixel_values"] = inputs["pixel_values"].clone().requires_grad_()
    with attnlrp.lrp(fam.model, method=method) as binding, attnlrp.Recorder(fam.model, [fam.layers, *record]) as rec:
        binding.counting = True
        logits = fam.model(**inputs).logits[0]
        y = logits[-1].max() if fam.is_decoder else logits.max()
        y.backward()
    x = inputs["pixel_values"] if fam.is_vision else binding.embeddings
    return y.detach(), (x * x.grad).detach(), rec, binding


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


# --- (a) CP-LRP conservation -------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_cp_lrp_conserves_at_input_and_every_layer(name):
    fam = bias_free(name)
    y, relevance, rec, _ = explain(fam, "cp-lrp", record=fam.additive)
    held = sum(float(rec.relevance[path].sum()) for path in fam.additive)
    assert float(relevance.sum()) + held == pytest.approx(float(y), rel=1e-4)
    layers = {path: float(r.sum()) for path, r in rec.relevance.items() if path not in fam.additive}
    assert len(layers) == 2
    for path, total in layers.items():
        assert total == pytest.approx(float(y), rel=1e-4), path
    if fam.additive:  # learned position / token-type embeddings hold a real share: the accounting matters
        assert abs(held) > 0.01 * abs(float(y))


def test_vit_patch_embedding_relevance_is_the_pixel_relevance():
    # The engine's binding.embeddings for ViT is the patch-embedding (Conv2d) output: linear, bias zero.
    fam = bias_free("vit")
    y, pixels, _, binding = explain(fam, "cp-lrp")
    patches = binding.embeddings
    assert float((patches * patches.grad).detach().sum()) == pytest.approx(float(pixels.sum()), rel=1e-10)
    assert float(pixels.sum()) == pytest.approx(float(y), rel=1e-6)


# --- (b) eager == sdpa ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FAMILIES)
def test_eager_and_sdpa_give_the_same_relevance(name, method):
    # Gemma2 refuses sdpa (sdpa has no attention-logit softcapping): compare it without softcapping,
    # setting the implementation on the config directly.
    fam = build(name, attn_logit_softcapping=None) if name == "gemma2" else build(name)
    y_eager, r_eager, _, eager = explain(fam, method)
    fam.model.config._attn_implementation = "sdpa"
    y_sdpa, r_sdpa, _, sdpa = explain(fam, method)
    kernel = "scaled_dot_product_attention [attention kernel]"
    assert sum(n for (_, rule), n in sdpa.ruled_ops.items() if rule == kernel) == 2
    assert not any(rule == kernel for _, rule in eager.ruled_ops)
    assert float(y_sdpa) == pytest.approx(float(y_eager), rel=1e-6)
    assert rel_err(r_sdpa, r_eager) < 1e-6


# --- (c) one block against an independent reference -------------------------------------------
# Written from rules.md with plain autograd tricks only: `t * ratio(t).detach()` is the identity
# rule of an activation, `half(t)` one factor of the uniform rule, a detached statistic a frozen norm.


def half(t):
    """Forward: t. Backward: half the gradient (one of two factors of the uniform rule)."""
    return 0.5 * t + 0.5 * t.detach()


#: f(x)/x of each activation, written out.
RATIO = {
    "silu": torch.sigmoid,
    "gelu": lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
}


def identity_rule(x, act):
    return x * RATIO[act](x).detach()


def rms_norm(x, norm):
    w = norm.weight + 1 if type(norm).__name__.startswith("Gemma") else norm.weight  # Gemma scales by 1 + w
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps).detach() * w


def layer_norm(x, norm):
    centred = x - x.mean(-1, keepdim=True)
    sigma = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps).detach()
    return centred / sigma * norm.weight + norm.bias


def rope(t, cos, sin):
    d = t.shape[-1] // 2
    return t * cos + torch.cat((-t[..., d:], t[..., :d]), -1) * sin


def attention(q, k, v, mask, scaling, method):
    """q.k^T and A.V are products of two input-dependent factors; softmax keeps its plain gradient.
    CP-LRP: the attention weights are constants, so all relevance flows through v."""
    if method == "cp-lrp":
        return torch.softmax(q.detach() @ k.detach().transpose(-1, -2) * scaling + mask, -1) @ v
    probs = torch.softmax(half(q) @ half(k).transpose(-1, -2) * scaling + mask, -1)
    return half(probs) @ half(v)


def gated(gate, up, act, method):
    """act(gate) * up: uniform rule; CP-LRP holds the activated gate constant."""
    a = identity_rule(gate, act)
    return a.detach() * up if method == "cp-lrp" else half(a) * half(up)


def heads(t, head_dim):
    return t.view(*t.shape[:2], -1, head_dim).transpose(1, 2)


def merge(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def llama_block(layer, x, method, mask, position_embeddings, act):
    at, mlp = layer.self_attn, layer.mlp
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)
    h = rms_norm(x, layer.input_layernorm)
    q, k, v = (heads(proj(h), at.head_dim) for proj in (at.q_proj, at.k_proj, at.v_proj))
    if hasattr(at, "q_norm"):
        q, k = rms_norm(q, at.q_norm), rms_norm(k, at.k_norm)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    x = x + at.o_proj(merge(attention(q, k, v, mask, at.scaling, method)))
    h = rms_norm(x, layer.post_attention_layernorm)
    return x + mlp.down_proj(gated(mlp.gate_proj(h), mlp.up_proj(h), act, method))


def gpt2_block(layer, x, method, **_):
    at, mlp, seq = layer.attn, layer.mlp, x.shape[1]
    causal = torch.full((seq, seq), -torch.inf, dtype=x.dtype).triu(1)
    q, k, v = (heads(t, at.head_dim) for t in at.c_attn(layer_norm(x, layer.ln_1)).split(x.shape[-1], -1))
    x = x + at.c_proj(merge(attention(q, k, v, causal, at.head_dim**-0.5, method)))
    return x + mlp.c_proj(identity_rule(mlp.c_fc(layer_norm(x, layer.ln_2)), "gelu_tanh"))


def bert_block(layer, x, method, **_):
    sa, out = layer.attention.self, layer.attention.output
    q, k, v = (heads(proj(x), sa.attention_head_size) for proj in (sa.query, sa.key, sa.value))
    x = layer_norm(out.dense(merge(attention(q, k, v, 0.0, sa.scaling, method))) + x, out.LayerNorm)
    a = identity_rule(layer.intermediate.dense(x), "gelu")
    return layer_norm(layer.output.dense(a) + x, layer.output.LayerNorm)


#: family -> (reference block, activation of its MLP)
REFERENCES = {
    "llama": (llama_block, "silu"),
    "mistral": (llama_block, "silu"),  # sliding-window mask
    "qwen2": (llama_block, "silu"),  # q/k/v biases
    "qwen3": (llama_block, "silu"),  # q_norm / k_norm
    "gemma": (llama_block, "gelu_tanh"),  # (1 + w) norms, GeGLU
    "gpt2": (gpt2_block, None),  # Conv1D, LayerNorm with biases
    "bert": (bert_block, None),  # post-norm, erf GELU
}


def engine_block(fam, method, layer):
    """Run the whole model under the engine; return the block's input, its relevance, its kwargs and
    the gradient arriving at its output."""
    seen = {}

    def before(module, args, kwargs):
        seen["x"] = args[0]
        seen["kwargs"] = kwargs
        args[0].retain_grad()

    def after(module, args, kwargs, out):
        seen["out"] = out[0] if isinstance(out, tuple) else out
        seen["out"].retain_grad()

    handles = [
        layer.register_forward_pre_hook(before, with_kwargs=True),
        layer.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        explain(fam, method)
    finally:
        for handle in handles:
            handle.remove()
    x = seen["x"]
    return x.detach(), (x * x.grad).detach(), seen["kwargs"], seen["out"].detach(), seen["out"].grad


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_block_matches_independent_reference(name, method):
    fam = build(name)  # biases kept: they absorb their share in both
    block, act = REFERENCES[name]
    layer = fam.model.get_submodule(fam.layers.replace("*", "1"))
    x, relevance, kwargs, out, grad_out = engine_block(fam, method, layer)
    x = x.clone().requires_grad_()
    ref_out = block(
        layer,
        x,
        method,
        mask=kwargs.get("attention_mask"),
        position_embeddings=kwargs.get("position_embeddings"),
        act=act,
    )
    assert rel_err(ref_out.detach(), out) < 1e-6  # the reference computes the same block
    ref_out.backward(grad_out)
    assert rel_err(x * x.grad, relevance) < 1e-6


# --- (d) audit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FAMILIES + EXTENDED)
def test_audit_finds_no_unruled_op(name, method):
    fam = bias_free(name)
    report = attnlrp.audit(fam.model, fam.inputs, method=method)
    assert report.unruled == []
    assert report.rules  # the rules did run


@pytest.mark.parametrize("name", MOE)
def test_moe_default_grouped_mm_experts_are_covered(name):
    # transformers' default experts implementation, grouped_mm, has no float64 CPU kernel: the matrix
    # above runs batched_mm. Here, in float32: grouped_mm, batched_mm and eager experts are all
    # covered and give the same relevance.
    results = {}
    for experts in ("grouped_mm", "batched_mm", "eager"):
        fam = build(name, experts=experts, dtype=torch.float32)
        assert fam.model.config._experts_implementation == experts  # no silent fallback
        assert attnlrp.audit(fam.model, fam.inputs, method="attnlrp").unruled == []
        y, relevance, _, _ = explain(fam, "cp-lrp")
        assert float(relevance.sum()) == pytest.approx(float(y), rel=1e-4)
        results[experts] = explain(fam, "attnlrp")[1]
    assert rel_err(results["grouped_mm"], results["eager"]) < 1e-5
    assert rel_err(results["batched_mm"], results["eager"]) < 1e-5


class _SharedExpertGate(torch.nn.Module):
    """qwen2_moe's shared-expert gate: sigmoid(g(x)) * u(x)."""

    def __init__(self):
        super().__init__()
        self.g, self.u = torch.nn.Linear(6, 1, bias=False), torch.nn.Linear(6, 6, bias=False)

    def forward(self, x):
        return torch.sigmoid(self.g(x)) * self.u(x)


class _WrittenOutSiLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = _SharedExpertGate()

    def forward(self, x):
        h = self.gate(x)
        return h * torch.sigmoid(h)


@pytest.mark.parametrize("method", METHODS)
def test_sigmoid_gates(method):
    model = _WrittenOutSiLU().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    with attnlrp.lrp(model, method=method, strict=True), attnlrp.Recorder(model, ["gate", "gate.*"]) as rec:
        out = model(x)
        out.sum().backward()
    # h * sigmoid(h) is SiLU: the identity rule passes all relevance to h, element by element.
    torch.testing.assert_close(rec.relevance["gate"], out.detach().float())
    total, r_u = float(out.detach().sum()), float(rec.relevance["gate.u"].sum())
    if method == "cp-lrp":  # the sigmoid gate is a constant: everything flows through u, no gradient reaches g
        assert r_u == pytest.approx(total, rel=1e-6) and "gate.g" not in rec.relevance
    else:  # uniform rule: half to u, half to the gate (whose softmax rule keeps only part of it)
        assert r_u == pytest.approx(total / 2, rel=1e-6) and float(rec.relevance["gate.g"].sum()) != 0


#: Products and activations called with their tensors by keyword, as models write them (BLOOM's attention
#: scores are ``alibi.baddbmm(batch1=q, batch2=k, ...)``). Each takes a = A x and b = B x.
KEYWORD_SPELLINGS = {
    "Tensor.baddbmm(batch1=, batch2=)": lambda a, b: torch.zeros(1, 4, 4, dtype=a.dtype).baddbmm(
        batch1=a, batch2=b.transpose(1, 2), alpha=0.5
    ),
    "torch.addmm(mat1=, mat2=)": lambda a, b: torch.addmm(torch.zeros(4, 4, dtype=a.dtype), mat1=a[0], mat2=b[0].T),
    "torch.matmul(other=)": lambda a, b: torch.matmul(a, other=b.transpose(1, 2)),
    "torch.addcmul(tensor1=, tensor2=)": lambda a, b: torch.addcmul(torch.zeros_like(a), tensor1=a, tensor2=b),
    "torch.mul(input=, other=)": lambda a, b: torch.mul(input=a, other=b),
    "torch.tanh(input=)": lambda a, b: torch.tanh(input=a) + b,
}


class _TwoFactors(torch.nn.Module):
    def __init__(self, combine):
        super().__init__()
        self.a, self.b, self.combine = torch.nn.Linear(6, 6, bias=False), torch.nn.Linear(6, 6, bias=False), combine

    def forward(self, x):
        return self.combine(self.a(x), self.b(x))


@pytest.mark.parametrize("spelling", KEYWORD_SPELLINGS)
def test_ops_called_with_keyword_tensors_get_their_rule(spelling):
    # The uniform rule (and SiLU's identity rule) conserve: the input relevance sums to the output. Before,
    # a product spelled with keywords fell back to its plain gradient, which gives each factor all of the
    # product, twice the output in all (BLOOM's q and k under AttnLRP).
    model = _TwoFactors(KEYWORD_SPELLINGS[spelling]).double()
    x = torch.randn(1, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with attnlrp.lrp(model, method="attnlrp") as binding:
        binding.counting = True
        out = model(x)
        out.sum().backward()
    assert float((x * x.grad).sum()) == pytest.approx(float(out.detach().sum()), rel=1e-9)
    assert any(rule.endswith(("[uniform]", "[identity]")) for _, rule in binding.ruled_ops)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", [n for n in FAMILIES + EXTENDED if n in DECODERS])
def test_explain_equals_the_engine_by_hand(name, method, tokenizer):
    # explain() runs the model on its own input leaves (an InputTap); relevance the engine credits to the input
    # embeddings must land on those: Gemma 3n's per-layer token embeddings were lost there (0.4% of the value).
    fam = bias_free(name)
    exp = attnlrp.explain(fam.model, tokenizer, fam.inputs["input_ids"][0].tolist(), method=method)
    y, relevance, _, _ = explain(fam, method)
    assert exp.value == pytest.approx(float(y), rel=1e-9)
    assert rel_err(torch.as_tensor(exp.scores, dtype=torch.float64), relevance.sum(-1)[0]) < 1e-6


# --- (e) AttnLRP -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_attnlrp_relevance_is_finite_and_in_the_observed_range(name):
    # Σ R_input / y measured on these models (biases zero, additive embeddings accounted), seeds 0-5:
    # 0.22 (olmo2) .. 1.09 (gpt2). AttnLRP is not conservative: the softmax rule's bias term takes
    # (or, less often, adds) relevance. Gemma and DistilBERT stay within 2% of y.
    fam = bias_free(name)
    y, relevance, rec, _ = explain(fam, "attnlrp", record=fam.additive)
    assert torch.isfinite(relevance).all()
    assert all(torch.isfinite(r).all() for r in rec.relevance.values())
    ratio = (float(relevance.sum()) + sum(float(rec.relevance[p].sum()) for p in fam.additive)) / float(y)
    assert 0.1 < ratio < 1.2
    # The last layer boundary sits above every softmax: only norms, linear maps and the head remain.
    assert float(rec.relevance[fam.layers.replace("*", "1")].sum()) == pytest.approx(float(y), rel=1e-4)


# --- (f) explain_generation over a key-value cache ---------------------------------------------------


@pytest.mark.parametrize("name", [name for name in DECODERS if name in FAMILIES])
def test_generation_segments_equal_one_forward(name, tokenizer):
    fam = build(name, dtype=torch.float32)
    prompt = fam.inputs["input_ids"][0].tolist()
    n_new = 5

    def run(backward_batch):
        return attnlrp.explain_generation(
            fam.model, tokenizer, prompt, max_new_tokens=n_new, min_new_tokens=n_new, backward_batch=backward_batch
        )

    segmented, whole = run(2), run(n_new)  # segments of 2, 2, 1 generated tokens; one segment
    assert segmented.token_ids == whole.token_ids and len(whole.token_ids) == SEQ + n_new
    assert np.abs(whole.matrix).max() > 0
    np.testing.assert_allclose(segmented.matrix, whole.matrix, rtol=2e-4, atol=1e-5 * np.abs(whole.matrix).max())
    np.testing.assert_allclose(segmented.values, whole.values, rtol=1e-5)
