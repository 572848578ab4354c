"""Screen the studies a PACS query finds and write one CSV row per image (X-ray) or scan (CT series).

    COVID_DICOMWEB_URL=http://127.0.0.1:8042/dicom-web \\
    python scripts/pacs_screen.py weights/xray-efficientnet-lite0 --from 2024-01-05 --to 2024-01-05 \\
        --modality DX --modality CR --out screen.csv [--store]

The CSV has predict.py's columns; `file` holds the UIDs that fetch the image again (study/series/instance; for a
scan study/series), never a name. Each image is read and checked as an upload is (covid_models.pacs.screening: the
readers' limits, the chest-image check, the same analysis call), so the reading is the one every other door gives.
With --store (or COVID_DICOMWEB_STORE=1) a DICOM SR of each reading goes back into its study (no duplicates).

Resumable: a study whose rows in an existing --out are all "ok" is skipped, and rows are appended as they are made,
so a second run over the same query adds nothing. A study that fails (deleted, unreadable, PACS down) gets one
"error" row with the reason and is tried again next run; the others go on. Studies are fetched by --workers threads
(bounded concurrency: at most --workers studies are held ahead of the analysis); the models run one study at a time.
"""
from __future__ import annotations

import argparse
import csv
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date
from pathlib import Path

from covid_models import runtime
from covid_models.imaging.scan import ImageReadError
from covid_models.pacs.client import MODALITIES, Pacs, PacsError, StudyQuery, settings_from_environment

MAX_STUDIES = 10_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="classifier folder (its card's modality picks X-ray or CT)")
    parser.add_argument("--segmenter", type=Path, help="CT infection segmenter folder (lesion burden, severity)")
    parser.add_argument("--from", dest="date_from", type=date.fromisoformat, help="first study date (YYYY-MM-DD)")
    parser.add_argument("--to", dest="date_to", type=date.fromisoformat, help="last study date (YYYY-MM-DD)")
    parser.add_argument("--modality", action="append", choices=MODALITIES, help="repeat for several (default: the "
                        "model's: CR and DX, or CT)")
    parser.add_argument("--accession", default="")
    parser.add_argument("--patient-id", default="")
    parser.add_argument("--max-studies", type=int, default=MAX_STUDIES)
    parser.add_argument("--workers", type=int, default=2, help="studies fetched at once (default 2)")
    parser.add_argument("--store", action="store_true", help="store a DICOM SR of each reading back in its study")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (appended to when it exists)")
    return parser.parse_args(argv)


def done_studies(path: Path) -> set[str]:
    """Studies whose every row in an earlier run's CSV is "ok"."""
    if not path.is_file():
        return set()
    status: dict[str, bool] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            study = row["file"].split("/")[0]
            status[study] = status.get(study, True) and row["status"] == "ok"
    return {study for study, ok in status.items() if ok}


