"""Time of each heatmap method per image (a benchmark, not a test: it prints a markdown table).

    python scripts/benchmark_cam.py                          # every classifier in weights/, real test images
    python scripts/benchmark_cam.py --runs 10 --slow-runs 2 --weights weights --data ../shared/data

For each classifier and CAM method: the median time of `covid_models.analysis.explain.heatmap` on test-split images of
the model's modality (generated chest-like pictures without a data folder), and, when pytorch-grad-cam is
installed (it is a test tool: requirements-dev.txt), the median time of the same map through it, which
back-propagates through the whole network. The slow methods (one forward pass per feature channel) run on
fewer images.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from covid_models.analysis.explain import METHOD_LABELS, METHODS, SLOW_METHODS, heatmap
from covid_models.benchmarking import chest_like_png, reference_cam
from covid_models.imaging.io import read_image
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier
from covid_models.training.data_folders import default_data_dir
from covid_models.training.manifests import DataError
from covid_models.training.splits import held_out_images

ROOT = Path(__file__).resolve().parents[1]


def images(data: Path | None, modality: str, count: int) -> tuple[list[np.ndarray], str]:
    if data is not None:
        try:
            paths = held_out_images(data, modality)["image"].head(count)
        except (DataError, OSError) as error:
            print(f"<!-- {modality}: no images from {data} ({error}); generated ones used -->")
        else:
            return [read_image(p).pixels for p in paths], f"test split of {data}"
    return [read_image(chest_like_png(size=512, seed=i)).pixels for i in range(count)], "generated images"


def median_ms(run, pictures: list[np.ndarray], warm_up: bool = True) -> float:
    if warm_up:  # first-call allocations; not worth a second pass for the slow methods
        run(pictures[0])
    times = []
    for pixels in pictures:
        started = time.perf_counter()
        run(pixels)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--data", type=Path, default=default_data_dir() or ROOT.parent / "shared" / "data")
    parser.add_argument("--runs", type=int, default=10, help="images per fast method")
    parser.add_argument("--slow-runs", type=int, default=2, help="images per slow method (Score-CAM, Ablation-CAM)")
    parser.add_argument("--no-reference", action="store_true", help="skip pytorch-grad-cam even when installed")
    args = parser.parse_args()
    try:
        import pytorch_grad_cam  # noqa: F401
        reference = not args.no_reference
    except ImportError:
        reference = False
    data = args.data if args.data.is_dir() else None
    print(f"<!-- {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads -->")
    print("| model | method | ms per image (median) | pytorch-grad-cam, same map (ms) | images |")
    print("| --- | --- | ---: | ---: | ---: |")
    for directory, card in discover_models(args.weights, "classification"):
        classifier = Classifier.load(directory)
        pictures, origin = images(data, card.modality, max(args.runs, args.slow_runs))
        print(f"<!-- {card.name}: {origin} -->")
        for method in METHODS:
            slow = method in SLOW_METHODS
            sample = pictures[:args.slow_runs if slow else args.runs]
            ours = median_ms(functools.partial(heatmap, classifier, method=method), sample, not slow)
            theirs = "n/a"
            if reference:
                run = functools.partial(reference_cam, classifier, method=method, target_class=card.positive_class)
                theirs = f"{median_ms(run, sample, not slow):.0f}"
            print(f"| {card.name} | {METHOD_LABELS[method]} | {ours:.0f} | {theirs} | {len(sample)} |", flush=True)


if __name__ == "__main__":
    main()
