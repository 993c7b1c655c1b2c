"""Notebooks: any number of views on one page render and stay interactive on their own (headless Chromium), and a
real notebook executed by nbclient shows every output coloured."""

from __future__ import annotations

import re

import nbformat
import numpy as np
import pytest
from browsing import ARTEFACTS, errors
from nbclient import NotebookClient
from nbconvert import HTMLExporter

import attnlrp

pytestmark = pytest.mark.browser

TOKENS = ["The", " E", "iffel", " Tower", " is", " in"]


def _views():
    first = attnlrp.Explanation(
        tokens=TOKENS,
        display=TOKENS,
        scores=[0.1, 0.5, 2.0, 0.7, -0.2, 0.1],
        target=" Paris",
        value=3.0,
        method="attnlrp",
    )
    second = attnlrp.Explanation(
        tokens=TOKENS,
        display=TOKENS,
        scores=[-1.0, 0.1, 0.2, 0.9, 0.1, -0.3],
        target=" Rome",
        value=1.0,
        method="cp-lrp",
    )
    rng = np.random.default_rng(0)
    matrix = np.tril(rng.normal(size=(3, 9)), k=5).astype(np.float32)
    generation = attnlrp.GenerationExplanation(
        tokens=TOKENS + [" Paris", ".", " It"],
        display=TOKENS + [" Paris", ".", " It"],
        matrix=matrix,
        prompt_length=6,
        values=[1.0] * 3,
        method="attnlrp",
        model="synthetic",
    )
    return first, second, generation


def _colours(driver, view: int, selector: str = ".tok") -> list[str]:
    return driver.execute_script(
        "const v = document.querySelectorAll('.attnlrp-view')[arguments[0]];"
        "return [...v.querySelectorAll(arguments[1])].map(e => getComputedStyle(e).backgroundColor)",
        view,
        selector,
    )


def _coloured(colours: list[str]) -> bool:
    return any(c not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)") for c in colours)


def test_three_outputs_on_one_page_are_independent(browser, tmp_path):
    from selenium.webdriver.common.by import By

    fragments = [view._repr_html_() for view in _views()]
    assert all(not re.search(r"\sid=", f) for f in fragments), "no element ids"
    page = tmp_path / "notebook.html"
    page.write_text("<!DOCTYPE html><html><body>" + "".join(fragments) + "</body></html>", encoding="utf-8")
    browser.get(page.as_uri())
    assert errors(browser) == []
    views = browser.find_elements(By.CSS_SELECTOR, ".attnlrp-view")
    assert len(views) == 3
    before = [_colours(browser, i) for i in range(3)]
    assert all(_coloured(c) for c in before), "every heatmap is coloured, not just the first"
    names = browser.execute_script("return [...document.querySelectorAll('input[type=radio]')].map(r => r.name)")
    assert len(set(names)) == 6, "each view has its own two radio groups"
    checked = browser.execute_script("return [...document.querySelectorAll('input:checked')].map(r => r.value)")
    assert checked == ["token", "local"] * 3, "each view shows its initial state"

    views[2].find_elements(By.CSS_SELECTOR, ".gen")[1].click()  # the generation view: second generated token
    assert _colours(browser, 2) != before[2]
    assert [_colours(browser, i) for i in (0, 1)] == before[:2], "a click in one view changes no other"
    views[0].find_element(By.CSS_SELECTOR, "input[value=word]").click()
    assert len(views[0].find_elements(By.CSS_SELECTOR, ".tok")) == 5 and _colours(browser, 1) == before[1]
    assert len(views[1].find_elements(By.CSS_SELECTOR, ".tok")) == 6
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTEFACTS / "notebook_three_views.png"))


def test_a_real_notebook_executes_and_shows_every_output(browser, tmp_path):
    from selenium.webdriver.common.by import By

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import sys; sys.path.insert(0, 'tests')\nfrom test_notebooks import _views\n"
            "first, second, generation = _views()"
        ),
        nbformat.v4.new_code_cell("first"),
        nbformat.v4.new_code_cell("second"),
        nbformat.v4.new_code_cell("generation"),
    ]
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
    outputs = [cell.outputs for cell in notebook.cells[1:]]
    assert all(len(o) == 1 and "attnlrp-view" in o[0]["data"]["text/html"] for o in outputs)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    page = tmp_path / "executed.html"
    page.write_text(html, encoding="utf-8")
    browser.get(page.as_uri())
    views = browser.find_elements(By.CSS_SELECTOR, ".attnlrp-view")
    assert len(views) == 3 and all(_coloured(_colours(browser, i)) for i in range(3))
    browser.save_screenshot(str(ARTEFACTS / "notebook_executed.png"))
