"""Tokens as people read them: SentencePiece ``▁``, byte-BPE ``Ġ``/``Ċ``, WordPiece ``##``, byte fallback."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-unicode table (printable stand-ins for raw bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def scheme_of(tokens: list[str]) -> str:
    """Guess the tokenizer family from its raw tokens: 'bytelevel', 'sentencepiece', 'wordpiece' or 'plain'."""
    joined = "".join(tokens)
    if "▁" in joined:
        return "sentencepiece"
    if any(t.startswith("##") or t in ("[CLS]", "[SEP]", "[MASK]") for t in tokens):
        return "wordpiece"
    if "Ġ" in joined or "Ċ" in joined or "ĉ" in joined:
        return "bytelevel"
    return "plain"


def _from_bytelevel(token: str) -> str:
    table = _byte_decoder()
    if not all(ch in table for ch in token):
        return token
    raw = bytes(table[ch] for ch in token)
    text = raw.decode("utf-8", errors="ignore")
    return text if text or not raw else "".join(f"\\x{b:02x}" for b in raw)


def _byte_fallback(token: str) -> str | None:
    match = _BYTE_FALLBACK.match(token)
    if match is None:
        return None
    value = int(match.group(1), 16)
    return chr(value) if value < 0x80 else f"\\x{value:02x}"


def clean_tokens(tokens: list[str], special: frozenset[str] = frozenset(), scheme: str | None = None) -> list[str]:
    """Display strings for raw tokens: leading spaces and newlines restored, markers removed."""
    scheme = scheme or scheme_of(tokens)
    shown = []
    for i, token in enumerate(tokens):
        if token in special:
            shown.append(token)
            continue
        fallback = _byte_fallback(token)
        if fallback is not None:
            shown.append(fallback)
        elif scheme == "sentencepiece":
            shown.append(token.replace("▁", " "))
        elif scheme == "bytelevel":
            shown.append(_from_bytelevel(token))
        elif scheme == "wordpiece":
            shown.append(token[2:] if token.startswith("##") else (token if i == 0 else " " + token))
        else:
            shown.append(token)
    return shown


def _is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and not any(ch.isalnum() for ch in stripped)


def word_starts(display: list[str], special: list[bool]) -> list[bool]:
    """Where a new word begins: at or after whitespace, punctuation and special tokens."""
    starts = []
    for i, text in enumerate(display):
        if i == 0:
            starts.append(True)
            continue
        previous = display[i - 1]
        starts.append(
            special[i]
            or special[i - 1]
            or text[:1].isspace()
            or previous[-1:].isspace()
            or not text.strip()
            or _is_punctuation(text)
            or _is_punctuation(previous)
        )
    return starts


def group_words(
    display: list[str], special: list[bool], values: np.ndarray, breaks: Iterable[int] = ()
) -> tuple[list[str], list[bool], np.ndarray, list[int]]:
    """Merge tokens into words; values [..., T] are summed per word. A word also starts at each position of
    ``breaks`` (where a segment or the answer starts). Also returns each word's first token."""
    starts = word_starts(display, special)
    for b in breaks:
        if 0 <= b < len(display):
            starts[b] = True
    firsts = [i for i, s in enumerate(starts) if s]
    bounds = firsts + [len(display)]
    words = ["".join(display[a:b]) for a, b in itertools.pairwise(bounds)]
    is_special = [special[a] for a in firsts]
    summed = np.add.reduceat(values, firsts, axis=-1) if len(display) else values
    return words, is_special, summed.astype(np.float32), firsts
