"""False positives of an infection segmenter on CT without infection: area on single slices, ml on whole scans.

Two measures, both taken through `Segmenter` at the card's threshold, as the app computes its masks:
- on real non-COVID slices (PNG/JPEG, e.g. the held-out part of ct-negatives): the share of each slice's pixels called
  infection, and how many slices have any;
- on a non-COVID CT volume: the ml called infection inside the HU lung mask on the slices the scan analysis scores,
  computed as `covid_models.analysis.scan_analysis` computes a scan's infection burden (slices through the card's HU
  window).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covid_models.analysis.scan_analysis import burden, scored_slices
from covid_models.imaging.ct_volume import Volume
from covid_models.imaging.io import read_image
from covid_models.imaging.lung_mask import LungMask, segment_lungs
from covid_models.metrics import summary_with_ci
from covid_models.models.segmentation import Segmenter, orient

LARGE_AREA = 0.01  # a slice with at least this share of its pixels called infection counts as a large false positive


def false_positive_areas(segmenter: Segmenter, frame: pd.DataFrame) -> pd.DataFrame:
    """Per slice of `frame` (image, optional orientation): the share of its pixels called infection."""
    rows = []
    orientations = frame["orientation"] if "orientation" in frame.columns else ["as_is"] * len(frame)
    for image_path, orientation in zip(frame["image"], orientations, strict=True):
        pixels = orient(read_image(image_path).pixels, orientation)
        called = segmenter.mask(pixels)
        rows.append({"image": Path(image_path).stem, "area": float(called.mean()), "pixels": int(called.sum())})
    return pd.DataFrame(rows, columns=["image", "area", "pixels"])


def summarise_false_positive_areas(areas: pd.DataFrame) -> dict:
    """Mean share of pixels called infection (with its bootstrap CI), its median and maximum, and slice counts."""
    values = areas["area"].to_numpy()
    return {"n": int(len(values)), "area": summary_with_ci(values), "median_area": float(np.median(values)),
            "max_area": float(values.max()), "slices_with_any": int((values > 0).sum()),
            "slices_over_1_percent": int((values >= LARGE_AREA).sum())}


def scan_false_positive_ml(segmenter: Segmenter, volume: Volume, lungs: LungMask | None = None) -> dict:
    """Infection (ml, and percent of the lungs) that `segmenter` calls inside the lung mask of a scan without any.

    `lungs`: the volume's `segment_lungs` mask when it is already at hand (several models on one scan).
    """
    lungs = segment_lungs(volume.hu, volume.spacing) if lungs is None else lungs
    infection = np.zeros(lungs.labels.shape, dtype=bool)
    preprocessing = segmenter.card.preprocessing
    for k in np.nonzero(scored_slices(lungs))[0]:
        called = segmenter.mask(preprocessing.window_hu(volume.hu[k]), size=lungs.labels.shape[1:])
        infection[k] = called & (lungs.labels[k] > 0)
    result = burden(lungs, infection, segmenter.name)
    lung_ml = sum(result.lung_ml.values())
    return {"infection_ml": result.infection_ml, "lung_ml": lung_ml, "percent": result.percent,
            "scored_slices": int(scored_slices(lungs).sum())}
