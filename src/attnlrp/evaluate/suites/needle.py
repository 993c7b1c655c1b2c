"""Key-value retrieval in a haystack: "Olivia's secret word is lantern." hidden among filler sentences (and one
distracting pair), then "Olivia's secret word is" -> " lantern". The evidence is the needle's sentence."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from .item import Item

LENGTHS = (128, 256, 512, 1024, 2048)
#: The shortest context length asked for: the needle, the distractor and the question alone take about 25 tokens.
MIN_LENGTH = 32
NAMES = (
    "Olivia Liam Emma Noah Ava Elijah Sophia James Isabella Lucas Mia Mason Amelia Ethan Harper Logan Evelyn "
    "Oliver Abigail Jacob Emily Michael Ella Daniel Henry Sofia Jackson Avery Sebastian Scarlett Victoria "
    "Matthew Samuel Grace Joseph Chloe Owen Layla Riley Nora Luke Lily Hannah Isaac Gabriel Julian Stella "
    "Anthony Leah Lincoln Hazel Andrew Caleb Ryan Asher Claire Nathan Thomas Lucy Charles Anna"
).split()
WORDS = (
    "apple river candle garden mirror pencil rocket castle forest island ladder window button carpet dragon "
    "engine feather guitar hammer jacket lemon marble orange pepper rabbit tiger violin wallet anchor basket "
    "dolphin eagle harbor jungle lantern meadow parrot ribbon silver tunnel umbrella velvet bridge cherry "
    "desert fountain helmet jewel mango olive panda puzzle rainbow tomato volcano crystal blanket compass "
    "diamond elephant honey magnet pillow robot spider trumpet"
).split()
_NOUNS = "weather market village teacher river morning painter garden road station letter kitchen".split()
_ADJECTIVES = "quiet busy cold warm old new bright small large green".split()


def _filler(rng: random.Random) -> str:
    return (
        f"The {rng.choice(_NOUNS)} was {rng.choice(_ADJECTIVES)} and the {rng.choice(_NOUNS)} was "
        f"{rng.choice(_ADJECTIVES)}."
    )


def haystack(tokenizer, length: int, rng: random.Random) -> tuple[str, str, tuple[int, int]]:
    """A prompt of about ``length`` tokens, its answer, and the needle's character span."""
    (key, other), (value, decoy) = rng.sample(NAMES, 2), rng.sample(WORDS, 2)
    needle, distractor = f"{key}'s secret word is {value}.", f"{other}'s secret word is {decoy}."
    query = f"\n{key}'s secret word is"
    lines: list[str] = []
    size = len(tokenizer(f"{needle}\n{distractor}{query}").input_ids)
    while size < length:
        lines.append(_filler(rng))
        size += len(tokenizer("\n" + lines[-1]).input_ids)
    for line in (needle, distractor):
        lines.insert(rng.randrange(len(lines) + 1), line)
    text = "\n".join(lines)
    start = text.index(needle)
    return text + query, " " + value, (start, start + len(needle))


def candidates(seed: int = 0, tokenizer=None, lengths: Sequence[int] = LENGTHS) -> Iterator[Item]:
    """An endless stream of haystacks, cycling through the context lengths."""
    if tokenizer is None:
        raise ValueError("The needle suite sizes its haystacks in tokens, so it needs the tokenizer.")
    rng = random.Random(seed)
    for n in range(10**9):
        length = lengths[n % len(lengths)]
        prompt, answer, span = haystack(tokenizer, length, rng)
        yield Item(f"needle:{n}", prompt, answer, (span,), group=str(length))
