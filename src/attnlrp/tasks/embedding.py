"""Sentence embeddings: the similarity of two texts, or one embedding's projection onto a direction.

The pooling (mean over tokens, the first token or the last) is read from the model's sentence-transformers config
(``1_Pooling/config.json``) where present, and a text longer than its ``max_seq_length``
(``sentence_bert_config.json``) is cut there, with a warning, as sentence-transformers cuts it (and lowercased
first where that config says ``do_lower_case``). Under LRP the
similarity follows the rules of ``rules.md``: the pooling is linear, the normalisation of a cosine holds the norms constant, and the dot product of the two
input-dependent embeddings is a product of two factors, so each text gets half of it (uniform rule). Plain
gradient methods see the similarity as it is.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..engine.inputs import InputTap
from ..errors import InputError, TargetError
from ..methods import Method
from ..results import Explanation
from .base import Task, check_finite, model_name, one_per_item, similarity, unit
from .text import Item, check_length, display_tokens
from .token_batch import TokenBatch, pad, pad_id_of

POOLINGS = ("mean", "cls", "last")
SIMILARITIES = ("cosine", "dot")
#: sentence-transformers' pooling modes (``1_Pooling/config.json``) by the pooling they name here
_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}


#: sentence-transformers modules (``modules.json``) that leave the pooled embedding's direction as it is
_KEPT_MODULES = ("Transformer", "BERT", "RoBERTa", "Pooling", "Normalize")
#: sentence-transformers modules (``modules.json``) that run the model itself
_ENCODER_MODULES = ("Transformer", "BERT", "RoBERTa")


def _modules(folder: Path) -> tuple[Path, list[dict]] | None:
    """The sentence-transformers ``modules.json`` of the model in ``folder`` (its folder and its modules), in
    ``folder`` or, when the weights lie in a module folder (``0_Transformer/``), above it; None where there is none."""
    for root in (folder, folder.parent):
        listing = root / "modules.json"
        if not listing.is_file():
            continue
        modules = json.loads(listing.read_text(encoding="utf-8"))
        if root != folder and folder.name not in {str(Path(module.get("path", ""))) for module in modules}:
            continue
        return root, modules
    return None


def _kind(module: dict) -> str:
    return module.get("type", "").rsplit(".", 1)[-1]


def _folder(model: nn.Module) -> Path:
    return Path(str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")))


def _pooling_config(folder: Path) -> Path:
    """Where the pooling config of the sentence-transformers model in ``folder`` lies: the ``Pooling`` module of
    ``modules.json`` where there is one, else ``1_Pooling/`` beside the weights."""
    found = _modules(folder)
    if found is None:
        return folder / "1_Pooling" / "config.json"
    root, modules = found
    changing = [m["path"] for m in modules if _kind(m) not in _KEPT_MODULES]
    if changing:
        raise InputError(
            f"{root / 'modules.json'} runs {', '.join(changing)} on the pooled embedding; attnlrp explains the pooled "
            f"embedding without them, which is not the one the model gives. Pass pooling= (one of "
            f"{', '.join(map(repr, POOLINGS))}; --pooling on the command line) to explain the pooled embedding "
            "anyway."
        )
    pooling = [m["path"] for m in modules if _kind(m) == "Pooling"]
    return root / (pooling[0] if pooling else "1_Pooling") / "config.json"


def _sentence_bert_config(model: nn.Module) -> tuple[dict, Path] | None:
    """The ``sentence_bert_config.json`` of a sentence-transformers model's Transformer module (found through
    ``modules.json`` where there is one, else beside the weights) and its path; None where there is none."""
    folder = _folder(model)
    found = _modules(folder)
    paths = [m.get("path", "") for m in found[1] if _kind(m) in _ENCODER_MODULES] if found is not None else []
    config = (found[0] / paths[0] if paths else folder) / "sentence_bert_config.json"
    return (json.loads(config.read_text(encoding="utf-8")), config) if config.is_file() else None


def max_seq_length(model: nn.Module) -> tuple[int, Path] | None:
    """The most tokens (special ones included) a sentence-transformers model embeds of a text, and the config that
    says so (``max_seq_length`` in its ``sentence_bert_config.json``); None where no config says."""
    found = _sentence_bert_config(model)
    limit = found[0].get("max_seq_length") if found is not None else None
    return (limit, found[1]) if isinstance(limit, int) and limit > 0 else None


def lowercases(model: nn.Module) -> bool:
    """Whether sentence-transformers lowercases a text before the model's tokenizer sees it (``do_lower_case`` in
    its ``sentence_bert_config.json``)."""
    found = _sentence_bert_config(model)
    return found is not None and found[0].get("do_lower_case") is True


def normalizes(model: nn.Module) -> bool:
    """Whether the model's sentence-transformers ``modules.json`` ends in a ``Normalize`` module: its embeddings
    have unit length, so their dot product is their cosine and a direction projects the unit vector."""
    found = _modules(_folder(model))
    return found is not None and any(_kind(m) == "Normalize" for m in found[1])


def pooling_of(model: nn.Module) -> str:
    """The pooling a sentence-transformers model was trained with: its pooling config (``1_Pooling/config.json``,
    found through ``modules.json`` where there is one), mean where the folder says nothing. A pooling explained
    nowhere here (max, weighted mean, ...), or a module that changes the pooled embedding (``Dense``), is refused."""
    config = _pooling_config(_folder(model))
    if not config.is_file():
        return "mean"
    settings = json.loads(config.read_text(encoding="utf-8"))
    on = [mode for mode, value in settings.items() if mode.startswith("pooling_mode_") and value is True]
    if len(on) == 1 and on[0] in _MODES:
        return _MODES[on[0]]
    raise InputError(
        f"{config} pools by {' + '.join(on) or 'no mode'}; attnlrp explains the pooling modes "
        f"{', '.join(_MODES)}. Give the pooling the model was trained with, if it is one of them, as pooling= "
        f"({', '.join(map(repr, POOLINGS))})."
    )


@dataclass(frozen=True)
class Direction:
    """Explain one text's embedding projected onto ``vector`` (its dot product with it), instead of a similarity."""

    vector: Any
    label: str = "projection"
    made_for: ClassVar[str] = "sentence-embedding models"


