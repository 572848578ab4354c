"""AppTest helpers for the page tests.

The small model folders, generated images and the running app that the tests share with the benchmarks
live in `covid_models.benchmarking`; they are imported here too, so that a page test needs one import line.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from covid_models.benchmarking import (  # noqa: F401  (shared with the benchmarks; tests import them from here)
    CHROMIUM,
    CHROMIUM_ARGS,
    CT_CLASSES,
    PROJECT_ROOT,
    XRAY_CLASSES,
    chest_like_png,
    make_weights_dir,
    running_app,
    wait_healthy,
    write_classifier,
    write_segmenter,
)
from covid_models.imaging.preprocessing import LUNG_WINDOW


def page_test(page: str, weights: Path, monkeypatch, *, timeout: float = 120) -> AppTest:
    """An AppTest of one page script, pointed at `weights`, with Streamlit's caches emptied.

    Pages import `pages.shared` the way `streamlit run` allows (the app's folder on sys.path), so the
    project root is put on sys.path for the test.
    """
    import streamlit as st

    monkeypatch.setenv("COVID_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(PROJECT_ROOT))
    st.cache_data.clear()
    st.cache_resource.clear()
    return AppTest.from_file(str(PROJECT_ROOT / page), default_timeout=timeout)


def with_lung_window(directory: Path) -> Path:
    """A fixture model's card given the CT models' HU window (the fixtures are written without one)."""
    card_path = directory / "card.json"
    card = json.loads(card_path.read_text())
    card["preprocessing"]["hu_window"] = list(LUNG_WINDOW)
    card_path.write_text(json.dumps(card))
    return directory


def with_ct_reading(directory: Path, lesion_percent: float = 1.0) -> Path:
    """A fixture infection model's card given the lesion-burden threshold of the COVID-19 pattern rule (the shipped
    one is fitted by scripts/fit_ct_reading.py; without one a scan gets no pattern reading and is held back)."""
    card_path = directory / "card.json"
    card = json.loads(card_path.read_text())
    card.setdefault("extra", {})["ct_reading"] = {"lesion_percent_threshold": lesion_percent, "fit_on": "a test value"}
    card_path.write_text(json.dumps(card))
    return directory


def with_lung_crop(directory: Path, segmenter: Path) -> Path:
    """A fixture X-ray model's card cropping its input to the lungs of `segmenter` (pinned by name and hash)."""
    card_path = directory / "card.json"
    card = json.loads(card_path.read_text())
    lungs = json.loads((segmenter / "card.json").read_text())
    card["preprocessing"].update(lung_crop=0.1, lung_segmenter=[lungs["name"], lungs["sha256"]])
    card_path.write_text(json.dumps(card))
    return directory


def labelled_sample_zip(negative: str, *, patients_per_class: int = 12, seed: int = 0) -> bytes:
    """A local sample as the Validate page takes it: chest-like PNGs of `covid` and `negative` patients (one film
    each, a random AP/PA view) with the labels.csv that names file, label, patient and view."""
    rng = np.random.default_rng(seed)
    lines = ["file,label,patient_id,view"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in ("covid", negative):
            for patient in range(patients_per_class):
                name = f"{label}/{patient}.png"
                archive.writestr(name, chest_like_png(size=96, seed=int(rng.integers(1 << 30))))
                lines.append(f"{name},{label},{label}-{patient},{rng.choice(['AP', 'PA'])}")
        archive.writestr("labels.csv", "\n".join(lines) + "\n")
    return buffer.getvalue()
