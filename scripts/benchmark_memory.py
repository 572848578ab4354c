"""Resident memory over a long session of analyses (a benchmark, not a test: it prints a markdown table).

    python scripts/benchmark_memory.py                                  # every classifier in weights/, N=200
    python scripts/benchmark_memory.py --n 200 --weights weights --data ../shared/data

One analysis is what the Analyze page computes for one upload, in one process: the file's bytes read by
`covid_models.imaging.io.read_image`, then `covid_models.analysis.image_analysis.analyse` (the page's own call:
prediction, a CAM heatmap with forward and backward hooks on the shared network, the masks of every segmentation model
of the same modality in the weights folder, the share of the heatmap inside them, all at display size), then the heatmap
and mask overlays the page draws. Streamlit's result caches are left out on purpose: they hold results by design
(bounded by `max_entries`), whereas this measures what a computation leaves behind once its result is dropped.

Per model: RSS after a warm-up (first-call allocations, thread pools, allocator arenas), RSS after N more
analyses, the growth between the two, its trend (least-squares slope of RSS sampled every 10 analyses: a
leak shows as a steady slope, noise does not), the peak, and the hooks left on the network's modules (0 when
every CAM object released its hooks). By default each reading follows a garbage collection and glibc's
malloc_trim, which hands freed heap back to the system, so that RSS counts memory still held: without it
(--no-trim) readings swing by up to about a hundred MB with what the allocator keeps cached from the large
transient arrays (768-pixel overlays, segmentation inputs), whatever is held. Images come from
the data folder's test split of the model's modality, cycled; without one, generated chest-like pictures.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from covid_models.analysis.image_analysis import analyse
from covid_models.analysis.overlays import INFECTION_COLOR, LUNG_COLOR, heatmap_overlay, mask_overlay
from covid_models.benchmarking import chest_like_png, hooks_left, rss_mb
from covid_models.imaging.io import read_image
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter
from covid_models.training.data_folders import default_data_dir
from covid_models.training.manifests import DataError
from covid_models.training.splits import held_out_images

ROOT = Path(__file__).resolve().parents[1]

OPACITY = 0.45  # the page's default heatmap opacity
MASK_COLORS = {"lungs": LUNG_COLOR, "infection": INFECTION_COLOR}
MAX_IMAGES = 64  # distinct images cycled through: enough variety of sizes without reading the whole split


@dataclass(frozen=True)
class MemoryRun:
    model: str
    n: int
    segmenters: int
    rss_warm_mb: float
    rss_end_mb: float
    trend_mb_per_100: float
    peak_mb: float  # highest reading, before trimming
    forward_hooks: int
    backward_hooks: int

    @property
    def growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_warm_mb


def analyse_upload(classifier: Classifier, segmenters: list[Segmenter], name: str, data: bytes,
                   method: str = "gradcam") -> float | None:
    """One upload as the Analyze page computes it (`covid_models.analysis.image_analysis.analyse`, then the overlays it
    draws); returns the COVID-19 probability."""
    result = analyse(read_image(data, name=name), [classifier], segmenters, method=method)
    overlay = heatmap_overlay(result.grey, result.heat, OPACITY)
    for target, mask in result.masks.items():
        overlay = mask_overlay(overlay, mask, color=(255, 255, 255), alpha=0.0)
        mask_overlay(result.grey, mask, color=MASK_COLORS.get(target, LUNG_COLOR))
    return result.prediction.positive_probability


def generated_images(count: int) -> list[tuple[str, bytes]]:
    """Chest-like PNGs of several sizes, for runs without data."""
    return [(f"generated-{index}.png", chest_like_png(size=(256, 384, 512)[index % 3], seed=index))
            for index in range(count)]


def test_images(data: Path | None, modality: str) -> tuple[list[tuple[str, bytes]], str]:
    """(name, bytes) of up to MAX_IMAGES test-split images of `modality`, and where they came from."""
    if data is not None:
        try:
            paths = held_out_images(data, modality)["image"].head(MAX_IMAGES)
        except (DataError, OSError) as error:
            print(f"<!-- {modality}: no images from {data} ({error}); generated ones used -->")
        else:
            return [(Path(p).name, Path(p).read_bytes()) for p in paths], f"{len(paths)} test-split images of {data}"
    return generated_images(MAX_IMAGES // 4), "generated images"


def measure(classifier: Classifier, segmenters: list[Segmenter], images: list[tuple[str, bytes]], n: int,
            warmup: int, method: str, trim: bool) -> MemoryRun:
    """Warm up, then N analyses cycling through `images`; RSS along the way, hooks left at the end."""
    for index in range(warmup):
        analyse_upload(classifier, segmenters, *images[index % len(images)], method=method)
    peak = rss_mb(trim=False)
    samples = [(0, rss_mb(trim))]
    started = time.perf_counter()
    for index in range(n):
        analyse_upload(classifier, segmenters, *images[(warmup + index) % len(images)], method=method)
        if index % 10 == 9 or index == n - 1:
            peak = max(peak, rss_mb(trim=False))
            samples.append((index + 1, rss_mb(trim)))
        if index % 25 == 24:  # the trajectory, for the reader
            print(f"{classifier.name}: {index + 1}/{n} analyses, RSS {samples[-1][1]:.1f} MB, "
                  f"{(time.perf_counter() - started) / (index + 1):.2f} s each", file=sys.stderr, flush=True)
    counts, rss = np.asarray(samples).T
    slope = float(np.polyfit(counts, rss, 1)[0]) * 100 if len(samples) > 2 else float("nan")
    forward, backward = hooks_left(classifier.model)
    return MemoryRun(classifier.name, n, len(segmenters), samples[0][1], samples[-1][1], slope, peak, forward,
                     backward)


def load_segmenters(weights: Path, modality: str) -> list[Segmenter]:
    return [Segmenter.load(directory) for directory, _card in discover_models(weights, "segmentation", modality)]


def markdown_table(runs: list[MemoryRun]) -> str:
    lines = ["| model | segmentation models | N | RSS after warm-up (MB) | RSS after N (MB) | growth (MB) "
             "| trend (MB per 100 analyses) | peak RSS (MB) | forward hooks left | backward hooks left |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.model} | {r.segmenters} | {r.n} | {r.rss_warm_mb:.1f} | {r.rss_end_mb:.1f} | {r.growth_mb:+.1f} "
              f"| {r.trend_mb_per_100:+.2f} | {r.peak_mb:.1f} | {r.forward_hooks} | {r.backward_hooks} |"
              for r in runs]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="analyses measured after the warm-up")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--data", type=Path, default=default_data_dir() or ROOT.parent / "shared" / "data",
                        help="curated data folder ($COVID_DATA_DIR, else ../shared/data); generated images "
                             "when absent")
    parser.add_argument("--method", default="gradcam", help="CAM method (the page's default: gradcam)")
    parser.add_argument("--no-trim", dest="trim", action="store_false",
                        help="read RSS as it is, without handing freed heap back first (malloc_trim)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--model", action="append", default=None,
                        help="only this model directory name (repeatable); default: every classifier")
    args = parser.parse_args(argv)
    if args.n < 1 or args.warmup < 0:
        parser.error("--n must be at least 1 and --warmup at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data if args.data and args.data.is_dir() else None
    found = [(d, c) for d, c in discover_models(args.weights, "classification")
             if args.model is None or d.name in args.model]
    if not found:
        parser.error(f"no classifier found in {args.weights}")
    print(f"<!-- {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"pid {os.getpid()}, method {args.method}, warm-up {args.warmup}, "
          f"RSS read {'after malloc_trim' if args.trim else 'untrimmed'} -->")
    runs = []
    for directory, _card in found:
        classifier = Classifier.load(directory)
        segmenters = load_segmenters(args.weights, classifier.card.modality)
        images, origin = test_images(data, classifier.card.modality)
        print(f"<!-- {classifier.name} ({directory.name}): {origin}; segmentation: "
              f"{', '.join(s.name for s in segmenters) or 'none installed'} -->", flush=True)
        runs.append(measure(classifier, segmenters, images, args.n, args.warmup, args.method, args.trim))
    print(markdown_table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