def query_studies(pacs: Pacs, query: StudyQuery, limit: int) -> list[str]:
    uids, offset = [], 0
    while len(uids) < limit:
        page = pacs.search_studies(query, offset=offset)
        uids += [study.uid for study in page.studies]
        if page.next_offset is None:
            break
        offset = page.next_offset
    return uids[:limit]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.configure()  # before torch is imported (below)
    from tqdm import tqdm

    from covid_models.imaging.ct_volume import VolumeReadError
    from covid_models.models.checkpoint import CheckpointError
    from covid_models.models.inference import Classifier
    from covid_models.models.segmentation import Segmenter
    from covid_models.pacs import screening
    from covid_models.pacs.structured_report import reading_report, store_report

    try:
        settings = settings_from_environment()
        classifier = Classifier.load(args.checkpoint)
        segmenter = Segmenter.load(args.segmenter) if args.segmenter else None
    except (PacsError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if settings is None:
        print("error: set COVID_DICOMWEB_URL to the PACS's DICOMweb root", file=sys.stderr)
        return 2
    modality = classifier.card.modality
    store = args.store or settings.store_results
    pacs = Pacs(settings)
    query = StudyQuery(date_from=args.date_from, date_to=args.date_to, accession=args.accession,
                       patient_id=args.patient_id,
                       modalities=tuple(args.modality or (("CT",) if modality == "ct" else ("CR", "DX"))))
    try:
        studies = query_studies(pacs, query, args.max_studies)
    except PacsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    done = done_studies(args.out)
    todo = [uid for uid in studies if uid not in done]
    classes = classifier.card.classes
    fields = ["file", "status", "error", "label", *[f"p_{c}" for c in classes], "positive_probability",
              "threshold", "positive", "ood_score", "out_of_distribution"]
    empty = {field: "" for field in fields}
    model_lock = threading.Lock()

    def fetch(study: str) -> tuple[str, list, PacsError | None]:
        try:
            items = screening.study_items(pacs, study, modality)
            fetched = [(item, screening.fetch_scan(pacs, item) if item.kind == "scan"
                        else screening.fetch_image(pacs, item)) for item in items]
            return study, fetched, None
        except PacsError as error:
            return study, [], error

    def analysed(study: str, fetched: list) -> Iterator[dict[str, object]]:
        for item, data in fetched:
            row = {**empty, "file": item.ref.text}
            try:
                with model_lock:
                    if item.kind == "scan":
                        _, analysis = screening.read_ct(data, classifier, segmenter)
                        reading = screening.scan_reading(item, classifier, analysis)
                        files = [content for _, content in data]
                    else:
                        _, prediction = screening.read_xray(data, classifier)
                        reading = screening.image_reading(item, classifier, prediction)
                        files = [data]
            except (ImageReadError, VolumeReadError) as error:
                yield {**row, "status": "error", "error": str(error)}
                continue
            probability = reading.probability
            if item.kind == "image" and not reading.held_back:
                row.update({f"p_{c}": round(prediction.probabilities[c], 6) for c in classes})
                row.update(label=prediction.reading_label, ood_score="" if prediction.ood_score is None
                           else round(prediction.ood_score, 3))
            elif item.kind == "scan" and probability is not None:
                row["label"] = analysis.reading_label(classes)
            row.update(status="ok", threshold=round(reading.threshold, 6), out_of_distribution=reading.held_back,
                       positive_probability="" if probability is None else round(probability, 6),
                       positive="" if reading.positive is None else reading.positive)
            if store:
                try:
                    store_report(pacs, reading_report(reading, screening.headers(files)))
                except PacsError as error:
                    row.update(status="error", error=f"read, but the report was not stored: {error}")
            yield row

    def fetched_in_order() -> Iterator[tuple[str, list, PacsError | None]]:
        """Studies fetched by `workers` threads, at most `workers` ahead of the analysis (memory stays bounded)."""
        workers = max(1, args.workers)
        with ThreadPoolExecutor(workers) as pool:
            pending: deque[Future] = deque()
            for study in todo:
                pending.append(pool.submit(fetch, study))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    counts = {"ok": 0, "error": 0}
    new_file = not args.out.is_file()
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new_file:
            writer.writeheader()
        for study, fetched, error in tqdm(fetched_in_order(), total=len(todo), desc="screening", unit="study"):
            rows = [{**empty, "file": study, "status": "error", "error": str(error)}] if error else \
                list(analysed(study, fetched)) or [{**empty, "file": study, "status": "error",
                                                    "error": f"no {modality} image in this study"}]
            for row in rows:
                counts[str(row["status"])] += 1
                writer.writerow(row)
            handle.flush()  # a run killed later keeps every study finished so far
    print(f"{args.out}: {len(studies)} studies found, {len(studies) - len(todo)} already done, {counts['ok']} rows "
          f"ok, {counts['error']} errors (model {classifier.name}, reports {'stored' if store else 'not stored'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
