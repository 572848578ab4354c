"""Time and memory of one CT scan's analysis (read + lung mask + per-slice classification + infection): a table.

    python scripts/benchmark_scan.py [PATH] [--weights weights] [--threads N] [--device cpu|cuda] [--out r.json]

PATH defaults to the RICORD scan of the shared data (../shared/data/ct-volumes/ricord-1a-000082/dicom). Resident
memory growth is the process's RSS after minus before (psutil), sampled every 50 ms for the peak; models are loaded
before the baseline, as the app holds them already. One run: the scan is too large for repeats to be cheap.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from covid_models.analysis.scan_analysis import analyse_scan, scan_models
from covid_models.imaging.volumes import read_volume
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCAN = PROJECT_ROOT.parent / "shared" / "data" / "ct-volumes" / "ricord-1a-000082" / "dicom"


class PeakRss:
    """The highest RSS seen while the block runs, sampled in a thread."""

    def __init__(self, interval: float = 0.05):
        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, nargs="?", default=DEFAULT_SCAN)
    parser.add_argument("--weights", type=Path, default=PROJECT_ROOT / "weights")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, help="also write the analysis record (as analyze_scan.py --out) here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: the infection segmenter's device (the "
                        "classifier's batch prediction stays on the CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    classifiers, segmenters = scan_models(args.weights)
    classifier, segmenter = Classifier.load(classifiers[0]), Segmenter.load(segmenters[0])
    segmenter.model.to(args.device)
    process = psutil.Process()
    before = process.memory_info().rss
    with PeakRss() as peak:
        start = time.perf_counter()
        volume = read_volume(args.path)
        read_seconds = time.perf_counter() - start
        analysis = analyse_scan(volume, classifier, segmenter)
        total = time.perf_counter() - start
    load = psutil.getloadavg()[0]
    print(f"{args.path.name}: {volume.hu.shape}, {platform.machine()} {psutil.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, load average before the "
          f"end {load:.1f}")
    print("| step | seconds |\n| --- | --- |")
    print(f"| read (decode {volume.hu.shape[0]} slices) | {read_seconds:.1f} |")
    for step, seconds in analysis.seconds.items():
        print(f"| {step} | {seconds:.1f} |")
    print(f"| **total** | **{total:.1f}** |")
    after = process.memory_info().rss
    print(f"RSS growth: peak {(peak.peak - before) / 2**20:.0f} MB, after {(after - before) / 2**20:.0f} MB "
          f"(HU volume {volume.hu.nbytes / 2**20:.0f} MB int16)")
    print(f"scan-level probability {analysis.scan_probability:.3f} (top-{analysis.top_k} of {analysis.scored.sum()} "
          f"slices); infection {analysis.burden.infection_ml:.1f} ml, severity {analysis.burden.severity_score}/30")
    if args.out:
        args.out.write_text(json.dumps(analysis.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
