"""Speed and memory of the shipped classifiers (a benchmark, not a test: it prints a markdown table).

    python scripts/benchmark.py                       # every classifier in weights/, images from $COVID_DATA_DIR
    python scripts/benchmark.py --data ../shared/data --runs 50

Per model: median single-image latency (read file + preprocess + classify), batch throughput, and the
process's peak resident memory. Then, per modality, the library path of one upload stage by stage (read,
classify and Grad-CAM from one forward pass, mask, share of the heatmap inside the mask) next to its floor (the
pure classifier forward and the pure mask forward on ready tensors) and next to a seed-style pipeline
(torchvision DenseNet-201 and VGG19 at 224 px, PIL + torchvision transforms, a pytorch-grad-cam object built
per call, no inference mode), measured interleaved image by image so that other load on the machine spreads over
all of them. With CUDA:
training images/s through the real data pipeline against pure forward+backward images/s on synthetic tensors,
i.e. what the data pipeline costs.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from covid_models.runtime import configure

configure()  # the CPU policy of the app and predict.py, before torch loads, so the figures are theirs

import numpy as np  # noqa: E402
import torch  # noqa: E402

from covid_models.analysis.explain import heatmap, predict_and_map  # noqa: E402
from covid_models.analysis.overlays import display_size  # noqa: E402
from covid_models.imaging.io import read_image  # noqa: E402
from covid_models.models.discovery import discover_models  # noqa: E402
from covid_models.models.inference import Classifier  # noqa: E402
from covid_models.models.segmentation import Segmenter, cam_mass_inside  # noqa: E402
from covid_models.training.data_folders import default_data_dir  # noqa: E402
from covid_models.training.manifests import load_dataset  # noqa: E402

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


def seed_style_pipeline(architecture: str) -> Callable[[str], None]:
    """One image as the seed project analysed it: PIL + torchvision transforms, a torchvision network at 224 px
    (random weights: the time is the same), softmax, and a pytorch-grad-cam GradCAM object built per call."""
    import torchvision
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = getattr(torchvision.models, architecture)(num_classes=3).eval()
    layer = model.features[-1] if architecture == "densenet201" else model.features[35]
    transform = torchvision.transforms.Compose([
        torchvision.transforms.Resize((224, 224)), torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def run(path: str) -> None:
        inputs = transform(Image.open(path).convert("RGB"))[None]
        torch.softmax(model(inputs), 1)
        with GradCAM(model=model, target_layers=[layer]) as cam:
            cam(input_tensor=inputs, targets=[ClassifierOutputTarget(0)])

    return run


def stages(classifier: Classifier, segmenter: Segmenter | None, files: list[str], seed_runs: int
           ) -> dict[str, float]:
    """Median ms of each stage of the library path, its floor and the seed-style pipelines, interleaved."""
    names = ["read", "classify + gradcam", "mask", "share", "total", "classifier forward", "mask forward",
             "two passes"]
    seeds = {}
    try:
        seeds = {name: seed_style_pipeline(name) for name in ("densenet201", "vgg19")}
    except ImportError as error:  # pytorch-grad-cam is a test tool (requirements-dev.txt)
        print(f"<!-- seed-style pipeline skipped: {error} -->")
    times: dict[str, list[float]] = {name: [] for name in names + [f"seed {n}" for n in seeds]}
    for index, path in enumerate(files):
        marks = [time.perf_counter()]
        scan = read_image(path)
        marks.append(time.perf_counter())
        shape = display_size(scan.pixels.shape)
        _, cam = predict_and_map(classifier, scan, "gradcam", size=shape)  # one forward pass for both
        marks.append(time.perf_counter())
        mask = segmenter.mask(scan, size=shape) if segmenter is not None else None
        marks.append(time.perf_counter())
        if mask is not None:
            cam_mass_inside(cam, mask)
        marks.append(time.perf_counter())
        started = time.perf_counter()  # what the path did before predict_and_map: a forward pass each
        classifier.predict(scan)
        heatmap(classifier, scan, "gradcam", size=shape)
        two_passes = time.perf_counter() - started
        inputs = classifier.to_input(scan)[None]
        with torch.inference_mode():
            started = time.perf_counter()
            classifier.model(inputs)
            forward = time.perf_counter() - started
            mask_forward = float("nan")
            if segmenter is not None:
                mask_inputs = segmenter.card.preprocessing(segmenter.card.preprocessing.model_pixels(scan))[None]
                mask_inputs = mask_inputs.contiguous(memory_format=torch.channels_last)
                started = time.perf_counter()
                segmenter.model(mask_inputs)
                mask_forward = time.perf_counter() - started
        if index == 0:
            continue  # first-call allocations
        for name, start, end in zip(names, marks, marks[1:], strict=False):
            times[name].append(end - start)
        times["total"].append(marks[-1] - marks[0])
        times["classifier forward"].append(forward)
        times["mask forward"].append(mask_forward)
        times["two passes"].append(two_passes)
        if index <= seed_runs:
            for name, run in seeds.items():
                started = time.perf_counter()
                run(path)
                times[f"seed {name}"].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in times.items() if values}


def print_stages(modality: str, result: dict[str, float], runs: int, seed_runs: int) -> None:
    floor = result["classifier forward"] + (0 if np.isnan(result["mask forward"]) else result["mask forward"])
    print(f"\n{modality}: one upload through the library (median ms over {runs - 1} images; seed-style over "
          f"{seed_runs}; load average {os.getloadavg()[0]:.1f})\n")
    print("| what | median ms | note |\n| --- | ---: | --- |")
    print(f"| read | {result['read']:.0f} | |")
    print(f"| classify + Grad-CAM, one forward pass | {result['classify + gradcam']:.0f} | before: a forward pass "
          f"each, {result['two passes']:.0f} ms ({result['two passes'] / result['classify + gradcam']:.2f}x) |")
    for name in ("mask", "share"):
        print(f"| {name} | {result[name]:.0f} | |")
    print(f"| library path (all of the above) | {result['total']:.0f} | {result['total'] / floor:.2f}x its floor |")
    print(f"| floor: pure classifier forward | {result['classifier forward']:.0f} | "
          f"{100 * result['classifier forward'] / result['total']:.0f} % of the path |")
    print(f"| floor: pure mask forward | {result['mask forward']:.0f} | |")
    for name in ("densenet201", "vgg19"):
        if f"seed {name}" in result:
            seed = result[f"seed {name}"]
            print(f"| seed-style {name} (read + classify + Grad-CAM, no mask) | {seed:.0f} | ours "
                  f"{seed / result['total']:.1f}x faster |")


def gpu_training_rates(classifier: Classifier, files: list[str], batch_size: int = 64, steps: int = 30
                       ) -> tuple[float, float]:
    """Images/s of forward+backward on synthetic tensors, and through the real pipeline (augment + copy) too."""
    import pandas as pd

    from covid_models.imaging.preprocessing import Augmentation
    from covid_models.training.datasets import ImageDataset
    from covid_models.training.loop import make_loader, setup_runtime

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
    parser.add_argument("--seed-runs", type=int, default=5, help="images through the seed-style pipelines")
    parser.add_argument("--no-stages", action="store_true", help="only the per-model table")
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
    if not args.no_stages:
        for modality in ("xray", "ct"):
            found = discover_models(args.weights, "classification", modality)
            if not found:
                continue
            masks = discover_models(args.weights, "segmentation", modality)
            segmenter = Segmenter.load(masks[0][0]) if masks else None
            files = load_dataset(args.data, modality)["image"].sample(n=args.runs, random_state=0).tolist()
            result = stages(Classifier.load(found[0][0]), segmenter, files, args.seed_runs)
            print_stages(modality, result, args.runs, args.seed_runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
