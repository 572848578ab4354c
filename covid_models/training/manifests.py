"""Reading data tables: manifests, a class-per-folder tree imported as one, extra training rows, fingerprints and
the counts a card records.

Every table has one row per image with at least: image (absolute path), label, patient_id, source, and optionally
split. How rows are split between train, validation and test is `splits`; turning rows into network inputs is
`datasets`.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from covid_models.imaging.formats import IMAGE_SUFFIXES

WALK_MAX_ENTRIES = 200_000  # a folder import looks at no more entries than this...
WALK_MAX_SECONDS = 10.0  # ...and stops after this long
SPLITS = ("train", "val", "test")

# Folder names of the public datasets -> our labels (matched case-insensitively, "-", "_" and spaces ignored).
FOLDER_LABELS = {
    "covid": "covid", "covid19": "covid", "ctcovid": "covid", "positive": "covid",
    "noncovid": "non_covid", "ctnoncovid": "non_covid", "negative": "non_covid",
    "normal": "normal", "nofindings": "normal", "nofinding": "normal",
    "pneumonia": "pneumonia", "viralpneumonia": "pneumonia", "bacterialpneumonia": "pneumonia",
    "lungopacity": "pneumonia",
}


class DataError(ValueError):
    """A manifest or data folder that cannot be used, with a message saying what to fix."""


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
            frame[column] = absolute_paths(path.parent, frame[column])
    return path, frame


def absolute_paths(folder: Path, paths: Sequence[str] | pd.Series) -> list[str]:
    """`paths` (relative to `folder`, or absolute) made absolute with one `resolve()` per distinct folder.

    Folders are resolved (symlinks, '..'), file names kept as written: on a 100,000-row manifest a resolve per
    row took 2.9 s, against a few hundredths of a second for a few hundred folders.
    """
    paths = pd.Series(paths, dtype=str)
    parts = paths.str.rpartition("/")
    parents = parts[0].mask((parts[0] == "") & paths.str.startswith("/"), "/")  # "/x.png": the root folder
    resolved = {parent: str((folder / parent).resolve()).rstrip("/") for parent in parents.unique()}
    return (parents.map(resolved) + "/" + parts[2]).tolist()


def image_stems(paths: pd.Series) -> pd.Series:
    """File names without their last extension, as `Path.stem` gives them (leading dots are not extensions)."""
    names = pd.Series(paths, dtype=str).str.rpartition("/")[2]
    return names.str.replace(r"^(\.*[^.].*?)\.[^.]+$", r"\1", regex=True)


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


def load_segmentation_manifest(path: str | Path, target: str) -> pd.DataFrame:
    """A segmentation manifest (image, mask, patient_id, source, ...) with absolute paths; `label` = target.

    The label column lets the patient-level split and the data summary treat it like any other manifest.
    """
    path, frame = read_manifest_csv(path, {"image", "mask", "patient_id"}, "segmentation manifest")
    if frame["patient_id"].isna().any():
        raise DataError(f"{path}: every row needs a patient_id (the split is made per patient)")
    absent = [p for p in frame["image"].tolist() + frame["mask"].tolist() if not Path(p).is_file()]
    if absent:
        raise DataError(f"{path}: {len(absent)} listed file(s) do not exist, e.g. {absent[0]}")
    frame["source"] = frame.get("source", pd.Series(["unknown"] * len(frame))).fillna("unknown").astype(str)
    frame["label"] = target
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
    guarantee a patient-level split. Entries with an image suffix that are not regular files (a pipe, a link to a
    device, a dangling link) are listed too, unopened, so that whoever reads them says what each is (`io.read_image`
    refuses them by type) instead of their silently vanishing from the evaluation.
    """
    root = Path(root)
    rows = []
    for path in _image_files(root):
        folders = reversed(path.relative_to(root).parts[:-1])
        label = next((FOLDER_LABELS[_normalise_folder_name(part)] for part in folders
                      if _normalise_folder_name(part) in FOLDER_LABELS), None)
        if label is None:
            continue
        split = next((part.lower() for part in path.relative_to(root).parts[:-1] if part.lower() in SPLITS), None)
        regular = path.is_file()  # a special file keeps its own name: its reader names what it is and skips it
        rows.append({"image": str(path.resolve() if regular else path.absolute()), "label": label, "source": root.name,
                     "patient_id": f"file:{path.relative_to(root).as_posix()}", "split": split})
    if not rows:
        raise DataError(f"no images found under {root} in folders named like {sorted(set(FOLDER_LABELS.values()))}")
    warnings.warn(f"{root}: images from a folder tree have no patient ids; each file is treated as its own patient",
                  stacklevel=2)
    frame = pd.DataFrame(rows)
    if frame["split"].isna().any():
        frame = frame.drop(columns="split")
    return frame


def _image_files(root: Path) -> list[Path]:
    """Entries other than folders with an image suffix under `root`, sorted (special files included: only listed,
    never opened); DataError beyond WALK_MAX_ENTRIES entries or WALK_MAX_SECONDS (a mistyped folder such as '/' must
    not walk the whole filesystem). Links to folders are not followed."""
    found, seen, start = [], 0, time.monotonic()
    for folder, folders, files in os.walk(root):
        seen += len(folders) + len(files)
        if seen > WALK_MAX_ENTRIES or time.monotonic() - start > WALK_MAX_SECONDS:
            raise DataError(f"This folder holds too many files to import as a data folder (more than "
                            f"{WALK_MAX_ENTRIES:,} entries, or over {WALK_MAX_SECONDS:g} s to list). Choose the "
                            "folder that holds the class folders (COVID/, non-COVID/, ...) or a manifest.csv.")
        found.extend(Path(folder) / name for name in files if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES)
    return sorted(found)


def extra_training_rows(manifest: str | Path, label: str, orientation: str = "as_is") -> pd.DataFrame:
    """Images of another manifest (e.g. the MedSeg infection slices, all COVID) as extra training rows.

    They join the train split only, so validation, model selection and the test figures stay on the main
    data; `orientation` puts them into display orientation ("transpose" for MedSeg).
    """
    _, frame = read_manifest_csv(manifest, {"image"}, "extra training manifest")
    if "source" not in frame.columns:
        frame["source"] = "extra"
    if "patient_id" not in frame.columns:
        frame["patient_id"] = [f"file:{Path(p).name}" for p in frame["image"]]
    frame = frame.assign(label=label, split="train", orientation=orientation)
    return frame[["image", "label", "patient_id", "source", "split", "orientation"]]


def file_fingerprint(*paths: Path) -> str:
    """SHA-256 over the contents of the files that exist among `paths`: a cache key that changes with them."""
    digest = hashlib.sha256()
    for path in paths:
        if path.is_file():
            with open(path, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        digest.update(b"\0")
    return digest.hexdigest()


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
