"""Headless Chromium for tests that check a page in a real browser (Selenium + Debian's chromium).

``headless_chromium()`` is a context manager giving a Selenium Chrome webdriver for the
system's Chromium and chromedriver; the ``browser`` fixture of ``conftest.py`` wraps it.
Selenium Manager is never used (the driver path is always given), so nothing is downloaded.

When chromium, chromedriver or the selenium package is missing the test is skipped with
a message saying what is missing and how to install it, except when the environment
variable ``MMSAE_REQUIRE_BROWSER=1`` is set (CI, ``.ci/run``): then the test fails with that
message, so a browser test can never silently skip there.

``MMSAE_CHROMIUM`` / ``MMSAE_CHROMEDRIVER`` point at other binaries.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1280,900")


def _find(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    for name in names:
        hit = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if hit:
            return hit
    return None


def find_chromium() -> str | None:
    return _find("MMSAE_CHROMIUM", "chromium", "chromium-browser")


def find_chromedriver() -> str | None:
    return _find("MMSAE_CHROMEDRIVER", "chromedriver")


def missing_browser_parts() -> list[str]:
    """What a browser test lacks, each with how to install it; empty when all is there."""
    out = []
    if find_chromium() is None:
        out.append("the chromium browser (Debian: apt-get install chromium chromium-driver; or set MMSAE_CHROMIUM)")
    if find_chromedriver() is None:
        out.append("chromedriver (Debian: apt-get install chromium chromium-driver; or set MMSAE_CHROMEDRIVER)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        out.append("the selenium package (pip install selenium, or the project's test extra: pip install -e '.[test]')")
    return out


def require_browser() -> None:
    """Skip the test when a browser part is missing, or fail under ``MMSAE_REQUIRE_BROWSER=1``."""
    parts = missing_browser_parts()
    if not parts:
        return
    msg = "browser test needs " + "; ".join(parts)
    if os.environ.get("MMSAE_REQUIRE_BROWSER") == "1":
        pytest.fail(msg + " (MMSAE_REQUIRE_BROWSER=1 forbids skipping)", pytrace=False)
    pytest.skip(msg)


@contextmanager
def headless_chromium(page_load_timeout: float = 60.0):
    """A headless Chromium webdriver with a fresh profile folder, quit and removed on exit."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mmsae-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = find_chromium()
    for arg in (*CHROME_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(executable_path=find_chromedriver()), options=options)
        driver.set_page_load_timeout(page_load_timeout)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
