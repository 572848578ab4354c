"""Dataset statistics on a generated 100,000-row manifest: each stage of what the Dataset page computes.

    python scripts/benchmark_dataset.py                 # 100,000 rows, 3 runs
    python scripts/benchmark_dataset.py --rows 20000 --runs 5

The manifest has no split column (the page then makes the seeded patient-level split, the costly case), 1-6
images per patient, four sources and random image sizes. Prints one row per stage (median seconds) and the size
of the image-size chart's JSON. Asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from covid_models.data import check_no_leakage, classification_statistics, load_manifest, patient_split  # noqa: E402
from covid_models.figures import class_balance_figure, count_table, image_size_figure  # noqa: E402


def write_manifest(folder: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, rows // 3, rows)
    sources = np.array(["nih", "ieee", "bimcv", "rsna"])[patients % 4]
    frame = pd.DataFrame({
        "image": [f"images/{s}/{i // 1000:03d}/img{i:06d}.png" for i, s in enumerate(sources)],
        "label": np.array(["covid", "normal", "pneumonia"])[rng.integers(0, 3, rows)],
        "patient_id": [f"p{p}" for p in patients], "source": sources,
        "width": rng.integers(256, 4096, rows), "height": rng.integers(256, 4096, rows)})
    path = folder / "xray" / "manifest.csv"
    path.parent.mkdir(parents=True)
    frame.to_csv(path, index=False)
    return path


def timed(function, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), args.rows)
        rows = []
        seconds, _ = timed(lambda: pd.read_csv(manifest, dtype={"patient_id": str}), args.runs)
        rows.append(("pandas.read_csv alone (floor)", seconds))
        seconds, frame = timed(lambda: load_manifest(manifest), args.runs)
        rows.append(("load_manifest", seconds))
        seconds, split = timed(lambda: patient_split(frame, seed=0), args.runs)
        rows.append(("patient_split", seconds))
        seconds, _ = timed(lambda: check_no_leakage(split), args.runs)
        rows.append(("check_no_leakage", seconds))
        seconds, _ = timed(lambda: class_balance_figure(count_table(split)), args.runs)
        rows.append(("class balance figure", seconds))
        seconds, figure = timed(lambda: image_size_figure(split), args.runs)
        rows.append(("image-size figure", seconds))
        seconds, _ = timed(lambda: classification_statistics(manifest, Path(tmp), seed=0), args.runs)
        rows.append(("classification_statistics (the page's first visit, without figures)", seconds))
    print(f"\n{args.rows:,} rows, median of {args.runs} runs\n")
    print("| stage | seconds |\n| --- | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")
    print(f"\nimage-size chart: {len(figure.to_json()) / 1e6:.2f} MB of JSON")


if __name__ == "__main__":
    main()
