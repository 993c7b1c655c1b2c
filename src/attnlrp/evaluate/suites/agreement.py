"""Subject-verb agreement across an attractor: "The keys to the cabinet" -> " are" rather than " is".

The explained value is the correct verb's logit minus the wrong one's; the evidence is the subject noun,
whose number the attractor (a noun of the other number) contradicts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from .item import Item

#: singular/plural pairs
SUBJECTS = (
    "key/keys book/books dog/dogs teacher/teachers car/cars picture/pictures letter/letters "
    "student/students door/doors bottle/bottles song/songs chair/chairs window/windows doctor/doctors "
    "flower/flowers computer/computers house/houses lamp/lamps player/players box/boxes"
).split()
ATTRACTORS = (
    "cabinet/cabinets table/tables garden/gardens boy/boys girl/girls building/buildings "
    "kitchen/kitchens river/rivers office/offices street/streets village/villages farmer/farmers "
    "painting/paintings museum/museums city/cities"
).split()
PREPOSITIONS = ("near", "behind", "next to", "beside", "of", "for", "in front of", "from")
ADJECTIVES = ("", "old ", "new ", "small ", "big ", "red ", "quiet ", "famous ")


def candidates(seed: int = 0) -> Iterator[Item]:
    """An endless stream of prompts whose subject and attractor differ in number, half singular subjects."""
    rng = random.Random(seed)
    for n in range(10**9):
        plural = rng.random() < 0.5
        subject = rng.choice(SUBJECTS).split("/")[plural]
        attractor = rng.choice(ATTRACTORS).split("/")[not plural]
        prompt = f"The {subject} {rng.choice(PREPOSITIONS)} the {rng.choice(ADJECTIVES)}{attractor}"
        start = len("The ")
        verb, wrong = (" are", " is") if plural else (" is", " are")
        yield Item(
            f"agreement:{n}",
            prompt,
            verb,
            ((start, start + len(subject)),),
            against=wrong,
            top1=False,
            group="plural subject" if plural else "singular subject",
        )
