"""The real classifiers of ``attnlrp.zoo.classifiers`` (MiniLM fine-tuned here; ``make classifiers`` builds them).

Plausibility, each able to fail:
- sentiment: on short templated reviews (every template x sentiment word x subject), AttnLRP's top relevance
  for the predicted label falls on the sentiment word (>= 90%); a random attribution on the same items falls
  there far less often. The subjects are off the training tweets' topics (airlines, phones, self-driving cars,
  ...), so the model has learned no sentiment for them and the sentiment word is the one cue: on-topic
  subjects carry the corpus's slant (with "service", "flight", "hotel" or "phone" among the subjects the share
  drops to about 87%, "service" alone to 60%);
- NER: explaining the label of an entity's first token on held-out tweets, AttnLRP's top relevance lies on
  that entity's own tokens or a token right next to it (>= 90%), and on its own tokens far more often than a
  random attribution's. On its own tokens alone it falls short of 90% (an expected failure, kept so that it is
  seen): the tagger reads locations and facilities partly from the word before them ("in", "at").
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

import attnlrp
from attnlrp.errors import ModelNotBuiltError
from attnlrp.zoo import classifiers

POSITIVE = (
    "great",
    "wonderful",
    "excellent",
    "amazing",
    "fantastic",
    "lovely",
    "perfect",
    "brilliant",
    "superb",
    "delightful",
)
NEGATIVE = (
    "terrible",
    "awful",
    "horrible",
    "disappointing",
    "dreadful",
    "bad",
    "poor",
    "lousy",
    "miserable",
    "mediocre",
)
# Each in at most ``OFF_TOPIC`` of the training tweets (test_the_review_subjects_are_off_the_corpus_topics).
SUBJECTS = ("movie", "concert", "meal", "album", "restaurant", "coffee", "lecture", "novel", "dinner", "painting")
TEMPLATES = (
    "The {subject} was {word}.",
    "I thought the {subject} was {word}.",
    "It was a truly {word} {subject}.",
    "Honestly, this {subject} is {word}.",
    "Our {subject} turned out {word} today.",
)
OFF_TOPIC = 5
SHARE = 0.9


def reviews() -> list[tuple[str, tuple[int, int], str]]:
    """``(text, character span of the sentiment word, polarity)`` of every templated review (1000)."""
    out = []
    for template, word, subject in itertools.product(TEMPLATES, POSITIVE + NEGATIVE, SUBJECTS):
        text = template.format(subject=subject, word=word)
        found = re.search(rf"\b{word}\b", text)
        out.append((text, found.span(), "positive" if word in POSITIVE else "negative"))
    return out


def tokens_in(tokenizer, text: str, span: tuple[int, int]) -> list[int]:
    """The token positions of ``tokenizer(text)`` whose characters lie inside ``span``."""
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    return [i for i, (a, b) in enumerate(offsets) if b > a and span[0] <= a and b <= span[1]]


def top_token(explanation) -> int:
    """The position of the highest relevance among the non-special tokens."""
    return int(np.where(explanation.special, -np.inf, explanation.scores).argmax())


def hit_share(explanations, wanted: list[list[int]]) -> float:
    return sum(top_token(e) in w for e, w in zip(explanations, wanted)) / len(wanted)


@pytest.fixture(scope="module")
def sentiment():
    return attnlrp.load_model(classifiers.SENTIMENT)


@pytest.fixture(scope="module")
def ner():
    return attnlrp.load_model(classifiers.NER)


@pytest.mark.real
def test_sentiment_model_loads_by_name_and_beats_chance(sentiment):
    model, tokenizer = sentiment
    assert type(model).__name__ == "BertForSequenceClassification" and not model.training
    assert model.name_or_path == "minilm-sentiment"
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    report = classifiers.training_report(classifiers.SENTIMENT)
    print(f"\nminilm-sentiment: {report}")
    assert report["test_items"] == 3 * classifiers.TEST_PER_LABEL
    assert report["held_out"]["accuracy"] > 0.6, "three balanced labels: chance is 1/3"
    label = attnlrp.explain(model, tokenizer, "The staff were rude and the room was filthy.").target
    assert label == "negative"


@pytest.mark.real
def test_sentiment_relevance_falls_on_the_sentiment_word(sentiment):
    model, tokenizer = sentiment
    items = reviews()
    texts = [text for text, _, _ in items]
    wanted = [tokens_in(tokenizer, text, span) for text, span, _ in items]
    assert all(wanted), "every sentiment word has tokens"
    explanations = attnlrp.explain(model, tokenizer, texts, method="attnlrp", batch_size=32)
    assert all(e.token_ids == tokenizer(t)["input_ids"] for e, t in zip(explanations, texts))
    correct = sum(e.target == polarity for e, (_, _, polarity) in zip(explanations, items)) / len(items)
    share = hit_share(explanations, wanted)
    noise = hit_share(attnlrp.explain(model, tokenizer, texts, method="random", batch_size=32), wanted)
    print(
        f"\nminilm-sentiment on {len(items)} templated reviews: predicted polarity right {correct:.1%}; "
        f"top AttnLRP relevance on the sentiment word {share:.1%} (random attribution: {noise:.1%})"
    )
    assert correct >= SHARE, f"the classifier gets only {correct:.1%} of the templated reviews right"
    assert share >= SHARE
    assert noise < 0.5, "the check must tell a random attribution apart"


def entity_items(tokenizer, model) -> tuple[list[tuple[str, int, list[int], str]], int]:
    """Held-out entities whose first token the model labels as annotated: ``(text, first token, the entity's
    tokens, label)``; and how many held-out entities there are."""
    _, test = classifiers.ner_split()
    items, total = [], 0
    for words, tags in test:
        text = " ".join(words)
        starts = list(itertools.accumulate((len(w) + 1 for w in words), initial=0))
        encoding = tokenizer(text, return_tensors="pt")
        if encoding["input_ids"].shape[1] > model.config.max_position_embeddings:
            continue
        with torch.no_grad():
            predicted = model(**encoding).logits[0].argmax(-1)
        for first, end, kind in classifiers.entity_spans(tags):
            total += 1
            tokens = tokens_in(tokenizer, text, (starts[first], starts[end] - 1))
            label = f"{tags[first][0]}-{kind}"
            if tokens and model.config.id2label[int(predicted[tokens[0]])] == label:
                items.append((text, tokens[0], tokens, label))
    return items, total


@pytest.mark.real
def test_ner_model_loads_by_name_and_finds_entities(ner):
    model, _ = ner
    assert type(model).__name__ == "BertForTokenClassification" and not model.training
    assert model.name_or_path == "minilm-ner"
    assert set(model.config.id2label.values()) == set(classifiers.NER_LABELS)
    report = classifiers.training_report(classifiers.NER)
    print(f"\nminilm-ner: {report}")
    assert report["held_out"]["word_accuracy"] > 0.9
    assert report["held_out"]["entity_f1"] > 0.2


@pytest.fixture(scope="module")
def entity_explanations(ner):
    """The held-out entities the tagger gets right, each explained at its first token (AttnLRP and random)."""
    model, tokenizer = ner
    items, total = entity_items(tokenizer, model)
    assert len(items) >= 50, f"the tagger labels only {len(items)} of {total} held-out entities right"
    texts = [text for text, _, _, _ in items]
    targets = [attnlrp.TokenLabel(first) for _, first, _, _ in items]
    explained = {
        method: attnlrp.explain(model, tokenizer, texts, target=targets, method=method, batch_size=16)
        for method in ("attnlrp", "random")
    }
    assert [e.target for e in explained["attnlrp"]] == [label for _, _, _, label in items]
    return items, total, explained


@pytest.mark.real
def test_ner_relevance_falls_on_the_entity_or_the_word_next_to_it(entity_explanations):
    items, total, explained = entity_explanations
    wanted = [tokens for _, _, tokens, _ in items]
    around = [[tokens[0] - 1, *tokens, tokens[-1] + 1] for tokens in wanted]
    own, near = hit_share(explained["attnlrp"], wanted), hit_share(explained["attnlrp"], around)
    noise = hit_share(explained["random"], wanted)
    print(
        f"\nminilm-ner: {len(items)} of {total} held-out entities labelled right at their first token "
        f"({sum(len(w) > 1 for w in wanted)} of several tokens); top AttnLRP relevance on the entity's own tokens "
        f"{own:.1%}, on them or a token next to them {near:.1%} (random attribution: {noise:.1%})"
    )
    assert near >= SHARE
    assert own > 0.5 and own > 3 * noise


@pytest.mark.real
@pytest.mark.xfail(
    strict=True,
    reason="measured below 90%: for locations and facilities the top relevance often sits on the word before "
    "the entity ('in', 'at'), a cue the tagger uses; see test_ner_relevance_falls_on_the_entity_or_the_word_next_to_it",
)
def test_ner_relevance_falls_on_the_entity(entity_explanations):
    items, _, explained = entity_explanations
    assert hit_share(explained["attnlrp"], [tokens for _, _, tokens, _ in items]) >= SHARE


def test_an_unbuilt_model_names_its_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLRP_CACHE", str(tmp_path))
    with pytest.raises(ModelNotBuiltError, match=r"make classifiers.*build\(\['minilm-ner'\]\)"):
        attnlrp.load_model("minilm-ner")
    with pytest.raises(FileNotFoundError, match="not built yet"):
        classifiers.training_report(classifiers.SENTIMENT)


def test_the_data_splits_are_fixed_and_disjoint():
    train, test = classifiers.ner_split()
    assert (train, test) == classifiers.ner_split()
    assert len(test) == round((len(train) + len(test)) * classifiers.NER_TEST_FRACTION)
    assert not {" ".join(w) for w, _ in train} & {" ".join(w) for w, _ in test} - {""}
    train, test = classifiers.sentiment_split()
    assert (train, test) == classifiers.sentiment_split()
    assert not {t for t, _ in train} & {t for t, _ in test}
    assert len(test) == 3 * classifiers.TEST_PER_LABEL and len(train) == 3 * classifiers.TRAIN_PER_LABEL


def test_the_review_subjects_are_off_the_corpus_topics():
    train, _ = classifiers.sentiment_split()
    for subject in SUBJECTS:
        count = sum(bool(re.search(rf"\b{subject}s?\b", text, re.IGNORECASE)) for text, _ in train)
        assert count <= OFF_TOPIC, f"{subject!r} is in {count} training tweets: the model may have learned its slant"
    for word in POSITIVE + NEGATIVE:
        assert not any(word in template for template in TEMPLATES)


def test_entity_spans_read_bio_tags():
    tags = ["O", "B-person", "I-person", "O", "I-geo-loc", "B-company", "B-company", "I-company"]
    assert classifiers.entity_spans(tags) == [(1, 3, "person"), (4, 5, "geo-loc"), (5, 6, "company"), (6, 8, "company")]
