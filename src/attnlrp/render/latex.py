"""The LaTeX backend: a .tex token heatmap, compiled with xelatex or pdflatex where installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .palette import rgb, token_scores
from .palette import scale as color_scale

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "%": r"\%",
    "_": r"\_",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    '"': r"\textquotedbl{}",
    "\t": r"\quad{}",
}


def escape(text: str, unicode: bool = True) -> str:
    """Escape every LaTeX special character; without ``unicode`` (pdflatex) non-Latin-1 becomes U+XXXX."""
    out = []
    for ch in text:
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif ord(ch) < 32:
            out.append(f"\\texttt{{\\textbackslash x{ord(ch):02x}}}")
        elif ord(ch) > 255 and not unicode:
            out.append(f"\\texttt{{U+{ord(ch):04X}}}")
        else:
            out.append(ch)
    return "".join(out)


#: The space between words: glue, so that a line may break there and drops it at the break.
_SPACE = "\\hspace{0.33em plus 0.1em minus 0.05em}"


def _colours(cmap: str | None) -> Callable[[float], tuple[int, ...]]:
    """The colour of a weight in [-1, 1]: attnlrp's palette, or a matplotlib colormap's (``"bwr"``, as LXT)."""
    if cmap is None:
        return rgb
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"Unknown colormap {cmap!r}: give a matplotlib colormap name, e.g. 'bwr'.") from None
    return lambda weight: tuple(round(255 * c) for c in colormap((min(max(weight, -1.0), 1.0) + 1) / 2)[:3])


def source(tokens: Sequence[str], scores: Sequence[float], backend: str = "xelatex", cmap: str | None = None) -> str:
    """The complete .tex document of a token heatmap (``cmap``: a matplotlib colormap instead of the palette).

    Lines break only between words, at the spaces that tokens carry: a number or a word made of several tokens
    stays on one line, and no line starts with a token's leading space (the space is glue, dropped at a break).
    """
    colour = _colours(cmap)

    def _box(weight: float, text: str) -> str:
        return f"\\colorbox[RGB]{{{','.join(map(str, colour(weight)))}}}{{\\strut{{}}{text}}}"

    scores = token_scores(tokens, scores)
    scale = color_scale(scores)
    unicode = backend == "xelatex"
    body = []
    for token, score in zip(tokens, scores):
        weight = score / scale
        for k, part in enumerate(token.split("\n")):
            if k:
                body.append("\\newline\n")
            core = part.strip()
            if not part:
                continue
            if not core:  # a token of spaces only: a coloured gap
                body.append(_box(weight, "\\hspace{0.33em}"))
                continue
            if part[0].isspace():
                body.append(_SPACE)
            body.append(_box(weight, escape(core, unicode)))
            if part[-1].isspace():
                body.append(_SPACE)
    preamble = "\\usepackage{fontspec}\n" if unicode else "\\usepackage[utf8]{inputenc}\n\\usepackage[T1]{fontenc}\n"
    return (
        "\\documentclass[varwidth=150mm,border=2mm]{standalone}\n"
        + preamble
        + "\\usepackage[dvipsnames]{xcolor}\n\\setlength{\\fboxsep}{0pt}\n\\begin{document}\n"
        "\\raggedright\\noindent\n" + "%\n".join(body) + "\n\\end{document}\n"
    )


def pdf_heatmap(
    tokens: Sequence[str],
    scores: Sequence[float],
    path: str | Path = "heatmap.pdf",
    backend: str = "xelatex",
    cmap: str | None = None,
    delete_aux_files: bool = False,
) -> Path:
    """Write a PDF heatmap. ``backend``: "xelatex" or "pdflatex" (the .tex is written beside the PDF, and removed
    after compiling with ``delete_aux_files``), or "matplotlib". Where the LaTeX engine is not installed,
    matplotlib draws the PDF instead (with a warning). ``cmap``: a matplotlib colormap for the LaTeX backends
    (default: attnlrp's red-blue palette)."""
    path = Path(path)
    if backend not in ("xelatex", "pdflatex", "matplotlib"):
        raise ValueError(f"backend must be 'xelatex', 'pdflatex' or 'matplotlib', not {backend!r}.")
    if backend != "matplotlib":
        tex = path.with_suffix(".tex")
        tex.write_text(source(tokens, scores, backend, cmap), encoding="utf-8")
        engine = shutil.which(backend)
        if engine is not None:
            _compile(engine, tex, path)
            if delete_aux_files:
                tex.unlink()
            return path
        warnings.warn(
            f"{backend} is not installed; drawing {path} with matplotlib instead ({tex} was written). "
            "Install TeX Live (Debian: texlive-xetex texlive-latex-extra) to compile it.",
            stacklevel=2,
        )
    from .figure import token_heatmap

    token_heatmap(tokens, scores, path=path)
    return path


def _compile(engine: str, tex: Path, pdf: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run(
            [engine, "-interaction=nonstopmode", "-halt-on-error", f"-output-directory={work}", str(tex)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        produced = Path(work) / (tex.stem + ".pdf")
        if done.returncode != 0 or not produced.exists():
            log = "\n".join(done.stdout.splitlines()[-15:])
            raise RuntimeError(f"{Path(engine).name} failed on {tex}:\n{log}")
        missing = sorted(set(re.findall(r"Missing character: There is no (\S+)", done.stdout)))
        if missing:
            warnings.warn(
                f"{pdf}: the PDF's font has no {' '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}, so those "
                "boxes have no text: edit the .tex (written beside it) to load a font that has them, e.g. "
                "\\setmainfont{Noto Sans CJK SC}, and compile it again.",
                stacklevel=3,
            )
        shutil.copyfile(produced, pdf)
