"""Seed/recipe ensembles and mirror test-time augmentation, measured on validation and test of one split.

    python scripts/evaluate_ensemble.py ../shared/data weights/ct-efficientnet-lite0 runs/ct-lite0-128-medseg \
        runs/ct-lite0-128-lungcrop --mirror

Every member must have been trained on the same validation and test images (for CT: the official UCSD split).
For each member, for the mean of the members' calibrated probabilities (`covid_models.models.inference.Ensemble`'s
rule) and, with `--mirror`, for the mean over each image and its left-right mirror, the COVID-vs-rest AUC on
validation and on test (95 % patient-bootstrap interval). Choose on the validation column: the test column is
what a choice made there gives on images no choice saw.

Every image is also screened as the Analyze page screens it (`covid_models.analysis.image_checks.screen` with the first
member and the checking models beside it, or in --weights; held back too when any member's guard holds it back, as
the ensemble's rule does): the AUCs above cover every image; each row also states the number of images not
answered and the AUC on the answered ones (what a user is shown).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from covid_models import runtime
from covid_models.analysis.image_checks import check_models, screen
from covid_models.imaging.io import read_image
from covid_models.imaging.scan import ImageReadError
from covid_models.metrics import auc, bootstrap_ci
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.inference import Classifier
from covid_models.training.evaluation import predict_frame
from covid_models.training.manifests import DataError
from covid_models.training.splits import LeakageError, training_table

SPLITS = ("val", "test")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the data root the members were trained on")
    parser.add_argument("members", type=Path, nargs="+", help="model directories")
    parser.add_argument("--mirror", action="store_true", help="also score the left-right mirror of every image")
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    parser.add_argument("--weights", type=Path,
                        help="folder of the models that check each image (the other modality's classifier, the X-ray "
                             "lung segmenter); default: the first member's folder")
    return parser.parse_args(argv)


def split_frames(data: Path, classifier: Classifier) -> dict:
    card = classifier.card
    frame = training_table(data, card.modality, card.classes, seed=int(card.training.get("seed", 0)),
                           add_manifests=card.training.get("add_manifests", ()))
    return {split: frame[frame["split"] == split].reset_index(drop=True) for split in SPLITS}


def answered(frames: dict, members: list[Classifier], weights: Path) -> dict[str, np.ndarray]:
    """Per split, whether each image gets an answer at every door: not refused by the image checks and not held
    back by any member's guard."""
    models = check_models(members[0], weights)
    result = {}
    for split, frame in frames.items():
        flags = []
        for path in frame["image"]:
            scan = read_image(path)
            flags.append(screen(scan, Path(path), members[0], models).answered
                         and not any(m.predict(scan).out_of_distribution for m in members[1:]))
        result[split] = np.array(flags, dtype=bool)
    return result


def main(argv: list[str] | None = None) -> int:
    runtime.configure()
    args = parse_args(argv)
    try:
        members = [Classifier.load(directory) for directory in args.members]
        frames = split_frames(args.data, members[0])
        for member in members[1:]:
            other = split_frames(args.data, member)
            if any(set(other[s]["image"]) != set(frames[s]["image"]) for s in SPLITS):
                raise DataError(f"{member.name} was validated or tested on other images than {members[0].name}")
        views = (False, True) if args.mirror else (False,)
        positive = members[0].card.classes.index(members[0].card.positive_class)
        scores = {(m.name, split, mirrored): predict_frame(m, frames[split], progress=False, mirror=mirrored)[0][
            :, positive] for m in members for split in SPLITS for mirrored in views}
        answers = answered(frames, members, args.weights or args.members[0].resolve().parent)
    except (CheckpointError, DataError, LeakageError, ImageReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = [(m.name, [m.name], (False,)) for m in members]
    if args.mirror:
        rows += [(f"{m.name} + mirror", [m.name], views) for m in members]
    rows.append((f"mean of {len(members)}", [m.name for m in members], (False,)))
    if args.mirror:
        rows.append((f"mean of {len(members)} + mirror", [m.name for m in members], views))
    table = []
    for label, names, used in rows:
        entry = {"model": label}
        for split in SPLITS:
            frame = frames[split]
            truth = (frame["label"] == members[0].card.positive_class).to_numpy()
            score = np.mean([scores[(name, split, mirrored)] for name in names for mirrored in used], axis=0)
            low, high = bootstrap_ci(auc, truth, score, groups=frame["patient_id"].to_numpy())
            kept = answers[split]
            entry[split] = {"auc": auc(truth, score), "auc_ci95": [low, high], "n": int(len(frame)),
                            "not_answered": int((~kept).sum()),
                            "auc_answered": auc(truth[kept], score[kept]) if len(set(truth[kept])) == 2 else None}
        table.append(entry)
        test = entry["test"]
        on_answered = "n/a" if test["auc_answered"] is None else f"{test['auc_answered']:.3f}"
        print(f"{label:<55} val AUC {entry['val']['auc']:.3f}   test AUC {test['auc']:.3f} "
              f"({test['auc_ci95'][0]:.3f}-{test['auc_ci95'][1]:.3f}); {test['not_answered']} test images refused or "
              f"held back, test AUC {on_answered} on the others")
    if args.out:
        command = "python scripts/evaluate_ensemble.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.out.write_text(json.dumps({"rows": table, "command": command}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
