"""Speed and memory of the Analyze page (a benchmark, not a test: it prints a markdown table).

    python scripts/benchmark_app.py                            # real images from $COVID_DATA_DIR or ../shared/data
    python scripts/benchmark_app.py --n 20 --modality xray --weights weights
    python scripts/benchmark_app.py --busy                      # with a second torch process busy throughout

Starts `streamlit run streamlit_app.py` on 127.0.0.1 and drives Debian's Chromium (/usr/bin/chromium) through
Playwright: each of N different real images is uploaded and the time until its complete result is visible
(probability, heatmap and mask images loaded) is measured in the browser, and the time until its probability
is shown. The first uploads (the warm-up) are reported on their own, the first after the fresh server start against
the second: the server loads and runs the models as it starts, before it answers (streamlit_app.py's `st.App`
lifespan), so the first should be no slower than the second. The server's resident memory
(streamlit and its children) is read after a warm-up, after the N analyses and after opening every other page
(the Dataset page with the data folder's live statistics), and its peak is sampled throughout. Then the same
work is timed in-process through the library (read, chest-image check, `analyse`), to show what the app adds.
When weights/ holds no classifier of the modality, small untrained fixture models are used (same sizes of
work only if their architecture and input size match the real ones: the table says which were used).
`--busy` keeps a second torch process (matrix products with torch's default settings, as a training run would)
computing on the same cores during the browser and library runs. The last line of the output is, for scripts:
`upload-to-probability median N ms; upload-to-result median M ms; library path L ms; first upload F ms, second S ms`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from covid_models.analysis.image_analysis import analyse
from covid_models.analysis.image_checks import check_image, lung_mask
from covid_models.benchmarking import CHROMIUM, CHROMIUM_ARGS, make_weights_dir, percentile, running_app, server_rss_mb
from covid_models.imaging.io import read_image
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter
from covid_models.training.data_folders import DATA_DIR_ENV
from covid_models.training.manifests import load_dataset

ROOT = Path(__file__).resolve().parents[1]

UPLOAD_INPUT = '[data-testid="stFileUploaderDropzoneInput"]'
TOUR = ("review", "performance", "dataset", "about")
PAGE_SETTLED = """() => !document.querySelector('[data-testid="stSpinner"]')
  && !(document.querySelector('[data-testid="stStatusWidget"]')?.textContent || '').includes('Running')"""
BUSY = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a = torch.tanh(a @ a / 32)\n"
POLL_MS = 20  # not every animation frame: on 2 cores, rendering 60 frames/s would slow the server it measures
# The probability of `name` is shown when its heading and a metric value are (the previous result was removed).
PROBABILITY_SHOWN = """(name) => [...document.querySelectorAll('h3')].some(h => h.textContent.trim() === name)
  && !!document.querySelector('[data-testid="stMetricValue"]')"""
# The result of `name` is complete when its heading, the probability and every image of its block are loaded.
RESULT_COMPLETE = """([name, masks]) => {
  const heading = [...document.querySelectorAll('h3')].find(h => h.textContent.trim() === name);
  if (!heading || !document.querySelector('[data-testid="stMetricValue"]')) return false;
  const captions = [...document.querySelectorAll('[data-testid="stImageCaption"]')].map(c => c.textContent);
  if (!captions.some(c => c.includes('Grad-CAM')) || (masks && !captions.some(c => c.includes('mask')))) return false;
  const images = [...document.querySelectorAll('[data-testid="stImage"] img')];
  return images.length >= (masks ? 3 : 2) && images.every(img => img.complete && img.naturalWidth > 0);
}"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = os.environ.get(DATA_DIR_ENV) or str(ROOT.parent / "shared" / "data")
    parser.add_argument("--data", type=Path, default=Path(default_data), help="curated data root (xray/, ct/)")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights", help="folder of model directories")
    parser.add_argument("--modality", choices=("xray", "ct"), default="xray")
    parser.add_argument("--n", type=int, default=20, help="number of measured uploads (different images)")
    parser.add_argument("--warmup", type=int, default=2, help="uploads before measuring (reported on their own)")
    parser.add_argument("--busy", action="store_true", help="a second torch process computes throughout")
    return parser.parse_args()


