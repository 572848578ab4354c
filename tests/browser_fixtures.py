"""What the Chromium tests share: the browser, a page that leaves a screenshot when a step fails, the uploader.

Playwright never downloads a browser here: it launches Debian's /usr/bin/chromium (apt-get install chromium).
Screenshots go to test-artifacts/ (the screens the tests reach, and `<name>-failure.png` when one fails).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from app_fixtures import CHROMIUM, CHROMIUM_ARGS, PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
UPLOAD_INPUT = '[data-testid="stFileUploaderDropzoneInput"]'
TIMEOUT_MS = 120_000  # per step; generous because CI machines may be shared with training jobs
# the app has finished its run: what a person waits for before typing into a box the run may still redraw
SETTLED = "() => !/Running|Stop/.test(document.querySelector('[data-testid=\"stStatusWidget\"]')?.textContent || '')"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module; a clear skip (or failure, with REQUIRE_BROWSER=1) without it."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"required (REQUIRE_BROWSER=1): {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def browser_page(browser, name: str, *, height: int = 1600, timeout_ms: int = TIMEOUT_MS) -> Iterator:
    """A new page; on any failure inside the block `test-artifacts/<name>-failure.png` shows where it stopped."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(timeout_ms)
    try:
        yield page
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"), full_page=True)
        raise
    finally:
        page.close()


def snapshot(page, name: str) -> None:
    """The whole page as `test-artifacts/<name>.png`: the screens a person reviews."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def upload(page, name: str, data: bytes) -> None:
    page.set_input_files(UPLOAD_INPUT, files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])
