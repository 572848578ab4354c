"""Speed and memory of the shipped classifiers (a benchmark, not a test: it prints a markdown table).

    python scripts/benchmark.py                       # every classifier in weights/, images from $COVID_DATA_DIR
    python scripts/benchmark.py --data ../shared/data --runs 50

Per model: median single-image latency (read file + preprocess + classify), batch throughput, and the
process's peak resident memory. With CUDA: training images/s through the real data pipeline against
pure forward+backward images/s on synthetic tensors, i.e. what the data pipeline costs.
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from covid_models.data import default_data_dir, load_dataset
from covid_models.inference import Classifier, discover_models
from covid_models.io import read_image

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latency(classifier: Classifier, files: list[str], runs: int) -> float:
    times = []
    for i in range(runs):
        started = time.perf_counter()
        classifier.predict(read_image(files[i % len(files)]))
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:] if runs > 4 else times) * 1000


def throughput(classifier: Classifier, batch_size: int, batches: int) -> float:
    size = classifier.card.preprocessing.image_size
    inputs = torch.randn(batch_size, 3, size, size)
    classifier.forward(inputs)
    started = time.perf_counter()
    for _ in range(batches):
        classifier.forward(inputs)
    return batch_size * batches / (time.perf_counter() - started)


def gpu_training_rates(classifier: Classifier, files: list[str], batch_size: int = 64, steps: int = 30
                       ) -> tuple[float, float]:
    """Images/s of forward+backward on synthetic tensors, and through the real pipeline (augment + copy) too."""
    import pandas as pd

    from covid_models.data import ImageDataset
    from covid_models.preprocessing import Augmentation
    from covid_models.training import make_loader, setup_runtime

    runtime = setup_runtime("cuda")
    model = classifier.model.cuda().train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    size = classifier.card.preprocessing.image_size
    labels = torch.zeros(batch_size, dtype=torch.long, device="cuda")

    def step(inputs: torch.Tensor) -> None:
        inputs = inputs.cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(inputs).float(), labels[: len(inputs)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def rate(batches: list[torch.Tensor]) -> float:
        for inputs in batches[:3]:
            step(inputs)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for inputs in batches[3:]:
            step(inputs)
        torch.cuda.synchronize()
        return batch_size * (len(batches) - 3) / (time.perf_counter() - started)

    synthetic = [torch.randn(batch_size, 3, size, size) for _ in range(steps + 3)]
    frame = pd.DataFrame({"image": files, "label": classifier.card.classes[0], "patient_id": files, "source": "b"})
    dataset = ImageDataset(frame, classifier.card.classes, classifier.card.preprocessing, Augmentation())
    loader = make_loader(dataset, batch_size, runtime, shuffle=True)

    def real_batches():
        while True:
            yield from (inputs for inputs, _ in loader)

    stream = real_batches()
    pure = rate(synthetic)
    for _ in range(3):
        step(next(stream))
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(next(stream))
    torch.cuda.synchronize()
    return pure, batch_size * steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--data", type=Path, default=default_data_dir() or ROOT.parent / "shared" / "data")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| model | single image, read+preprocess+classify (median ms) | batch throughput (img/s) "
          "| peak RSS (MB) |")
    print("| --- | --- | --- | --- |")
    for directory, card in discover_models(args.weights, task="classification"):
        classifier = Classifier.load(directory)
        files = load_dataset(args.data, card.modality)["image"].head(args.runs).tolist()
        ms = latency(classifier, files, args.runs)
        rate = throughput(classifier, args.batch_size, args.batches)
        print(f"| {card.name} | {ms:.0f} | {rate:.1f} | {peak_rss_mb():.0f} |")
        if torch.cuda.is_available():
            pure, real = gpu_training_rates(classifier, files)
            print(f"| {card.name} training on {torch.cuda.get_device_name()} | synthetic forward+backward "
                  f"{pure:.0f} img/s | with the data pipeline {real:.0f} img/s | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
