"""Dataset statistics on a generated 100,000-row manifest: each stage of what the Dataset page computes.

    python scripts/benchmark_dataset.py                 # 100,000 rows, 3 runs
    python scripts/benchmark_dataset.py --rows 20000 --runs 5

The manifest has no split column (the page then makes the seeded patient-level split, the costly case), about
3 images per patient, four sources and random image sizes. Prints one row per stage (median seconds), beside the
code it replaced (a Path.resolve() per row; the per-group union-find and `mode()` split kept in
tests/test_data_scale.py as the specification), run interleaved with it, and the size of the image-size chart's
JSON. Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from covid_models.analysis.figures import class_balance_figure, count_table, image_size_figure  # noqa: E402
from covid_models.benchmarking import reference_patient_split  # noqa: E402
from covid_models.training.manifests import load_manifest  # noqa: E402
from covid_models.training.splits import check_no_leakage, classification_statistics, patient_split  # noqa: E402


def old_load_manifest(path: Path) -> pd.DataFrame:
    """load_manifest's path handling before: one Path.resolve() per row."""
    frame = pd.read_csv(path, dtype={"patient_id": str})
    frame["image"] = [str((path.parent / p).resolve()) for p in frame["image"]]
    return frame


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


def paired(before, after, runs: int) -> tuple[float, float, object]:
    """Median seconds of `before` and `after`, run alternately; the result of `after`."""
    times: tuple[list[float], list[float]] = ([], [])
    result = None
    for _ in range(runs):
        for index, function in enumerate((before, after)):
            start = time.perf_counter()
            value = function()
            times[index].append(time.perf_counter() - start)
            result = value if index else result
    return statistics.median(times[0]), statistics.median(times[1]), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), args.rows)
        rows: list[tuple[str, float | None, float]] = []
        seconds, _ = timed(lambda: pd.read_csv(manifest, dtype={"patient_id": str}), args.runs)
        rows.append(("pandas.read_csv alone (floor)", None, seconds))
        before, after, frame = paired(lambda: old_load_manifest(manifest), lambda: load_manifest(manifest), args.runs)
        rows.append(("load_manifest", before, after))
        before, after, split = paired(lambda: reference_patient_split(frame, seed=0),
                                      lambda: patient_split(frame, seed=0), args.runs)
        rows.append(("patient_split (same split)", before, after))
        seconds, _ = timed(lambda: check_no_leakage(split), args.runs)
        rows.append(("check_no_leakage", None, seconds))
        seconds, _ = timed(lambda: class_balance_figure(count_table(split)), args.runs)
        rows.append(("class balance figure", None, seconds))
        seconds, figure = timed(lambda: image_size_figure(split), args.runs)
        rows.append(("image-size figure", None, seconds))
        seconds, _ = timed(lambda: classification_statistics(manifest, Path(tmp), seed=0), args.runs)
        rows.append(("classification_statistics (all the page computes but the figures)", None, seconds))
        per_image = go.Figure([go.Scatter(x=split["width"], y=split["height"], mode="markers")])
    print(f"\n{args.rows:,} rows, median of {args.runs} runs (before and after interleaved); load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| stage | before (s) | after (s) |\n| --- | ---: | ---: |")
    for name, before, after in rows:
        print(f"| {name} | {'' if before is None else f'{before:.3f}'} | {after:.3f} |")
    print(f"\nimage-size chart: {len(figure.to_json()) / 1e6:.2f} MB of JSON (one point per image: "
          f"{len(per_image.to_json()) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
