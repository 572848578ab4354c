"""Manifests, folder imports, patient-level splits, the leakage check and torch Datasets.

Every table here has one row per image with at least: image (absolute path), label, patient_id,
source, and optionally split. Splits are made per patient group, never per image: slices and
follow-up films of one patient are not independent, and a patient on both sides of a split
inflates every metric.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from covid_models.preprocessing import Augmentation, Preprocessing

DATA_DIR_ENV = "COVID_DATA_DIR"
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".gif", ".webp"}

# Folder names of the public datasets -> our labels (matched case-insensitively, "-", "_" and spaces ignored).
FOLDER_LABELS = {
    "covid": "covid", "covid19": "covid", "ctcovid": "covid", "positive": "covid",
    "noncovid": "non_covid", "ctnoncovid": "non_covid", "negative": "non_covid",
    "normal": "normal", "nofindings": "normal", "nofinding": "normal",
    "pneumonia": "pneumonia", "viralpneumonia": "pneumonia", "bacterialpneumonia": "pneumonia",
    "lungopacity": "pneumonia",
}


class LeakageError(ValueError):
    """A patient (or an image) appears in more than one split."""


class DataError(ValueError):
    """A manifest or data folder that cannot be used, with a message saying what to fix."""


def default_data_dir() -> Path | None:
    """$COVID_DATA_DIR when set and present."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value and Path(value).is_dir() else None


def read_manifest_csv(path: str | Path, required: set[str], what: str = "manifest") -> tuple[Path, pd.DataFrame]:
    """A manifest (the csv, or the folder holding manifest.csv) and its path, patient ids read as text and the
    image and mask paths made absolute (they are relative to the manifest's folder).

    DataError when the file is missing or lacks a `required` column.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    frame = pd.read_csv(path, dtype={"patient_id": str})
    missing = required - set(frame.columns)
    if missing:
        raise DataError(f"{path} lacks the columns {sorted(missing)}")
    for column in ("image", "mask"):
        if column in frame.columns:
            frame[column] = [str((path.parent / p).resolve()) for p in frame[column]]
    return path, frame


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a classification manifest.csv, with absolute image paths, a patient id and a source on every row."""
    path, frame = read_manifest_csv(path, {"image", "label"})
    if "patient_id" not in frame.columns or frame["patient_id"].isna().any():
        warnings.warn(f"{path}: rows without patient_id get one id per image; splits may leak patients",
                      stacklevel=2)
        ids = frame.get("patient_id", pd.Series([None] * len(frame)))
        frame["patient_id"] = [pid if isinstance(pid, str) and pid else f"file:{Path(img).name}"
                               for pid, img in zip(ids, frame["image"], strict=True)]
    if "source" not in frame.columns:
        frame["source"] = "unknown"
    frame["source"] = frame["source"].fillna("unknown").astype(str)
    return frame


def load_dataset(data: str | Path, modality: str) -> pd.DataFrame:
    """A data argument as users give it: the curated root (with xray/ and ct/), a manifest, or a folder tree."""
    data = Path(data)
    for candidate in (data / modality / "manifest.csv", data / "manifest.csv", data):
        if candidate.is_file() and candidate.suffix == ".csv":
            return load_manifest(candidate)
    if data.is_dir():
        return import_folder(data)
    raise DataError(f"{data} is neither a manifest.csv nor a folder of images")


def _normalise_folder_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.lower())


def import_folder(root: str | Path) -> pd.DataFrame:
    """Import a class-per-folder tree (COVID/, non-COVID/, Normal/, Viral Pneumonia/, ...) as a manifest.

    Files carry no patient id, so each file gets its own, with a warning: a folder tree cannot
    guarantee a patient-level split.
    """
    root = Path(root)
    rows = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        folders = reversed(path.relative_to(root).parts[:-1])
        label = next((FOLDER_LABELS[_normalise_folder_name(part)] for part in folders
                      if _normalise_folder_name(part) in FOLDER_LABELS), None)
        if label is None:
            continue
        split = next((part.lower() for part in path.relative_to(root).parts[:-1] if part.lower() in SPLITS), None)
        rows.append({"image": str(path.resolve()), "label": label, "source": root.name,
                     "patient_id": f"file:{path.relative_to(root).as_posix()}", "split": split})
    if not rows:
        raise DataError(f"no images found under {root} in folders named like {sorted(set(FOLDER_LABELS.values()))}")
    warnings.warn(f"{root}: images from a folder tree have no patient ids; each file is treated as its own patient",
                  stacklevel=2)
    frame = pd.DataFrame(rows)
    if frame["split"].isna().any():
        frame = frame.drop(columns="split")
    return frame


