"""scripts/validate_local.py end to end on a folder sample, and scripts/evaluate.py reproducing the adapted head."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covid_models.benchmarking import PROJECT_ROOT, chest_like_png, write_classifier
from covid_models.models.checkpoint import read_card

CLASSES = ["covid", "normal", "pneumonia"]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / name), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def _folder(root: Path, patients: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["file,label,patient_id,view"]
    for label in ("covid", "normal"):
        for p in range(patients):
            for i in range(2):
                name = f"{label}-{p}-{i}.png"
                (root / name).write_bytes(chest_like_png(size=80, seed=int(rng.integers(1 << 30))))
                lines.append(f"{name},{label},{label}:{p},{'AP' if label == 'covid' else 'PA'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_adapt_writes_a_pinned_folder_that_evaluate_reproduces(tmp_path):
    weights = tmp_path / "weights"
    base = write_classifier(weights, "xray-base", "xray", CLASSES, seed=1)
    sample = _folder(tmp_path / "sample", patients=11)
    out = tmp_path / "report.json"
    result = _script("validate_local.py", "adapt", "--model", str(base), "--folder", str(sample), "--site", "Clinic",
                     "--no-image-check", "--write", str(weights / "xray-base-adapted-clinic"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "view                     predicts the label with AUC 1.000" in result.stdout  # AP = covid, PA = normal
    report = json.loads(out.read_text())
    assert report["validation"]["headline"] is True and report["adaptation"]["folds"] == 5
    card = read_card(weights / "xray-base-adapted-clinic")
    assert card.extra["base_model"] == {"name": "xray-base", "sha256": read_card(base).sha256}
    assert card.metrics["confounds"]["metadata"][0]["predictor"] == "view"
    again = _script("evaluate.py", str(weights / "xray-base-adapted-clinic"), str(sample), "--split", "all")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "reproduced" in again.stdout and "NOT" not in again.stdout


@pytest.mark.slow
def test_a_sample_below_the_minimum_is_validated_without_headline_and_adaptation_refused(tmp_path):
    base = write_classifier(tmp_path / "weights", "xray-base", "xray", CLASSES, seed=1)
    sample = _folder(tmp_path / "sample", patients=4)
    result = _script("validate_local.py", "adapt", "--model", str(base), "--folder", str(sample), "--no-image-check")
    assert result.returncode == 2
    assert "no AUC headline: fewer than 10 patients" in result.stdout
    assert "error: Not" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_reproduces_the_shipped_adapted_heads_cross_validated_auc(real_data):
    from covid_models.models.discovery import find_models
    from covid_models.models.model_card import is_adapted

    adapted = [(d, card) for d, card in find_models(PROJECT_ROOT / "weights").found if is_adapted(card)]
    if not adapted:
        pytest.skip("no adapted head in weights/")
    for directory, card in adapted:
        result = _script("evaluate.py", str(directory), str(real_data / card.modality), "--split", "all")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert ": reproduced" in result.stdout
