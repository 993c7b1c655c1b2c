"""Sliding-window layers at long context without a T x T mask: the data-free mask gives the dense mask's outputs
and relevance, through lrp(), checkpointing and attnlrp.explain, and refuses every other use."""

from __future__ import annotations

import pytest
import torch
from _tiny import ids, tiny
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import attnlrp
from attnlrp.engine import gradient_checkpointing
from attnlrp.engine import sliding_window as sw

LENGTH, WINDOW = 50, 8


@pytest.fixture
def gemma(monkeypatch):
    monkeypatch.setattr(sw, "BLOCK", 16)  # several blocks of queries at a test's length
    return tiny("gemma3", "sdpa", sliding_window=WINDOW)


def _run(model, x, masks, method):
    """(logits, per-token relevance) of one logit at the last position, under lrp() or as a plain gradient."""
    embeds = model.get_input_embeddings()(x).detach().requires_grad_()
    bound = attnlrp.lrp(model, method=method) if method else torch.enable_grad()
    with bound:
        logits = model(inputs_embeds=embeds, attention_mask=masks, use_cache=False).logits
        logits[0, -1, 3].backward()
    return logits.detach(), (embeds * embeds.grad).sum(-1).detach()


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp", None], ids=["attnlrp", "cp-lrp", "gradient"])
def test_the_data_free_mask_gives_the_dense_masks_relevance(gemma, method):
    assert "sliding_attention" in gemma.config.layer_types
    x = ids(LENGTH)
    masks = sw.sliding_window_masks(gemma, LENGTH)
    assert isinstance(masks["sliding_attention"], sw.SlidingWindowMask) and masks["full_attention"] is None
    want = _run(gemma, x, None, method)
    got = _run(gemma, x, masks, method)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    # and the window matters: a narrower one gives other numbers
    narrower = {"full_attention": None, "sliding_attention": sw.SlidingWindowMask(WINDOW // 2, LENGTH)}
    assert not torch.allclose(_run(gemma, x, narrower, method)[1], want[1])


def test_with_checkpointing(gemma):
    x = ids(LENGTH)
    want = _run(gemma, x, None, "attnlrp")[1]
    with gradient_checkpointing(gemma):
        got = _run(gemma, x, sw.sliding_window_masks(gemma, LENGTH), "attnlrp")[1]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


class _Squares(TorchDispatchMode):
    """Records every tensor made with two dimensions of ``length`` (a T x T matrix)."""

    def __init__(self, length):
        super().__init__()
        self.length, self.seen = length, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.seen += [
            t.shape for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.shape.count(self.length) > 1
        ]
        return out


def test_explain_uses_it_and_no_t_by_t_tensor_is_made(gemma, tokenizer):
    prompt = ids(LENGTH)[0].tolist()
    with _Squares(LENGTH) as dense:
        x = torch.tensor([prompt])
        _run(gemma, x, None, "attnlrp")
    assert dense.seen, "transformers' own sliding-window mask is T x T"
    with _Squares(LENGTH) as banded:
        got = attnlrp.explain(gemma, tokenizer, prompt, target=3)
    assert not banded.seen
    want = _run(gemma, torch.tensor([prompt]), None, "attnlrp")[1][0]
    torch.testing.assert_close(torch.as_tensor(got.scores, dtype=torch.float64), want, rtol=1e-5, atol=1e-7)


def test_padded_batches_keep_the_models_own_masks(gemma, tokenizer):
    prompts = [ids(LENGTH)[0].tolist(), ids(LENGTH - 7, seed=2)[0].tolist()]
    together = attnlrp.explain(gemma, tokenizer, prompts, target=3)
    alone = [attnlrp.explain(gemma, tokenizer, p, target=3) for p in prompts]
    for a, b in zip(together, alone):
        torch.testing.assert_close(torch.as_tensor(a.scores), torch.as_tensor(b.scores), rtol=1e-5, atol=1e-7)


def test_only_where_it_is_right():
    llama = tiny("llama", "sdpa")
    assert sw.sliding_window_masks(llama, LENGTH) is None  # no sliding window
    gemma = tiny("gemma3", "sdpa", sliding_window=WINDOW)
    assert sw.sliding_window_masks(gemma, WINDOW) is None  # the window covers the sequence
    assert sw.sliding_window_masks(tiny("gemma3", "eager", sliding_window=WINDOW), LENGTH) is None


def test_any_other_use_of_the_mask_is_an_error(gemma):
    mask = sw.SlidingWindowMask(WINDOW, LENGTH)
    assert isinstance(mask.to("cpu"), sw.SlidingWindowMask) and mask.to("cpu").window == WINDOW
    with pytest.raises(TypeError, match="only scaled_dot_product_attention reads"):
        torch.where(mask, 1.0, 0.0)
    q = torch.zeros(1, 2, LENGTH - 1, 4)
    with pytest.raises(ValueError, match="one forward over the whole sequence"):
        torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
