"""Train a lung or infection segmentation model and write a model directory (weights + card with Dice/IoU).

    python scripts/train_segmentation.py --data ../shared/data/segmentation/xray-lungs --modality xray \
        --target lungs --arch unet --out weights/xray-lungs-unet
    python scripts/train_segmentation.py --data ../shared/data/segmentation/ct-infection --modality ct \
        --target infection --folds 5 --orientation transpose --out weights/ct-infection-unet
    python scripts/train_segmentation.py --data ../shared/data/segmentation/ct-infection --modality ct \
        --target infection --folds 3 --orientation transpose --negatives ../shared/data/ct-negatives \
        --window-jitter --out weights/ct-infection-unet
    torchrun --nproc_per_node 4 scripts/train_segmentation.py ...   # multi-GPU (or multi-process CPU with gloo)

The data argument is a segmentation manifest.csv (image, mask, patient_id, source) or its folder. Without
--folds a seeded patient-level train/val/test split is made (near-duplicate pictures kept together), the
epoch with the best validation Dice is kept and the test split is scored once. With --folds the images
are cross-validated by patient and the shipped model is trained on all of them. Lung models get
post-processing (two largest components, holes filled) unless --no-postprocess.

--negatives adds real slices without the target (a manifest with image and patient_id, e.g. ct-negatives) with empty
masks: a seeded share of their patients (--negatives-held-out) is kept back and only scored (false-positive area),
the rest join training (folded by patient with --folds), drawn afresh each epoch (--negatives-per-positive).
--window-jitter re-windows every CT training slice in HU around the card's lung window (see WindowJitter).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from covid_models.imaging.preprocessing import WindowJitter
from covid_models.models.architectures import SEGMENTATION_ARCHITECTURES
from covid_models.models.model_card import model_name
from covid_models.models.segmentation import ORIENTATIONS, POSTPROCESS_LUNGS, TARGETS
from covid_models.training.manifests import DataError, load_segmentation_manifest
from covid_models.training.segmentation import SegmentationConfig, train_segmenter
from covid_models.training.splits import NEGATIVE_HELD_OUT, LeakageError, load_segmentation_negatives


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="segmentation manifest.csv or its folder")
    parser.add_argument("--modality", choices=("ct", "xray"), required=True)
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--arch", default="unet", choices=SEGMENTATION_ARCHITECTURES)
    parser.add_argument("--pretrained", default="imagenet", choices=("imagenet", "none"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256, help="a multiple of 32")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0, help="seeds the split or folds and training")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability cut-off stored in the card")
    parser.add_argument("--folds", type=int, help="cross-validate with k patient-grouped folds, then train on all")
    parser.add_argument("--orientation", default="as_is", choices=ORIENTATIONS,
                        help="how the stored images are turned into the display orientation the model will expect")
    parser.add_argument("--link-similarity", type=float, default=0.985,
                        help="keep images whose 32x32 thumbnails are at least this similar (cosine) on one side "
                             "of a split or fold (neighbouring slices when volume ids are unknown)")
    parser.add_argument("--no-postprocess", action="store_true", help="lungs: do not keep the two largest components")
    parser.add_argument("--half", action="store_true", help="store the weights as fp16")
    parser.add_argument("--negatives", type=Path,
                        help="manifest (or its folder) of slices without the target, trained on with empty masks")
    parser.add_argument("--negatives-held-out", type=float, default=NEGATIVE_HELD_OUT,
                        help="share of the negatives' patients kept back for the false-positive figure")
    parser.add_argument("--negatives-per-positive", type=float, default=0.5,
                        help="negatives drawn each epoch per positive image")
    parser.add_argument("--window-jitter", action="store_true",
                        help="CT: re-window each training slice in HU (level +-100 HU, width x0.8-1.25)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 avoids thrashing on a shared, busy CPU)")
    parser.add_argument("--limit", type=int, help="use at most this many pairs (smoke runs)")
    parser.add_argument("--resume", action="store_true", help="continue from the last finished epoch in --out")
    parser.add_argument("--name", type=model_name, help="model name in the card (default: the output folder's name)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    return parser.parse_args(argv)


def format_summary(metrics: dict) -> str:
    """The card's headline numbers, one line per metric."""
    block = metrics.get("test") or metrics["cross_validation"]["pooled"]
    lines = []
    for key in ("dice", "iou", "dice_postprocessed", "iou_postprocessed", "postprocessing_dice_change"):
        if key not in block:
            continue
        s = block[key]
        lines.append(f"{key:28s} {s['mean']:.4f} ± {s['std']:.4f} (95% CI {s['ci95_low']:.4f}-{s['ci95_high']:.4f},"
                     f" n={s['n']})")
    lines.append(f"{'pooled_dice':28s} {block['pooled_dice']:.4f}")
    for fold in metrics.get("cross_validation", {}).get("folds", []):
        lines.append(f"fold {fold['fold']}: n={fold['n']} Dice {fold['dice_mean']:.4f} IoU {fold['iou_mean']:.4f}")
    for key, what in (("negatives", "cross-validated negatives"), ("negatives_held_out", "held-out negatives")):
        block = metrics.get(key) or metrics.get("cross_validation", {}).get(key)
        if block:
            lines.append(f"{what}: n={block['n']}, mean false-positive area {block['area']['mean']:.5f}, "
                         f"{block['slices_with_any']} with any, {block['slices_over_1_percent']} over 1 %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        frame = load_segmentation_manifest(args.data, args.target)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.limit:
        frame = frame.head(args.limit)
    negatives = None
    if args.negatives is not None:
        try:
            negatives = load_segmentation_negatives(args.negatives, args.negatives_held_out, args.seed)
        except (DataError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    config = SegmentationConfig(
        name=args.name or args.out.name, modality=args.modality, target=args.target, architecture=args.arch,
        epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, pretrained=args.pretrained == "imagenet",
        threshold=args.threshold, folds=args.folds, link_similarity=args.link_similarity,
        orientation=args.orientation, half=args.half, negatives_per_positive=args.negatives_per_positive,
        window_jitter=WindowJitter() if args.window_jitter else None,
        postprocess=POSTPROCESS_LUNGS if args.target == "lungs" and not args.no_postprocess else None,
        extra={"command": "python scripts/train_segmentation.py "
                          + shlex.join(argv if argv is not None else sys.argv[1:]),
               "data_argument": str(args.data),
               **({"negatives_argument": str(args.negatives), "negatives_held_out": args.negatives_held_out}
                  if args.negatives is not None else {})},
    )
    try:
        config.validate()
        card = train_segmenter(config, frame, args.out, resume=args.resume, device=args.device, negatives=negatives)
    except (DataError, LeakageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if card is not None:
        print(format_summary(card.metrics))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
