"""analyse_scan on phantoms: which slices are scored, the scan-level rule, the canonical HU window reaching the
models, and an exact infection burden (a band 'segmenter' that finds the phantom's lesion); then the shared scans."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from app_fixtures import CT_CLASSES, write_classifier
from scan_phantoms import LESION, RIGHT_LUNG, band_segmenter, box_voxels, dicom_series, phantom

from covid_models.analysis.ct_quantitative import severity
from covid_models.analysis.scan_analysis import analyse_scan, burden, scan_probability
from covid_models.imaging.volumes import read_volume
from covid_models.models.inference import Classifier

VOXEL_ML = 2.5 * 1.5 * 1.5 / 1000


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    directory = write_classifier(tmp_path_factory.mktemp("weights"), "ct-fixture", "ct", CT_CLASSES, seed=3)
    loaded = Classifier.load(directory)
    card = loaded.card
    card.preprocessing = type(card.preprocessing)(image_size=64, hu_window=(-600.0, 1500.0))
    return loaded


@pytest.fixture(scope="module")
def volume():
    return read_volume(dicom_series(phantom()))


def test_severity_bands():
    assert [severity(p) for p in (0, 0.1, 4.99, 5, 24.9, 25, 49, 50, 74, 75, 100)] == [0, 1, 1, 2, 2, 3, 3, 4, 4,
                                                                                        5, 5]


def test_scan_probability_is_the_mean_of_the_top_tenth():
    probabilities = np.array([np.nan, *np.linspace(0.0, 0.95, 20), np.nan], dtype=np.float32)
    value, k = scan_probability(probabilities)
    assert k == 2 and value == pytest.approx((0.95 + 0.9) / 2)
    assert scan_probability(np.full(3, np.nan)) == (None, 0)


def test_only_slices_with_lung_are_scored_and_the_models_see_the_card_window(classifier, volume, monkeypatch):
    seen = []
    original = classifier.predict_inputs
    monkeypatch.setattr(classifier, "predict_inputs", lambda batch: seen.append(batch.clone()) or original(batch))
    steps = []
    analysis = analyse_scan(volume, classifier, progress=lambda fraction, what: steps.append((fraction, what)))
    lung_slices = np.arange(RIGHT_LUNG[0].start, RIGHT_LUNG[0].stop)
    np.testing.assert_array_equal(np.nonzero(analysis.scored)[0], lung_slices)
    assert np.isnan(analysis.slice_probabilities[: lung_slices[0]]).all()
    inputs = torch.cat(seen)
    preprocessing = classifier.card.preprocessing
    expected = torch.stack([preprocessing(preprocessing.window_hu(volume.hu[k])) for k in lung_slices])
    torch.testing.assert_close(inputs, expected)  # the card's lung window, not any display window
    value, k = scan_probability(analysis.slice_probabilities)
    assert analysis.scan_probability == pytest.approx(value) and analysis.top_k == k == 2
    assert analysis.held_back and "too little lung" in analysis.reading.held_back  # 155 ml of lung: a toy, not a chest
    assert analysis.positive is None and analysis.classifier_positive is None
    assert analysis.burden is None and analysis.infection is None
    assert steps[0][0] == 0.0 and steps[-1] == (1.0, "Done")
    assert [f for f, _ in steps] == sorted(f for f, _ in steps)


def test_the_lesion_burden_is_exact(classifier, volume):
    analysis = analyse_scan(volume, classifier, band_segmenter(64))
    result = analysis.burden
    lesion = box_voxels(LESION)
    assert np.count_nonzero(analysis.infection) == lesion
    assert result.infection_ml == pytest.approx(lesion * VOXEL_ML)
    assert result.percent_by_lung["right"] == pytest.approx(100 * lesion / box_voxels(RIGHT_LUNG))
    assert result.percent_by_lung["left"] == 0.0
    zones = {(z.lung, z.zone): z for z in result.zones}
    assert zones[("right", "middle")].percent == pytest.approx(100 * lesion / (8 * 32 * 18))  # slices 18-25
    assert zones[("right", "middle")].score == 1 and result.severity_score == 1
    assert analysis.key_slices["largest infection"] in range(LESION[0].start, LESION[0].stop)
    summary = analysis.summary()
    json.dumps(summary)
    assert summary["burden"] is None and summary["slices"] == 40  # held back (too little lung): no burden shown
    assert analysis.display_hu.shape == analysis.lungs.labels.shape


def test_burden_without_infection_is_zero(classifier, volume):
    analysis = analyse_scan(volume, classifier)
    empty = burden(analysis.lungs, np.zeros_like(analysis.lungs.labels, dtype=bool), None)
    assert empty.infection_ml == 0 and empty.severity_score == 0 and len(empty.zones) == 6
    assert math.isclose(sum(empty.lung_ml.values()), analysis.lungs.volume_ml())
    assert sum(z.lung_ml for z in empty.zones) == pytest.approx(analysis.lungs.volume_ml())


def test_a_held_back_scan_report_carries_the_reason_and_no_verdict_burden_or_key_slices(classifier, volume):
    from covid_models.analysis.report import render_scan_html, render_scan_pdf
    from covid_models.analysis.scan_views import MODEL_LIMITS, axial_picture, coronal_picture, scan_report_content

    analysis = analyse_scan(volume, classifier, band_segmenter(64))
    content = scan_report_content(analysis, "/exports/Doe^Janet/scan.zip")
    assert content.key_slices == [] and content.burden_rows == [] and content.criteria_rows == []
    page = render_scan_html(content)
    assert "Doe^Janet" not in page and "scan.zip" in page
    assert "Held back: too little lung" in page and MODEL_LIMITS in page and "Research use only" in page
    for word in ("suggestive", "probability", "flag"):
        assert word not in content.result + content.secondary
    assert "/ 30" not in page and "Lesion" not in page
    from test_report import pdf_text

    pdf = render_scan_pdf(content)
    text = pdf_text(pdf)
    assert pdf.startswith(b"%PDF") and "Held back: too little lung" in text
    assert "suggestive" not in text and "/ 30" not in text and "Secondary reading: none" in text
    picture, plain = axial_picture(analysis, 22), axial_picture(analysis, 22, infection=False)
    assert picture.shape == (64, 64, 3)
    np.testing.assert_array_equal((picture != plain).any(axis=2), analysis.infection[22])  # the lesion, tinted
    assert coronal_picture(analysis, 30).shape == (round(40 * 2.5 / 1.5), 64, 3)  # true proportions


@pytest.mark.slow
def test_analyze_scan_script_writes_the_result(tmp_path):
    import os
    import subprocess
    import sys

    from app_fixtures import PROJECT_ROOT, write_segmenter
    from test_app_scan import with_lung_window

    weights = tmp_path / "weights"
    with_lung_window(write_classifier(weights, "ct-fixture", "ct", CT_CLASSES, seed=3))
    with_lung_window(write_segmenter(weights, "ct-infection-fixture", "ct", "infection", seed=5))
    folder = tmp_path / "series"
    folder.mkdir()
    for name, data in dicom_series(phantom()):
        (folder / name).write_bytes(data)
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}  # this checkout's library, whatever is installed
    done = subprocess.run([sys.executable, "scripts/analyze_scan.py", str(folder), "--out", str(out), "--weights",
                           str(weights), "--threads", "1"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["slices"] == 40 and result["slices_scored"] == 24 and result["classifier"] == "ct-fixture"
    assert "Research use only" in result["notice"]
    # the phantom's 155 ml of lung is held back: its reason, and no verdict, probability, flag or burden anywhere
    assert result["held_back"].startswith("too little lung") and result["result"].startswith("Held back")
    assert result["positive"] is None and result["burden"] is None and result["key_slices"] == {}
    assert {"pattern", "severity", "lesion"}.isdisjoint(result["quantitative"]) and result["quantitative"]["lung"]
    secondary = result["secondary"]
    assert secondary["withheld"] and secondary["scan_probability"] is None and secondary["positive"] is None
    assert secondary["slice_probabilities"] is None
    assert "Held back" in done.stdout and "probability" not in done.stdout.split("Secondary")[0]
    bad = subprocess.run([sys.executable, "scripts/analyze_scan.py", str(tmp_path / "result.json"), "--weights",
                          str(weights)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.real_data
@pytest.mark.slow
def test_the_shared_scans_with_the_shipped_models(real_data):
    """Each shared scan is read, masked, scored and given a burden; RICORD (COVID-19) gets a non-zero burden.

    Not asserted, because the shipped CT classifier fails it (README, 'CT scans'): RICORD scoring above both non-COVID
    scans. Re-check with `python scripts/analyze_scan.py` on each scan after retraining the CT classifier.
    """
    from app_fixtures import PROJECT_ROOT

    from covid_models.analysis.scan_analysis import scan_models
    from covid_models.models.segmentation import Segmenter

    classifiers, segmenters = scan_models(PROJECT_ROOT / "weights")
    if not classifiers or not segmenters:
        pytest.skip("no shipped CT classifier and infection segmenter in weights/")
    classifier, segmenter = Classifier.load(classifiers[0]), Segmenter.load(segmenters[0])
    folder = real_data / "ct-volumes"
    results = {}
    for name in ("lung-pet-ct-dx-a0002/dicom", "copdgene-10002k-64/ct.nii.gz", "ricord-1a-000082/dicom"):
        analysis = analyse_scan(read_volume(folder / name), classifier, segmenter)
        assert analysis.scored.sum() >= 0.5 * len(analysis.slice_probabilities)
        assert 0.0 <= analysis.scan_probability <= 1.0
        for label in (1, 2):
            assert 800 < analysis.lungs.volume_ml(label) < 4000
        results[name.split("/")[0]] = analysis
    assert results["ricord-1a-000082"].burden.infection_ml > 0