def near_duplicate_pairs(data_root: Path | None) -> list[tuple[str, str]]:
    """Pairs of image ids that look alike (near_duplicates.csv of the curated set), to keep on one side."""
    if data_root is None or not (data_root / "near_duplicates.csv").is_file():
        return []
    pairs = pd.read_csv(data_root / "near_duplicates.csv")
    columns = [c for c in pairs.columns if c.startswith("id") or c in ("image_a", "image_b", "a", "b")][:2]
    if len(columns) < 2:
        return []
    return list(zip(pairs[columns[0]].astype(str), pairs[columns[1]].astype(str), strict=True))


def split_groups(frame: pd.DataFrame, linked_ids: Sequence[tuple[str, str]] = ()) -> np.ndarray:
    """Group number per row: same patient, or linked through a near-duplicate pair (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    stems = [Path(p).stem for p in frame["image"]]
    for stem, patient in zip(stems, frame["patient_id"], strict=True):
        union(f"img:{stem}", f"pat:{patient}")
    for a, b in linked_ids:
        union(f"img:{a}", f"img:{b}")
    roots = [find(f"pat:{p}") for p in frame["patient_id"]]
    return pd.factorize(pd.Series(roots))[0]


def patient_split(
    frame: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    linked_ids: Sequence[tuple[str, str]] = (),
) -> pd.DataFrame:
    """Add a `split` column: seeded, grouped by patient, stratified by each group's majority label and source.

    Groups are dealt to splits greedily so each split's share of each stratum tracks `fractions`.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError("split fractions must sum to 1")
    frame = frame.copy()
    groups = split_groups(frame, linked_ids)
    frame["_group"] = groups
    rng = np.random.default_rng(seed)
    stratum_of = frame.groupby("_group").agg(
        stratum=("label", lambda s: s.mode().iloc[0]), source=("source", "first"), size=("label", "size"))
    stratum_of["key"] = stratum_of["stratum"] + "|" + stratum_of["source"]
    assignment: dict[int, str] = {}
    for _, block in stratum_of.groupby("key"):
        order = rng.permutation(block.index.to_numpy())
        counts = dict.fromkeys(SPLITS, 0)
        total = block["size"].sum()
        for group in order:
            # Put the group where the split is furthest below its target share.
            deficits = {s: f * total - counts[s] for s, f in zip(SPLITS, fractions, strict=True)}
            target = max(deficits, key=deficits.get)
            assignment[group] = target
            counts[target] += int(block.loc[group, "size"])
    frame["split"] = frame["_group"].map(assignment)
    return frame.drop(columns="_group")


def check_no_leakage(frame: pd.DataFrame, linked_ids: Sequence[tuple[str, str]] = ()) -> None:
    """Raise LeakageError when a patient, an image or a near-duplicate group sits in two splits."""
    problems = []
    by_patient = frame.groupby("patient_id")["split"].nunique()
    leaked = by_patient[by_patient > 1].index.tolist()
    if leaked:
        problems.append(f"{len(leaked)} patient(s) in more than one split, e.g. {leaked[:3]}")
    by_image = frame.groupby("image")["split"].nunique()
    if (by_image > 1).any():
        problems.append(f"{int((by_image > 1).sum())} image(s) listed in more than one split")
    if linked_ids:
        groups = split_groups(frame, linked_ids)
        per_group = pd.Series(frame["split"].to_numpy()).groupby(groups).nunique()
        if (per_group > 1).sum() > len(leaked):
            problems.append("near-duplicate images fall on both sides of a split")
    if problems:
        raise LeakageError("data leakage between splits: " + "; ".join(problems))


def has_official_split(frame: pd.DataFrame) -> bool:
    """Whether a manifest assigns every image to a split itself (else a seeded patient-level split is made)."""
    return "split" in frame.columns and not frame["split"].isna().any()


