"""A real browser for page tests: Debian's Chromium driven headless by Playwright's Python API.

Playwright's own browser download cannot work here (no internet), so the executable is the system's:
``AVEC_CHROMIUM`` or the first of chromium / chromium-browser on PATH. Without one the browser tests
skip with the reason, unless ``AVEC_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs Chromium):
then they fail, so CI can never pass by skipping them. Screenshots go to ``AVEC_ARTIFACTS`` (default
``test-artifacts/`` in the working directory).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def chromium_path() -> str | None:
    return os.environ.get("AVEC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing(reason: str):
    if os.environ.get("AVEC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests are required here (AVEC_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(reason)


def artifacts_dir() -> Path:
    path = Path(os.environ.get("AVEC_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright; it is in avec's dev extra)")
    exe = chromium_path()
    if exe is None:
        _missing("no Chromium found: apt-get install chromium (Debian), or set AVEC_CHROMIUM to its path")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors, page errors and every requested URL."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    pg.errors, pg.requests = [], []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: pg.requests.append(r.url))
    try:
        yield pg
    finally:
        context.close()
