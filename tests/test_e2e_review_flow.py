"""Review sessions in real Chromium: a blinded reading reveals the model's reading on the same image, with no file
name shown; a whole CT scan is read in the CT scan page's viewer (slice scrubber, window presets, masks).
Screenshots go to test-artifacts/ (review-blinded-before, review-blinded-reveal, review-ct-scan-item)."""
from __future__ import annotations

import re

import pytest
from app_fixtures import chest_like_png, make_weights_dir, running_app, with_ct_reading, with_lung_window
from browser_fixtures import SETTLED, UPLOAD_INPUT, browser_page, snapshot
from scan_phantoms import ADULT_SPACING, adult_phantom, dicom_series, zipped
from test_e2e_review import ADA, ADA_PASSPHRASE, sign_in

from covid_models.reviews.store import ReviewStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]
# the script run is over: Streamlit's status widget shows neither "Running" nor its "Stop" button


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-review-flow")
    weights = make_weights_dir(root)
    for name in ("ct-fixture", "ct-infection-fixture"):  # the scan pipeline reads HU
        with_lung_window(weights / name)
    with_ct_reading(weights / "ct-infection-fixture")  # a pattern reading, so the scan item is not held back
    env = {"COVID_WEIGHTS_DIR": str(weights), "COVID_REVIEW_DB": str(root / "reviews.sqlite3")}
    with ReviewStore(f"sqlite:///{root / 'reviews.sqlite3'}") as store:
        store.register(ADA, ADA_PASSPHRASE)
    with running_app(env) as (url, _process):
        yield url


def _heading(page, text: str):
    return page.get_by_role("heading", name=re.compile(f"^{re.escape(text)}$"))


def test_a_blinded_reading_reveals_the_models_reading_on_the_same_image_without_file_names(browser, app):
    files = [("covid-17.png", chest_like_png(128, seed=61)), ("normal-4.png", chest_like_png(128, seed=62))]
    with browser_page(browser, "review-blinded") as page:
        sign_in(page, f"{app}/review", ADA, ADA_PASSPHRASE)
        page.set_input_files(UPLOAD_INPUT, files=[{"name": n, "mimeType": "image/png", "buffer": d} for n, d in files])
        page.get_by_text("2 images received").wait_for()
        page.get_by_text("Blinded reading").click()
        page.get_by_role("button", name=re.compile("Start session")).click()
        _heading(page, "Image 1 of 2").wait_for()
        page.get_by_text("Keys: 1-9 your reading").wait_for()
        page.wait_for_function(SETTLED, polling=200)
        main = page.get_by_test_id("stMain")
        assert "covid-17" not in main.inner_text() and "normal-4" not in main.inner_text()
        assert "A agree" not in main.inner_text()
        snapshot(page, "review-blinded-before")

        page.get_by_role("button", name="My reading: normal").click()
        page.get_by_text("Model reading:").wait_for()
        _heading(page, "Image 1 of 2").wait_for()
        page.get_by_text("The model's reading is now shown").wait_for()
        page.get_by_text("Keys: A agree").wait_for()
        page.wait_for_function(SETTLED, polling=200)
        page.get_by_test_id("stImage").locator("img").first.evaluate("img => img.decode()")
        text = main.inner_text()
        assert "covid-17" not in text and "A agree" in text and "your reading ·" not in text
        snapshot(page, "review-blinded-reveal")

        page.get_by_role("button", name=re.compile(r"^Agree")).click()
        _heading(page, "Image 2 of 2").wait_for()


def test_a_ct_scan_item_is_scrubbed_and_windowed_in_the_scan_viewer(browser, app):
    archive = zipped(dicom_series(adult_phantom(), ADULT_SPACING))  # lungs enough for a reading and a burden
    with browser_page(browser, "review-ct-scan", height=2200) as page:
        sign_in(page, f"{app}/review", ADA, ADA_PASSPHRASE)
        page.get_by_test_id("stMain").get_by_text("Chest CT", exact=True).click()
        page.get_by_text("Whole CT scans, one item each").wait_for()
        page.locator(UPLOAD_INPUT).nth(1).set_input_files(
            files=[{"name": "phantom.zip", "mimeType": "application/zip", "buffer": archive}])
        page.get_by_text("1 scan file received").wait_for()
        page.get_by_role("button", name=re.compile("Start session")).click()
        _heading(page, "CT scan 1 of 1: phantom.zip").wait_for()
        caption = page.get_by_test_id("stImageCaption").filter(has_text="Axial slice")
        caption.first.wait_for()
        before = caption.first.inner_text()
        page.get_by_role("slider", name="Slice (head to feet)").focus()
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("(before) => [...document.querySelectorAll('[data-testid=\"stImageCaption\"]')]"
                               ".some(c => c.textContent.startsWith('Axial slice') && c.textContent !== before)",
                               arg=before)
        page.get_by_test_id("stMain").get_by_text("Mediastinum", exact=True).click()
        page.get_by_text("Infection burden", exact=True).wait_for()
        page.wait_for_timeout(500)  # the window's rerun has begun
        page.wait_for_function(SETTLED, polling=200)
        page.get_by_test_id("stImage").locator("img").first.evaluate("img => img.decode()")
        value = page.get_by_test_id("stMetric").filter(has_text="Quantitative CT reading").get_by_test_id(
            "stMetricValue")
        assert re.fullmatch(r"(Not s|S)uggestive", value.inner_text().strip())
        cut_off = "v => [v, ...v.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1)"
        assert not value.evaluate(cut_off)  # the reading is shown whole, not ellipsised in the narrow column
        for verdict in ("Agree", "Disagree", "Unsure", "Non-diagnostic"):  # and so are the verdict buttons
            assert not page.get_by_role("button", name=re.compile(f"^{verdict}")).evaluate(cut_off), verdict
        snapshot(page, "review-ct-scan-item")
