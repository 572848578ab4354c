"""Fit the lesion-burden threshold of the CT COVID-19 pattern rule on real non-COVID CT, and write it into the infection
segmenter's card (`extra.ct_reading`).

    python scripts/fit_ct_reading.py weights/ct-infection-unet ../shared/data [--dry-run]

The threshold is the 95th percentile of the lesion burden (percent of lung, after the minimum lesion size, inside the
HU lung mask) that the segmenter finds on the fit half of `ct-negatives/` (real LUNA16 / LIDC-IDRI screening slices,
one per patient; halves by a hash of the patient id; a segmenter trained with negatives is fitted only on those it
never trained on, the held-out part its card lists). The other half measures the false-positive share at that
threshold; the MedSeg COVID-19 slices of `segmentation/ct-infection/` give the share of positive slices above it
(in-sample for a segmenter trained on them). The four scans of `ct-volumes/` are never used.

The slices are 8-bit images without HU, so HU are recovered through a window: for ct-negatives the LUNA16
preprocessing's usual clip, -1000 to +400 HU (it puts the lungs near -850 and muscle near +40 HU in these images; the
source does not state it), for the MedSeg slices the segmenter's own window (what it was trained as). The segmenter
then sees the recovered HU through its card's window, as on a scan; a 0.7 mm pixel is assumed (LIDC's usual).
Rerun after replacing the segmenter: the threshold belongs to one model.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from covid_models.analysis.ct_quantitative import RuleFit, read_slice_quantities
from covid_models.models.checkpoint import CheckpointError, save_card
from covid_models.models.segmentation import Segmenter, orient
from covid_models.training.manifests import DataError
from covid_models.training.splits import negatives_never_trained_on

PERCENTILE = 95.0
PIXEL_MM = 0.7
NEGATIVES_WINDOW = (-300.0, 1400.0)  # centre, width: -1000 to +400 HU


def approximate_hu(pixels: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """A lung-window image in [0, 1] back to HU through the window (values beyond it are lost)."""
    centre, width = window
    return pixels * width + centre - width / 2


def burden_of(segmenter: Segmenter, path: Path, window: tuple[float, float], orientation: str = "as_is"
              ) -> float | None:
    """Lesion percent of lung of one slice image whose grey levels are `window`; None when no lung is found in it."""
    pixels = orient(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0, orientation)
    hu = approximate_hu(pixels, window)
    probability = segmenter.probability(segmenter.card.preprocessing.window_hu(hu))
    found = read_slice_quantities(hu, (PIXEL_MM, PIXEL_MM), probability, segmenter.threshold)
    if not found.has_lungs:
        return None
    return found.reading.lesion_percent()


def half(patient: str) -> str:
    return "fit" if int(hashlib.sha256(patient.encode()).hexdigest(), 16) % 2 == 0 else "held-out"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("segmenter", type=Path, help="a CT infection segmenter directory")
    parser.add_argument("data", type=Path, help="the data root holding ct-negatives/ and segmentation/ct-infection/")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, do not write the card")
    parser.add_argument("--out", type=Path, help="also write the per-slice burdens as CSV here")
    args = parser.parse_args(argv)
    try:
        segmenter = Segmenter.load(args.segmenter)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    negatives_dir, positives_dir = args.data / "ct-negatives", args.data / "segmentation" / "ct-infection"
    if not (negatives_dir / "manifest.csv").is_file():
        print(f"error: no ct-negatives/manifest.csv in {args.data}", file=sys.stderr)
        return 2
    rows = []
    negatives = pd.read_csv(negatives_dir / "manifest.csv")
    try:
        unseen = negatives_never_trained_on(segmenter.card)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if unseen is not None:
        negatives = negatives[[Path(image).stem in unseen for image in negatives["image"]]]
    for number, row in enumerate(negatives.itertuples()):
        rows.append({"set": "ct-negatives", "half": half(row.patient_id), "image": row.image,
                     "burden": burden_of(segmenter, negatives_dir / row.image, NEGATIVES_WINDOW)})
        print(f"\rct-negatives {number + 1}/{len(negatives)}", end="", file=sys.stderr)
    if (positives_dir / "manifest.csv").is_file():
        orientation = segmenter.card.extra.get("orientation", "transpose")
        positives = pd.read_csv(positives_dir / "manifest.csv")
        for number, row in enumerate(positives.itertuples()):
            rows.append({"set": "medseg-covid", "half": "", "image": row.image,
                         "burden": burden_of(segmenter, positives_dir / row.image,
                                               segmenter.card.preprocessing.hu_window, orientation)})
            print(f"\rMedSeg {number + 1}/{len(positives)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    with_lung = frame.dropna(subset=["burden"])
    fit = with_lung[(with_lung["set"] == "ct-negatives") & (with_lung["half"] == "fit")]["burden"].to_numpy()
    held = with_lung[(with_lung["set"] == "ct-negatives") & (with_lung["half"] == "held-out")]["burden"].to_numpy()
    positive = with_lung[with_lung["set"] == "medseg-covid"]["burden"].to_numpy()
    if fit.size == 0:
        print("error: no ct-negatives slice with lung to fit on", file=sys.stderr)
        return 2
    threshold = float(np.percentile(fit, PERCENTILE))
    command = "python scripts/fit_ct_reading.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    entry = {
        "lesion_percent_threshold": round(threshold, 4),
        "fit_on": (f"the {PERCENTILE:g}th percentile of the lesion burden this segmenter finds on {fit.size} real "
                   "non-COVID CT slices (ct-negatives: LUNA16 / LIDC-IDRI screening CT, fit half by patient"
                   + ("" if unseen is None else ", of those the segmenter never trained on") + "); never on "
                   "the shared scans"),
        "fitted_by": command,
        "held_out": {"negatives": int(held.size),
                     "false_positive_share": None if not held.size else round(float(np.mean(held >= threshold)), 4),
                     "medseg_covid_slices": int(positive.size),
                     "medseg_share_at_or_above": None if not positive.size else
                     round(float(np.mean(positive >= threshold)), 4),
                     "note": "MedSeg slices are the segmenter's training slices: in-sample, optimistic"},
        "slices_without_lung": int(frame["burden"].isna().sum()),
        "pixel_mm_assumed": PIXEL_MM, "negatives_window_assumed_hu": [-1000, 400],
    }
    print(json.dumps(entry, indent=2))
    print(f"fit half: median {np.median(fit):.3f} %, 95th percentile {threshold:.3f} %; held-out negatives "
          f"median {np.median(held):.3f} %" if held.size else "")
    if not args.dry_run:
        card = segmenter.card
        card.extra["ct_reading"] = entry
        save_card(args.segmenter, card)
        assert RuleFit.from_card(card.extra) is not None
        print(f"written to {args.segmenter / 'card.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
