"""The examples of the docs run: every ```python block of each page below, in order, in one namespace per page,
in a temporary folder (so files they write land there). A block right after ``<!-- not run -->`` is skipped
(it needs what this machine lacks, such as a GPU); each page says why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/tasks.md", "docs/latent.md"]
BLOCK = re.compile(r"(<!-- not run -->\s*)?```python\n(.*?)```", re.S)


def blocks(page: str) -> list[str]:
    return [code for skip, code in BLOCK.findall((ROOT / page).read_text(encoding="utf-8")) if not skip]


@pytest.mark.real
@pytest.mark.parametrize("page", PAGES)
def test_every_example_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = blocks(page)
    assert found, f"{page} has no python example"
    namespace: dict = {"__name__": "__docs__"}
    for n, code in enumerate(found, 1):
        try:
            exec(compile(code, f"{page} example {n}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page}, example {n} failed: {error!r}\n{code}") from error


@pytest.mark.parametrize("page", ["docs/reliability.md"])
def test_every_test_a_page_cites_exists(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    cited = re.findall(r"(tests/\w+\.py)::(\w+)", text)
    cited += [(path, name) for path, names in re.findall(r"(tests/\w+\.py)::\w+`, `::(\w+)", text) for name in [names]]
    assert len(cited) > 30
    for path, name in cited:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.M), f"{path}::{name}"
