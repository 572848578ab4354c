"""No error in a page's rendering reaches the visitor as a traceback: the app's navigation turns it into a message.

The error is provoked where the CT scan page draws its result (an axial picture that fails, as a 0-pixel-high
picture did with `ValueError: height and width must be > 0`); the app, run through its entry script as a visitor
runs it, must show a readable message instead, keep the rest of the page, and log the error for the maintainers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from app_fixtures import CT_CLASSES, page_test, with_lung_window, write_classifier
from scan_phantoms import ADULT_SPACING, adult_phantom, dicom_series, zipped

import pages.scan_viewer


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("page-error-weights") / "weights"
    with_lung_window(write_classifier(root, "ct-fixture", "ct", CT_CLASSES, seed=3))
    return root


def test_an_error_while_a_page_renders_is_a_message_not_a_traceback(weights, monkeypatch, caplog):
    def failing_picture(*_args, **_kwargs):
        raise ValueError("height and width must be > 0")

    monkeypatch.setattr(pages.scan_viewer, "axial_picture", failing_picture)  # where the page draws it; undone after
    at = page_test("streamlit_app.py", weights, monkeypatch)
    at.run()
    at.switch_page("pages/scan.py").run()
    assert not at.exception
    archive = zipped(dicom_series(adult_phantom(), ADULT_SPACING))  # lungs enough for a reading, not held back
    with caplog.at_level(logging.ERROR, logger="pages.shared"):
        at.file_uploader(key="scan-uploads").set_value([("phantom.zip", archive, "application/zip")]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("could not be shown completely" in e.value and "ValueError" in e.value for e in at.error)
    assert not any("height and width" in e.value for e in at.error)  # the technical text stays in the log
    assert any("Quantitative reading (HU)" in f.value.columns for f in at.dataframe)  # drawn before the failure
    assert any("height and width must be > 0" in r.getMessage() or r.exc_info for r in caplog.records)
