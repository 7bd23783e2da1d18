"""
Headless Chromium for the page tests (Debian's chromium and
chromium-driver, driven by Selenium; nothing downloads a browser):
whether it is there, how a test starts one, and how it waits on a page.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By  # noqa: F401 (for the tests)
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or webdriver is None,
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them) and selenium",
)
WAIT = 60  # seconds any state may take to show in the browser (a hang guard)


def start_chromium(profile: Path, downloads: Path | None = None) -> Any:
    """
    A headless Chromium with its own profile; with C{downloads}, one
    that saves every download there without asking.
    """
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if downloads is not None:
        options.add_experimental_option("prefs", {
            "download.default_directory": str(downloads), "download.prompt_for_download": False,
        })
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    if downloads is not None:
        driver.set_script_timeout(30)
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def wait_until(driver: Any, condition: Any) -> None:
    WebDriverWait(driver, WAIT, poll_frequency=0.2).until(lambda d: condition(d))
