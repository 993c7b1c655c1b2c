"""The feature-card pages and the units beside an explanation's heatmap, in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from browsing import ARTEFACTS, errors

import attnlrp
from attnlrp.latent import collect, labelled_corpus
from attnlrp.render.html import page, write

pytestmark = pytest.mark.browser

SITE = "model.layers.1.mlp.down_proj"


def _backgrounds(driver, selector: str) -> list[str]:
    return driver.execute_script(
        f"return [...document.querySelectorAll({selector!r})].map(e => getComputedStyle(e).backgroundColor)"
    )


@pytest.fixture(scope="module")
def atlas(tiny_lm, tokenizer):
    corpus = [{"text": r.text, "topic": r.topic} for r in labelled_corpus(per_topic=2)]
    return collect(tiny_lm, tokenizer, corpus, "model.layers.*.mlp.down_proj", top_k=4, batch_size=8, progress=False)


def test_atlas_page_searches_and_shows_cards(browser, atlas, tmp_path):
    from selenium.webdriver.common.by import By

    path = atlas.to_html(tmp_path / "atlas.html")
    browser.get(Path(path).as_uri())
    assert errors(browser) == []
    rows = browser.find_elements(By.CSS_SELECTOR, "table.units tr.unit")
    assert len(rows) == 256 and "256 of 256 units" in browser.find_element(By.CSS_SELECTOR, ".count").text
    search = browser.find_element(By.CSS_SELECTOR, "input.search")
    search.send_keys(f"{SITE}:17")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.units tr.unit")
    assert len(rows) == 1 and rows[0].text.startswith(SITE)
    rows[0].click()
    heading = browser.find_element(By.CSS_SELECTOR, ".card h2").text
    assert f"{SITE} : 17" in heading and atlas.label(SITE, 17).text in heading
    colours = _backgrounds(browser, ".card .ctx .tok")
    assert len(colours) > 10 and any(c != "rgb(255, 255, 255)" for c in colours)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card svg.hist rect")) > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card .outs span")) == 20  # promoted and suppressed
    search.clear()
    search.send_keys("topic:")
    labelled = browser.find_elements(By.CSS_SELECTOR, "table.units tr.unit")
    assert 0 < len(labelled) < 256 and all("topic:" in r.text for r in labelled)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTEFACTS / "latent_atlas.png"))
    assert errors(browser) == []


def test_two_cards_and_an_explanation_work_side_by_side_on_one_page(browser, atlas, tiny_lm, tokenizer, tmp_path):
    from selenium.webdriver.common.by import By

    first, second = atlas.card(SITE, 3), atlas.card(SITE, 4)
    exp = attnlrp.explain(tiny_lm, tokenizer, "The capital of France is", latent=SITE, atlas=atlas)
    fragment = first.html_view() + second.html_view() + exp.html_view()
    path = write(tmp_path / "both.html", page(fragment, "cards"))
    browser.get(path.as_uri())
    assert errors(browser) == []
    headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, ".card h2:first-child")]
    assert any(f"{SITE} : 3" in h for h in headings) and any(f"{SITE} : 4" in h for h in headings)
    conditional = browser.find_elements(By.CSS_SELECTOR, ".card .panel")
    assert any("through this unit only" in p.text for p in conditional)
    units = browser.find_element(By.CSS_SELECTOR, ".beside .units")
    rows = units.find_elements(By.CSS_SELECTOR, ".unitrow")
    assert len(rows) == 11 and rows[-1].text.startswith("other units")  # ten units and the rest
    first_unit = exp.units[0]["top"][0]
    assert rows[0].text.startswith(str(first_unit["unit"])) and first_unit["label"] in rows[0].text
    assert units.location["x"] > browser.find_element(By.CSS_SELECTOR, ".beside .text").location["x"]  # beside it
    browser.save_screenshot(str(ARTEFACTS / "latent_explanation_units.png"))
    assert errors(browser) == []
