"""The command-line scripts: prediction never crashes on bad files; evaluation reproduces the shipped cards."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_input_corpus import build_corpus
from conftest import WEIGHTS_DIR, require_or_skip
from model_fixtures import write_tiny_classifier
from PIL import Image

from covid_models.imaging.io import read_image
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # this checkout's library, not an install
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_predict_writes_a_row_per_file_and_an_error_row_for_each_bad_one(tmp_path):
    model = write_tiny_classifier(tmp_path / "model")
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray((np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)).save(images / "good.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (images / "notes.dcm").write_text("not a dicom file")
    result = _script("predict.py", str(model), str(images), "--out", str(tmp_path / "preds.csv"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "preds.csv") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    assert rows["good.png"]["status"] == "ok"
    expected = Classifier.load(model).predict(read_image(images / "good.png"))
    assert float(rows["good.png"]["p_covid"]) == pytest.approx(expected.probabilities["covid"], abs=1e-5)
    assert rows["good.png"]["label"] == expected.reading_label  # what a review session stores as the model's label
    for bad in ("broken.png", "notes.dcm"):
        assert rows[bad]["status"] == "error" and rows[bad]["error"]
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a script in a fresh process
def test_predict_checks_type_and_size_before_reading_and_gives_every_skipped_path_a_row(tmp_path):
    """A pipe (reading it would block for ever), a /dev/zero link (endless), a 4 GiB sparse file (4 GiB of RSS if
    read), a link to itself and a dangling link: each gets an error row with its reason, in seconds, and the good
    image its prediction; a text file inside the folder is counted as ignored, not classified."""
    model = write_tiny_classifier(tmp_path / "model")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)).save(folder / "good.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.dcm").symlink_to("/dev/zero")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dangling.jpg").symlink_to(folder / "missing.jpg")
    with open(folder / "huge.tif", "wb") as handle:
        handle.truncate(4 * 2**30)  # sparse: no byte of it is on disk
    (folder / "notes.txt").write_text("not an image")
    outside_pipe = tmp_path / "pipe-outside"
    os.mkfifo(outside_pipe)
    result = _script("predict.py", str(model), str(folder), str(outside_pipe), "--out", str(tmp_path / "preds.csv"),
                     timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "preds.csv") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    assert set(rows) == {"good.png", "pipe.png", "zero.dcm", "loop.png", "dangling.jpg", "huge.tif", "pipe-outside"}
    assert rows["good.png"]["status"] == "ok"
    reasons = {"pipe.png": "named pipe", "pipe-outside": "named pipe", "zero.dcm": "a device",
               "loop.png": "symbolic links", "dangling.jpg": "No such file", "huge.tif": "too large"}
    for name, reason in reasons.items():
        assert rows[name]["status"] == "error" and reason in rows[name]["error"], rows[name]
    assert "1 other files ignored" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_predict_survives_the_whole_bad_input_corpus(tmp_path):
    model = write_tiny_classifier(tmp_path / "model")
    files = build_corpus(tmp_path / "corpus")
    assert len(files) >= 500
    result = _script("predict.py", str(model), *map(str, files), "--out", str(tmp_path / "preds.csv"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "preds.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(files)
    by_name = {Path(r["file"]).name: r["status"] for r in rows}
    # every readable file gets an answer: a prediction, or a refusal by the chest-image check (a colour picture)
    assert all(by_name[p.name] in ("ok", "refused") for p in files if p.name.startswith("ok-"))
    assert any(by_name[p.name] == "ok" for p in files if p.name.startswith("ok-"))
    assert all(by_name[p.name] == "error" for p in files if p.name.startswith("bad-"))


@pytest.mark.slow  # a script in a fresh process
def test_evaluate_on_unreadable_model_is_a_clear_error(tmp_path):
    result = _script("evaluate.py", str(tmp_path / "missing"), str(tmp_path))
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr


def _labelled_folder(root: Path) -> Path:
    """covid/ and normal/ folders of small greyscale PNGs, one of them a broken file named broken.png."""
    rng = np.random.default_rng(1)
    for label in ("covid", "normal"):
        (root / label).mkdir(parents=True)
        for index in range(3):
            Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(root / label / f"{label}-{index}.png")
    (root / "covid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


@pytest.mark.slow
def test_evaluate_names_an_unreadable_file_and_skips_it_on_request(tmp_path):
    model = write_tiny_classifier(tmp_path / "model")
    data = _labelled_folder(tmp_path / "data")
    stopped = _script("evaluate.py", str(model), str(data), "--split", "all", "--no-cam-check")
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "broken.png" in stopped.stderr and "--skip-unreadable" in stopped.stderr
    out = tmp_path / "m.json"
    skipped = _script("evaluate.py", str(model), str(data), "--split", "all", "--no-cam-check", "--skip-unreadable",
                      "--out", str(out))
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "broken.png" in skipped.stderr and "1 unreadable file(s) skipped" in skipped.stdout
    report = json.loads(out.read_text())
    assert report["unreadable_skipped"] == 1 and report["n"] == 6


def _shipped(modality: str) -> Path:
    found = discover_models(WEIGHTS_DIR, task="classification", modality=modality)
    if not found:
        require_or_skip(f"no shipped {modality} classifier in weights/")
    return found[0][0]


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("modality", ["ct", "xray"])
def test_evaluate_reproduces_the_test_auc_in_the_shipped_card(real_data, modality, tmp_path):
    model = _shipped(modality)
    card = Classifier.load(model).card
    result = _script("evaluate.py", str(model), str(real_data), "--out", str(tmp_path / "m.json"), "--no-cam-check")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical to the model's training data" in result.stdout
    report = json.loads((tmp_path / "m.json").read_text())
    test = card.metrics["test"]
    assert report["n"] == test["n"]
    assert report["auc"] == pytest.approx(test["auc"], abs=2e-3)  # fp16 storage may move it in the 3rd decimal
    assert report["sensitivity"] == pytest.approx(test["sensitivity"], abs=0.02)


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_reports_the_heatmap_share_inside_the_lungs_per_class(real_data, tmp_path):
    """The shortcut check: with a shipped lung segmenter, evaluate.py measures where the X-ray model looks."""
    model = _shipped("xray")
    if not discover_models(WEIGHTS_DIR, task="segmentation", modality="xray"):
        require_or_skip("no shipped X-ray lung segmenter in weights/")
    result = _script("evaluate.py", str(model), str(real_data), "--cam-limit", "2", "--out", str(tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    shares = json.loads((tmp_path / "m.json").read_text())["cam_inside_lungs"]
    assert set(shares) == {"covid", "normal", "pneumonia"}
    assert all(0.0 <= v["mean"] <= 1.0 and v["n"] == 2 for v in shares.values())
    assert all(sum(s["n"] for s in v["by_source"].values()) == 2 for v in shares.values())  # and per source
    assert "inside the lungs" in result.stdout


@pytest.mark.real_data
@pytest.mark.slow
def test_an_ensemble_of_a_model_with_itself_scores_as_the_model_and_mirroring_is_reported_beside_it(real_data,
                                                                                                    tmp_path):
    model = _shipped("ct")
    result = _script("evaluate_ensemble.py", str(real_data), str(model), str(model), "--mirror",
                     "--out", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["model"]: row for row in json.loads((tmp_path / "e.json").read_text())["rows"]}
    name = Classifier.load(model).card.name
    assert rows["mean of 2"]["test"]["auc"] == pytest.approx(rows[name]["test"]["auc"], abs=1e-9)
    assert rows[name]["test"]["auc"] == pytest.approx(Classifier.load(model).card.metrics["test"]["auc"], abs=2e-3)
    assert {f"{name} + mirror", "mean of 2 + mirror"} <= set(rows)
    assert rows[name]["val"]["n"] > 0 and rows[name]["test"]["n"] == Classifier.load(model).card.metrics["test"]["n"]
    test = rows[name]["test"]  # screened as at every door: what is not answered is counted, the rest scored apart
    assert 0 <= test["not_answered"] < test["n"] and 0.0 <= test["auc_answered"] <= 1.0
    assert "refused or held back" in result.stdout


@pytest.mark.slow  # a script in a fresh process
@pytest.mark.real_data
def test_an_ensemble_refuses_members_tested_on_other_images(real_data):
    result = _script("evaluate_ensemble.py", str(real_data), str(_shipped("ct")), str(_shipped("xray")))
    assert result.returncode == 2 and "other images" in result.stderr and "Traceback" not in result.stderr
