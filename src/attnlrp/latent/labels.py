"""Deterministic labels for units, from their top contexts by activation, with a purity score.

Two readings of the top-k contexts (activation maximisation):

- the dominant token: in each context, the token where the unit peaks; the label is the most frequent of these
  (case and surrounding spaces ignored), its purity the share of contexts that peak on it;
- the dominant topic, where the corpus is labelled: the most frequent topic among the contexts, its purity that
  share (``chance`` is the topic's share of the whole corpus, what purity would be at random).

The label is the reading with the higher purity (the topic on a tie). A ``labeller`` callable (an LLM, say)
takes the top contexts and returns a label, or a (label, score) pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Labeller = Callable[[list[dict[str, Any]]], "str | tuple[str, float]"]


@dataclass(frozen=True)
class Label:
    """A unit's label: its text, purity (share of top contexts that agree), kind ("topic", "token", "custom" or
    "none") and the purity expected by chance (topic labels)."""

    text: str
    purity: float | None
    kind: str
    chance: float | None = None


def _peak_token(context: dict[str, Any]) -> str:
    values = context["activations"]
    token = context["tokens"][max(range(len(values)), key=values.__getitem__)]
    return token.strip().lower() or token


def _dominant(values: Sequence[str]) -> tuple[str, float]:
    counts = Counter(values)
    best = max(counts.values())
    winner = min(v for v, c in counts.items() if c == best)  # ties: the first in sorted order, not arrival order
    return winner, best / len(values)


def label_of(contexts: list[dict[str, Any]], topics: dict[str, int], labeller: Labeller | None = None) -> Label:
    """The label of a unit whose top contexts by activation are ``contexts`` (``FeatureAtlas.top``); ``topics``
    counts the corpus's contexts per topic."""
    if labeller is not None:
        given = labeller(contexts)
        text, score = given if isinstance(given, tuple) else (given, None)
        return Label(str(text), None if score is None else float(score), "custom")
    if not contexts:
        return Label("(never seen)", None, "none")
    token, token_purity = _dominant([_peak_token(c) for c in contexts])
    labelled = [c["topic"] for c in contexts if c.get("topic") is not None]
    if len(labelled) == len(contexts) and topics:
        topic, topic_purity = _dominant(labelled)
        if topic_purity >= token_purity:
            return Label(f"topic: {topic}", topic_purity, "topic", topics.get(topic, 0) / sum(topics.values()))
    return Label(f"token '{token}'", token_purity, "token")
