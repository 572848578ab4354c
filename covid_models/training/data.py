"""Manifests, folder imports, patient-level splits, the leakage check and torch Datasets.

Every table here has one row per image with at least: image (absolute path), label, patient_id,
source, and optionally split. Splits are made per patient group, never per image: slices and
follow-up films of one patient are not independent, and a patient on both sides of a split
inflates every metric.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch.utils.data import Dataset, Sampler

from covid_models.imaging.formats import IMAGE_SUFFIXES
from covid_models.imaging.io import read_image
from covid_models.imaging.preprocessing import Augmentation, Preprocessing

DATA_DIR_ENV = "COVID_DATA_DIR"
DATA_ROOTS_ENV = "COVID_DATA_ROOTS"  # folders (os.pathsep-separated) inside which visitors may type a data folder
WALK_MAX_ENTRIES = 200_000  # a folder import looks at no more entries than this...
WALK_MAX_SECONDS = 10.0  # ...and stops after this long
MAX_TYPED_LENGTH = 1024
SPLITS = ("train", "val", "test")

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


def typed_folders_allowed() -> bool:
    """Whether visitors may type a data folder at all: only when $COVID_DATA_ROOTS names the folders they may use
    (on a shared deployment, leave it unset: the configured $COVID_DATA_DIR is then the only data folder)."""
    return bool(os.environ.get(DATA_ROOTS_ENV, "").strip())


def allowed_data_roots() -> list[Path]:
    """The folders a typed data folder must lie in: $COVID_DATA_ROOTS, else $COVID_DATA_DIR alone (resolved)."""
    value = os.environ.get(DATA_ROOTS_ENV, "").strip()
    entries = value.split(os.pathsep) if value else [os.environ.get(DATA_DIR_ENV, "")]
    return [Path(entry).resolve() for entry in entries if entry.strip() and Path(entry).is_dir()]


def confined_folder(text: str, roots: Sequence[Path]) -> Path:
    """The folder a visitor typed, resolved, when it lies inside one of `roots` and is a folder.

    A relative path is taken inside the first root. DataError otherwise, with a message that names no server path
    and gives no OS error, and that is the same whether an outside path exists or not: the page must not tell a
    visitor which paths exist on the server.
    """
    text = text.strip()
    if not text:
        raise DataError("Type the path of a data folder.")
    if not roots:
        raise DataError("This server does not let visitors choose a data folder; its administrator sets it "
                        f"(${DATA_DIR_ENV}, or ${DATA_ROOTS_ENV} to allow typing one).")
    outside = DataError(f"That folder is not one this server allows. Type a folder inside the data folders it "
                        f"offers (${DATA_ROOTS_ENV}).")
    if len(text) > MAX_TYPED_LENGTH or "\0" in text or text.startswith("~"):
        raise outside
    try:
        candidate = (Path(text) if os.path.isabs(text) else roots[0] / text).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a link loop, an unreadable component
        raise outside from error
    if not any(candidate == root or candidate.is_relative_to(root) for root in roots):
        raise outside
    if not candidate.is_dir():
        raise DataError("There is no folder at that path inside the allowed data folders. Check the spelling.")
    return candidate


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


NEGATIVE_LABEL = "no_infection"  # label of a slice whose infection mask is empty (a real non-COVID CT slice)
NEGATIVE_HELD_OUT = 0.3  # share of the negative patients kept back: never trained on, never used to choose


def load_segmentation_negatives(path: str | Path, held_out: float = NEGATIVE_HELD_OUT, seed: int = 0
                                ) -> pd.DataFrame:
    """Real slices without the target (e.g. ../shared/data/ct-negatives) as segmentation rows with an empty mask.

    `mask` is "" (an all-zero mask at the image's size), `label` NEGATIVE_LABEL, `orientation` "as_is" (the slices
    are stored in display orientation). `split` is "train" or "test" by patient group: a seeded `held_out` share of
    the patients is "test", kept back to measure false positives on slices no model was trained or chosen on.
    """
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"the held-out share of negatives must lie strictly between 0 and 1, got {held_out}")
    path, frame = read_manifest_csv(path, {"image", "patient_id"}, "negatives manifest")
    if frame["patient_id"].isna().any():
        raise DataError(f"{path}: every row needs a patient_id (the held-out part is chosen per patient)")
    absent = [p for p in frame["image"] if not Path(p).is_file()]
    if absent:
        raise DataError(f"{path}: {len(absent)} listed image(s) do not exist, e.g. {absent[0]}")
    groups = split_groups(frame)
    names = np.unique(groups)
    kept_back = np.random.default_rng(seed).permutation(names)[:max(1, round(held_out * len(names)))]
    source = frame.get("source", pd.Series(["negatives"] * len(frame))).fillna("negatives").astype(str)
    return pd.DataFrame({"image": frame["image"], "mask": "", "patient_id": frame["patient_id"], "source": source,
                         "label": NEGATIVE_LABEL, "orientation": "as_is",
                         "split": np.where(np.isin(groups, kept_back), "test", "train")})


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


def near_duplicate_pairs(data_root: Path | None) -> list[tuple[str, str]]:
    """Pairs of image ids that look alike (near_duplicates.csv of the curated set), to keep on one side."""
    if data_root is None or not (data_root / "near_duplicates.csv").is_file():
        return []
    pairs = pd.read_csv(data_root / "near_duplicates.csv")
    columns = [c for c in pairs.columns if c.startswith("id") or c in ("image_a", "image_b", "a", "b")][:2]
    if len(columns) < 2:
        return []
    return list(zip(pairs[columns[0]].astype(str), pairs[columns[1]].astype(str), strict=True))


def near_duplicate_links(frame: pd.DataFrame, threshold: float = 0.985) -> list[tuple[str, str]]:
    """Pairs of image stems whose 32x32 zero-mean thumbnails have cosine similarity >= threshold.

    The same rule the dataset's near_duplicates.csv uses, for manifests that list no pairs (the segmentation
    sets): a picture saved twice under two patient ids must still land on one side of a split.
    """
    thumbs = []
    for path in frame["image"]:
        small = Preprocessing(image_size=32).resize(read_image(path).pixels)[0].numpy().ravel()
        small = small - small.mean()
        thumbs.append(small / (np.linalg.norm(small) + 1e-8))
    similarity = np.stack(thumbs) @ np.stack(thumbs).T
    stems = [Path(p).stem for p in frame["image"]]
    rows, cols = np.nonzero(np.triu(similarity >= threshold, k=1))
    return [(stems[i], stems[j]) for i, j in zip(rows, cols, strict=True)]


def split_groups(frame: pd.DataFrame, linked_ids: Sequence[tuple[str, str]] = ()) -> np.ndarray:
    """Group number per row (numbered by first appearance): rows are grouped when they share a patient or an image
    stem, or are linked through a near-duplicate pair, i.e. the connected components of that graph."""
    links = list(linked_ids)
    stems = image_stems(frame["image"])
    stem_codes, stem_names = pd.factorize(pd.concat([stems, pd.Series([str(a) for a, _ in links], dtype=str),
                                                     pd.Series([str(b) for _, b in links], dtype=str)]))
    patients, _ = pd.factorize(frame["patient_id"], use_na_sentinel=False)
    n_rows, n_stems = len(frame), len(stem_names)
    sources = np.concatenate([stem_codes[:n_rows], stem_codes[n_rows:n_rows + len(links)]])
    targets = np.concatenate([n_stems + patients, stem_codes[n_rows + len(links):]])
    nodes = n_stems + (int(patients.max()) + 1 if n_rows else 0)
    graph = coo_matrix((np.ones(len(sources), dtype=np.int8), (sources, targets)), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    return pd.factorize(component[n_stems + patients])[0]


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
    groups = split_groups(frame, linked_ids)
    rng = np.random.default_rng(seed)
    strata = _group_strata(frame, groups)
    assignment = np.empty(len(strata), dtype=object)
    for _, block in strata.groupby("key", sort=True):
        order = rng.permutation(block.index.to_numpy())
        sizes = block.loc[order, "size"].tolist()
        total = int(block["size"].sum())
        targets = [f * total for f in fractions]
        counts = [0] * len(SPLITS)
        for group, size in zip(order, sizes, strict=True):
            # Put the group where the split is furthest below its target share (the first such split on ties).
            deficits = [target - count for target, count in zip(targets, counts, strict=True)]
            best = deficits.index(max(deficits))
            assignment[group] = SPLITS[best]
            counts[best] += size
    return frame.assign(split=assignment[groups])


def grouped_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number per row; whole groups (patients) are dealt to folds in a seeded order, largest first."""
    groups = np.asarray(groups)
    names, sizes = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    order = sorted(order, key=lambda i: -sizes[i])  # stable: random among equal sizes
    counts, fold_of = np.zeros(folds, dtype=int), {}
    for i in order:
        fold = int(np.argmin(counts))
        fold_of[names[i]] = fold
        counts[fold] += sizes[i]
    return np.array([fold_of[g] for g in groups])


