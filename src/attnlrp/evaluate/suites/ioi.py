"""Indirect-object identification: "When Mary and John went to the store, John gave a drink to" -> " Mary".

The explained value is the logit difference between the indirect object and the subject (the usual IOI
measure); the evidence is the indirect object's only mention.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from .item import Item

NAMES = (
    "Mary John Alice Bob Sarah James Emma Michael Anna David Laura Daniel Kate Peter Lisa Paul Rachel Mark Linda "
    "Tom Susan Steve Karen Chris Jessica Kevin Amy Brian Emily Jason"
).split()
PLACES = "store park school office beach restaurant library hospital station market garden museum".split()
OBJECTS = "drink book ring bag letter key gift ball pen flower snack card".split()
TEMPLATES = (
    "When {A} and {B} went to the {place}, {B} gave a {object} to",
    "After {A} and {B} arrived at the {place}, {B} handed a {object} to",
    "While {A} and {B} were working at the {place}, {B} passed a {object} to",
    "Then, {A} and {B} had a long day at the {place}. {B} gave a {object} to",
    "Yesterday {A} and {B} walked to the {place}, and {B} gave the {object} to",
    "At the {place}, {A} and {B} found a {object}. {B} gave it to",
)


def candidates(seed: int = 0) -> Iterator[Item]:
    """An endless stream of IOI prompts with random names, places, objects and name orders (ABB and BAB)."""
    rng = random.Random(seed)
    for n in range(10**9):
        template = rng.choice(TEMPLATES)
        io, subject = rng.sample(NAMES, 2)
        first, second = (io, subject) if rng.random() < 0.5 else (subject, io)
        marked = template.format(A="\0", B="\1", place=rng.choice(PLACES), object=rng.choice(OBJECTS))
        prompt = marked.replace("\0", first).replace("\1", second, 1).replace("\1", subject)
        mention = re.search(rf"\b{io}\b", prompt)  # the IO's only mention, among the first two names
        order = "ABB" if first == io else "BAB"
        yield Item(f"ioi:{n}", prompt, " " + io, (mention.span(),), against=" " + subject, group=order)
