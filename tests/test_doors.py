"""Same checks at every door: the command-line scripts hold back what the Analyze page holds back, with the reason
and no probability (`covid_models.analysis.image_checks.screen`)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import WEIGHTS_DIR
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
XRAY_MODEL = WEIGHTS_DIR / "xray-efficientnet-lite0"


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def photograph(path: Path) -> Path:
    """scikit-learn's sample photograph of a Chinese temple (the issue's example of a photo called COVID-19)."""
    from sklearn.datasets import load_sample_image

    Image.fromarray(load_sample_image("china.jpg")).save(path)
    return path


def first_test_image(root: Path, modality: str, source: str | None = None) -> Path:
    manifest = pd.read_csv(root / modality / "manifest.csv")
    if source is not None:
        manifest = manifest[manifest["source"] == source]
    return root / modality / manifest["image"].iloc[0]


@pytest.mark.slow
def test_predict_holds_back_a_photograph_and_a_ct_slice_with_the_reason_and_no_probability(real_data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photograph(folder / "china.jpg")
    (folder / "slice.jpg").write_bytes(first_test_image(real_data, "ct").read_bytes())
    (folder / "film.jpg").write_bytes(first_test_image(real_data, "xray", "ieee8023").read_bytes())
    result = _script("predict.py", str(XRAY_MODEL), str(folder), "--out", str(tmp_path / "preds.csv"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "preds.csv") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    for name, reason in (("china.jpg", "coloured"), ("slice.jpg", "looks like a chest CT")):
        row = rows[name]
        assert row["status"] == "refused" and reason in row["error"], row
        assert row["p_covid"] == row["positive_probability"] == row["positive"] == "", row
    assert rows["film.jpg"]["status"] == "ok" and float(rows["film.jpg"]["p_covid"]) > 0
    assert "2 refused" in result.stdout


@pytest.mark.slow
def test_evaluate_counts_what_it_holds_back_and_states_the_metrics_on_the_rest(tmp_path):
    """A folder of chest-like films with a photograph among them: the photograph is counted as refused, the
    metrics on all images stay comparable with the card, and those on the images that got an answer are stated."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in ("covid", "normal"):
        (data / label).mkdir(parents=True)
        for index in range(3):
            Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(data / label / f"{label}-{index}.png")
    photograph(data / "normal" / "china.jpg")
    out = tmp_path / "m.json"
    result = _script("evaluate.py", str(XRAY_MODEL), str(data), "--split", "all", "--no-cam-check", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    screening = report["screening"]
    assert screening["refused"] >= 1 and any("coloured" in reason for reason in screening["reasons"])
    assert screening["answered"] == report["n"] - screening["refused"] - screening["held_back"]
    assert "refused" in result.stdout and "on the" in result.stdout


def test_a_review_upload_leaves_out_a_photograph_and_a_ct_slice_with_the_reason(real_data, tmp_path, monkeypatch):
    """The review session's upload path screens as the Analyze page does: what it refuses is named with the reason
    and never enters the session with a probability."""
    from app_fixtures import page_test
    from app_fixtures_b import point_app_at, register_on_review_page

    from covid_models.reviews.store import ReviewStore

    database = tmp_path / "reviews.sqlite3"
    point_app_at(monkeypatch, database, None)
    at = page_test("pages/review.py", WEIGHTS_DIR, monkeypatch)
    at.run(timeout=300)
    register_on_review_page(at, "Dr Ada Test", "ada's test passphrase", timeout=300)
    at.radio(key="review-modality").set_value("xray")
    at.run(timeout=300)
    photo = photograph(tmp_path / "china.jpg").read_bytes()
    film = first_test_image(real_data, "xray", "ieee8023").read_bytes()
    slice_ = first_test_image(real_data, "ct").read_bytes()
    at.file_uploader(key="review-uploads").set_value(
        [("china.jpg", photo, "image/jpeg"), ("slice.jpg", slice_, "image/jpeg"), ("film.jpg", film, "image/jpeg")])
    at.run(timeout=300)
    at.button(key="review-start").click()
    at.run(timeout=300)
    assert not at.exception, [e.value for e in at.exception]
    left_out = " ".join(w.value.replace("\\", "") for w in at.warning if "Left out of the session" in w.value)
    assert "china.jpg: This image was refused" in left_out and "coloured" in left_out
    assert "slice.jpg: This image was refused: it looks like a chest CT" in left_out
    with ReviewStore(f"sqlite:///{database}") as store:
        (session,) = store.sessions()
        assert session.n_items == 1
