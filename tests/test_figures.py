"""Static figures (matplotlib, no LaTeX) and the LaTeX backend (compiled with the TeX Live `make test` installs)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import attnlrp
from attnlrp.render import figure, latex

TOKENS = ["The", " E", "iffel", " Tower", " is", "\n", " in", " café", " 日本", " a_b", " {x}", " $5"]
SCORES = np.array([0.1, 0.5, 2.0, 0.7, -0.2, 0.0, 0.1, -1.0, 0.3, 0.05, -0.4, 0.2], dtype=np.float32)


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_token_heatmap_formats(tmp_path, suffix, magic):
    exp = attnlrp.Explanation(
        tokens=TOKENS, display=TOKENS, scores=SCORES, target=" Paris", value=3.0, method="attnlrp"
    )
    path = exp.save_figure(tmp_path / f"heat{suffix}")
    assert path.read_bytes().startswith(magic)
    if suffix == ".svg":  # text stays text (selectable, searchable), not paths
        assert "iffel" in path.read_text() and "Tower" in path.read_text()


def test_a_figure_file_name_must_say_its_format(tmp_path):
    # matplotlib wrote heat.png for "heat", and save_figure returned "heat", a file that does not exist
    exp = attnlrp.Explanation(tokens=TOKENS, display=TOKENS, scores=SCORES, target=" Paris", value=3.0, method="x")
    for name in ("heat", "heat.doc"):
        with pytest.raises(attnlrp.InputError, match=rf"'{name}' ends in none of png, svg, pdf, .* \(heat.png, say\)"):
            exp.save_figure(tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    assert exp.save_figure(tmp_path / "heat.jpg").read_bytes()[:2] == b"\xff\xd8"  # the other formats it writes


def test_token_heatmap_wraps_like_text():
    short = figure.token_heatmap(TOKENS, SCORES, width=6.0)
    long = figure.token_heatmap(TOKENS * 12, np.tile(SCORES, 12), width=6.0)
    assert short.get_figwidth() == long.get_figwidth() == 6.0
    assert long.get_figheight() > short.get_figheight() * 2  # more lines, same width


def test_colours_are_symmetric_and_signed():
    fig = figure.token_heatmap(["a", "b", "c"], [1.0, -1.0, 0.0])
    boxes = [p.get_facecolor()[:3] for p in fig.axes[0].patches]
    assert boxes[0][0] > boxes[0][2] and boxes[1][2] > boxes[1][0]  # red for +, blue for -
    assert np.allclose(boxes[2], (1, 1, 1), atol=0.01)  # white for 0
    assert np.allclose(boxes[0], np.array((220, 50, 47)) / 255, atol=0.01)  # |score| = max: the full colour


def test_generation_matrix(tmp_path):
    matrix = np.tril(np.random.default_rng(0).normal(size=(3, 6)), k=2).astype(np.float32)
    gen = attnlrp.GenerationExplanation(
        tokens=list("abcdef"),
        display=list("abcdef"),
        matrix=matrix,
        prompt_length=3,
        values=[1.0, 1.0, 1.0],
        method="attnlrp",
    )
    assert gen.save_figure(tmp_path / "matrix.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "raw, escaped",
    [
        ("\\", r"\textbackslash{}"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("$", r"\$"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("^", r"\textasciicircum{}"),
        ("~", r"\textasciitilde{}"),
        ("<", r"\textless{}"),
        (">", r"\textgreater{}"),
        ("|", r"\textbar{}"),
        ('"', r"\textquotedbl{}"),
    ],
)
def test_latex_escapes_every_special_character(raw, escaped):
    assert latex.escape(f"a{raw}b") == f"a{escaped}b"


def test_latex_unicode():
    assert latex.escape("café 日本", unicode=True) == "café 日本"
    assert latex.escape("café 日本", unicode=False) == "café \\texttt{U+65E5}\\texttt{U+672C}"
    assert latex.escape("a\x01b") == "a\\texttt{\\textbackslash x01}b"


def test_latex_source_has_one_box_per_token_piece():
    source = latex.source(TOKENS, SCORES, backend="xelatex")
    assert source.count("\\colorbox") == len(TOKENS) - 1  # the bare newline token is a line break, no box
    assert "\\newline" in source and "fontspec" in source
    assert "\\colorbox[RGB]{220,50,47}{\\strut{}iffel}" in source  # the maximum is full red
    assert "inputenc" in latex.source(TOKENS, SCORES, backend="pdflatex")


@pytest.mark.tex
@pytest.mark.parametrize("backend", ["xelatex", "pdflatex"])
def test_latex_compiles(tmp_path, backend):
    assert shutil.which(backend), f"{backend} is missing: `make test` installs TeX Live (texlive-xetex)"
    path = latex.pdf_heatmap(TOKENS, SCORES, tmp_path / "heat.pdf", backend=backend)
    assert path.read_bytes().startswith(b"%PDF") and (tmp_path / "heat.tex").exists()


@pytest.mark.tex
def test_characters_the_pdf_font_lacks_are_named_not_dropped_silently(tmp_path):
    with pytest.warns(UserWarning, match=r"the PDF's font has no .*東.*edit the \.tex"):
        latex.pdf_heatmap(["▁東京", "▁is", "▁big"], np.array([0.5, -0.2, 0.1]), tmp_path / "cjk.pdf", backend="xelatex")


def test_pdf_heatmap_falls_back_to_matplotlib_without_tex(tmp_path, monkeypatch):
    monkeypatch.setattr(latex.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="not installed; drawing"):
        path = latex.pdf_heatmap(TOKENS, SCORES, tmp_path / "heat.pdf", backend="xelatex")
    assert path.read_bytes().startswith(b"%PDF") and (tmp_path / "heat.tex").exists()
    with pytest.raises(ValueError, match="backend must be"):
        latex.pdf_heatmap(TOKENS, SCORES, tmp_path / "x.pdf", backend="lualatex")
