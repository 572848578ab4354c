"""Local validation of whole CT scans by scan-level label: a zipped or folder sample of phantom scans, each analysed
once through `analyse_scan`, held-back scans listed and never counted as negative, the minimum counts, and scan
metadata in the confound check."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from app_fixtures import CT_CLASSES, PROJECT_ROOT, write_classifier
from scan_phantoms import (
    ADULT_SPACING,
    LESION_HU,
    LUNG_HU,
    adult_phantom,
    band_segmenter,
    dicom_series,
    nifti_ras,
    phantom,
    with_fitted_threshold,
    zipped,
)

from covid_models.local import scans as local_scans
from covid_models.local.samples import SampleError
from covid_models.local.scans import (
    FEATURES,
    ScoredScans,
    scan_sample_from_folder,
    scan_sample_from_zip,
    scan_table,
    score_scans,
    validate_scans,
)
from covid_models.models.inference import Classifier


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    directory = write_classifier(tmp_path_factory.mktemp("weights"), "ct-fixture", "ct", CT_CLASSES, seed=3)
    loaded = Classifier.load(directory)
    loaded.card.preprocessing = type(loaded.card.preprocessing)(image_size=64, hu_window=(-600.0, 1500.0))
    return loaded


def clean_adult() -> np.ndarray:
    """The adult phantom without its lesion: no burden."""
    hu = adult_phantom()
    hu[hu == LESION_HU] = LUNG_HU
    return hu


def sample_zip() -> bytes:
    """Two COVID scans (one a nested zip), one clean scan as a NIfTI file, and the small phantom (too little lung)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in dicom_series(adult_phantom(), ADULT_SPACING, identifiers={"Manufacturer": "Acme"}):
            archive.writestr(f"sample/covid-a/{name}", data)
        archive.writestr("sample/covid-b.zip", zipped(dicom_series(adult_phantom(), ADULT_SPACING)))
        archive.writestr("sample/clean.nii.gz", nifti_ras(clean_adult(), ADULT_SPACING))
        for name, data in dicom_series(phantom()):
            archive.writestr(f"sample/small/{name}", data)
        archive.writestr("sample/labels.csv", "scan,label,patient_id,manufacturer\ncovid-a,covid,p1,\n"
                                              "covid-b.zip,covid,p2,Other\nclean.nii.gz,non-covid,p3,\n"
                                              "small,non-covid,p4,\n")
    return buffer.getvalue()


def test_a_zipped_sample_is_scored_once_per_scan_and_a_held_back_scan_is_not_counted_as_negative(
        classifier, monkeypatch):
    calls = []
    original = local_scans.analyse_scan

    def counted(volume, *args, **kwargs):
        calls.append(volume.metadata.shape)
        return original(volume, *args, **kwargs)

    monkeypatch.setattr(local_scans, "analyse_scan", counted)
    sample = scan_sample_from_zip(sample_zip(), "covid")
    assert sample.counts() == {"covid": {"scans": 2, "patients": 2}, "other": {"scans": 2, "patients": 2}}
    scored = score_scans(sample, classifier, with_fitted_threshold(band_segmenter(128), 0.5))
    assert len(calls) == 4 and not scored.unreadable
    table = scan_table(scored).set_index("scan")
    assert "lung" in table.loc["small", "held_back"] and pd.isna(table.loc["small", "burden_percent"])
    assert table.loc["covid-a", "burden_percent"] > 0.5 and table.loc["clean.nii.gz", "burden_percent"] == 0
    assert table.loc["covid-a", "manufacturer"] == "Acme"  # from the DICOM header, the CSV left it empty
    assert table.loc["covid-b.zip", "manufacturer"] == "Other"  # the CSV's own value wins
    assert table.loc["covid-a", "slice_thickness"] == 5.0 and table.loc["covid-a", "pixel_spacing"] == 1.5

    report = validate_scans(scored, n_resamples=50)
    assert report["held_back"] == [{"scan": "small", "label": "non-covid", "reason": table.loc["small", "held_back"]}]
    assert report["read"] == 3
    assert report["patients"] == {"covid": 2, "other": 1}  # the held-back scan is not counted as a negative
    assert report["scores"]["burden"]["n"] == 3 and report["scores"]["burden"]["auc"] == 1.0
    assert report["headline"] is False and "fewer than 10 patients" in report["no_headline_because"]
    assert report["scores"]["burden"]["headline"] is False and report["scores"]["burden"]["auc_ci95"] is not None
    assert report["pattern"]["scans"] == 3  # unilateral phantom lesions: read, and not suggestive
    assert report["pattern"]["sensitivity"] == 0.0 and report["pattern"]["specificity"] == 1.0
    assert report["quantitative_model"] is None and "Not adapted" in report["quantitative_model_error"]
    assert report["confounds"] is None and "at least two patients" in report["confounds_error"]


