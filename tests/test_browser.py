"""The HTML pages in a real browser (Debian's headless Chromium driven by Selenium; `make test` installs both).

Screenshots are kept as test artefacts in out/screenshots/."""

from __future__ import annotations

import numpy as np
import pytest
from browsing import ARTEFACTS, errors

import attnlrp

pytestmark = pytest.mark.browser


def _backgrounds(driver, selector: str) -> list[str]:
    return driver.execute_script(
        f"return [...document.querySelectorAll({selector!r})].map(e => getComputedStyle(e).backgroundColor)"
    )


@pytest.fixture(scope="module")
def generation():
    prompt = ["The", " capital", " of", " France", " is"]
    generated = [" Paris", ".", " It", " is", " big"]
    rng = np.random.default_rng(0)
    n, total = len(generated), len(prompt) + len(generated)
    matrix = np.zeros((n, total), dtype=np.float32)
    for i in range(n):
        matrix[i, : len(prompt) + i] = rng.normal(size=len(prompt) + i)
    tokens = prompt + generated
    return attnlrp.GenerationExplanation(
        tokens=tokens,
        display=tokens,
        matrix=matrix,
        prompt_length=len(prompt),
        values=[1.0] * n,
        method="attnlrp",
        model="synthetic",
    )


def test_generation_page_clicks_and_toggles(browser, generation, tmp_path):
    from selenium.webdriver.common.by import By

    page = generation.save_html(tmp_path / "generation.html")
    browser.get(page.as_uri())
    assert errors(browser) == []
    assert "network" not in page.read_text() and "http" not in page.read_text().split("<script>")[0]
    before = _backgrounds(browser, ".heat .tok")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTEFACTS / "generation_step0.png"))

    browser.find_elements(By.CSS_SELECTOR, ".heat .gen")[3].click()  # the 4th generated token
    after = _backgrounds(browser, ".heat .tok")
    selected = browser.find_element(By.CSS_SELECTOR, ".heat .gen.sel").text
    assert selected == " is" and after != before
    assert "generated token 3" in browser.find_element(By.CSS_SELECTOR, ".main h2").text
    browser.save_screenshot(str(ARTEFACTS / "generation_step3.png"))

    assert len(browser.find_elements(By.CSS_SELECTOR, "table.matrix tr")) == len(generation)
    browser.find_element(By.CSS_SELECTOR, "input[value=global]").click()
    assert _backgrounds(browser, ".heat .tok") != after  # normalised over all steps now
    assert errors(browser) == []


def test_explanation_set_side_by_side_and_word_view(browser, tmp_path):
    from selenium.webdriver.common.by import By

    tokens = ["The", " E", "iffel", " Tower", " is", " in"]
    first = attnlrp.Explanation(
        tokens=tokens,
        display=tokens,
        scores=[0.1, 0.5, 2.0, 0.7, -0.2, 0.1],
        target=" Paris",
        value=3.0,
        method="attnlrp",
    )
    second = attnlrp.Explanation(
        tokens=tokens,
        display=tokens,
        scores=[0.0, 0.1, 0.2, 0.9, 0.1, -0.3],
        target=" Paris",
        value=1.0,
        method="cp-lrp",
    )
    page = attnlrp.save_html(tmp_path / "set.html", first, second)
    browser.get(page.as_uri())
    assert errors(browser) == []
    panels = browser.find_elements(By.CSS_SELECTOR, ".main .panel")
    assert [p.find_element(By.TAG_NAME, "h2").text.split(" ")[0] for p in panels] == ["attnlrp", "cp-lrp"]
    assert len(panels[0].find_elements(By.CSS_SELECTOR, ".tok")) == 6
    browser.find_element(By.CSS_SELECTOR, "input[value=word]").click()
    words = browser.find_elements(By.CSS_SELECTOR, ".main .panel")[0].find_elements(By.CSS_SELECTOR, ".tok")
    assert [w.text for w in words] == ["The", " Eiffel", " Tower", " is", " in"]
    browser.save_screenshot(str(ARTEFACTS / "explanation_set_words.png"))
