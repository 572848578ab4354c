"""A DICOM CT slice on the Analyze page: accepted by the chest-image check because its HU hold lungs, and read first
by the quantitative reading in HU (the classifier labelled as secondary), the same figures as the library's; its
heatmap's share inside the HU lung mask is signalled as on the X-ray page."""
from __future__ import annotations

from pathlib import Path

import pytest
from app_fixtures import make_weights_dir, page_test
from scan_phantoms import ADULT_SPACING, adult_phantom, dicom_series
from test_app_analyze import PAGE, texts, upload

from covid_models.analysis.ct_quantitative import SECONDARY_LABEL, read_dicom_slice
from covid_models.imaging.io import read_image


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("ct-slice"))


def test_a_dicom_ct_slice_with_lungs_is_accepted_and_read_in_hu_first(weights, monkeypatch):
    name, data = dicom_series(adult_phantom(), ADULT_SPACING)[22]
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, (name, data))
    assert not at.exception
    shown = "\n".join(texts(at.main))
    assert "not a chest X-ray or CT" not in shown and "looks neither like" not in shown
    assert "Quantitative reading of this CT slice (HU)" in shown and SECONDARY_LABEL in shown
    expected = read_dicom_slice(read_image(data, name=name)).reading
    assert expected.lung["right"] == pytest.approx(64 * 36 * 1.5 * 1.5 / 100)
    assert f"right {expected.lung['right']:.0f} cm²" in shown
    assert "lies inside the lungs" in shown and "(HU lung mask)" in shown  # the X-ray page's signal, on HU lungs
    mask = read_dicom_slice(read_image(data, name=name)).lung_mask()
    assert mask.shape == (128, 128) and mask.sum() == 2 * 64 * 36