def test_a_sample_naming_a_scan_the_zip_lacks_is_refused_with_its_name():
    data = zipped([("labels.csv", b"scan,label\nmissing-scan,covid\n")], folder="")
    with pytest.raises(SampleError, match="missing-scan"):
        scan_sample_from_zip(data, "covid")


def test_a_scan_of_more_files_than_one_volume_may_hold_is_refused_before_inflating():
    files = [(f"big/IM{i:05d}.dcm", b"") for i in range(local_scans.SCAN_LIMITS.max_files + 1)]
    data = zipped([*files, ("labels.csv", b"scan,label\nbig,covid\n")], folder="")
    with pytest.raises(SampleError, match="'big' holds 5001 files"):
        scan_sample_from_zip(data, "covid")


def test_a_folder_sample_never_reads_outside_its_folder(tmp_path):
    (tmp_path / "labels.csv").write_text("scan,label\n../elsewhere,covid\n")
    with pytest.raises(SampleError, match="outside the folder"):
        scan_sample_from_folder(tmp_path, "covid")


def synthetic(patients: int, thickness_predicts: bool) -> ScoredScans:
    """Scored scans of `patients` per class; the burden separates the classes, and the slice thickness does too
    when `thickness_predicts`."""
    rng = np.random.default_rng(0)
    rows = []
    for positive in (1, 0):
        for p in range(patients):
            thick = (5.0 if positive else 1.25) if thickness_predicts else float(rng.choice([1.25, 5.0]))
            rows.append({"name": f"s{positive}-{p}", "image": "", "label": "covid" if positive else "other",
                         "positive": positive, "patient_id": f"{positive}:{p}", "view": "", "site": "here",
                         "manufacturer": str(rng.choice(["GE", "Siemens"])), "held_back": "",
                         "slice_thickness": thick, "pixel_spacing": 0.7, "out_of_distribution": False,
                         "burden_percent": float(rng.uniform(2, 30) if positive else rng.uniform(0, 4)),
                         "severity_score": int(rng.integers(0, 10)), "suggestive": bool(positive),
                         "secondary_probability": float(rng.uniform()),
                         **{f: float(rng.uniform()) for f in FEATURES[2:]}})
    return ScoredScans(pd.DataFrame(rows), "covid", [], 0.5)


def test_scan_metadata_enters_the_confound_check_and_the_quantitative_model_is_cross_validated():
    report = validate_scans(synthetic(12, thickness_predicts=True), n_resamples=50)
    assert report["headline"] is True and report["scores"]["burden"]["auc"] > 0.85
    predictors = {row["predictor"]: row["auc"] for row in report["confounds"]["metadata"]}
    assert set(predictors) >= {"manufacturer", "slice_thickness", "all metadata together"}
    assert "pixel_spacing" not in predictors  # the same everywhere: nothing to learn from it
    assert predictors["slice_thickness"] == 1.0
    model = report["quantitative_model"]
    assert model["folds"] == 5 and model["features"] == list(FEATURES) and model["auc_ci95"] is not None
    assert report["pattern"]["sensitivity"] == 1.0 and report["pattern"]["specificity"] == 1.0
    assert any(row["by"] == "manufacturer" for row in report["scores"]["burden"]["subgroups"])
    unconfounded = validate_scans(synthetic(12, thickness_predicts=False), n_resamples=50)
    assert {r["predictor"]: r["auc"] for r in unconfounded["confounds"]["metadata"]}["slice_thickness"] < 0.7


@pytest.mark.slow  # a script in a fresh process
def test_the_cli_validates_a_folder_of_scans_with_the_shipped_ct_models(tmp_path):
    root = tmp_path / "scans"
    for scan, hu, spacing in (("covid-1", adult_phantom(), ADULT_SPACING), ("small", phantom(), (2.5, 1.5, 1.5))):
        (root / scan).mkdir(parents=True)
        for name, data in dicom_series(hu, spacing, identifiers={"Manufacturer": "Acme"}):
            (root / scan / name).write_bytes(data)
    (root / "labels.csv").write_text("scan,label,patient_id\ncovid-1,covid,a\nsmall,other,b\n")
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "validate_local.py"), "validate",
                             "--scans", str(root), "--out", str(out)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held back small (other)" in result.stdout and "1 held back" in result.stdout
    assert "no AUC headline" in result.stdout
    report = json.loads(out.read_text())
    assert [row["scan"] for row in report["scans"]] == ["covid-1", "small"]
    assert report["scans"][0]["manufacturer"] == "Acme" and report["scans"][0]["burden_percent"] is not None
    assert report["validation"]["patients"] == {"covid": 1, "other": 0}
    refused = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "validate_local.py"), "adapt",
                              "--scans", str(root)], capture_output=True, text=True, env=env, timeout=600)
    assert refused.returncode == 2 and "only 'validate'" in refused.stderr
