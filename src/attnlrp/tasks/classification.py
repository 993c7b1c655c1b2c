"""Classifiers over text: one label for the whole text (or a text pair), or one label per token (NER).

Sequence classification covers encoder heads (BERT, RoBERTa, DistilBERT, DeBERTa-v2, ELECTRA, XLM-R,
ModernBERT) and decoder classifiers (``LlamaForSequenceClassification`` and the like, which pool the last
non-pad token), and regression heads (one output). A pair (NLI: premise and hypothesis) is one sequence
with two segments, ``text`` and ``pair``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError, TargetError
from ..methods import Method
from ..results import Explanation
from .base import Task, model_name, one_per_item, scalar
from .labels import LabelTarget, check_label_target, head_kind, label_names, resolve_label_target
from .text import Item, check_length, display_tokens
from .token_batch import TokenBatch


@dataclass(frozen=True)
class TokenLabel:
    """The label of one token (token classification): ``at`` is a token position in the encoded text (special
    tokens count) or a word, whose first token is explained; ``label`` is a label name or id (None: the one the
    model predicts there)."""

    at: int | str
    label: str | int | None = None
    made_for: ClassVar[str] = "token classifiers (a label per token, as in NER)"


@dataclass
class Outcome:
    """One row's resolved target and what the classifier said."""

    target: LabelTarget
    value: float
    logits: Tensor  # the row's logits at the explained position [num_labels], detached
    position: int | None = None  # the explained token (token classification)


def _probabilities(config, logits: Tensor) -> Tensor | None:
    """Softmax over the labels, a sigmoid per label for multi-label heads, none for a regression's scores."""
    kind = head_kind(config)
    if kind == "regression":
        return None
    return torch.sigmoid(logits.float()) if kind == "multi_label" else torch.softmax(logits.float(), -1)


class LabelBatch(TokenBatch):
    """Texts (or text pairs) of a classifier; each target reads one label's logit of its row."""

    def __init__(self, model: nn.Module, tokenizer, items: list[Item], targets: list[Any], per_token: bool):
        self.items = items
        self.targets = targets
        self.per_token = per_token
        self.positions = [self._position(item, t) if per_token else None for item, t in zip(items, targets)]
        last = _pools_last(model)
        query = [p if p is not None else (len(item.ids) - 1 if last else 0) for p, item in zip(self.positions, items)]
        type_ids = [item.type_ids for item in items] if all(item.type_ids for item in items) else None
        # a decoder's classifier reads its last token that isn't config.pad_token_id: pad with that one
        pad_id = getattr(model.config, "pad_token_id", None) if last and not per_token else None
        if last and not per_token and pad_id is None and len(items) > 1:  # transformers' own error is deep
            raise InputError(
                f"{type(model).__name__} reads each text's last token, which it finds by config.pad_token_id, and "
                "its config has none, so it takes one text at a time: set model.config.pad_token_id (the "
                "tokenizer's pad or end-of-text id), or pass batch_size=1."
            )
        super().__init__(model, tokenizer, [item.ids for item in items], type_ids=type_ids, query=query, pad_id=pad_id)

    @staticmethod
    def _position(item: Item, target: Any) -> int:
        at = target.at if isinstance(target, TokenLabel) else None
        if isinstance(at, int) and not isinstance(at, bool):
            if not 0 <= at < len(item.ids):
                raise TargetError(
                    f"Token position {at} is outside the text's {len(item.ids)} tokens (0..{len(item.ids) - 1})."
                )
            return at
        if isinstance(at, str):
            found = [first for word, first in item.words if word == at or word.strip() == at.strip()]
            if len(found) > 1:
                raise TargetError(
                    f"The word {at!r} is in the text {len(found)} times, at token positions {found}: give the "
                    f"position of the one to explain, e.g. TokenLabel({found[0]}) (--at-position {found[0]} on the command line)."
                )
            if found:
                return found[0]
            raise TargetError(
                f"The word {at!r} is not in the text; its words are {[w for w, _ in item.words][:30]}. "
                "Give the word as it appears, or a token position."
            )
        raise TargetError(
            "Token classification explains the label of one token: pass target=attnlrp.TokenLabel(position_or_word, "
            f"label=None), not {target!r}."
        )

    def _logits(self, output: Any, m: int, row: int) -> Tensor:
        logits = output.logits[m]
        return logits[self.positions[row]] if self.per_token else logits

    def resolve_row(self, output: Any, row: int) -> Outcome:
        logits = self._logits(output, row, row)
        target = self.targets[row]
        target = target.label if isinstance(target, TokenLabel) else target
        resolved = resolve_label_target(self.model.config, target, logits)
        value = scalar(resolved.scalar(logits), resolved.label)
        return Outcome(resolved, float(value.detach()), logits.detach(), self.positions[row])

    def read(self, output: Any, m: int, row: int) -> Tensor:
        target = self._outcomes[row].target
        return scalar(target.scalar(self._logits(output, m, row)), target.label)


