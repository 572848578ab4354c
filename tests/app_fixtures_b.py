"""A tiny data folder in the curated layout, and the environment the app pages read, for the AppTests.

The folder mimics ../shared/data (xray/ without a split column, ct/ with the official one, a segmentation
set) with a few generated 64-96 px chest-like PNGs, so the pages run their real code paths in seconds.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from app_fixtures import chest_like_png
from streamlit.testing.v1 import AppTest


def _xray_rows() -> tuple[tuple[str, str, str], ...]:
    """(label, source, patient) of 36 films: 12 per label, a third of them a patient's second film (which a
    split must keep with the first); every covid film from ieee8023, as in the real data."""
    rows = []
    for label in ("covid", "normal", "pneumonia"):
        for index in range(12):
            source = "ieee8023" if label == "covid" or index >= 9 else "nih"
            rows.append((label, source, f"{source}:{label}-{index * 2 // 3}"))
    return tuple(rows)


XRAY_ROWS = _xray_rows()
CT_SPLITS = ("train", "train", "train", "val", "test", "test", "test")


def _write_images(folder: Path, prefix: str, n: int, seed: int, size: int) -> list[tuple[str, int, int]]:
    """n PNGs named <prefix>-0001.png...; returns (relative path, width, height) for the manifest."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        side = size + 8 * (index % 3)
        name = f"images/{prefix}-{index + 1:04d}.png"
        (folder / name).write_bytes(chest_like_png(side, seed=seed + index))
        rows.append((name, side, side))
    return rows


def make_data_dir(tmp_path: Path) -> Path:
    """data/ with xray/ (36 images, no split), ct/ (14, official split) and segmentation/xray-lungs/ (4 pairs)."""
    root = Path(tmp_path) / "data"
    xray = _write_images(root / "xray", "xr", len(XRAY_ROWS), seed=100, size=64)
    pd.DataFrame([{"image": image, "label": label, "finding": label, "source": source, "patient_id": patient,
                   "view": "PA", "license": "test", "origin": "fixture", "width": width, "height": height}
                  for (image, width, height), (label, source, patient) in zip(xray, XRAY_ROWS, strict=True)]
                 ).to_csv(root / "xray" / "manifest.csv", index=False)
    ct_rows = []
    ct_images = _write_images(root / "ct", "ct", 2 * len(CT_SPLITS), seed=300, size=64)
    for index, (image, width, height) in enumerate(ct_images):
        label = "covid" if index % 2 == 0 else "non_covid"
        ct_rows.append({"image": image, "label": label, "finding": label, "source": "ucsd",
                        "patient_id": f"ucsd-{label}:{index // 2}", "view": "axial", "license": "test",
                        "origin": "fixture", "width": width, "height": height, "split": CT_SPLITS[index // 2]})
    pd.DataFrame(ct_rows).to_csv(root / "ct" / "manifest.csv", index=False)
    lungs = root / "segmentation" / "xray-lungs"
    pairs = _write_images(lungs, "seg", 4, seed=500, size=64)
    (lungs / "masks").mkdir(parents=True, exist_ok=True)
    for image, _, _ in pairs:
        (lungs / image.replace("images/", "masks/")).write_bytes(chest_like_png(64, seed=1))
    pd.DataFrame([{"image": image, "mask": image.replace("images/", "masks/"), "source": "v7labs+ieee8023",
                   "patient_id": f"ieee8023:{i}", "license": "test", "origin": "fixture", "mask_fraction": 0.3}
                  for i, (image, _, _) in enumerate(pairs)]).to_csv(lungs / "manifest.csv", index=False)
    return root


def point_app_at(monkeypatch: pytest.MonkeyPatch, database: Path, data: Path | None) -> None:
    """The review database and data folder the pages use (the weights folder is set by `page_test`)."""
    monkeypatch.setenv("COVID_REVIEW_DB", str(database))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    if data is None:
        monkeypatch.delenv("COVID_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("COVID_DATA_DIR", str(data))


def clear_streamlit_caches() -> None:
    """Forget cached resources and data, as an app restart does."""
    st.cache_data.clear()
    st.cache_resource.clear()


def register_on_review_page(at: AppTest, name: str, passphrase: str, *, again: str | None = None,
                            timeout: float = 120) -> AppTest:
    """A first visit to the Review page (already run once): "Register as a new reviewer", the name and the passphrase
    typed twice (`again`, when given, the second time), then Register, which signs the new reviewer in."""
    at.radio(key="review-sign-in-mode").set_value("register")
    at.run(timeout=timeout)
    at.text_input(key="review-reviewer").input(name)
    at.text_input(key="review-passphrase").input(passphrase)
    at.text_input(key="review-passphrase-again").input(passphrase if again is None else again)
    at.button(key="review-register").click()
    return at.run(timeout=timeout)