def pick_images(data: Path, modality: str, count: int) -> list[Path]:
    """`count` different images of the modality, spread over the manifest (seeded, so runs compare)."""
    frame = load_dataset(data, modality)
    return [Path(p) for p in frame.sample(n=min(count, len(frame)), random_state=0)["image"]]


class PeakSampler:
    """The server's highest RSS, sampled every 0.2 s in a background thread while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, server_rss_mb(self.pid))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def visit_other_pages(page, url: str) -> None:
    """Each other page as a user opens it (the Dataset page with the data folder's live statistics)."""
    for path in TOUR:
        page.goto(f"{url}/{path}")
        page.get_by_test_id("stMain").get_by_role("heading").first.wait_for()
        page.wait_for_function(PAGE_SETTLED, polling=200)



def browser_run(weights: Path, data: Path, modality: str, images: list[Path], warmup: int, masks: bool
                ) -> dict[str, float]:
    """Upload each image alone (the previous one removed) and time until its result is complete; then open
    the other pages. The server's RSS is read after the warm-up, after the uploads and after the tour, and
    its peak is sampled throughout."""
    from playwright.sync_api import sync_playwright

    env = {"COVID_WEIGHTS_DIR": str(weights), "COVID_DATA_DIR": str(data)}
    with tempfile.TemporaryDirectory() as tmp, \
            running_app(env | {"COVID_REVIEW_DB": f"{tmp}/reviews.sqlite3"}) as (url, process), \
            PeakSampler(process.pid) as sampler, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.wait_for_selector(UPLOAD_INPUT, state="attached")
        if modality == "ct":  # JPEG slices carry no modality: choose it as a user would
            page.get_by_test_id("stSidebar").get_by_test_id("stRadio").get_by_text("CT", exact=True).click()
            page.get_by_test_id("stSidebar").get_by_text(re.compile("^Test AUC")).first.wait_for()
        times, probability_times, warmup_times, rss_warm = [], [], [], 0.0
        for index, image in enumerate(images):
            delete = page.get_by_test_id("stFileChipDeleteBtn")
            if delete.count():  # the previous image leaves, so each page shows one result, like a user's
                delete.first.click()
                page.get_by_text("Upload one or more images to analyse them.").wait_for()
            started = time.perf_counter()
            page.set_input_files(UPLOAD_INPUT, str(image))
            page.wait_for_function(PROBABILITY_SHOWN, arg=image.name, polling=POLL_MS)
            probability_elapsed = time.perf_counter() - started
            page.wait_for_function(RESULT_COMPLETE, arg=[image.name, masks], polling=POLL_MS)
            elapsed = time.perf_counter() - started
            if index >= warmup:
                times.append(elapsed)
                probability_times.append(probability_elapsed)
            else:
                warmup_times.append(elapsed)
            if index == warmup - 1:
                rss_warm = server_rss_mb(process.pid)
        rss_end = server_rss_mb(process.pid)
        visit_other_pages(page, url)
        rss_tour = server_rss_mb(process.pid)
        browser.close()
    return {"median": statistics.median(times), "p90": percentile(times, 90), "n": len(times),
            "probability": statistics.median(probability_times), "warmup": warmup_times,
            "rss_warm": rss_warm, "rss_end": rss_end, "rss_tour": rss_tour, "rss_peak": sampler.peak}


def library_run(weights: Path, modality: str, images: list[Path], warmup: int) -> dict[str, float]:
    """What the page computes for one upload, in this process: read, the chest-image check (colour, both
    modalities' guards, lung fields) and `analyse` (the heatmap and the masks the check has not made; the
    prediction is the check's guard pass), as the page shares them."""
    classifier = Classifier.load(discover_models(weights, "classification", modality)[0][0])
    segmenters = [Segmenter.load(d) for d, _ in discover_models(weights, "segmentation", modality)]
    guards = {m: Classifier.load(found[0][0]) for m in ("xray", "ct")
              if (found := discover_models(weights, "classification", m))}
    lungs = next((Segmenter.load(d) for d, card in discover_models(weights, "segmentation", "xray")
                  if card.classes == ["lungs"]), None)
    steps: dict[str, list[float]] = {"read": [], "check": [], "analyse": [], "total": []}
    for index, image in enumerate(images):
        marks = [time.perf_counter()]
        data = image.read_bytes()
        scan = read_image(data, name=image.name)
        marks.append(time.perf_counter())
        mask = None if lungs is None else lung_mask(lungs, scan)
        check = check_image(scan, data, guards, mask)
        marks.append(time.perf_counter())
        shared = {} if mask is None or modality != "xray" else {lungs.target: mask}  # as the page shares them
        analyse(scan, [classifier], [s for s in segmenters if s.target not in shared], masks=shared,
                prediction=check.predictions.get(modality))
        marks.append(time.perf_counter())
        if index >= warmup:
            for name, start, end in zip(steps, marks, marks[1:], strict=False):
                steps[name].append(end - start)
            steps["total"].append(marks[-1] - marks[0])
    return {name: statistics.median(values) for name, values in steps.items()} | {
        "total_p90": percentile(steps["total"], 90), "segmenters": len(segmenters)}


@contextlib.contextmanager
def second_torch_process(busy: bool):
    """A process computing with torch on the same cores for the block's duration (when `busy`)."""
    if not busy:
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", BUSY], env=os.environ | {"COVID_RUNTIME": "default"})
    try:
        time.sleep(2)  # torch loaded and computing
        yield
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    images = pick_images(args.data, args.modality, args.n + args.warmup)
    weights, kind = args.weights, "shipped"
    with tempfile.TemporaryDirectory() as tmp:
        if not discover_models(weights, "classification", args.modality):
            weights, kind = make_weights_dir(Path(tmp)), "untrained fixture (64 px)"
        cards = [c for _, c in discover_models(weights, None, args.modality)]
        masks = any(c.task == "segmentation" for c in cards)
        with second_torch_process(args.busy):
            browser = browser_run(weights, args.data, args.modality, images, args.warmup, masks)
            library = library_run(weights, args.modality, images, args.warmup)
    models = ", ".join(f"{c.name} ({c.architecture}, {c.preprocessing.image_size} px)" for c in cards)
    print(f"\nAnalyze page, {args.modality}, {browser['n']} uploads of different real images after "
          f"{args.warmup} warm-up; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"models ({kind}): {models}; 1-minute load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (other processes on the machine slow every figure down)"
          + ("; a second torch process busy throughout" if args.busy else "") + "\n")
    print("| measure | value |\n| --- | ---: |")
    print(f"| browser: upload to probability, median | {browser['probability'] * 1000:.0f} ms |")
    warmup = " / ".join(f"{t * 1000:.0f}" for t in browser["warmup"])
    print(f"| browser: first {len(browser['warmup'])} uploads after a fresh server start, upload to complete result "
          f"| {warmup} ms |")
    first_second = browser["warmup"][:2]
    if len(first_second) == 2:
        print(f"| browser: first upload / second upload after the start | {first_second[0] / first_second[1]:.2f}x |")
    print(f"| browser: upload to complete result, median | {browser['median'] * 1000:.0f} ms |")
    print(f"| browser: upload to complete result, p90 | {browser['p90'] * 1000:.0f} ms |")
    print(f"| server RSS after warm-up ({args.warmup} analyses) | {browser['rss_warm']:.0f} MiB |")
    print(f"| server RSS after {browser['n'] + args.warmup} analyses | {browser['rss_end']:.0f} MiB |")
    print(f"| server RSS after also opening {', '.join(TOUR)} | {browser['rss_tour']:.0f} MiB |")
    print(f"| server RSS, highest sample (every 0.2 s) | {browser['rss_peak']:.0f} MiB |")
    print(f"| library: read + chest-image check + analyse ({library['segmenters']} mask(s)), median | "
          f"{library['total'] * 1000:.0f} ms |")
    print(f"| library: same, p90 | {library['total_p90'] * 1000:.0f} ms |")
    print(f"| library: read / check / analyse, medians | {library['read'] * 1000:.0f} / "
          f"{library['check'] * 1000:.0f} / {library['analyse'] * 1000:.0f} ms |")
    print(f"\nupload-to-probability median {browser['probability'] * 1000:.0f} ms; upload-to-result median "
          f"{browser['median'] * 1000:.0f} ms; library path {library['total'] * 1000:.0f} ms"
          + ("; first upload " + ", second ".join(f"{t * 1000:.0f} ms" for t in first_second) if first_second else ""))


if __name__ == "__main__":
    main()
