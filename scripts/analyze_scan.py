"""Analyse one chest CT scan from the command line: the scan page's result (the quantitative reading in HU, the
severity score, the COVID-19 pattern rule; the classifier as a secondary reading) as JSON.

    python scripts/analyze_scan.py PATH [--out result.json] [--weights weights] [--series N] [--threads N]

PATH is a folder of DICOM files (nested folders too), a .zip of one, or a NIfTI volume (.nii / .nii.gz). The CT
classifier and the infection segmenter are the first of each found in the weights folder (by their cards), unless
--classifier / --segmenter name a model directory. Prints a short summary; --out writes the full record
(quantitative reading, burden by zone, the secondary classifier's per-slice probabilities unless withheld, timings); a
held-back scan's record carries its reason and no verdict, probability or flag. Exit status 2 when the scan cannot be
read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from covid_models import RESEARCH_USE_NOTICE
from covid_models.analysis.scan_analysis import analyse_scan, scan_models
from covid_models.analysis.scan_views import secondary_sentence
from covid_models.imaging.ct_volume import VolumeReadError
from covid_models.imaging.volumes import read_volume
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="DICOM folder, .zip or .nii/.nii.gz")
    parser.add_argument("--out", type=Path, help="write the full result as JSON here")
    parser.add_argument("--weights", type=Path, default=PROJECT_ROOT / "weights")
    parser.add_argument("--classifier", type=Path, help="a CT classifier directory (default: the first found)")
    parser.add_argument("--segmenter", type=Path, help="a CT infection segmenter directory (default: the first found)")
    parser.add_argument("--no-infection", action="store_true", help="skip the infection burden")
    parser.add_argument("--series", type=int, help="series number as listed (1 = the default, largest axial CT)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    classifiers, segmenters = scan_models(args.weights)
    classifier_dir = args.classifier or (classifiers[0] if classifiers else None)
    if classifier_dir is None:
        print(f"error: no CT classifier in {args.weights}", file=sys.stderr)
        return 1
    segmenter_dir = None if args.no_infection else args.segmenter or (segmenters[0] if segmenters else None)
    try:
        volume = read_volume(args.path, series=None if args.series is None else args.series - 1)
    except VolumeReadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classifier = Classifier.load(classifier_dir)
    segmenter = Segmenter.load(segmenter_dir) if segmenter_dir else None
    analysis = analyse_scan(volume, classifier, segmenter,
                            progress=lambda f, what: print(f"\r{what}: {f:4.0%}", end="", file=sys.stderr))
    print(file=sys.stderr)
    summary = analysis.summary() | {"input": args.path.name, "notice": RESEARCH_USE_NOTICE}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    reading = analysis.reading
    print(f"{args.path.name}: {volume.hu.shape[0]} slices, {analysis.scored.sum()} with lung; {reading.verdict}")
    if not analysis.held_back:
        print(f"lungs right {reading.lung['right']:.0f} ml, left {reading.lung['left']:.0f} ml; "
              + ", ".join(f"{name} {value:.1f} %" for name, value in reading.bands.items()))
        if reading.lesion is not None:
            print(f"lesion {reading.lesion_total:.1f} ml ({reading.lesion_percent():.2f} % of lung; right "
                  f"{reading.lesion_percent('right'):.2f} %, left {reading.lesion_percent('left'):.2f} %); severity "
                  f"{reading.severity_score}/{5 * len(reading.zones)}")
            for criterion in reading.criteria:
                print(f"  {'met    ' if criterion.met else 'not met'} {criterion.name}: {criterion.value} "
                      f"(needed {criterion.needed})")
    print(secondary_sentence(analysis))
    print(RESEARCH_USE_NOTICE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
