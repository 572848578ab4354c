"""Segmentation latency per image on this machine, for every segmentation model in weights/: a markdown table.

    python scripts/benchmark_segmentation.py [--weights weights] [--data ../shared/data] [--runs 20] [--threads N]

One timed run = read the file + preprocess + segment + threshold and post-process, i.e. what the app does
for one upload. Images are real pairs of the model's own modality when the dataset is present, else a
synthetic 512x512 PNG. The median and the 90th percentile of `--runs` runs follow one warm-up run.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from covid_models.benchmarking import percentile
from covid_models.imaging.io import read_image
from covid_models.models.discovery import discover_models
from covid_models.models.segmentation import Segmenter

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SETS = {"xray": "segmentation/xray-lungs/images", "ct": "segmentation/ct-infection/images"}


def sample_image(data: Path | None, modality: str) -> tuple[bytes, str]:
    """The bytes of one real image of `modality` (the first in its folder), else of a synthetic 512x512 PNG."""
    folder = data / SAMPLE_SETS[modality] if data else None
    if folder and folder.is_dir():
        first = sorted(folder.iterdir())[0]
        return first.read_bytes(), first.name
    pixels = (np.random.default_rng(0).random((512, 512)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), "synthetic 512x512 PNG"


def time_model(segmenter: Segmenter, data: bytes, runs: int) -> list[float]:
    def once() -> np.ndarray:
        return segmenter.mask(read_image(data))

    once()  # warm-up: first-call allocations
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        timings.append(time.perf_counter() - start)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=PROJECT_ROOT / "weights")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("COVID_DATA_DIR", PROJECT_ROOT.parent
                                                                           / "shared" / "data")))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = discover_models(args.weights, task="segmentation")
    if not models:
        print(f"no segmentation models in {args.weights}", file=sys.stderr)
        return 1
    data_dir = args.data if args.data.is_dir() else None
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}; median of {args.runs} runs after one warm-up; "
          "read + preprocess + segment + post-process\n")
    print("| model | architecture | target | input | image | median ms | p90 ms |")
    print("| --- | --- | --- | --- | --- | ---: | ---: |")
    for path, card in models:
        segmenter = Segmenter.load(path)
        image_bytes, image_name = sample_image(data_dir, card.modality)
        shape = read_image(image_bytes).pixels.shape
        timings = time_model(segmenter, image_bytes, args.runs)
        size = card.preprocessing.image_size
        print(f"| {card.name} | {card.architecture} | {segmenter.target} | {size}x{size} | "
              f"{image_name} ({shape[1]}x{shape[0]}) | {statistics.median(timings) * 1000:.0f} | "
              f"{percentile(timings, 90) * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
