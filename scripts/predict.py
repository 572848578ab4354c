"""Classify image files in batches and write one CSV row per file.

    python scripts/predict.py weights/xray-efficientnet-lite0 scans/ --out preds.csv

Every path given, and every image file or special file (pipe, device, broken or looping link) inside a folder, gets a
row: status "ok" with the prediction; "refused" (not a chest image, or not of the model's modality) or "held back" (the
model's out-of-distribution guard), with the reason and no probability, as the Analyze page holds them back
(`covid_models.analysis.image_checks.screen`, with the checking models installed beside the checkpoint or in --weights);
or "error" with the reason. Nothing is read before its type and size are checked on the opened file
(covid_models.imaging.io.read_image), and each row is written as soon as it is made, so a run stopped half-way keeps the
rows it made. Probabilities are calibrated; `positive` applies the model's default operating point, and `label` is the
class the reading stands for at that point (what a review session stores as the model's label), not always the most
probable class. Other regular files inside folders (a manifest, notes) are counted, not classified.
"""
from __future__ import annotations

import argparse
import csv
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from covid_models import runtime
from covid_models.imaging.formats import IMAGE_SUFFIXES
from covid_models.imaging.io import read_image
from covid_models.imaging.scan import ImageReadError

if TYPE_CHECKING:
    from covid_models.analysis.image_checks import CheckModels
    from covid_models.models.inference import Classifier


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+", help="files or folders (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--weights", type=Path,
                        help="folder of the models that check each image (the other modality's classifier, the X-ray "
                             "lung segmenter); default: the checkpoint's own folder")
    return parser.parse_args(argv)


def input_files(inputs: list[Path], ignored: list[Path] | None = None) -> Iterator[Path]:
    """Paths as given, and inside folders every entry with an image suffix or that is not a regular file.

    Only `lstat`/`stat` are called here: a pipe or a device is yielded (read_image refuses it with its reason),
    never opened. Regular files without an image suffix are appended to `ignored`.
    """
    for item in inputs:
        if not item.is_dir():
            yield item
            continue
        for path in sorted(item.rglob("*")):
            if path.is_dir():
                continue
            try:
                regular = stat.S_ISREG(path.stat().st_mode)
            except OSError:  # a dangling or looping link: read_image names the reason
                regular = False
            if not regular or path.suffix.lower() in IMAGE_SUFFIXES:
                yield path
            elif ignored is not None:
                ignored.append(path)


def rows(classifier: Classifier, files: Iterator[Path], models: CheckModels) -> Iterator[dict[str, object]]:
    """One row per path, in order: unreadable files with their error, the others screened as the Analyze page
    screens them (a probability only for an image that is neither refused nor held back)."""
    from covid_models.analysis.image_checks import screen

    classes = classifier.card.classes
    empty = {"label": "", **{f"p_{c}": "" for c in classes}, "positive_probability": "", "threshold": "",
             "positive": "", "ood_score": "", "out_of_distribution": ""}
    for path in files:
        try:
            scan = read_image(path)
        except ImageReadError as error:
            yield {"file": str(path), "status": "error", "error": str(error), **empty}
            continue
        except MemoryError:
            yield {"file": str(path), "status": "error", "error": "not enough memory to read this file", **empty}
            continue
        screened = screen(scan, path, classifier, models)
        if not screened.answered:
            yield {"file": str(path), "status": screened.status, "error": screened.reason, **empty}
            continue
        prediction = screened.prediction
        yield {"file": str(path), "status": "ok", "error": "", "label": prediction.reading_label,
               **{f"p_{c}": round(prediction.probabilities[c], 6) for c in classes},
               "positive_probability": round(prediction.positive_probability, 6),
               "threshold": round(prediction.threshold, 6), "positive": prediction.positive,
               "ood_score": "" if prediction.ood_score is None else round(prediction.ood_score, 3),
               "out_of_distribution": prediction.out_of_distribution}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.configure()  # before torch is imported (below)
    from tqdm import tqdm

    from covid_models.analysis.image_checks import check_models
    from covid_models.models.checkpoint import CheckpointError
    from covid_models.models.inference import Classifier

    try:
        classifier = Classifier.load(args.checkpoint)
        models = check_models(classifier, args.weights or args.checkpoint.resolve().parent)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    fields = ["file", "status", "error", "label", *[f"p_{c}" for c in classifier.card.classes],
              "positive_probability", "threshold", "positive", "ood_score", "out_of_distribution"]
    counts = {"ok": 0, "refused": 0, "held back": 0, "error": 0}
    ignored: list[Path] = []
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        files = input_files(args.inputs, ignored)
        for row in tqdm(rows(classifier, files, models), desc="classifying", unit="img"):
            counts[str(row["status"])] += 1
            writer.writerow(row)
            handle.flush()  # a run killed later keeps every row made so far
    if not any(counts.values()):
        print(f"error: no input files found ({len(ignored)} files without an image suffix ignored)", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {counts['ok']} classified, {counts['refused']} refused, {counts['held back']} held "
          f"back, {counts['error']} unreadable, {len(ignored)} other files ignored")
    print(f"checked with: {', '.join(models.names)}")
    print(f"model {classifier.name}, positive = {classifier.card.positive_class} probability >= "
          f"{classifier.card.threshold:.3f}, operating point {classifier.card.default_operating_point})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
