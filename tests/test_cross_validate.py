"""Within-source cross-validation: every image of the source is scored once, by a model that never saw it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.real_data
def test_cross_validation_smoke_run_scores_each_held_out_image_once(real_data, tmp_path):
    out = tmp_path / "cv.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cross_validate.py"), "--data", str(real_data), "--modality", "xray",
         "--source", "ieee8023", "--folds", "2", "--image-size", "32", "--epochs", "1", "--limit", "2",
         "--work", str(tmp_path / "folds"), "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["source"] == "ieee8023" and report["folds"] == 2
    assert report["n"] == sum(fold["n"] for fold in report["per_fold"])
    assert 0.0 <= report["auc"] <= 1.0
    for fold in range(2):
        card = json.loads((tmp_path / "folds" / f"fold-{fold}" / "card.json").read_text())
        assert set(card["metrics"]["test"]["per_source"]) == {"ieee8023"}  # the held-out fold is its test split
