"""Audio results: a speech encoder-decoder's prediction (Whisper) explained over its audio frames and its
decoder's tokens together.

``AudioExplanation`` is an ``Explanation`` of the decoder's tokens with the audio beside them: ``frames`` holds
the relevance of each input frame (``frame_seconds`` apart; Whisper's log-mel frames are 10 ms), measured from
silence, and ``silence`` the relevance of silence itself (what the model gets from hearing a silent input; see
``attnlrp.tasks.seq2seq``); ``total`` counts all three. ``AudioGenerationExplanation`` does the same for every
generated token. Views show the audio up to ``duration`` (the audio before its padding, where known); the
padding's relevance stays in ``frames`` and ``total``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .explanation import Explanation, explanations_view
from .generation import GenerationExplanation


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


def _heard(frames: np.ndarray, frame_seconds: float, duration: float | None) -> np.ndarray:
    """The frames [..., F] that hold the audio itself (all of them where its duration is not known)."""
    if duration is None:
        return frames
    return frames[..., : max(1, min(frames.shape[-1], math.ceil(duration / frame_seconds - 1e-9)))]


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class AudioExplanation(Explanation):
    """Relevance of each audio frame (``frames``, measured from silence), of silence (``silence``) and of each
    decoder token (``tokens``, ``scores``) for one explained scalar of a speech encoder-decoder."""

    frames: np.ndarray = field(default_factory=_empty)
    silence: float = 0.0
    frame_seconds: float = 0.01
    duration: float | None = None

    kind = "audio"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.frames = np.asarray(self.frames, dtype=np.float32).reshape(-1)

    @property
    def total(self) -> float:
        """Σ relevance of the decoder's tokens, of every audio frame (the padding's too) and of silence."""
        return super().total + self.audio_total + self.silence

    @property
    def audio_total(self) -> float:
        """Σ relevance of the audio frames."""
        return float(self.frames.sum(dtype=np.float64))

    @property
    def heard(self) -> np.ndarray:
        """The relevance of the frames that hold the audio (without its padding, where its duration is known)."""
        return _heard(self.frames, self.frame_seconds, self.duration)

    def top_frames(self, k: int = 5) -> list[tuple[float, float, int]]:
        """The k most relevant frames of the audio as (start in seconds, relevance, frame index)."""
        order = np.argsort(-self.heard, kind="stable")[:k]
        return [(float(i * self.frame_seconds), float(self.heard[i]), int(i)) for i in order]

    def between(self, start: float, end: float) -> float:
        """Σ relevance of the frames that start in [start, end) seconds."""
        first, last = math.ceil(start / self.frame_seconds - 1e-9), math.ceil(end / self.frame_seconds - 1e-9)
        return float(self.frames[max(first, 0) : max(last, 0)].sum(dtype=np.float64))

    def normalized(self, by: str = "max") -> AudioExplanation:
        """Token scores and frames divided by the max |relevance| of either (``by="max"``) or by their Σ|R|
        (``by="sum"``)."""
        if by not in ("max", "sum"):
            raise ValueError(f"by must be 'max' or 'sum', not {by!r}.")
        every = np.abs(np.concatenate([self.scores, self.frames, [self.silence]]))
        scale = every.max(initial=0.0) if by == "max" else every.sum()
        if not scale > 0:
            return replace(self, scores=self.scores.copy(), frames=self.frames.copy())
        return replace(self, scores=self.scores / scale, frames=self.frames / scale, silence=self.silence / scale)

    def _seconds(self) -> float:
        return len(self.heard) * self.frame_seconds

    def show(self, color: bool | None = None, file=None) -> None:
        """Print the decoder's tokens as a heatmap, and the audio's relevance over time as a strip."""
        from ..render.audio import print_strip
        from ..render.terminal import print_heatmap

        title = f"{self.method} relevance for {self.target!r} (y = {self.value:.4g}, Σ relevance = {self.total:.4g})"
        print_heatmap(self.display, self.scores, title=title, color=color, file=file)
        heading = f"audio: Σ relevance = {self.audio_total:.4g} (silence: {self.silence:.4g})"
        print_strip(self.heard, self._seconds(), title=heading, color=color, file=file)

    def _meta(self) -> str:
        padding = self.audio_total - float(self.heard.sum(dtype=np.float64))
        return (
            f"model {self.model} · y = {self.value:.4g} · Σ relevance {self.total:.4g}: audio {self.audio_total:.4g} "
            f"(of which padding after the audio {padding:.4g}), silence {self.silence:.4g}, tokens {super().total:.4g}"
        )

    def html_view(self) -> str:
        """The audio's relevance over time (an inline PNG), then the view of the decoder's tokens."""
        from ..render.audio import audio_view, relevance_png

        png = relevance_png(self.heard, self.frame_seconds)
        return audio_view(png, self.title(), self._meta(), explanations_view([self]))

    def save_figure(self, path: str | Path, **options: Any) -> Path:
        """A PNG, SVG or PDF figure: the audio's relevance over time, the decoder's tokens below it."""
        from ..render.audio import audio_figure

        audio_figure(
            self.heard, self.frame_seconds, self.display, self.scores, path=path, title=self.title(), **options
        )
        return Path(path)

    def summary(self) -> str:
        when = ", ".join(f"{t:.2f} s: {s:+.3g}" for t, s, _ in self.top_frames(3))
        return f"{super().summary()}, audio Σ={self.audio_total:.4g}, top frames: {when}"


@dataclass(eq=False, repr=False)  # equality and repr come from Result
class AudioGenerationExplanation(GenerationExplanation):
    """A speech encoder-decoder's generation explained: ``matrix[i, j]`` is decoder token j's share in step i,
    ``frames[i, f]`` audio frame f's (measured from silence), ``silence[i]`` silence's."""

    frames: np.ndarray = field(default_factory=_empty)
    silence: list[float] = field(default_factory=list)
    frame_seconds: float = 0.01
    duration: float | None = None

    kind = "audio-generation"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.frames = np.asarray(self.frames, dtype=np.float32).reshape(len(self.values), -1)

    @property
    def heard(self) -> np.ndarray:
        """Each step's relevance of the frames that hold the audio [steps, frames]."""
        return _heard(self.frames, self.frame_seconds, self.duration)

    def step(self, i: int) -> AudioExplanation:
        """The explanation of generated token i over the audio and the decoder's tokens before it."""
        tokens = super().step(i)
        return AudioExplanation(
            **{f.name: getattr(tokens, f.name) for f in fields(Explanation)},
            frames=self.frames[i],
            silence=self.silence[i] if self.silence else 0.0,
            frame_seconds=self.frame_seconds,
            duration=self.duration,
        )

    def normalized(self, by: str = "max") -> AudioGenerationExplanation:
        """Each step's token scores and frames divided by their joint max |relevance| (or Σ|R| with ``by="sum"``)."""
        if by not in ("max", "sum"):
            raise ValueError(f"by must be 'max' or 'sum', not {by!r}.")
        silence = np.asarray(self.silence, dtype=np.float32).reshape(len(self), -1)
        every = np.abs(np.concatenate([self.matrix, self.frames, silence], axis=1))
        scale = every.max(axis=1, keepdims=True) if by == "max" else every.sum(1, keepdims=True)
        divide = lambda x: np.divide(x, scale, out=np.zeros_like(x), where=scale > 0)
        return replace(
            self, matrix=divide(self.matrix), frames=divide(self.frames), silence=divide(silence)[:, 0].tolist()
        )

    def show(self, color: bool | None = None, file=None) -> None:
        """Each generated token's explanation: the decoder's tokens, and the audio's relevance over time."""
        for i in range(len(self)):
            self.step(i).show(color=color, file=file)

    def html_view(self) -> str:
        """The audio's relevance over time for every generated token (an inline PNG), then the interactive view
        of the decoder's tokens."""
        from ..render.audio import alignment_figure, audio_view, png_of

        figure = alignment_figure(self.heard, self.frame_seconds, self.generated)
        meta = f"model {self.model} · {len(self)} generated tokens · {len(self.heard[0]) * self.frame_seconds:.2f} s"
        return audio_view(png_of(figure), self.title(), meta, super().html_view())

    def save_figure(self, path: str | Path) -> Path:
        """Generated tokens x time: each generated token's audio relevance (PNG, SVG or PDF)."""
        from ..render.audio import alignment_figure

        alignment_figure(
            self.heard, self.frame_seconds, self.generated, path=path, title=f"{self.method}: {self.model}"
        )
        return Path(path)

    def summary(self) -> str:
        return f"{super().summary()}, audio of {self.frames.shape[1]} frames"
