"""The CT scan page in AppTest: a zipped phantom series in, the quantitative reading, viewer, burden and reports out;
moving the sliders or the window reruns no model; a heatmap comes with its colour scale and its share in the lungs; a
held-back scan shows its reason and no verdict or probability; a bad upload is a message, not a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
from app_fixtures import CT_CLASSES, page_test, with_ct_reading, with_lung_window, write_classifier, write_segmenter
from scan_phantoms import ADULT_SPACING, adult_phantom, dicom_series, phantom, zipped

import covid_models.analysis.scan_analysis
from covid_models import RESEARCH_USE_NOTICE
from pages.shared import READING_LABEL


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scan-weights") / "weights"
    with_lung_window(write_classifier(root, "ct-fixture", "ct", CT_CLASSES, seed=3))
    with_ct_reading(with_lung_window(write_segmenter(root, "ct-infection-fixture", "ct", "infection", seed=5)))
    return root


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = covid_models.analysis.scan_analysis.analyse_scan

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    import pages.shared  # the page's scan analysis goes through pages.shared, which imported the function

    monkeypatch.setattr(pages.shared, "analyse_scan", counting)
    return calls


def test_a_zipped_series_gives_a_quantitative_reading_and_sliders_rerun_no_model(weights, monkeypatch, counted):
    at = page_test("pages/scan.py", weights, monkeypatch)
    at.run()
    assert not at.exception
    assert any(RESEARCH_USE_NOTICE in w.value for w in at.warning)
    archive = zipped(dicom_series(adult_phantom(), ADULT_SPACING))
    at.file_uploader(key="scan-uploads").set_value([("phantom.zip", archive, "application/zip")]).run()
    assert not at.exception, at.exception
    assert len(counted) == 1
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics[READING_LABEL] in ("Suggestive", "Not suggestive")
    assert metrics["Lesion burden"].endswith("% of lung") and metrics["Severity score (6 zones)"].endswith("/ 30")
    assert any("Secondary reading" in c.value and "mean of the top" in c.value for c in at.caption)
    assert any("cannot do" in c.value for c in at.caption)  # what the models cannot do, on the page
    frames = [frame.value for frame in at.dataframe]
    assert any("Criterion" in f.columns for f in frames)
    reading = next(f for f in frames if "Quantitative reading (HU)" in f.columns)
    assert any(str(row).startswith("Ground glass (-700 to -300 HU)") for row in reading["Quantitative reading (HU)"])
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
    assert any(c.startswith("Heatmap colour scale") for c in captions)
    shown = [e.value for e in (*at.warning, *at.success, *at.caption)]
    assert any("of the heatmap lies inside the lungs" in text for text in shown)
    assert len(at.get("download_button")) == 2


def test_a_scan_with_too_little_lung_is_held_back_with_no_verdict_or_probability(weights, monkeypatch, counted):
    at = page_test("pages/scan.py", weights, monkeypatch)
    at.run()
    archive = zipped(dicom_series(phantom()))  # 155 ml of lung: not an adult chest
    at.file_uploader(key="scan-uploads").set_value([("small.zip", archive, "application/zip")]).run()
    assert not at.exception, at.exception
    assert any(e.value.startswith("Held back: too little lung") for e in at.error)
    assert not at.metric and not at.get("plotly_chart") and not [m for m in at.markdown if "badge" in m.value]
    shown = " ".join([c.value for c in at.caption] + [m.value for m in at.markdown])
    assert "suggestive of" not in shown.replace("not suggestive", "") and "probability " not in shown
    assert "no burden is shown" in shown
    captions = [caption for image in at.image for caption in image.captions]
    assert all(":" not in c for c in captions if c.startswith("Axial slice"))  # no slice probability
    assert at.toggle(key="scan-heatmap").disabled and at.toggle(key="scan-infection").disabled


def test_a_bad_upload_is_a_clear_message(weights, monkeypatch, counted):
    at = page_test("pages/scan.py", weights, monkeypatch)
    at.run()
    at.file_uploader(key="scan-uploads").set_value([("one.dcm", dicom_series(phantom()[:1])[0][1],
                                                     "application/dicom")]).run()
    assert not at.exception
    assert any("at least 3 slices" in e.value for e in at.error)
    assert not counted
