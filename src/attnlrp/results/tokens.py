"""Tokens as people read them: SentencePiece ``▁``, byte-BPE ``Ġ``/``Ċ``, WordPiece ``##``, byte fallback."""

from __future__ import annotations

import codecs
import itertools
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_JOINER = "\u200d"  # zero-width joiner: one emoji of several


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


def _bytes_of(token: str, scheme: str) -> bytes | None:
    """The raw bytes a token stands for (a byte-level BPE token, a ``<0xE6>`` byte fallback), None for text."""
    match = _BYTE_FALLBACK.match(token)
    if match is not None:
        return bytes([int(match.group(1), 16)])
    table = _byte_decoder()
    if scheme == "bytelevel" and all(ch in table for ch in token):
        return bytes(table[ch] for ch in token)
    return None


def _text_of(token: str, scheme: str, first: bool) -> str:
    if scheme == "sentencepiece":
        return token.replace("▁", " ")
    if scheme == "wordpiece":
        return token[2:] if token.startswith("##") else (token if first else " " + token)
    return token


def clean_tokens(tokens: list[str], special: frozenset[str] = frozenset(), scheme: str | None = None) -> list[str]:
    """Display strings for raw tokens: leading spaces and newlines restored, markers removed.

    Bytes (byte-level BPE, SentencePiece's byte fallback) are decoded across tokens: a character whose bytes
    several tokens carry (an emoji, most CJK characters) is shown by the token that holds its first byte, and the
    tokens after it that hold only the rest of it show nothing, so that the display strings join into the text.
    """
    scheme = scheme or scheme_of(tokens)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    shown: list[str] = []
    owner = None  # the token holding the first byte of a character not finished yet

    def flush() -> None:
        nonlocal owner
        rest = decoder.decode(b"", final=True)  # an unfinished character: "\ufffd"
        if rest and owner is not None:
            shown[owner] += rest
        owner = None

    for i, token in enumerate(tokens):
        data = None if token in special else _bytes_of(token, scheme)
        if data is None:
            flush()
            shown.append(token if token in special else _text_of(token, scheme, first=i == 0))
            continue
        shown.append("")
        for byte in data:
            owner = i if owner is None else owner
            text = decoder.decode(bytes([byte]))
            if text:  # a finished character; after an unfinished one's mark, this byte's own character
                shown[owner] += text[0]
                shown[i] += text[1:]
                owner = i if decoder.getstate()[0] else None
    flush()
    return shown


def _is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and not any(ch.isalnum() or unicodedata.category(ch)[0] == "M" for ch in stripped)


def word_starts(display: list[str], special: list[bool]) -> list[bool]:
    """Where a new word begins: at or after whitespace, punctuation and special tokens."""
    starts, previous = [], ""
    for i, text in enumerate(display):
        if i == 0:
            starts.append(True)
            previous = text
            continue
        joined = not text or unicodedata.category(text[0])[0] == "M" or text[0] == _JOINER or previous[-1:] == _JOINER
        if joined and not (special[i] or special[i - 1]):
            starts.append(False)  # the rest of a character, a mark or a variation selector, a joined emoji
            previous = text or previous
            continue
        starts.append(
            special[i]
            or special[i - 1]
            or text[:1].isspace()
            or previous[-1:].isspace()
            or not text.strip()
            or _is_punctuation(text)
            or _is_punctuation(previous)
        )
        previous = text or previous
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
