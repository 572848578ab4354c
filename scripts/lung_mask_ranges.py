"""The ranges a plausible X-ray lung mask lies in, and how often the shipped segmenter's masks fall outside them.

    python scripts/lung_mask_ranges.py [--data ../shared/data] [--segmenter weights/xray-lungs-unet]

Measures every hand-drawn mask of `segmentation/xray-lungs` (`covid_models.analysis.lung_plausibility.measure`: area,
balance, fill, height, sides) and prints each measure's range, and how many of these masks the library's ranges
call implausible (none, by construction). Then the segmenter's masks of the held-out X-ray films (the test split,
as the Analyze page makes them at display size) are judged, per source and label: how often a film gets no
heatmap share because its lung mask is implausible.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from covid_models import runtime

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT.parent / "shared" / "data")
    parser.add_argument("--segmenter", type=Path, default=PROJECT_ROOT / "weights" / "xray-lungs-unet")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.configure()
    from covid_models.analysis.image_checks import lung_mask
    from covid_models.analysis.lung_plausibility import implausible, measure
    from covid_models.imaging.io import read_image
    from covid_models.models.segmentation import Segmenter
    from covid_models.training.splits import held_out_images

    folder = args.data / "segmentation" / "xray-lungs"
    masks = [np.asarray(Image.open(folder / path).convert("L")) > 127
             for path in pd.read_csv(folder / "manifest.csv")["mask"]]
    shapes = pd.DataFrame([vars(measure(mask)) for mask in masks])
    print(f"{len(masks)} training masks of {folder}:")
    for column in ("area", "balance", "fill", "height"):
        print(f"  {column:<8} {shapes[column].min():.3f}-{shapes[column].max():.3f}")
    print(f"  sides    {int(shapes['sides'].sum())} of {len(shapes)} with one lung field on each side")
    print(f"  implausible by the library's ranges: {sum(implausible(mask) is not None for mask in masks)}")

    segmenter = Segmenter.load(args.segmenter)
    test = held_out_images(args.data, "xray")
    reasons = [implausible(lung_mask(segmenter, read_image(path))) for path in test["image"]]
    test = test.assign(implausible=[reason is not None for reason in reasons])
    print(f"segmenter {segmenter.card.name} on the {len(test)} held-out X-ray films: {int(test['implausible'].sum())} "
          f"implausible masks ({test['implausible'].mean():.1%})")
    print(test.groupby(["source", "label"])["implausible"].agg(["sum", "count"]).to_string())
    for reason, count in pd.Series([r for r in reasons if r is not None]).value_counts().items():
        print(f"  {count} x {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
