"""Within-source AUC by patient-grouped k-fold cross-validation: does the model separate COVID from the rest
among images of ONE source (one hospital, one website), where the source cannot give the answer away?

    python scripts/cross_validate.py --data ../shared/data --modality xray --source ieee8023 --folds 5 \\
        --add-manifest ../shared/data/xray-hannover --image-size 128 --epochs 8 --source-adversarial 0.3 \\
        --card weights/xray-efficientnet-lite0-v2

Every image of `--source` lands in exactly one held-out fold (patients kept whole, classes balanced). For
each fold a model is trained from ImageNet on everything else (the other folds and all other sources, with
a patient-level validation split for selection and calibration) and scores the held-out fold, which it never
saw. The pooled out-of-fold probabilities give the within-source AUC (patient-bootstrap CI) and per-fold
AUCs; `--card` writes them into that model's card as `metrics.within_source_cv` (the training recipe
should match the model's own). Costs `--folds` trainings: run it on a GPU for full-size recipes.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from covid_models import runtime
from covid_models.metrics import auc, bootstrap_ci
from covid_models.models.architectures import REGISTRY
from covid_models.models.checkpoint import read_card, save_card
from covid_models.models.inference import Classifier
from covid_models.models.trust import patient_folds
from covid_models.training.classifier import TrainConfig, train_classifier
from covid_models.training.data_folders import default_data_dir
from covid_models.training.evaluation import predict_frame
from covid_models.training.manifests import DataError, load_dataset, load_manifest
from covid_models.training.splits import LeakageError, ensure_split

DEFAULT_CLASSES = {"xray": "covid,normal,pneumonia", "ct": "covid,non_covid"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--modality", choices=("ct", "xray"), required=True)
    parser.add_argument("--source", required=True, help="the source whose images are cross-validated")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--add-manifest", action="append", default=[], type=Path)
    parser.add_argument("--arch", default="efficientnet_lite0", choices=sorted(REGISTRY))
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--source-adversarial", type=float, default=0.0)
    parser.add_argument("--lung-crop", type=float, metavar="MARGIN", help="as in train.py")
    parser.add_argument("--equalise", action="store_true",
                        help="histogram-equalise each (cropped) image: intensity normalisation against exposure "
                             "and export differences between sources")
    parser.add_argument("--lung-segmenter", type=Path, default=Path(__file__).resolve().parents[1] / "weights"
                        / "xray-lungs-unet", help="X-ray --lung-crop: the lung segmentation model folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="at most this many images per fold, split and class (smoke runs)")
    parser.add_argument("--work", type=Path, default=Path("runs/cross-validation"), help="fold models go here")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--card", type=Path, help="model directory whose card receives the result")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.configure()  # passive OpenMP waiting and the allocator thresholds (covid_models.runtime)
    args = parse_args(argv)
    classes = DEFAULT_CLASSES[args.modality].split(",")
    try:
        frame = pd.concat([load_dataset(args.data, args.modality), *(load_manifest(p) for p in args.add_manifest)],
                          ignore_index=True)
        frame = frame[frame["label"].isin(classes)].drop(columns="split", errors="ignore").reset_index(drop=True)
        inside = frame[frame["source"] == args.source].reset_index(drop=True)
        if inside.empty or inside["label"].nunique() < 2:
            raise DataError(f"source {args.source!r} needs images of at least two classes to cross-validate")
        folds = patient_folds(inside, args.folds, args.seed)
    except (DataError, LeakageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    positive, scored = np.zeros(len(inside)), np.zeros(len(inside), dtype=bool)
    per_fold = []
    for fold in range(args.folds):
        held = inside[folds == fold].assign(split="test")
        rest = frame[~frame["image"].isin(held["image"])]
        rest = ensure_split(rest.reset_index(drop=True), seed=args.seed)
        rest = rest[rest["split"] != "test"]  # the rest's own test split is not needed: the fold is the test
        fold_frame = pd.concat([rest, held], ignore_index=True)
        if args.limit:
            fold_frame = fold_frame.groupby(["split", "label"], group_keys=False).head(args.limit)
            held = fold_frame[fold_frame["split"] == "test"].reset_index(drop=True)
        out = args.work / f"fold-{fold}"
        config = TrainConfig(
            name=f"{args.source}-fold-{fold}", modality=args.modality, architecture=args.arch, classes=classes,
            positive_class="covid", epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
            lr=args.lr, seed=args.seed, source_adversarial=args.source_adversarial, lung_crop=args.lung_crop,
            lung_segmenter=str(args.lung_segmenter) if args.lung_crop is not None and args.modality == "xray"
            else None, equalise=args.equalise)
        print(f"fold {fold + 1}/{args.folds}: {len(held)} held-out {args.source} images, "
              f"{int((fold_frame['split'] == 'train').sum())} training images")
        train_classifier(config, fold_frame, out)
        classifier = Classifier.load(out)
        probabilities, _ = predict_frame(classifier, held, args.batch_size, progress=False)
        score = probabilities[:, classes.index("covid")]
        index = inside.index[inside["image"].isin(held["image"])]
        positive[index], scored[index] = score, True
        truth = (held["label"] == "covid").to_numpy()
        per_fold.append({"fold": fold, "n": int(len(held)), "n_covid": int(truth.sum()),
                         "auc": auc(truth, score) if 0 < truth.sum() < len(truth) else None})
        print(f"  fold AUC {per_fold[-1]['auc']}")
    truth = (inside.loc[scored, "label"] == "covid").to_numpy()
    result = {
        "source": args.source, "folds": args.folds, "n": int(scored.sum()), "n_covid": int(truth.sum()),
        "auc": auc(truth, positive[scored]),
        "auc_ci95": bootstrap_ci(auc, truth, positive[scored], groups=inside.loc[scored, "patient_id"].to_numpy()),
        "per_fold": per_fold,
        "command": "python scripts/cross_validate.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if args.card:
        card = read_card(args.card)
        card.metrics["within_source_cv"] = result
        save_card(args.card, card)
        print(f"wrote metrics.within_source_cv into {args.card}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
