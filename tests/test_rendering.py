"""Rendering polish: lines break between words only (LaTeX and figures), no line starts with a token's space,
legend labels stay readable on saturated colours, contrast labels read naturally."""

from __future__ import annotations

import io
import re

import numpy as np

from attnlrp import Contrast
from attnlrp.render import figure, latex, palette
from attnlrp.render.terminal import print_heatmap

SENTENCE = [
    "Mount",
    " Ever",
    "est",
    "'s",
    " summit",
    " is",
    " 8",
    ",",
    "848",
    " m",
    " above",
    " sea",
    " level",
    " in",
    " 19",
    "53",
    ".",
]


def test_latex_breaks_only_between_words():
    source = latex.source(SENTENCE, np.linspace(-1, 1, len(SENTENCE)))
    body = source.split("\\noindent\n")[1].split("\\end{document}")[0]
    assert "allowbreak" not in body and "obeyspaces" not in source
    pieces = body.split("%\n")
    assert pieces[0].startswith("\\colorbox") and pieces[0].endswith("{\\strut{}Mount}"), (
        "the first word, no space before it"
    )
    glue = [i for i, piece in enumerate(pieces) if piece.startswith("\\hspace")]
    words = [re.findall(r"\\strut\{\}([^}]*)\}", "".join(pieces[a + 1 : b])) for a, b in zip(glue, [*glue[1:], None])]
    assert ["8", ",", "848"] in words and ["19", "53", "."] in words, "a number is one unbreakable word"
    assert all("\\strut{} " not in piece for piece in pieces), "spaces are glue (dropped at a break), not in a box"


def test_figure_wraps_words_whole_and_starts_lines_without_spaces():
    fig = figure.token_heatmap(SENTENCE * 3, np.ones(len(SENTENCE) * 3), width=3.0)
    texts = fig.axes[0].texts
    lines: dict[float, list[str]] = {}
    starts: dict[float, list[float]] = {}
    for text in texts:
        x, y = text.get_position()
        lines.setdefault(round(y, 3), []).append(text.get_text())
        starts.setdefault(round(y, 3), []).append(x)
    assert len(lines) > 3
    for parts in lines.values():
        assert not parts[0][:1].isspace(), f"a line starts with a space: {parts}"
        assert parts[0] not in ("est", "'s", ",", "848", "53"), f"a word was cut: {parts}"
    assert all(xs == sorted(xs) and xs[0] == 0 for xs in starts.values()), "each line runs left to right from 0"


def test_legend_labels_are_white_on_saturated_colours():
    assert [palette.ink(w) for w in (-1.0, -0.5, 0.0, 0.5, 1.0)] == ["white", "black", "black", "black", "white"]
    out = io.StringIO()
    print_heatmap(["a", "b"], [1.0, -1.0], color=True, file=out)
    legend = out.getvalue().splitlines()[-1]
    assert "\x1b[97" in legend or "\x1b[37" in legend or "38;2;255;255;255" in legend, repr(legend)


def test_contrast_labels_have_one_space(tokenizer):
    resolved = Contrast(" Paris", " Rome").resolve(tokenizer)
    assert resolved.label == " Paris vs Rome"
