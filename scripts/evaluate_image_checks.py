"""How often the chest-image check (covid_models.analysis.image_checks) refuses real chest images, and photographs.

    python scripts/evaluate_image_checks.py weights ../shared/data [--per-group N] [--features out.csv]

False refusals: share of held-out chest images refused (the X-ray and CT test splits, and every Hannover film,
which no model was trained on). Refusals of non-chest images: scikit-learn's sample photographs (whole and in
8 crops each, in colour and in grey) and generated colour pictures (gradients, blocks, noise). Also prints how
often the detected modality is the right one on the chest images (unknown counts as not right).
`--per-group N` checks a seeded random sample of N images of each chest group (all non-chest images are checked);
`--features` gets one row per image as it is checked, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from covid_models.analysis.image_checks import check_image, lung_mask
from covid_models.benchmarking import jpeg_bytes, photographs
from covid_models.imaging.io import read_image
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter
from covid_models.runtime import configure
from covid_models.training.splits import held_out_images


def generated(count: int = 12, seed: int = 0) -> list[tuple[str, bytes]]:
    """Colour pictures that are no photographs: gradients, random blocks and noise, 256-512 pixels."""
    rng = np.random.default_rng(seed)
    found = []
    for index in range(count):
        h, w = rng.integers(256, 513, size=2)
        kind = ("gradient", "blocks", "noise")[index % 3]
        if kind == "gradient":
            y, x = np.mgrid[0:h, 0:w] / max(h, w)
            array = np.stack([x, y, 1 - x], axis=2) * rng.uniform(0.5, 1.0, 3)
        elif kind == "blocks":
            array = rng.uniform(0, 1, (8, 8, 3)).repeat(h // 8 + 1, 0).repeat(w // 8 + 1, 1)[:h, :w]
        else:
            array = rng.uniform(0, 1, (h, w, 3))
        found.append((f"generated:{kind}{index}", jpeg_bytes(np.round(array * 255).astype(np.uint8))))
    return found


def chest_images(root: Path, per_group: int | None = None, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(group, name, bytes) of the held-out chest images: X-ray and CT test splits, all Hannover films
    (or a seeded sample of `per_group` of each)."""
    groups = {f"{modality} test": list(held_out_images(root, modality)["image"]) for modality in ("xray", "ct")}
    hannover = root / "xray-hannover"
    if (hannover / "manifest.csv").is_file():
        groups["xray hannover"] = [str(hannover / image) for image in pd.read_csv(hannover / "manifest.csv")["image"]]
    rng = np.random.default_rng(seed)
    found = []
    for group, paths in groups.items():
        if per_group is not None and per_group < len(paths):
            paths = [paths[i] for i in sorted(rng.choice(len(paths), per_group, replace=False))]
        found.extend((group, Path(path).name, Path(path).read_bytes()) for path in paths)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path, help="folder of model directories")
    parser.add_argument("data", type=Path, help="the curated data folder (xray/, ct/, xray-hannover/)")
    parser.add_argument("--features", type=Path, help="write every image's check to this CSV")
    parser.add_argument("--per-group", type=int, help="check a seeded sample of this many images per chest group")
    args = parser.parse_args(argv)
    configure()  # before torch computes: passive OpenMP waiting on a shared machine
    guards = {m: Classifier.load(d) for m in ("xray", "ct")
              for d, _ in discover_models(args.weights, "classification", m)[:1]}
    lungs = next((Segmenter.load(d) for d, c in discover_models(args.weights, "segmentation", "xray")
                  if c.classes == ["lungs"]), None)
    items = [("photograph", name, data) for name, data in photographs()]
    items += [("generated colour", name, data) for name, data in generated()]
    items += chest_images(args.data, args.per_group)
    rows = []
    for number, (group, name, data) in enumerate(items):
        scan = read_image(data, name=name)
        check = check_image(scan, data, guards, None if lungs is None else lung_mask(lungs, scan))
        rows.append({"group": group, "image": name, "refused": check.refused, "modality": check.modality,
                     "coloured_share": check.coloured_share, "lung_area": check.lung_area,
                     "lungs_plausible": check.lungs_plausible, "enclosed_dark": check.enclosed_dark,
                     **{f"guard_{m}": r for m, r in check.guard_ratios.items()}, "reasons": "; ".join(check.reasons)})
        if args.features:
            pd.DataFrame(rows[-1:]).to_csv(args.features, mode="a" if number else "w", header=not number, index=False)
    frame = pd.DataFrame(rows)
    truth = {"xray test": "xray", "xray hannover": "xray", "ct test": "ct"}
    print("| images | n | refused | modality detected right |")
    print("| --- | ---: | ---: | ---: |")
    for group, part in frame.groupby("group", sort=False):
        right = f"{(part['modality'] == truth[group]).mean():.1%}" if group in truth else "-"
        print(f"| {group} | {len(part)} | {int(part['refused'].sum())} ({part['refused'].mean():.1%}) | {right} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