def ensure_split(frame: pd.DataFrame, seed: int = 0, data_root: Path | None = None) -> pd.DataFrame:
    """Keep an official `split` column when present, else make a patient-level one; always check leakage."""
    links = near_duplicate_pairs(data_root)
    if not has_official_split(frame):
        frame = patient_split(frame, seed=seed, linked_ids=links)
    check_no_leakage(frame)
    return frame


def held_out_images(data_root: Path, modality: str) -> pd.DataFrame:
    """The held-out rows of a data folder's `modality` manifest, sorted by image: the official split when the
    manifest has one, else the seeded (seed 0) patient-level split; leakage is checked either way."""
    frame = ensure_split(load_dataset(data_root, modality), seed=0, data_root=data_root)
    return frame[frame["split"] == "test"].sort_values("image").reset_index(drop=True)


def manifest_hash(frame: pd.DataFrame) -> str:
    """A short fingerprint of which images with which labels and splits a model saw."""
    columns = [c for c in ("image", "label", "patient_id", "split") if c in frame.columns]
    names = frame.assign(image=[Path(p).name for p in frame["image"]])[columns]
    return hashlib.sha256(names.to_csv(index=False).encode()).hexdigest()[:16]


def data_summary(frame: pd.DataFrame) -> dict:
    """Counts per split/class/source and image sizes, for the card and the statistics page."""
    summary: dict = {"n_images": int(len(frame)), "n_patients": int(frame["patient_id"].nunique())}
    for column in ("split", "label", "source"):
        if column in frame.columns:
            summary[f"by_{column}"] = {str(k): int(v) for k, v in frame[column].value_counts().sort_index().items()}
    keys = [c for c in ("split", "source", "label") if c in frame.columns]
    summary["counts"] = [{**dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)), "n": int(n)}
                         for k, n in frame.groupby(keys).size().items()]
    if {"width", "height"} <= set(frame.columns):
        summary["width"] = frame["width"].describe()[["min", "50%", "max"]].astype(float).round(1).to_dict()
        summary["height"] = frame["height"].describe()[["min", "50%", "max"]].astype(float).round(1).to_dict()
    return summary


def balanced_weights(frame: pd.DataFrame, by: Sequence[str] = ("label",)) -> np.ndarray:
    """Per-row sampling weights so every (by...) stratum is drawn equally often."""
    keys = frame[list(by)].astype(str).agg("|".join, axis=1)
    counts = keys.map(keys.value_counts())
    return (1.0 / counts.to_numpy()).astype(np.float64)


class BalancedSampler(Sampler[int]):
    """Weighted sampling with replacement, sharded across DDP ranks (same draw on every rank, own slice)."""

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = num_samples - num_samples % world_size
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(draws[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples // self.world_size


def _load_resized(path: str, preprocessing: Preprocessing) -> torch.Tensor:
    from covid_models.io import read_image

    return preprocessing.resize(read_image(path).pixels)


class ImageDataset(Dataset):
    """Labelled images as network inputs; decoded and resized once, kept in memory.

    Caching the resized image makes CPU epochs cost only the network; augmentation happens after
    the cache, on each draw. The cache is float32, exactly what `Preprocessing.resize` gives at
    inference (a uint8 cache would round, and evaluation would no longer match the app).
    """

    def __init__(self, frame: pd.DataFrame, classes: Sequence[str], preprocessing: Preprocessing,
                 augmentation: Augmentation | None = None, workers: int = 4, progress: bool = False):
        unknown = set(frame["label"]) - set(classes)
        if unknown:
            raise DataError(f"labels {sorted(unknown)} are not among the classes {list(classes)}")
        self.frame = frame.reset_index(drop=True)
        self.labels = torch.tensor([list(classes).index(label) for label in self.frame["label"]])
        self.preprocessing, self.augmentation = preprocessing, augmentation
        paths = self.frame["image"].tolist()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            images = pool.map(lambda p: _load_resized(p, preprocessing), paths)
            if progress:
                from tqdm import tqdm
                images = tqdm(images, total=len(paths), desc="decoding images", unit="img")
            self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augmentation is not None:
            image = self.augmentation(image)
        return self.preprocessing.normalise(image), self.labels[index]
