"""Train a COVID-19 classifier and write a model directory (weights + card with test metrics).

    python scripts/train.py --data ../shared/data --modality ct --arch efficientnet_lite0 --out weights/ct-x
    torchrun --nproc_per_node 4 scripts/train.py ...      # multi-GPU (or multi-process CPU with gloo)

The data argument is the curated data root (with ct/ and xray/), a manifest.csv, or a class-per-folder
tree; $COVID_DATA_DIR is used when it is omitted. Without a `split` column a seeded, patient-grouped,
stratified split is made, and the patient-leakage check runs either way.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from covid_models import runtime
from covid_models.models.architectures import REGISTRY, PretrainedWeightsUnavailable
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.model_card import model_name
from covid_models.training.classifier import TrainConfig, train_classifier
from covid_models.training.data_folders import default_data_dir
from covid_models.training.evaluation import format_report
from covid_models.training.manifests import DataError
from covid_models.training.splits import LeakageError, training_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLASSES = {"xray": "covid,normal,pneumonia", "ct": "covid,non_covid"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="data root, manifest or folder tree")
    parser.add_argument("--modality", choices=("ct", "xray"), required=True)
    parser.add_argument("--arch", default="efficientnet_lite0", choices=sorted(REGISTRY))
    parser.add_argument("--classes", help="comma-separated; default: xray covid,normal,pneumonia; ct covid,non_covid")
    parser.add_argument("--positive-class", default="covid")
    parser.add_argument("--pretrained", default="imagenet", choices=("imagenet", "none"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, help="default: the architecture's own (224 or 299)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0, help="seeds the split (when one is made) and training")
    parser.add_argument("--patience", type=int, help="stop after this many epochs without validation AUC gain")
    parser.add_argument("--operating-point", default="youden", choices=("youden", "sensitivity_95"))
    parser.add_argument("--no-balance", action="store_true", help="do not draw classes equally often")
    parser.add_argument("--add-manifest", action="append", default=[], type=Path, metavar="MANIFEST",
                        help="another manifest of the same classes, split on its own by patient and joined "
                             "(e.g. ../shared/data/xray-hannover); repeatable")
    parser.add_argument("--extra-train", action="append", default=[], metavar="MANIFEST:LABEL[:ORIENTATION]",
                        help="add another manifest's images to the train split only, all with LABEL "
                             "(e.g. ../shared/data/segmentation/ct-infection:covid:transpose); repeatable")
    parser.add_argument("--source-adversarial", type=float, default=0.0, metavar="WEIGHT",
                        help="train against a gradient-reversed head predicting the manifest's source (0 = off)")
    parser.add_argument("--lung-crop", type=float, metavar="MARGIN",
                        help="crop each image to its lungs' box widened by MARGIN (e.g. 0.1) per side; CT finds the "
                             "box on the lung-window slice, X-ray takes it from --lung-segmenter's mask")
    parser.add_argument("--equalise", action="store_true",
                        help="histogram-equalise each (cropped) image: intensity normalisation against exposure "
                             "and export differences between sources")
    parser.add_argument("--lung-segmenter", type=Path, default=ROOT / "weights" / "xray-lungs-unet",
                        help="X-ray --lung-crop: the lung segmentation model folder (pinned in the card by its hash)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--half", action="store_true", help="store the weights as fp16")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--limit", type=int, help="use at most this many images per split and class (smoke runs)")
    parser.add_argument("--resume", action="store_true", help="continue from the last finished epoch in --out")
    parser.add_argument("--name", type=model_name, help="model name in the card (default: the output folder's name)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.configure()  # passive OpenMP waiting and the allocator thresholds (covid_models.runtime)
    args = parse_args(argv)
    if args.data is None:
        print("error: give --data or set COVID_DATA_DIR", file=sys.stderr)
        return 2
    classes = (args.classes or DEFAULT_CLASSES[args.modality]).split(",")
    try:
        frame = training_table(args.data, args.modality, classes, seed=args.seed, add_manifests=args.add_manifest,
                               extra_train=args.extra_train)
        if args.limit:
            frame = frame.groupby(["split", "label"], group_keys=False).head(args.limit)
    except (DataError, LeakageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = TrainConfig(
        name=args.name or args.out.name, modality=args.modality, architecture=args.arch, classes=classes,
        positive_class=args.positive_class, epochs=args.epochs, batch_size=args.batch_size,
        image_size=args.image_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        pretrained=None if args.pretrained == "none" else args.pretrained, balance=not args.no_balance,
        compile=args.compile, operating_point=args.operating_point, patience=args.patience, half=args.half,
        source_adversarial=args.source_adversarial, lung_crop=args.lung_crop,
        lung_segmenter=str(args.lung_segmenter) if args.lung_crop is not None and args.modality == "xray" else None,
        equalise=args.equalise,
        extra={"command": "python scripts/train.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "data_argument": str(args.data), "add_manifests": [str(p) for p in args.add_manifest],
               "extra_train": list(args.extra_train)},
    )
    try:
        card = train_classifier(config, frame, args.out, resume=args.resume, device=args.device)
    except (PretrainedWeightsUnavailable, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if card is not None:
        print(format_report(card.metrics["test"]))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
