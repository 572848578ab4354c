"""The CT scan page in AppTest: a zipped phantom series in, the scan-level result, viewer, burden and reports out;
moving the sliders or the window reruns no model; a bad upload is a message, not a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
from app_fixtures import CT_CLASSES, page_test, with_lung_window, write_classifier, write_segmenter
from scan_phantoms import dicom_series, phantom, zipped

import covid_models.scan_analysis
from covid_models import RESEARCH_USE_NOTICE


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scan-weights") / "weights"
    with_lung_window(write_classifier(root, "ct-fixture", "ct", CT_CLASSES, seed=3))
    with_lung_window(write_segmenter(root, "ct-infection-fixture", "ct", "infection", seed=5))
    return root


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = covid_models.scan_analysis.analyse_scan

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    import pages.shared  # the page's scan analysis goes through pages.shared, which imported the function

    monkeypatch.setattr(pages.shared, "analyse_scan", counting)
    return calls


def test_a_zipped_series_gives_a_scan_result_and_sliders_rerun_no_model(weights, monkeypatch, counted):
    at = page_test("pages/scan.py", weights, monkeypatch)
    at.run()
    assert not at.exception
    assert any(RESEARCH_USE_NOTICE in w.value for w in at.warning)
    archive = zipped(dicom_series(phantom()))
    at.file_uploader(key="scan-uploads").set_value([("phantom.zip", archive, "application/zip")]).run()
    assert not at.exception, at.exception
    assert len(counted) == 1
    metric = at.metric[0]
    assert metric.label == "Scan-level COVID-19 probability" and metric.value.endswith("%")
    assert any("mean of the top" in c.value for c in at.caption)
    assert any("cannot do" in c.value for c in at.caption)  # what the model cannot do, on the page
    frames = [frame.value for frame in at.dataframe]
    burden = next(f for f in frames if "Zone" in f.columns)
    assert list(burden["Zone"][:3]) == ["upper", "middle", "lower"] and burden.iloc[-1]["Lung"] == "both"
    assert at.get("plotly_chart")
    at.slider(key="scan-slice").set_value(21).run()
    at.radio(key="scan-window").set_value("mediastinum").run()
    at.slider(key="scan-row").set_value(10).run()
    at.toggle(key="scan-heatmap").set_value(True).run()
    assert not at.exception
    assert len(counted) == 1  # the analysis was kept: no model ran for the sliders, window or toggles
    captions = [caption for image in at.image for caption in image.captions]
    assert any(c.startswith("Axial slice 21 of 40") for c in captions)
    assert any(c.startswith("Coronal view") for c in captions)
    assert len(at.get("download_button")) == 2


def test_a_bad_upload_is_a_clear_message(weights, monkeypatch, counted):
    at = page_test("pages/scan.py", weights, monkeypatch)
    at.run()
    at.file_uploader(key="scan-uploads").set_value([("one.dcm", dicom_series(phantom()[:1])[0][1],
                                                     "application/dicom")]).run()
    assert not at.exception
    assert any("at least 3 slices" in e.value for e in at.error)
    assert not counted
