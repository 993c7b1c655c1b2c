"""attnlrp.latent on the bundled SmolLM2-135M-Instruct: units of a real prediction, the bundled SAE (``make sae``),
a small atlas with its cards, and steering that leaves the model as it was."""

from __future__ import annotations

import pytest
import torch

import attnlrp
from attnlrp.latent import collect, labelled_corpus, load_sae, steer
from attnlrp.latent.readout import site_totals
from attnlrp.latent.sae import BUNDLED_LAYERS, bundled_name

pytestmark = pytest.mark.real

PROMPT = "The Eiffel Tower is located in the city of"
SITE = "model.layers.20.mlp.down_proj"


def test_the_units_of_a_real_prediction_add_up(smollm):
    model, tokenizer = smollm
    exp = attnlrp.explain(
        model, tokenizer, PROMPT, method="cp-lrp", latent=["model.layers.*.mlp.down_proj", "model.layers.29"]
    )
    assert exp.target == " Paris"
    totals = site_totals(exp.units)
    assert totals["model.layers.29"] == pytest.approx(exp.value, rel=1e-3)  # CP-LRP, no biases: the residual holds y
    for entry in exp.units:
        assert sum(u["relevance"] for u in entry["top"]) + entry["rest"] == pytest.approx(entry["total"], abs=1e-6)
    assert len(exp.units) == 31 and all(len(e["top"]) == 10 for e in exp.units)


def test_the_bundled_sae_carries_its_error_as_a_term_of_its_own(smollm):
    model, tokenizer = smollm
    sae = load_sae(bundled_name(BUNDLED_LAYERS[0]))
    assert sae.stats["fve"] > 0.5, sae.stats
    exp = attnlrp.explain(model, tokenizer, PROMPT, method="cp-lrp", latent=sae)
    (entry,) = exp.units
    assert exp.target == " Paris" and entry["site"] == f"model.layers.{BUNDLED_LAYERS[0]}@sae"
    assert entry["total"] + entry["error"] + entry["bias"] == pytest.approx(exp.value, rel=1e-3)
    assert abs(entry["total"]) > 0.1 * abs(exp.value) and entry["error"] != 0  # both carry a share (docs/latent.md)


def test_a_small_atlas_of_the_bundled_model(smollm):
    model, tokenizer = smollm
    corpus = [{"text": r.text, "topic": r.topic} for r in labelled_corpus(per_topic=2)]
    atlas = collect(model, tokenizer, corpus, SITE, top_k=4, batch_size=16, max_tokens=32, progress=False)
    assert atlas.seen == 30 and atlas.tokens > 300
    unit = int(atlas.relevance_mass(SITE).argmax())
    card = atlas.card(SITE, unit, conditional=2)
    assert len(card.promoted) == 10 and all(isinstance(t, str) for t, _ in card.promoted)
    assert len(card.conditional) == 2 and card.label and 0 < card.purity <= 1
    assert card.conditional[0]["unit_relevance"] == pytest.approx(card.top_relevance[0]["score"], rel=1e-3)


def test_steering_the_bundled_model_is_reversible(smollm):
    model, tokenizer = smollm
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
    with steer(model, {(SITE, 7): 30.0}), torch.no_grad():
        steered = model(ids).logits
    with torch.no_grad():
        after = model(ids).logits
    assert not torch.equal(steered, before) and torch.equal(after, before)
