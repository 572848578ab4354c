"""Classify image files in batches and write one CSV row per file.

    python scripts/predict.py weights/xray-efficientnet-lite0 scans/ --out preds.csv

A file that cannot be read becomes a row with status "error" and the reason, never a crash.
Probabilities are calibrated; `positive` applies the model's default operating point.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from covid_models.checkpoint import CheckpointError
from covid_models.data import IMAGE_SUFFIXES
from covid_models.inference import Classifier, Prediction
from covid_models.io import ImageReadError, Scan, read_image


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+", help="files or folders (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser.parse_args(argv)


def input_files(inputs: list[Path]) -> Iterator[Path]:
    """Files as given, and image-like files inside folders (every file given by name is tried)."""
    for item in inputs:
        if item.is_dir():
            yield from sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield item


def rows(classifier: Classifier, files: list[Path], batch_size: int) -> Iterator[dict[str, object]]:
    classes = classifier.card.classes
    empty = {"label": "", **{f"p_{c}": "" for c in classes}, "positive_probability": "", "threshold": "",
             "positive": "", "ood_score": "", "out_of_distribution": ""}
    with tqdm(total=len(files), desc="classifying", unit="img") as bar:
        for start in range(0, len(files), batch_size):
            readable: list[tuple[Path, Scan]] = []
            for path in files[start:start + batch_size]:
                try:
                    readable.append((path, read_image(path)))
                except ImageReadError as error:
                    yield {"file": str(path), "status": "error", "error": str(error), **empty}
                except OSError as error:
                    yield {"file": str(path), "status": "error", "error": f"cannot open the file: {error.strerror}",
                           **empty}
            predictions: list[Prediction] = classifier.predict_batch([scan for _, scan in readable], batch_size)
            for (path, _), prediction in zip(readable, predictions, strict=True):
                yield {"file": str(path), "status": "ok", "error": "", "label": prediction.label,
                       **{f"p_{c}": round(prediction.probabilities[c], 6) for c in classes},
                       "positive_probability": round(prediction.positive_probability, 6),
                       "threshold": round(prediction.threshold, 6), "positive": prediction.positive,
                       "ood_score": "" if prediction.ood_score is None else round(prediction.ood_score, 3),
                       "out_of_distribution": prediction.out_of_distribution}
            bar.update(len(files[start:start + batch_size]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        classifier = Classifier.load(args.checkpoint)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    files = list(input_files(args.inputs))
    if not files:
        print("error: no input files found", file=sys.stderr)
        return 2
    fields = ["file", "status", "error", "label", *[f"p_{c}" for c in classifier.card.classes],
              "positive_probability", "threshold", "positive", "ood_score", "out_of_distribution"]
    errors = 0
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows(classifier, files, args.batch_size):
            errors += row["status"] == "error"
            writer.writerow(row)
    print(f"wrote {args.out}: {len(files) - errors} classified, {errors} unreadable "
          f"(model {classifier.name}, positive = {classifier.card.positive_class} probability >= "
          f"{classifier.card.threshold:.3f}, operating point {classifier.card.default_operating_point})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
