"""What `scripts/train.py` costs beyond its training: one real one-epoch run against a synthetic one-epoch process.

    python scripts/benchmark_train.py --data ../shared/data [--modality ct] [--rounds 2]

The synthetic process does only what cannot be avoided: import torch, build the same network with its ImageNet
weights, and train one epoch (same batches, same input size, same optimiser) on random tensors. The real run is
`train.py --epochs 1` on the data, writing a full model directory (decoding, evaluation, calibration, the OOD
guard, bootstrap intervals, the card). Each is a fresh process, timed from outside; the two alternate for
`--rounds` rounds so that other load spreads over both. Prints a table and the ratio of the medians.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from covid_models.training.data_folders import default_data_dir
from covid_models.training.splits import training_table

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = """
import sys, torch
from covid_models import runtime
runtime.configure()
from covid_models.models.architectures import build_model
images, size, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model = build_model("{arch}", 2, pretrained="imagenet").train()
optimiser = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
loss_fn = torch.nn.CrossEntropyLoss()
for start in range(0, images, batch):
    n = min(batch, images - start)
    loss = loss_fn(model(torch.randn(n, 3, size, size)), torch.randint(0, 2, (n,)))
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--modality", choices=("ct", "xray"), default="ct")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.data is None:
        print("error: give --data or set COVID_DATA_DIR", file=sys.stderr)
        return 2
    classes = ["covid", "non_covid"] if args.modality == "ct" else ["covid", "normal", "pneumonia"]
    images = int((training_table(args.data, args.modality, classes)["split"] == "train").sum())
    synthetic = [sys.executable, "-c", SYNTHETIC.format(arch=args.arch), str(images), str(args.image_size),
                 str(args.batch_size)]
    times: dict[str, list[float]] = {"synthetic": [], "train.py": []}
    with tempfile.TemporaryDirectory() as out:
        real = [sys.executable, "scripts/train.py", "--data", str(args.data), "--modality", args.modality,
                "--arch", args.arch, "--epochs", "1", "--image-size", str(args.image_size), "--batch-size",
                str(args.batch_size), "--out", str(Path(out) / "model")]
        for _ in range(args.rounds):
            times["synthetic"].append(timed(synthetic))
            times["train.py"].append(timed(real))
    synthetic_s, real_s = (statistics.median(times[k]) for k in ("synthetic", "train.py"))
    print(f"{args.modality}, {args.arch} at {args.image_size} px, {images} training images, batch {args.batch_size}; "
          f"medians of {args.rounds} alternating fresh processes\n")
    print("| process | seconds (each round) | median |\n| --- | --- | ---: |")
    for name, values in times.items():
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} | {statistics.median(values):.1f} |")
    print(f"\ntrain.py one-epoch whole run / synthetic one-epoch process: {real_s / synthetic_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
