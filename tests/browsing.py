"""Headless Chromium for the tests of HTML pages (Debian's chromium and chromedriver, which `make test` installs).

The ``browser`` fixture (conftest.py) starts one driver per test module; screenshots are kept as test artefacts in
out/screenshots/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ARTEFACTS = Path(__file__).resolve().parents[1] / "out" / "screenshots"


def start_browser():
    """A headless Chromium driven by Selenium, with no network and the browser log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "Chromium is missing: `make test` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def errors(driver) -> list[str]:
    """The severe messages in the browser's console since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
