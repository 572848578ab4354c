"""End to end in Chromium: the Validate locally page with two visitors at once. One uploads a labelled sample,
reads its metrics and fits an adapted head; the other, in a second browser session at the same time, sees none of
it. Screenshots go to test-artifacts/ (validate-1-metrics.png, validate-2-adapted.png, validate-3-other-visitor.png).
"""
from __future__ import annotations

import re

import pytest
from app_fixtures import labelled_sample_zip, make_weights_dir, running_app
from browser_fixtures import UPLOAD_INPUT, browser_page, snapshot, upload

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def sample_zip(patients_per_class: int = 12) -> bytes:
    return labelled_sample_zip("non_covid", patients_per_class=patients_per_class, seed=1)


def test_a_visitor_validates_and_adapts_while_another_sees_nothing_of_it(browser, tmp_path):
    weights = make_weights_dir(tmp_path, segmentation=False)
    with running_app({"COVID_WEIGHTS_DIR": str(weights)}) as (url, _), \
            browser_page(browser, "validate") as first, browser_page(browser, "validate-other") as second:
        first.goto(f"{url}/validate")
        first.wait_for_selector(UPLOAD_INPUT, state="attached")
        second.goto(f"{url}/validate")  # the second visitor is on the same page the whole time
        second.wait_for_selector(UPLOAD_INPUT, state="attached")
        upload(first, "sample.zip", sample_zip())
        first.get_by_text("24 labelled images").wait_for()
        first.get_by_role("button", name="Validate").click()
        first.get_by_text("Confound check").wait_for()
        sensitivity = first.get_by_test_id("stMetricLabel").filter(has_text="Sensitivity")
        sensitivity.first.wait_for()  # the page streams its blocks: wait for the metric before counting
        assert sensitivity.count() == 1
        first.locator(".js-plotly-plot").nth(1).wait_for()  # ROC and calibration drawn
        snapshot(first, "validate-1-metrics")
        first.get_by_role("button", name="Fit an adapted head").click()
        first.get_by_text(re.compile(r"CT, adapted to local: cross-validated AUC")).wait_for()
        download = first.get_by_role("button", name=re.compile("Download the adapted model folder"))
        download.wait_for()  # drawn in the same run as the figure, possibly a moment after it
        assert download.is_visible()
        snapshot(first, "validate-2-adapted")
        second.reload()
        second.wait_for_selector(UPLOAD_INPUT, state="attached")
        assert second.get_by_text("Confound check").count() == 0
        assert second.get_by_text("adapted to local").count() == 0
        snapshot(second, "validate-3-other-visitor")
