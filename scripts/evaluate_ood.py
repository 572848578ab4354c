"""How well the out-of-distribution guard flags images that are not what a model was trained on.

    python scripts/evaluate_ood.py weights/xray-efficientnet-lite0 ../shared/data

False-alarm rate: share of the model's own test-split images flagged. Detection rate: share flagged
among non-chest images (scikit-learn's sample photographs and crops of them; MR, ultrasound and
nuclear-medicine slices from pydicom's bundled files) and among images of the other modality (a CT
slice given to the X-ray model, and the reverse).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from covid_models.benchmarking import grey_photographs
from covid_models.imaging.io import read_image
from covid_models.imaging.scan import ImageReadError
from covid_models.models.inference import Classifier
from covid_models.training.evaluation import predict_frame
from covid_models.training.manifests import load_dataset
from covid_models.training.splits import ensure_split

OTHER_MODALITY = {"ct": "xray", "xray": "ct"}


def dicom_slices(modalities: tuple[str, ...] = ("MR", "US", "NM")) -> list[np.ndarray]:
    """Readable non-chest slices among pydicom's bundled test files."""
    import pydicom
    import pydicom.errors
    from pydicom.data import get_testdata_files

    slices = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files("*.dcm"):
            try:
                if str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "")) in modalities:
                    slices.append(read_image(path).pixels)
            except (ImageReadError, pydicom.errors.InvalidDicomError):  # unreadable bundled files are not used
                continue
    return slices


def flagged_share(classifier: Classifier, images: list[np.ndarray]) -> float:
    return float(np.mean([p.out_of_distribution for p in classifier.predict_batch(images)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path, help="the curated data root (with ct/ and xray/)")
    parser.add_argument("--other-limit", type=int, default=200, help="images of the other modality to try")
    parser.add_argument("--out", type=Path, help="write the rates as JSON here")
    args = parser.parse_args(argv)
    classifier = Classifier.load(args.checkpoint)
    card = classifier.card
    if classifier.ood is None:
        print(f"error: {card.name} has no out-of-distribution statistics", file=sys.stderr)
        return 2
    own = ensure_split(load_dataset(args.data, card.modality)[lambda f: f["label"].isin(card.classes)],
                       seed=int(card.training.get("seed", 0)), data_root=args.data)
    test = own[own["split"] == "test"].reset_index(drop=True)
    _, features = predict_frame(classifier, test, progress=False)
    import torch

    false_alarm = float(np.mean(classifier.ood.score(torch.from_numpy(features)) > classifier.ood.threshold))
    other = load_dataset(args.data, OTHER_MODALITY[card.modality]).sample(frac=1, random_state=0)
    other_images = [read_image(p).pixels for p in other["image"].head(args.other_limit)]
    sets = {"photographs": grey_photographs(), "MR/US/NM DICOM slices": dicom_slices(),
            f"{OTHER_MODALITY[card.modality]} images": other_images}
    rates = {"model": card.name, "threshold": classifier.ood.threshold,
             "false_alarm_on_test_split": {"rate": false_alarm, "n": len(test)},
             "detection": {name: {"rate": flagged_share(classifier, images), "n": len(images)}
                           for name, images in sets.items()}}
    print(f"{card.name}: OOD threshold {classifier.ood.threshold:.2f}")
    print("| images | n | flagged |")
    print("| --- | --- | --- |")
    print(f"| own test split (false alarms) | {len(test)} | {false_alarm:.1%} |")
    for name, value in rates["detection"].items():
        print(f"| {name} (detection) | {value['n']} | {value['rate']:.1%} |")
    if args.out:
        args.out.write_text(json.dumps(rates, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
