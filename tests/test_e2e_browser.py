"""End to end: `streamlit run` on 127.0.0.1, driven by Debian's Chromium through Playwright.

A person's path through the app: upload a chest image, see the probability and the heatmap, record a
review verdict, reload the browser, and find the verdict still there. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from app_fixtures import PROJECT_ROOT, chest_like_png, make_weights_dir, running_app
from browser_fixtures import UPLOAD_INPUT, browser_page, snapshot, upload
from conftest import real_data_dir

from covid_models import RESEARCH_USE_NOTICE
from covid_models.models.discovery import discover_models

pytestmark = [pytest.mark.browser, pytest.mark.slow]

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The shipped weights when an X-ray classifier is there, else small untrained fixture models."""
    shipped = PROJECT_ROOT / "weights"
    if discover_models(shipped, "classification", "xray"):
        return shipped
    return make_weights_dir(tmp_path_factory.mktemp("e2e"))


def chest_image() -> tuple[str, bytes]:
    """A real X-ray of the curated data when present, else a generated chest-like picture."""
    root = real_data_dir()
    if root is not None:
        path = sorted((root / "xray" / "images").glob("*.jpg"))[0]
        return path.name, path.read_bytes()
    return "generated-chest.png", chest_like_png(size=256)


def analyse(page, url: str, name: str, data: bytes) -> None:
    """Analyze page: the upload ends in a probability and a loaded heatmap, under the research-use notice."""
    page.goto(url)
    page.wait_for_selector(UPLOAD_INPUT, state="attached")
    upload(page, name, data)
    heatmap = page.get_by_test_id("stImage").filter(has_text="Grad-CAM").locator("img")
    heatmap.wait_for(state="visible")
    probability = page.get_by_test_id("stMetricValue").first.inner_text()
    assert re.fullmatch(r"\d{1,3}\.\d%", probability.strip())
    assert heatmap.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.get_by_test_id("stSidebar").get_by_text(RESEARCH_USE_NOTICE).is_visible()
    assert page.get_by_test_id("stMain").get_by_text(RESEARCH_USE_NOTICE).is_visible()
    snapshot(page, "e2e-1-analyze")


def review_and_reload(page, name: str, data: bytes) -> None:
    """Review page: a one-image session, an 'Agree' verdict, and the verdict still there after a reload."""
    page.get_by_role("link", name="Review session").click()
    page.get_by_test_id("stRadio").get_by_text("Register as a new reviewer", exact=True).click()  # a first visit
    page.get_by_label("Your name").fill("Dr E2E")
    page.get_by_role("textbox", name="Passphrase", exact=True).fill("e2e passphrase")
    page.get_by_role("textbox", name="Passphrase again").fill("e2e passphrase")
    page.get_by_role("button", name=re.compile("Register")).click()
    page.get_by_role("button", name=re.compile("Start session")).wait_for()
    assert page.get_by_test_id("stSidebar").get_by_text(RESEARCH_USE_NOTICE).is_visible()
    upload(page, name, data)
    page.get_by_text("1 image received").wait_for()
    page.get_by_role("button", name=re.compile("Start session")).click()
    page.get_by_text(f"Image 1 of 1: {name}").wait_for()
    page.get_by_role("button", name=re.compile(r"^Agree\b")).click()
    page.get_by_text("Your verdict:").wait_for()
    page.get_by_text("1 of 1 reviewed").wait_for()
    snapshot(page, "e2e-2-review")

    page.reload()  # a new browser session: the URL and the database remember the review, the reviewer signs in
    assert "session=" in page.url
    page.get_by_label("Your name").fill("Dr E2E")
    page.get_by_role("textbox", name="Passphrase", exact=True).fill("e2e passphrase")
    page.get_by_role("button", name=re.compile("Sign in")).click()
    page.get_by_text(f"Image 1 of 1: {name}").wait_for()
    page.get_by_text("Your verdict:").wait_for()  # raises when the verdict is not shown
    page.get_by_text("1 of 1 reviewed").wait_for()
    snapshot(page, "e2e-3-review-after-reload")


def test_upload_analyse_review_and_find_the_verdict_after_a_reload(browser, weights, tmp_path):
    name, data = chest_image()
    env = {"COVID_WEIGHTS_DIR": str(weights), "COVID_REVIEW_DB": str(tmp_path / "reviews.sqlite3")}
    with running_app(env) as (url, _process), browser_page(browser, "e2e", height=1800) as page:
        analyse(page, url, name, data)
        review_and_reload(page, name, data)


APP_PAGES = ["Analyze", "CT scan", "Review session", "Model performance", "Validate locally", "Dataset statistics",
             "About"]


@pytest.mark.parametrize("path", ["about", "dataset"])
def test_a_deep_link_as_the_first_request_opens_the_page_inside_the_app(browser, weights, tmp_path, path):
    """A bookmarked page on a freshly started server gets the app's navigation and notice, not a bare script."""
    env = {"COVID_WEIGHTS_DIR": str(weights), "COVID_REVIEW_DB": str(tmp_path / "reviews.sqlite3")}
    with running_app(env) as (url, _process), browser_page(browser, f"e2e-deep-link-{path}", height=1000) as page:
        page.goto(f"{url}/{path}")
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_text(RESEARCH_USE_NOTICE).wait_for()
        links = sidebar.get_by_test_id("stSidebarNavLink")
        assert [text.split("\n")[-1].strip() for text in links.all_inner_texts()] == APP_PAGES  # after the icon
        assert page.url.rstrip("/").endswith(f"/{path}")
        page.get_by_test_id("stMain").get_by_role("heading").first.wait_for()
        snapshot(page, f"e2e-deep-link-{path}")
