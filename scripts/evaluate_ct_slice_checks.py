"""Refusals of the chest-image check on every DICOM slice of the shared CT scans, with and without the HU lung test.

    python scripts/evaluate_ct_slice_checks.py weights ../shared/data/ct-volumes

A slice "has lung" when the scan's 3-D HU lung mask (`covid_models.imaging.lung_mask`) holds lung on it. "Without HU"
runs the same check on the slice with its Modality tag hidden, which is the check before DICOM CT slices were read in HU
(the guards and the grey-level lung test alone). Prints one row per scan and the totals.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pydicom

from covid_models.analysis.image_checks import check_image
from covid_models.imaging.io import read_image
from covid_models.imaging.lung_mask import segment_lungs
from covid_models.imaging.volumes import read_volume
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("volumes", type=Path, help="the ct-volumes folder: one folder per scan with a dicom/ folder")
    args = parser.parse_args(argv)
    guards = {}
    for modality in ("xray", "ct"):
        found = discover_models(args.weights, "classification", modality)
        if found:
            guards[modality] = Classifier.load(found[0][0])
    print("scan | slices | with lung | refused with lung (HU / without HU) | refused without lung (HU / without HU)")
    totals = np.zeros(6, dtype=int)
    for folder in sorted(path for path in args.volumes.iterdir() if (path / "dicom").is_dir()):
        volume = read_volume(folder / "dicom")
        with_lung = np.count_nonzero(segment_lungs(volume.hu, volume.spacing).labels, axis=(1, 2)) > 0
        files = sorted((path for path in (folder / "dicom").rglob("*") if path.is_file()),
                       key=lambda path: -float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]))
        if len(files) != len(with_lung):
            print(f"{folder.name}: {len(files)} files but {len(with_lung)} slices; skipped", file=sys.stderr)
            continue
        counts = np.zeros(6, dtype=int)
        for path, lung in zip(files, with_lung, strict=True):
            data = path.read_bytes()
            scan = read_image(data, name=path.name)
            untagged = dataclasses.replace(scan, metadata=dataclasses.replace(scan.metadata, dicom_modality=None))
            new, old = check_image(scan, data, guards).refused, check_image(untagged, data, guards).refused
            counts += [1, lung, lung and new, lung and old, not lung and new, not lung and old]
        totals += counts
        print(f"{folder.name} | {counts[0]} | {counts[1]} | {counts[2]} / {counts[3]} | {counts[4]} / {counts[5]}")
    print(f"all | {totals[0]} | {totals[1]} | {totals[2]} / {totals[3]} | {totals[4]} / {totals[5]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