def _group_strata(frame: pd.DataFrame, groups: np.ndarray) -> pd.DataFrame:
    """Per split group (indexed 0..n-1): its majority label (the alphabetically first on ties, as
    `Series.mode().iloc[0]`), its first source, its size and the stratum key 'label|source'."""
    rows = pd.DataFrame({"group": groups, "label": frame["label"].to_numpy(), "source": frame["source"].to_numpy()})
    votes = rows.groupby(["group", "label"], sort=True).size().rename("votes").reset_index()
    votes = votes.sort_values(["group", "votes", "label"], ascending=[True, False, True], kind="stable")
    majority = votes.drop_duplicates("group").set_index("group")["label"]
    per_group = rows.groupby("group", sort=True).agg(source=("source", "first"), size=("label", "size"))
    per_group["stratum"] = majority
    per_group["key"] = per_group["stratum"] + "|" + per_group["source"]
    return per_group


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


def ensure_split(frame: pd.DataFrame, seed: int = 0, data_root: Path | None = None,
                 link_similarity: float | None = None) -> pd.DataFrame:
    """Keep an official `split` column when present, else make a patient-level one; always check leakage.

    A split made here keeps near-duplicate pictures on one side: the pairs in `data_root`'s near_duplicates.csv
    and, with `link_similarity`, the pairs `near_duplicate_links` finds (for manifests that list none; it reads
    every image, so it runs only when a split is made).
    """
    if not has_official_split(frame):
        links = near_duplicate_pairs(data_root)
        if link_similarity is not None:
            links += near_duplicate_links(frame, link_similarity)
        frame = patient_split(frame, seed=seed, linked_ids=links)
    check_no_leakage(frame)
    return frame


