"""A screenshot of the live dashboard during a small demo-like session (for the README).

Runs ``cortexloop run`` on embedded defaults (sysid shrunk; stimserver, virtual rig, modelserver,
embedded broker) with ``--dashboard 0``, opens the page in headless chromium, waits until a model
version and the next block's images are on it, writes a PNG screenshot, prints the bus-to-DOM update
latency the page measured, then aborts the session from the page's button.

    .venv/bin/python scripts/dashboard_screenshot.py docs/dashboard.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.dashboard.browser import chromium, latency, start_session, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("png", type=Path, help="where to write the screenshot")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for a model version")
    args = ap.parse_args()
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory(prefix="cortexloop-dashboard-") as tmp:
        session = start_session(Path(tmp) / "out", "demo")
        driver = None
        try:
            url = session.wait_for_url()
            print(f"dashboard at {url}")
            driver = chromium(Path(tmp) / "profile", 1400, 1500)
            driver.get(url)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline and session.proc.poll() is None:
                versions = driver.find_elements(By.CSS_SELECTOR, "#model-versions li")
                images = driver.find_elements(By.CSS_SELECTOR, "#images-current img")
                if len(versions) >= 2 and images and driver.find_element(By.ID, "state").text == "running":
                    break
                time.sleep(0.2)
            time.sleep(1.5)  # a few more trials into the heat map
            args.png.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.png))
            print(f"screenshot: {args.png}")
            print(summary(latency(driver)))
            driver.find_element(By.ID, "btn-abort").click()
            driver.switch_to.alert.accept()
            session.proc.wait(120)
        finally:
            if driver is not None:
                driver.quit()
            session.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
