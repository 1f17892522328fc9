"""The report in a real browser (headless chromium): sections and condition labels visible, numbers
rounded, every image loaded; a screenshot is kept in the test's tmp folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import require, require_module
from tests.controller.test_report_pages import LONG_FLOAT, build_report

SECTIONS = ["Contents", "Ground truth", "System identification: s-sysid", "Causal test: maximizing images: s-max",
            "Timing"]
LABELS = ["held-out", "random normal", "gaudy", "active picks", "maximizing natural, n0",
          "maximizing synthesized, n1", "maximizing natural vs random normal"]


def _driver(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1200,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


def test_report_in_a_browser(tmp_path: Path) -> None:
    require(shutil.which("chromium") and shutil.which("chromedriver"), "chromium and chromedriver are not installed")
    require_module("selenium")
    require_module("matplotlib")
    from selenium.webdriver.common.by import By

    page, _, _ = build_report(tmp_path)
    driver = _driver(tmp_path / "chrome-profile")
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.resolve().as_uri())
        h2 = [e.text for e in driver.find_elements(By.TAG_NAME, "h2") if e.is_displayed()]
        assert all(s in h2 for s in SECTIONS), h2
        text = driver.find_element(By.TAG_NAME, "body").text
        for label in LABELS:
            assert label in text, label
        assert "active/active" not in text
        assert LONG_FLOAT.search(text) is None, LONG_FLOAT.findall(text)[:5]
        assert re.search(r"\+99%", text) and "[+61%, +141%]" in text
        # every contents link leads to a heading on the page
        for a in driver.find_elements(By.CSS_SELECTOR, "nav#contents a"):
            target = a.get_attribute("href").split("#", 1)[1]
            assert driver.find_elements(By.ID, target), target
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 8
        broken = [i.get_attribute("src") for i in images
                  if not driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)]
        assert not broken, broken
        height = int(driver.execute_script("return document.body.scrollHeight"))
        driver.set_window_size(1200, min(max(900, height), 16000))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
        print(f"\n  screenshot: {shot} ({height} px page)")
    finally:
        driver.quit()
