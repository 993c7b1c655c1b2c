"""The engine next to features of transformers, torch and accelerate: activation checkpointing,
half-precision models, device maps and offloading hooks."""

from __future__ import annotations

import weakref

import accelerate
import pytest
import torch
from _tiny import ids, tiny
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForCausalLM

import attnlrp


def _relevance(model, input_ids, method="attnlrp", target=3):
    """(logit, per-token relevance in float32) for one logit at the last position."""
    with attnlrp.lrp(model, method=method) as b:
        logits = model(input_ids=input_ids).logits
        logits[0, -1, target].backward()
        relevance = (b.embeddings.float() * b.embeddings.grad.float()).sum(-1)
        return logits[0, -1, target].detach().float(), relevance.detach()


def _checkpointing(model, reentrant):
    # gradient_checkpointing_enable is deprecated in transformers 5 in favour of this name
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    else:  # pragma: no cover - transformers 4
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    return model.train()  # transformers checkpoints in training mode only


# --- (a) activation checkpointing -----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("arch,attn", [("llama", "eager"), ("llama", "sdpa"), ("gpt2", "eager")])
@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_checkpointing_gives_identical_relevance(arch, attn, reentrant, method):
    # Dropout on everywhere: in training mode it would fire, but the engine switches it off, also in a
    # reentrant checkpoint's first forward (which runs without gradients) and in the recomputation.
    dropout = {"llama": dict(attention_dropout=0.3), "gpt2": dict(attn_pdrop=0.3, resid_pdrop=0.3, embd_pdrop=0.3)}[
        arch
    ]
    model = tiny(arch, attn, **dropout)
    x = ids(12)
    logit, expected = _relevance(model, x, method)
    _checkpointing(model, reentrant)
    layers = model.model.layers if arch == "llama" else model.transformer.h
    assert all(layer.gradient_checkpointing for layer in layers)
    functions = [layer.__dict__["_gradient_checkpointing_func"] for layer in layers]
    got_logit, got = _relevance(model, x, method)
    assert torch.equal(got_logit, logit)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the binding wrapped the checkpoint function only for the block
    assert [layer.__dict__["_gradient_checkpointing_func"] for layer in layers] == functions


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_training_mode_has_no_dropout_with_or_without_gradients(attn):
    model = tiny("gpt2", attn, attn_pdrop=0.5, resid_pdrop=0.5, embd_pdrop=0.5)
    x = ids(10)
    _, expected = _relevance(model, x)
    with torch.no_grad():
        eval_logits = model(input_ids=x).logits
    model.train()
    _, got = _relevance(model, x)
    assert torch.equal(got, expected)
    # without gradients too (a reentrant checkpoint runs its first forward so), sdpa's dropout_p included
    with attnlrp.lrp(model), torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, eval_logits)
    with torch.no_grad():  # outside the block, dropout is back
        assert not torch.equal(model(input_ids=x).logits, eval_logits)


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensors created by torch ops while the mode is on (forward and backward).

    Why this measure: tracemalloc does not see torch's allocator, torch.cuda's memory statistics do not
    exist for the CPU, the profiler's CPU memory events are unreliable on this build, and a
    saved_tensors_hooks counter misses what a non-reentrant checkpoint keeps (its own hooks take
    precedence inside the checkpointed region, and its recomputation is invisible). Intercepting every
    op at the dispatcher sees every output tensor - activations, tensors saved for the backward,
    temporaries, recomputed layers, gradients - whichever checkpointing flavour runs. Each new storage
    is counted once (views and in-place results share their input's storage) until its tensor is freed
    (weakref.finalize; torch keeps a tensor's Python object alive while autograd still holds it).
    Parameters and inputs are created outside the mode and are not counted.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.live:
                    self.live[key] = size
                    self.current += size
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(t, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def _peak_bytes(model, input_ids):
    with attnlrp.lrp(model) as b:
        with LiveTensorBytes() as memory:
            logits = model(input_ids=input_ids).logits
            logits[0, -1, 3].backward()
            del logits
        relevance = (b.embeddings * b.embeddings.grad).sum(-1).detach()
    return memory.peak, relevance


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_checkpointing_lowers_peak_memory():
    # A somewhat bigger tiny model on a long sequence, so that activations dominate: 4 layers,
    # 256 tokens, eager attention (each layer keeps several heads x 256 x 256 score tensors).
    model = tiny("llama", "eager", dtype=torch.float32, num_hidden_layers=4, max_position_embeddings=512)
    x = ids(256)
    plain, expected = _peak_bytes(model, x)
    peaks = {}
    for reentrant in (True, False):
        _checkpointing(model, reentrant)
        peaks[reentrant], relevance = _peak_bytes(model, x)
        model.activation_checkpointing_disable()
        model.eval()
        torch.testing.assert_close(relevance, expected, rtol=1e-5, atol=1e-6)
    print(
        f"peak live tensor bytes: plain {plain / 2**20:.2f} MiB, checkpointed (reentrant) "
        f"{peaks[True] / 2**20:.2f} MiB, checkpointed (non-reentrant) {peaks[False] / 2**20:.2f} MiB"
    )
    assert plain > 4 * 2**20  # the measure sees the activations at all
    assert peaks[True] < 0.7 * plain
    assert peaks[False] < 0.7 * plain


# --- (b) half-precision models --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "arch,attn",
    [
        ("llama", "eager"),
        ("llama", "sdpa"),
        ("gpt2", "eager"),
        ("gpt2", "sdpa"),
        ("gemma3", "eager"),
        ("gemma3", "sdpa"),
    ],
)
def test_half_precision_models_give_finite_relevance(arch, attn, dtype):
    model = tiny(arch, attn, dtype=torch.float32)
    x = ids(16)
    _, reference = _relevance(model, x)
    model.to(dtype)
    for method in ("attnlrp", "cp-lrp"):
        with attnlrp.lrp(model, method=method) as b:
            logits = model(input_ids=x).logits
            assert logits.dtype == dtype and torch.isfinite(logits).all()
            logits[0, -1, 3].backward()
            grad = b.embeddings.grad
            assert grad.dtype == dtype and torch.isfinite(grad).all()
            relevance = (b.embeddings.float() * grad.float()).sum(-1)
        assert torch.isfinite(relevance).all()
        if method == "attnlrp":  # and it is the float32 relevance, to half precision
            torch.testing.assert_close(relevance, reference, rtol=0.05, atol=0.02 * float(reference.abs().max()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_half_precision_with_large_activations(arch, dtype):
    # Outlier-sized residual streams (|x| ~ 1e3): x**2 overflows fp16 in any norm statistic not
    # computed in float32, and an unsafe f(x)/x ratio would turn tiny pre-activations into inf.
    model = tiny(arch, "sdpa", dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 300.0)
    x = ids(16)
    with torch.no_grad():
        target = int(model(input_ids=x).logits[0, -1].argmax())
    _, reference = _relevance(model, x, "cp-lrp", target)
    model.to(dtype)
    logit, relevance = _relevance(model, x, "cp-lrp", target)
    assert torch.isfinite(logit) and torch.isfinite(relevance).all()
    # CP-LRP conserves the logit, to half precision ...
    assert abs(float(relevance.sum() - logit)) <= 0.02 * abs(float(logit))
    # ... and gives the float32 model's relevance
    torch.testing.assert_close(relevance, reference, rtol=0.02, atol=0.02 * float(reference.abs().max()))


# --- (c) accelerate: device maps and hooks --------------------------------------------------------


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny("llama", "eager", dtype=torch.float32)
    model.save_pretrained(path)
    return path, model


def _load(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", **kwargs).eval()


def _plain_input_gradient(model, input_ids):
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_()
    logits = model(inputs_embeds=embeds).logits
    logits[0, -1].sum().backward()
    return logits.detach(), embeds.grad


def test_device_map_cpu_gives_same_relevance(saved_llama):
    path, plain = saved_llama
    x = ids(10)
    expected = _relevance(plain, x)[1]
    model = _load(path, device_map="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    for method in ("attnlrp", "cp-lrp"):
        torch.testing.assert_close(_relevance(model, x, method)[1], _relevance(plain, x, method)[1], rtol=0, atol=0)
    assert torch.equal(_relevance(model, x)[1], expected)


@pytest.mark.parametrize("how", ["cpu_offload", "dispatch_model_disk"])
def test_accelerate_hooks_give_same_relevance_and_are_restored(saved_llama, how, tmp_path):
    path, plain = saved_llama
    x = ids(10)
    model = _load(path)
    if how == "cpu_offload":
        model = accelerate.cpu_offload(model, execution_device="cpu")
    else:
        device_map = {
            "model.embed_tokens": "cpu",
            "model.layers.0": "cpu",
            "model.layers.1": "disk",
            "model.norm": "cpu",
            "model.rotary_emb": "cpu",
            "lm_head": "cpu",
        }
        model = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    hooked = [m for m in model.modules() if hasattr(m, "_hf_hook")]
    assert hooked and any(p.device.type == "meta" for p in model.parameters())  # weights really offloaded
    instance_forwards = {name: m.__dict__.get("forward") for name, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = _plain_input_gradient(model, x)

    for method in ("attnlrp", "cp-lrp"):
        got = _relevance(model, x, method)
        want = _relevance(plain, x, method)
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)

    # accelerate's hooks (instance forwards) are kept, and the parameters accelerate swapped in
    # during the block got their requires_grad flags back
    assert {name: m.__dict__.get("forward") for name, m in model.named_modules()} == instance_forwards
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    after = _plain_input_gradient(model, x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    # a plain backward through the offloaded model still reaches the (swapped-in) weights
    embeds = model.get_input_embeddings()(x)
    assert embeds.requires_grad
