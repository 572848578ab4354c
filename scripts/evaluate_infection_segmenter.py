"""CT infection segmenters side by side: MedSeg Dice, false-positive area on held-out non-COVID slices, and ml per scan.

    python scripts/evaluate_infection_segmenter.py --model weights/ct-infection-unet --model runs/ctseg-new \
        --data ../shared/data [--json runs/ctseg-compare.json]

Three figures per model, as markdown tables:
1. MedSeg Dice, cross-validated: read from each card (k-fold by patient; each of the 48 slices scored by a model that
   did not see it). With the first model as reference, the paired per-image Dice difference (same images, same folds)
   and its bootstrap 95 % CI.
2. False-positive area on the held-out part of ct-negatives (the patients `load_segmentation_negatives` keeps back with
   the same seed and share as training: no model here was trained or chosen on them): the share of each slice's pixels
   called infection.
3. ml called infection inside the HU lung mask of each shared CT scan (ct-volumes), computed as the scan analysis
   computes a scan's burden. On the non-COVID scans every ml is a false positive. These four scans are a smoke test:
   report them, never choose a model, a threshold or a rule on them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covid_models.imaging.lung_mask import segment_lungs
from covid_models.imaging.volumes import read_volume
from covid_models.models.segmentation import Segmenter
from covid_models.training.infection_false_positives import (
    false_positive_areas,
    scan_false_positive_ml,
    summarise_false_positive_areas,
)
from covid_models.training.manifests import DataError, read_manifest_csv
from covid_models.training.recipe_comparison import cross_validated_dice, paired_dice
from covid_models.training.splits import NEGATIVE_HELD_OUT, load_segmentation_negatives


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="a CT infection model directory (repeat; the first is the reference)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data root")
    parser.add_argument("--seed", type=int, default=0, help="the seed the negatives' held-out part was drawn with")
    parser.add_argument("--negatives-held-out", type=float, default=NEGATIVE_HELD_OUT)
    parser.add_argument("--no-scans", action="store_true", help="skip the ct-volumes scans")
    parser.add_argument("--scan", action="append", help="only this ct-volumes volume (repeat; default: all)")
    parser.add_argument("--no-slices", action="store_true", help="skip the Dice and held-out negatives tables")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        segmenters = [Segmenter.load(path) for path in args.model]
        negatives = load_segmentation_negatives(args.data / "ct-negatives", args.negatives_held_out, args.seed)
    except (DataError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    held_out = negatives[negatives["split"] == "test"]
    names = [str(path) for path in args.model]
    result: dict = {"models": names, "dice": {}, "negatives": {}, "scans": []}

    if not args.no_slices:
        _slice_tables(args, names, segmenters, held_out, result)
    if not args.no_scans:
        _scan_table(args, names, segmenters, result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=lambda v: v.item() if isinstance(v, np.generic)
                                        else str(v)))
    return 0


def _slice_tables(args: argparse.Namespace, names: list[str], segmenters: list[Segmenter], held_out: pd.DataFrame,
                  result: dict) -> None:
    """Cross-validated Dice from the cards (paired against the first model) and the held-out negatives' area."""
    print("## MedSeg infection Dice (cross-validated, read from each card)\n")
    print("| model | images | mean Dice (95 % CI) | pooled Dice | paired difference vs first (95 % CI) |")
    print("| --- | ---: | --- | ---: | --- |")
    reference = cross_validated_dice(segmenters[0].card.metrics)
    for name, segmenter in zip(names, segmenters, strict=True):
        cv = segmenter.card.metrics.get("cross_validation")
        if not cv:
            print(f"| {name} | - | no cross-validation in its card | | |")
            continue
        dice = cv["pooled"]["dice"]
        paired = paired_dice(reference, cross_validated_dice(segmenter.card.metrics)) if segmenter is not \
            segmenters[0] else None
        result["dice"][name] = {"pooled": cv["pooled"], "paired_vs_first": paired}
        change = "" if paired is None else (f"{paired['mean']:+.3f} ({paired['ci95_low']:+.3f} to "
                                            f"{paired['ci95_high']:+.3f}; {paired['better']} of {paired['n']} better)")
        print(f"| {name} | {dice['n']} | {dice['mean']:.3f} ({dice['ci95_low']:.3f}-{dice['ci95_high']:.3f}) | "
              f"{cv['pooled']['pooled_dice']:.3f} | {change} |")

    print(f"\n## False-positive area on {len(held_out)} held-out ct-negatives slices (one per patient)\n")
    print("| model | mean share of pixels called infection (95 % CI) | median | max | slices with any | "
          "slices >= 1 % |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, segmenter in zip(names, segmenters, strict=True):
        summary = summarise_false_positive_areas(false_positive_areas(segmenter, held_out))
        result["negatives"][name] = summary
        area = summary["area"]
        print(f"| {name} | {area['mean']:.4f} ({area['ci95_low']:.4f}-{area['ci95_high']:.4f}) | "
              f"{summary['median_area']:.4f} | {summary['max_area']:.4f} | {summary['slices_with_any']} | "
              f"{summary['slices_over_1_percent']} |")


def _scan_table(args: argparse.Namespace, names: list[str], segmenters: list[Segmenter], result: dict) -> None:
    """ml called infection inside each shared scan's lung mask, one lung mask per scan for all models."""
    _, volumes = read_manifest_csv(args.data / "ct-volumes" / "manifest.csv", {"volume", "path", "format"},
                                   "ct-volumes manifest")
    volumes = volumes[(volumes["format"] == "dicom-series")
                      & (volumes["volume"].isin(args.scan) if args.scan else True)]
    print("\n## ml called infection inside the lung mask per shared scan (smoke test; on non_covid scans every "
          "ml is a false positive)\n")
    print("| scan | label | lung ml | " + " | ".join(f"{name}: ml (% of lung)" for name in names) + " |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in names) + " |")
    for row in volumes.itertuples():
        volume = read_volume(str(args.data / "ct-volumes" / row.path))
        lungs = segment_lungs(volume.hu, volume.spacing)
        figures = [scan_false_positive_ml(segmenter, volume, lungs) for segmenter in segmenters]
        result["scans"].append({"volume": row.volume, "label": row.label,
                                "by_model": dict(zip(names, figures, strict=True))})
        cells = " | ".join(f"{f['infection_ml']:.1f} ({f['percent']:.2f} %)" for f in figures)
        print(f"| {row.volume} | {row.label} | {figures[0]['lung_ml']:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
