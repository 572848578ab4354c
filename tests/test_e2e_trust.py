"""The trust screens in real Chromium, with the shipped models: a photograph refused, the modality question
for a CT slice given as an X-ray, the CT result with its colour scale, and the performance headline with its
within-source AUC. Screenshots go to test-artifacts/e2e-trust-*.png."""
from __future__ import annotations

import io

import numpy as np
import pytest
from app_fixtures import PROJECT_ROOT, running_app
from browser_fixtures import TIMEOUT_MS, UPLOAD_INPUT, browser_page, snapshot, upload
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CT_SLICE = "ct/images/ct-ucsd-0260.jpg"  # a COVID slice of the CT test split that the guards place as CT


def photograph() -> bytes:
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(load_sample_image("china.jpg"))).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_the_trust_screens(browser, real_data, tmp_path):
    env = {"COVID_WEIGHTS_DIR": str(PROJECT_ROOT / "weights"), "COVID_REVIEW_DB": str(tmp_path / "r.sqlite3")}
    with running_app(env) as (url, _process), browser_page(browser, "e2e-trust", timeout_ms=TIMEOUT_MS * 3) as page:
        page.goto(url)
        page.wait_for_selector(UPLOAD_INPUT, state="attached")
        upload(page, "china.jpg", photograph())
        page.get_by_text("This image was refused").wait_for()
        assert page.get_by_test_id("stMetricValue").count() == 0
        snapshot(page, "e2e-trust-1-photo-refused")

        page.goto(url)
        page.wait_for_selector(UPLOAD_INPUT, state="attached")
        upload(page, "slice.jpg", (real_data / CT_SLICE).read_bytes())
        page.get_by_text("Analyse this image as").wait_for()
        page.get_by_text("looks like a chest CT, but the settings say X-ray").wait_for()
        snapshot(page, "e2e-trust-2-modality-question")
        page.get_by_text("CT (as it looks)").click()
        page.get_by_test_id("stMetricValue").first.wait_for()
        page.get_by_text("Colour scale").first.wait_for()
        snapshot(page, "e2e-trust-3-ct-result-colour-scale")

        page.get_by_role("link", name="Model performance").click()
        page.get_by_text("Within-source AUC").first.wait_for()
        snapshot(page, "e2e-trust-4-performance-headline")
