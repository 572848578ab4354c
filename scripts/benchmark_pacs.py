"""What the PACS path costs: listing 1,000 studies by QIDO-RS, and opening the first image of a PACS session.

Starts a scratch Orthanc (covid_models.pacs.scratch_orthanc: loopback, its own storage in a temporary folder;
needs the Debian packages orthanc and orthanc-dicomweb) unless --url names a DICOMweb service to use instead
(it then gets the generated studies). Generates --studies tiny synthetic studies (one 16 x 16 DX image each), stored
by STOW-RS in batches, then times:

* listing them all: the page's paged query (`Pacs.search_studies`, 50 a page, as the Review page and
  pacs_screen.py page through results) and one unpaged request;
* starting a session from one X-ray study (per item: the study's items, the fetch, the chest-image check and the
  prediction with the shipped X-ray model);
* opening the first image of a session: what the Review page does for an image item not yet in its cache
  (`Pacs.fetch_instance`: the series metadata, the size check, the WADO-RS retrieval) and reading it
  (`io.read_image`), for a 2,500 x 2,048 16-bit DX image (10 MB, a typical digital radiograph) and for a real
  radiograph of the data folder (512 px, 8-bit).

Prints a table (median and spread over --repeats runs); asserts nothing.

    PYTHONPATH=. python scripts/benchmark_pacs.py [--studies 1000] [--repeats 5] [--url URL]
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from covid_models.imaging.io import read_image
from covid_models.models.inference import Classifier
from covid_models.pacs import screening
from covid_models.pacs.client import InstanceRef, Pacs, PacsSettings, StudyQuery
from covid_models.pacs.scratch_orthanc import OrthancServer, missing_orthanc, xray_dicom

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
DATA_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xray" / "images" / "xr-ieee-0001.jpg"


def dx(pixels: np.ndarray, study_date: str = "20240105") -> Dataset:
    """One DX image (8- or 16-bit MONOCHROME2) in a study of its own, as a Part 10 file read back (STOW-RS sends
    datasets)."""
    return pydicom.dcmread(io.BytesIO(xray_dicom(pixels, patient_id="BENCH", study_date=study_date)))


def timed(action: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), min(seconds), max(seconds)


def list_all(pacs: Pacs, query: StudyQuery) -> int:
    offset, found = 0, 0
    while True:
        page = pacs.search_studies(query, offset=offset)
        found += len(page.studies)
        if page.next_offset is None:
            return found
        offset = page.next_offset


def session_item(url: str, study_uid: str, classifier: Classifier) -> None:
    """What starting a Review session from one X-ray study costs per item (pages/review_pacs.py: the study's items,
    the image fetched, the chest-image check and the prediction; the heatmap comes when the item is shown)."""
    pacs = Pacs(PacsSettings(url, timeout=120))
    for item in screening.study_items(pacs, study_uid, "xray"):
        screening.read_xray(screening.fetch_image(pacs, item), classifier)


def run(url: str, n_studies: int, repeats: int) -> None:
    pacs = Pacs(PacsSettings(url, timeout=120))
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for first in range(0, n_studies, 100):
        pacs.client.store_instances([dx(rng.integers(0, 255, (16, 16), dtype=np.uint8), "19990101")
                                     for _ in range(min(100, n_studies - first))])
    print(f"stored {n_studies} studies in {time.perf_counter() - started:.1f} s")
    query = StudyQuery(modalities=("DX",), patient_id="BENCH", date_from=date(1999, 1, 1), date_to=date(1999, 1, 1))
    assert list_all(pacs, query) == n_studies
    rows = [("list all studies, 50 a page", timed(lambda: list_all(pacs, query), repeats)),
            ("list all studies, one request", timed(lambda: pacs.search_studies(query, limit=n_studies), repeats))]
    model = WEIGHTS / "xray-efficientnet-lite0"
    classifier = Classifier.load(model) if model.is_dir() else None
    films = {"DX 2500 x 2048, 16-bit (10 MB)": rng.integers(0, 4095, (2500, 2048), dtype=np.uint16)}
    if DATA_IMAGE.is_file():
        films["real radiograph, 512 px 8-bit"] = np.asarray(Image.open(DATA_IMAGE).convert("L"))
    for name, pixels in films.items():
        ds = dx(pixels)
        pacs.client.store_instances([ds])
        ref = InstanceRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        fresh = lambda ref=ref: Pacs(PacsSettings(url, timeout=120)).fetch_instance(ref)  # noqa: E731 (new connection)
        rows.append((f"open first image: fetch, {name}", timed(fresh, repeats)))
        rows.append((f"open first image: fetch + read, {name}",
                     timed(lambda fresh=fresh: read_image(fresh()), repeats)))
        if classifier is not None:
            rows.append((f"session item: list, fetch, check, predict, {name}",
                         timed(lambda ds=ds: session_item(url, ds.StudyInstanceUID, classifier), repeats)))
    print(f"\n{'what':76s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for what, (median, low, high) in rows:
        print(f"{what:76s} {median:9.3f} {low:7.3f} {high:7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--url", help="a DICOMweb root to use instead of a scratch Orthanc")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.studies, args.repeats)
        return 0
    reason = missing_orthanc()
    if reason:
        print(f"error: {reason}; or give --url")
        return 2
    with tempfile.TemporaryDirectory() as folder:
        server = OrthancServer(Path(folder))
        server.start()
        try:
            print(f"scratch Orthanc {server.base} (storage in {folder})")
            run(server.dicomweb_url, args.studies, args.repeats)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