@dataclass
class Outcome:
    """One item's explained value and its label."""

    label: str
    value: float


class SimilarityBatch(TokenBatch):
    """Texts (kind ``tokens``) and their partners (kind ``pair``), run as one batch of 2B rows."""

    token_kinds = frozenset({"tokens", "pair"})

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        items: list[Item],
        partners: list[Item | None],
        targets: list,
        pooling: str,
        similarity: str,
        normalized: bool = False,
    ):
        self.items, self.partners, self.targets = items, partners, targets
        self.pooling, self.similarity, self.normalized = pooling, similarity, normalized
        paired = [p for p in partners if p is not None]
        if paired and len(paired) != len(partners):
            raise InputError("Give a pair for every text, or for none (then each target must be a Direction).")
        super().__init__(model, tokenizer, [item.ids for item in items])
        if paired:
            ids, mask = pad([p.ids for p in paired], pad_id_of(tokenizer), False)
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.no_grad():
                self.inputs["pair"] = self.site(ids)
            self.spans["pair"] = [slice(0, len(p.ids)) for p in paired]
            self.token_ids["pair"] = ids
            self.pair_inputs = {"input_ids": ids, "attention_mask": mask}

    def _embeddings(self, kind: str, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        """The pooled embeddings [M, H] of one kind's stacked input variants of ``rows``."""
        index = torch.as_tensor(list(rows), device=self.device)
        source = self.row_inputs if kind == "tokens" else self.pair_inputs
        extra = {name: value[index] for name, value in source.items()}
        with InputTap(self.model, {kind: self.site}) as tap:
            tap.replace = {kind: inputs[kind]}
            hidden = self.model(**extra, **self.shared).last_hidden_state
        pooled = self._pool(hidden, extra["attention_mask"])
        return unit(self.model, pooled) if self.normalized else pooled

    def _pool(self, hidden: Tensor, attended: Tensor) -> Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":  # the last token that isn't padding, whichever side pads
            last = attended.shape[1] - 1 - attended.flip(1).argmax(1)
            return hidden[torch.arange(len(hidden), device=hidden.device), last]
        mask = attended.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def _score(self, row: int, a: Tensor, b: Tensor | None) -> Tensor:
        target = self.targets[row]
        if isinstance(target, Direction):
            direction = torch.as_tensor(target.vector, dtype=a.dtype, device=a.device).reshape(-1)
            if direction.shape != a.shape:
                raise TargetError(f"A Direction must have the embedding's size {a.shape[-1]}, not {direction.numel()}.")
            return a @ direction
        return similarity(self.model, a, b, cosine=self.similarity == "cosine")

    def values(self, inputs: dict[str, Tensor], rows: Sequence[int]) -> Tensor:
        a = self._embeddings("tokens", inputs, rows)
        b = self._embeddings("pair", inputs, rows) if "pair" in self.inputs else [None] * len(rows)
        return torch.stack([self._score(r, a[m], b[m]) for m, r in enumerate(rows)])

    def evaluate(self, inputs: dict[str, Tensor]) -> Tensor:
        values = self.values(inputs, range(len(self)))
        check_finite(values.detach(), self)
        if self._outcomes is None:
            self._outcomes = [Outcome(self._label(t), float(v)) for t, v in zip(self.targets, values.detach())]
        return values

    def _label(self, target) -> str:
        return target.label if isinstance(target, Direction) else f"{self.similarity} similarity"


class SentenceSimilarity(Task):
    """The similarity of two texts (cosine or dot product of their pooled embeddings), with relevance on both, or
    one text's embedding projected onto a direction (``target=attnlrp.Direction(vector)``).

    inputs: a text or texts; ``pair``: the other text, or one per text. pooling: "mean", "cls" or "last" (default: the
    model's sentence-transformers config, else mean); similarity: "cosine" (default) or "dot". A model whose
    ``modules.json`` ends in ``Normalize`` gives unit embeddings: their dot product is their cosine. A text longer
    than the model's ``max_seq_length`` (``sentence_bert_config.json``) is cut to it, with a warning.
    """

    name = "sentence-similarity"
    description = "similarity of two texts' embeddings (bare encoders such as BERT/MiniLM sentence models)"
    options = ("pair", "pooling", "similarity")
    fields = ("pair",)

    def __init__(
        self, model: nn.Module, tokenizer, pair: Any = None, pooling: str | None = None, similarity: str = "cosine"
    ):
        super().__init__(model)
        pooling = pooling or pooling_of(model)
        if pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, not {pooling!r}.")
        if similarity not in SIMILARITIES:
            raise InputError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))}, not {similarity!r}.")
        self.tokenizer, self.pair, self.pooling, self.similarity = tokenizer, pair, pooling, similarity
        self.normalized = normalizes(model)
        self.limit = max_seq_length(model)
        self.lower = lowercases(model)

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        config = getattr(model, "config", None)
        return type(model).__name__.endswith("Model") and getattr(config, "model_type", None) in (
            MODEL_FOR_MASKED_LM_MAPPING_NAMES
        )

    def encode(self, inputs: Any) -> tuple[list[tuple[Item, Item | None]], bool]:
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InputError(f"Sentence similarity explains non-empty texts: pass a string or a list, not {inputs!r}.")
        pairs = one_per_item(self.pair, len(texts), "texts", "pairs") if self.pair is not None else [None] * len(texts)
        cut: list[int] = []
        items = [(self._item(t, cut), self._item(p, cut) if p is not None else None) for t, p in zip(texts, pairs)]
        if cut:
            limit, config = self.limit
            warnings.warn(
                f"{len(cut)} text(s) ran past the {limit} tokens the model embeds (max_seq_length in {config}): "
                f"{sum(cut)} token(s) were cut from their ends, as sentence-transformers cuts them, so the similarity "
                "explained is the one it computes; explain shorter pieces to cover the rest.",
                stacklevel=3,  # the caller of explain()
            )
        return items, single

    def _item(self, text: str, cut: list[int]) -> Item:
        """``text`` tokenized, cut to the model's ``max_seq_length`` as sentence-transformers cuts it (its special
        tokens kept at both ends) and lowercased first where it lowercases; the number of tokens cut off is added
        to ``cut``."""
        text = text.lower() if self.lower else text
        ids = list(self.tokenizer(text)["input_ids"])
        if self.limit is not None and len(ids) > self.limit[0]:
            kept = list(self.tokenizer(text, truncation=True, max_length=self.limit[0])["input_ids"])
            cut.append(len(ids) - len(kept))
            ids = kept
        check_length(self.model, self.tokenizer, len(ids))
        return Item(ids)

    def targets(self, target: Any, count: int) -> list[Any]:
        targets = one_per_item(target, count, "texts")
        for t in targets:
            if t is not None and not isinstance(t, Direction):
                raise TargetError(
                    f"A similarity is explained as it is (target=None) or projected onto a direction "
                    f"(target=attnlrp.Direction(vector)); {t!r} is neither."
                )
            if isinstance(t, Direction) and self.pair is not None:
                raise TargetError(
                    "A Direction explains one text's embedding, which the pair doesn't reach: leave out pair=, or "
                    "explain the similarity of the two (target=None)."
                )
            if t is None and self.pair is None:
                raise InputError("A similarity needs two texts: give pair=..., or target=attnlrp.Direction(vector).")
        return targets

    def lengths(self, items: Sequence[Any]) -> list[int]:
        return [len(a.ids) + (len(b.ids) if b is not None else 0) for a, b in items]

    def prepare(self, items: Sequence[tuple[Item, Item | None]], targets: Sequence[Any]) -> SimilarityBatch:
        return SimilarityBatch(
            self.model,
            self.tokenizer,
            [a for a, _ in items],
            [b for _, b in items],
            list(targets),
            self.pooling,
            self.similarity,
            self.normalized,
        )

    def results(self, batch: SimilarityBatch, relevance: dict, method: Method) -> list[Explanation]:
        out = []
        for row, (item, partner, outcome) in enumerate(zip(batch.items, batch.partners, batch.outcomes)):
            ids = item.ids + (partner.ids if partner is not None else [])
            scores = relevance["tokens"][row, batch.spans["tokens"][row]]
            segments = [("text", 0, len(item.ids))]
            if partner is not None:
                pair_scores = relevance["pair"][row, batch.spans["pair"][row]]
                scores = torch.cat([torch.as_tensor(scores), torch.as_tensor(pair_scores)])
                segments.append(("pair", len(item.ids), len(ids)))
            raw, display, special = display_tokens(self.tokenizer, ids)
            out.append(
                Explanation(
                    tokens=raw,
                    display=display,
                    scores=scores,
                    target=outcome.label,
                    value=outcome.value,
                    method=method.name,
                    model=model_name(self.model),
                    token_ids=ids,
                    special=special,
                    segments=segments,
                )
            )
        return out
