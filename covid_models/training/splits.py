"""Patient-level splits and the leakage check, and the split tables built from them.

Splits are made per patient group, never per image: slices and follow-up films of one patient are not independent,
and a patient on both sides of a split inflates every metric. Near-duplicate pictures are kept on one side too.
The tables a trainer, an evaluation or a page reads (`training_table`, `held_out_images`, the negatives' held-out
part) are built here so that each is split the same way wherever it is rebuilt.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from covid_models.imaging.io import read_image
from covid_models.imaging.preprocessing import Preprocessing
from covid_models.models.model_card import ModelCard
from covid_models.training.manifests import (
    SPLITS,
    DataError,
    extra_training_rows,
    image_stems,
    load_dataset,
    load_manifest,
    read_manifest_csv,
)

NEGATIVE_LABEL = "no_infection"  # label of a slice whose infection mask is empty (a real non-COVID CT slice)
NEGATIVE_HELD_OUT = 0.3  # share of the negative patients kept back: never trained on, never used to choose


class LeakageError(ValueError):
    """A patient (or an image) appears in more than one split."""


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


def negatives_never_trained_on(card: ModelCard) -> set[str] | None:
    """Names (file stems) of the negative slices a segmenter never trained on; None when it trained on no negatives.

    Anything fitted for a model afterwards (a rule's threshold) must not use the negatives it learnt to call empty:
    a model trained with negatives keeps their held-out part in its card, and only that part is unseen.
    """
    if NEGATIVE_LABEL not in card.data.get("by_label", {}):
        return None
    held_out = card.metrics.get("negatives_held_out", {}).get("per_image", {}).get("image")
    if not held_out:
        raise DataError(f"model {card.name} was trained on negatives but its card does not list the held-out ones")
    return set(held_out)