def split_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of each split, re-indexed; DataError when one is empty (a trainer needs train to learn on, val
    to pick the epoch and test to score once)."""
    tables = {split: frame[frame["split"] == split].reset_index(drop=True) for split in SPLITS}
    for split, rows in tables.items():
        if rows.empty:
            raise DataError(f"the {split} split is empty")
    return tables


def held_out_images(data_root: Path, modality: str) -> pd.DataFrame:
    """The held-out rows of a data folder's `modality` manifest, sorted by image: the official split when the
    manifest has one, else the seeded (seed 0) patient-level split; leakage is checked either way."""
    frame = ensure_split(load_dataset(data_root, modality), seed=0, data_root=data_root)
    return frame[frame["split"] == "test"].sort_values("image").reset_index(drop=True)


def classification_statistics(manifest: str | Path, data_root: Path | None, seed: int = 0) -> dict:
    """What the Dataset statistics page shows of a classification manifest, computed once per manifest.

    Keys: `frame` (the manifest with a split column: its own, else the seeded patient-level split that
    scripts/train.py makes, near-duplicate pairs kept together), `official_split`, `leakage` (the leakage check's
    message, or None), `near_duplicates` (listed pairs that straddle two splits, as text).
    """
    frame = load_manifest(manifest)
    official = has_official_split(frame)
    links = near_duplicate_pairs(data_root)
    stats: dict = {"official_split": official, "leakage": None}
    if not official:
        frame = patient_split(frame, seed=seed, linked_ids=links)
    try:
        check_no_leakage(frame)
    except LeakageError as error:
        stats["leakage"] = str(error)
    split_of = dict(zip(image_stems(frame["image"]), frame["split"], strict=True))
    stats["near_duplicates"] = [f"{a} ({split_of[a]}) ~ {b} ({split_of[b]})" for a, b in links
                                if a in split_of and b in split_of and split_of[a] != split_of[b]]
    stats["frame"] = frame
    return stats


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


def training_table(data: str | Path, modality: str, classes: Sequence[str], *, seed: int = 0,
                   add_manifests: Sequence[str | Path] = (), extra_train: Sequence[str] = ()) -> pd.DataFrame:
    """The split table a model is trained and evaluated on, rebuilt identically from the card's record.

    `data` keeps its official or seeded patient split; each of `add_manifests` (e.g. the Hannover films) is
    split on its own and joined, so the main data keep exactly the split that earlier models had and an old
    model is compared on images it never saw. `extra_train` entries "MANIFEST:LABEL[:ORIENTATION]" join the
    train split only (see `extra_training_rows`). The leakage check runs on the whole table.
    """
    data = Path(data)
    frame = load_dataset(data, modality)
    frame = ensure_split(frame[frame["label"].isin(classes)], seed=seed, data_root=data if data.is_dir() else None)
    added = [ensure_split(load_manifest(path), seed=seed) for path in add_manifests]
    frame = pd.concat([frame, *(a[a["label"].isin(classes)] for a in added)], ignore_index=True)
    check_no_leakage(frame)
    for entry in extra_train:
        manifest, label, *orientation = str(entry).split(":")
        frame = pd.concat([frame, extra_training_rows(manifest, label, *orientation)], ignore_index=True)
    return frame


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


def _load_resized(path: str, preprocessing: Preprocessing, orientation: str = "as_is",
                  lungs: Callable[[np.ndarray], np.ndarray] | None = None) -> torch.Tensor:
    from covid_models.models.segmentation import orient

    pixels = orient(preprocessing.model_pixels(read_image(path)), orientation)
    return preprocessing.square(preprocessing.crop(pixels, None if lungs is None else lungs(pixels)))


class ImageDataset(Dataset):
    """Labelled images as network inputs; decoded and resized once, kept in memory.

    Caching the resized image makes CPU epochs cost only the network; augmentation happens after
    the cache, on each draw. The cache is float32, exactly what `Preprocessing.resize` gives at
    inference (a uint8 cache would round, and evaluation would no longer match the app).
    """

    def __init__(self, frame: pd.DataFrame, classes: Sequence[str], preprocessing: Preprocessing,
                 augmentation: Augmentation | None = None, workers: int = 4, progress: bool = False,
                 sources: Sequence[str] | None = None, lungs: Callable[[np.ndarray], np.ndarray] | None = None):
        """`sources`, when given, makes each target a (class, source index) pair for a source adversary.
        `lungs` gives the lung mask of an image when the preprocessing crops to a segmenter's lungs.

        An `orientation` column (e.g. "transpose" for the MedSeg slices) puts rows into display orientation.
        """
        unknown = set(frame["label"]) - set(classes)
        if unknown:
            raise DataError(f"labels {sorted(unknown)} are not among the classes {list(classes)}")
        self.frame = frame.reset_index(drop=True)
        self.labels = torch.tensor([list(classes).index(label) for label in self.frame["label"]])
        if sources is not None:
            source_index = torch.tensor([list(sources).index(s) for s in self.frame["source"]])
            self.labels = torch.stack([self.labels, source_index], 1)
        self.preprocessing, self.augmentation = preprocessing, augmentation
        paths = self.frame["image"].tolist()
        orientations = self.frame.get("orientation", pd.Series(["as_is"] * len(paths))).fillna("as_is").tolist()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            images = pool.map(lambda po: _load_resized(po[0], preprocessing, po[1], lungs),
                              zip(paths, orientations, strict=True))
            if progress:
                from tqdm import tqdm
                images = tqdm(images, total=len(paths), desc="decoding images", unit="img")
            self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def for_evaluation(self) -> ImageDataset:
        """The same decoded images without augmentation and with class targets only: the trainer evaluates
        its training images (for the OOD guard) without decoding them a second time."""
        view = copy.copy(self)
        view.augmentation = None
        view.labels = self.labels[:, 0] if self.labels.ndim == 2 else self.labels
        return view

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augmentation is not None:
            image = self.augmentation(image)
        return self.preprocessing.normalise(image), self.labels[index]
