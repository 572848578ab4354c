"""(Re)fit a classifier's out-of-distribution guard on labelled data, keeping its weights and metrics.

    python scripts/fit_ood.py weights/xray-efficientnet-lite0 ../shared/data

Uses the train split to fit and the validation split to set the threshold (the same seeded patient split
the model was trained with, or the manifest's own). A hospital can refit the guard on its own images so
that the warning means "unlike our images" rather than "unlike the public training set".
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from covid_models.models.checkpoint import CheckpointError, save_model_dir
from covid_models.models.inference import Classifier
from covid_models.models.ood import OodGuard
from covid_models.training.evaluation import predict_frame
from covid_models.training.manifests import DataError, load_dataset
from covid_models.training.splits import LeakageError, ensure_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path, help="data root, manifest.csv or folder tree")
    args = parser.parse_args(argv)
    try:
        classifier = Classifier.load(args.checkpoint)
        card = classifier.card
        frame = load_dataset(args.data, card.modality)
        frame = ensure_split(frame[frame["label"].isin(card.classes)].reset_index(drop=True),
                             seed=int(card.training.get("seed", 0)),
                             data_root=args.data if args.data.is_dir() else None)
    except (CheckpointError, DataError, LeakageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    _, train_features = predict_frame(classifier, train)
    _, val_features = predict_frame(classifier, val)
    labels = torch.tensor([card.classes.index(label) for label in train["label"]])
    guard = OodGuard.fit(torch.from_numpy(train_features), labels, torch.from_numpy(val_features))
    card.extra["ood"] = {**guard.card_entry(), "fitted_by": "python scripts/fit_ood.py " + shlex.join(
        sys.argv[1:] if argv is None else argv), "fitted_on": {"train": len(train), "val": len(val)}}
    save_model_dir(args.checkpoint, classifier.model, card, extra_tensors=guard.state())
    print(f"{card.name}: OOD guard fitted on {len(train)} training images, threshold {guard.threshold:.2f} "
          f"(99th percentile of {len(val)} validation images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