def _refuse_encoder_decoder(model: nn.Module) -> None:
    """An InputError for an encoder-decoder classifier (BART's, T5's): its encoder and its decoder each embed the
    text, with modules of their own, where this task taps one input embedding."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(
            f"{type(model).__name__} (model type {getattr(config, 'model_type', None)!r}) is an encoder-decoder "
            "classifier, which attnlrp doesn't explain: it explains encoder-decoder models' generated tokens (seq2seq, "
            "e.g. AutoModelForSeq2SeqLM) and the labels of encoder-only or decoder-only classifiers."
        )


def _pools_last(model: nn.Module) -> bool:
    """Whether a classifier reads its last non-pad token (a decoder's) rather than the first (an encoder's CLS):
    the families without a masked-LM head are decoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(model.config, "model_type", None) not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class SequenceClassification(Task):
    """One label (or a regression score) for a whole text or text pair.

    inputs: a text or a list of texts; ``pair``: a second text (NLI hypothesis) or one per text.
    targets: see ``attnlrp.tasks.labels``. Results name the explained label and the model's probabilities.
    """

    name = "sequence-classification"
    labelled = True
    description = "one label (or a score) for a text or a text pair (…ForSequenceClassification)"
    options = ("pair",)
    fields = ("target", "target_id", "log_prob", "contrast", "label", "pair")
    per_token: ClassVar[bool] = False

    def __init__(self, model: nn.Module, tokenizer, pair: Any = None):
        super().__init__(model)
        _refuse_encoder_decoder(model)
        self.tokenizer = tokenizer
        self.pair = pair

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return type(model).__name__.endswith("ForSequenceClassification")

    def encode(self, inputs: Any) -> tuple[list[Item], bool]:
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError(
                f"{type(self).__name__} explains texts: pass a string or a list of strings, not {inputs!r}."
            )
        pairs = one_per_item(self.pair, len(texts), "texts", "pairs") if self.pair is not None else [None] * len(texts)
        items = [self._encode(text, pair) for text, pair in zip(texts, pairs)]
        for item in items:
            check_length(self.model, self.tokenizer, len(item.ids))
        return items, single

    def _encode(self, text: str, pair: str | None) -> Item:
        if not text.strip() or (isinstance(pair, str) and not pair.strip()):
            raise InputError(f"The {'text' if not text.strip() else 'pair'} is empty: give some text to explain.")
        encoding = self.tokenizer(text, pair) if pair is not None else self.tokenizer(text)
        ids = list(encoding["input_ids"])
        segments = []
        if pair is not None:
            kinds = encoding.sequence_ids() if hasattr(encoding, "sequence_ids") else None
            second = next((i for i, k in enumerate(kinds or []) if k == 1), None)
            if second is None:
                raise InputError(f"The tokenizer of {type(self.model).__name__} can't say where the pair starts.")
            segments = [("text", 0, second), ("pair", second, len(ids))]
        words = _words(encoding, text, pair)
        return Item(ids, segments, list(encoding["token_type_ids"]) if "token_type_ids" in encoding else None, words)

    def targets(self, target: Any, count: int) -> list[Any]:
        targets = one_per_item(target, count, "texts")
        for t in targets:
            check_label_target(self.model.config, t)
        return targets

    def prepare(self, items: Sequence[Item], targets: Sequence[Any]) -> LabelBatch:
        return LabelBatch(self.model, self.tokenizer, list(items), list(targets), self.per_token)

    def results(self, batch: LabelBatch, relevance: dict, method: Method) -> list[Explanation]:
        out = []
        names = label_names(self.model.config)
        for row, (item, span, outcome) in enumerate(zip(batch.items, batch.spans["tokens"], batch.outcomes)):
            raw, display, special = display_tokens(self.tokenizer, item.ids)
            probs = _probabilities(self.model.config, outcome.logits)
            label_id = outcome.target.label_id
            out.append(
                Explanation(
                    tokens=raw,
                    display=display,
                    scores=relevance["tokens"][row, span],
                    target=outcome.target.label,
                    value=outcome.value,
                    method=method.name,
                    model=model_name(self.model),
                    token_ids=list(item.ids),
                    special=special,
                    target_id=label_id,
                    logit=float(outcome.logits[label_id]) if label_id is not None else None,
                    prob=float(probs[label_id]) if probs is not None and label_id is not None else None,
                    segments=list(item.segments),
                    label_probs={names[i]: float(p) for i, p in enumerate(probs)} if probs is not None else {},
                    position=outcome.position,
                )
            )
        return out


class TokenClassification(SequenceClassification):
    """The label of one token (NER): ``target=attnlrp.TokenLabel(position_or_word, label=None)``."""

    name = "token-classification"
    labelled = True
    description = "the label of one token, e.g. NER (…ForTokenClassification)"
    options = ()
    fields = ("target", "target_id", "log_prob", "label", "at")
    per_token = True

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return type(model).__name__.endswith("ForTokenClassification")

    def targets(self, target: Any, count: int) -> list[Any]:
        targets = one_per_item(target, count, "texts")
        for t in targets:
            if not isinstance(t, TokenLabel):
                raise TargetError(
                    "Token classification explains the label of one token: pass "
                    f"target=attnlrp.TokenLabel(position_or_word, label=None), not {t!r}."
                )
            check_label_target(self.model.config, t.label)
        return targets


def _words(encoding, text: str, pair: str | None) -> list[tuple[str, int]]:
    """Each word of the text(s) with the position of its first token, from the tokenizer's offsets."""
    word_ids = encoding.word_ids() if hasattr(encoding, "word_ids") else None
    if word_ids is None:
        return []
    sequence = encoding.sequence_ids()
    words, seen = [], set()
    for position, (word, side) in enumerate(zip(word_ids, sequence)):
        if word is None or (side, word) in seen:
            continue
        seen.add((side, word))
        start, end = encoding.word_to_chars(word, sequence_index=side)
        words.append(((text if side == 0 else pair)[start:end], position))
    return words
