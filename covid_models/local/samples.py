"""A hospital's labelled local sample, read into one table: the input of local validation and adaptation.

Three ways in, one result (`LocalSample`):
- a zip of images with a CSV (`file,label[,patient_id,view,site]`) inside it (`sample_from_zip`);
- DICOM files with a CSV keyed by `SOPInstanceUID` or `file` (`sample_from_dicom`);
- a folder (under $COVID_DATA_ROOTS on the page): a manifest.csv (the shared data's format), a labels.csv as above,
  or one sub-folder per class (`sample_from_folder`); `sample_from_manifest` reads a manifest, optionally one source.
Labels are binary for this purpose: the model's positive class (e.g. "covid", also "positive", "1") against
everything else. Zip members are checked before inflating (the CT volume reader's bounded zip reader); images are
read later, one at a time, through `io.read_image` (`LocalSample.read`).
"""
from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from covid_models.imaging.archives import zip_members
from covid_models.imaging.ct_volume import VolumeLimits
from covid_models.imaging.io import read_dicom_identifiers, read_image
from covid_models.imaging.scan import ImageReadError, Scan
from covid_models.models.model_card import ModelCard
from covid_models.training.manifests import DataError, import_folder, load_manifest
from covid_models.training.splits import training_table

NEGATIVE = "other"
CSV_COLUMNS = ("file", "label", "patient_id", "view", "site")
POSITIVE_WORDS = {"positive", "1", "true", "yes"}
MAX_ROWS = 20_000  # a local validation sample is hundreds of images; a CSV of millions of rows is a mistake
ZIP_LIMITS = VolumeLimits(max_files=MAX_ROWS + 10, max_file_bytes=64 * 1024 * 1024, max_total_bytes=1024**3)


class SampleError(DataError):
    """A local sample that cannot be used; the message says what to fix."""


@dataclass
class LocalSample:
    """One row per image: `name` (as given), `image` (a path, or a key of `blobs`), `label` (as given),
    `positive` (0/1), `patient_id`, `view`, `site`; `notes` say what was assumed while reading."""

    frame: pd.DataFrame
    positive_class: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def read(self, index: int) -> tuple[Scan, bytes]:
        """The image of row `index` and its file's bytes (for the chest-image check's colour test)."""
        image = str(self.frame["image"].iloc[index])
        data = self.blobs[image] if image in self.blobs else _read_path(Path(image))
        return read_image(data, name=str(self.frame["name"].iloc[index])), data

    def counts(self) -> dict[str, dict[str, int]]:
        """Images and patients per binary class."""
        return class_counts(self.frame, self.positive_class, "images")


def class_counts(frame: pd.DataFrame, positive_class: str, unit: str) -> dict[str, dict[str, int]]:
    """How many rows (`unit`: images, scans) and patients a sample holds per binary class."""
    result = {}
    for positive, name in ((1, positive_class), (0, NEGATIVE)):
        rows = frame[frame["positive"] == positive]
        result[name] = {unit: int(len(rows)), "patients": int(rows["patient_id"].nunique())}
    return result


def _read_path(path: Path) -> bytes:
    from covid_models.imaging.scan import MAX_FILE_BYTES

    if not path.is_file():
        raise ImageReadError(f"{path.name}: not found")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ImageReadError(f"{path.name}: larger than {MAX_FILE_BYTES // 2**20} MB")
    return path.read_bytes()


def is_positive(label: object, positive_class: str) -> bool:
    """Whether a label names the positive class ("COVID-19", "covid", "positive", "1" for "covid")."""
    text = re.sub(r"[\s_\-]", "", str(label).strip().lower())
    target = re.sub(r"[\s_\-]", "", positive_class.lower())
    return text in POSITIVE_WORDS or text == target or (target == "covid" and text == "covid19")


def finish_sample(frame: pd.DataFrame, positive_class: str, notes: list[str],
                  blobs: dict[str, bytes] | None = None) -> LocalSample:
    """Fill the optional columns, binarise the label, and refuse an empty or one-class sample outright."""
    if frame.empty:
        raise SampleError("The sample holds no labelled image.")
    if len(frame) > MAX_ROWS:
        raise SampleError(f"The sample lists {len(frame)} images; at most {MAX_ROWS} can be validated at once.")
    frame = frame.copy()
    frame["label"] = frame["label"].astype(str).str.strip()
    if frame["label"].isin(["", "nan"]).any():
        raise SampleError(f"{int(frame['label'].isin(['', 'nan']).sum())} row(s) have no label; label every image.")
    frame["positive"] = [int(is_positive(label, positive_class)) for label in frame["label"]]
    if "patient_id" not in frame or frame["patient_id"].isna().any() or (frame["patient_id"].astype(str) == "").any():
        ids = frame["patient_id"] if "patient_id" in frame else pd.Series([None] * len(frame), index=frame.index)
        missing = int(ids.isna().sum() + (ids.astype(str) == "").sum())
        notes.append(f"{missing} image(s) without a patient id are each counted as their own patient: images of one "
                     "patient left unlinked make every interval too narrow.")
        frame["patient_id"] = [str(p) if isinstance(p, str) and p else f"file:{n}"
                               for p, n in zip(ids, frame["name"], strict=True)]
    frame["patient_id"] = frame["patient_id"].astype(str)
    for column in ("view", "site"):
        frame[column] = frame[column].fillna("").astype(str).str.strip() if column in frame else ""
    return LocalSample(frame.reset_index(drop=True)[["name", "image", "label", "positive", "patient_id", "view",
                                                    "site"]], positive_class, blobs or {}, notes)


def read_label_csv(data: bytes | Path, what: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.BytesIO(data) if isinstance(data, bytes) else data, dtype=str, nrows=MAX_ROWS + 1,
                            keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SampleError(f"{what} is not a readable CSV: {str(error).splitlines()[0]}") from error
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "label" not in frame.columns:
        raise SampleError(f"{what} lacks a 'label' column (columns: file,label[,patient_id,view,site]).")
    return frame


def sample_from_zip(data: bytes, positive_class: str) -> LocalSample:
    """A zip holding images and one CSV (`file,label[,patient_id,view,site]`; `file` as the path inside the zip)."""
    try:
        members = {PurePosixPath(m.name).as_posix(): m for m in zip_members(data, ZIP_LIMITS)}
    except ImageReadError as error:
        raise SampleError(str(error)) from error
    csvs = [name for name in members if name.lower().endswith(".csv")]
    if len(csvs) != 1:
        raise SampleError(f"The zip must hold exactly one CSV of labels (file,label[,patient_id,view,site]); it holds "
                          f"{len(csvs)}.")
    try:
        table = read_label_csv(members[csvs[0]].read(), f"'{csvs[0]}'")
    except ImageReadError as error:
        raise SampleError(str(error)) from error
    if "file" not in table.columns:
        raise SampleError(f"'{csvs[0]}' lacks a 'file' column naming each image inside the zip.")
    folder = PurePosixPath(csvs[0]).parent
    by_name = {name: name for name in members}
    by_name.update({PurePosixPath(name).relative_to(folder).as_posix(): name for name in members
                    if PurePosixPath(name).is_relative_to(folder)})
    missing = [f for f in table["file"].astype(str) if f not in by_name]
    if missing:
        raise SampleError(f"{len(missing)} file(s) named in the CSV are not in the zip (first: '{missing[0]}').")
    blobs = {}
    try:
        for file in table["file"].astype(str):
            blobs[by_name[file]] = members[by_name[file]].read()
    except ImageReadError as error:
        raise SampleError(str(error)) from error
    table = table.assign(name=table["file"].astype(str), image=[by_name[f] for f in table["file"].astype(str)])
    return finish_sample(table, positive_class, [], blobs)


def sample_from_dicom(files: Sequence[tuple[str, bytes]], table_csv: bytes, positive_class: str) -> LocalSample:
    """DICOM files with a CSV of labels keyed by `SOPInstanceUID` or by `file` (the file name)."""
    table = read_label_csv(table_csv, "The label CSV")
    key = "sopinstanceuid" if "sopinstanceuid" in table.columns else "file" if "file" in table.columns else None
    if key is None:
        raise SampleError("The label CSV needs a 'SOPInstanceUID' or a 'file' column to find each DICOM file.")
    blobs, found = {}, {}
    for name, data in files:
        blobs[name] = data
        if key == "file":
            found[PurePosixPath(name).name] = name
            continue
        try:
            uid = read_dicom_identifiers(data).get("SOPInstanceUID")
        except ImageReadError:
            continue
        if uid:
            found[uid] = name
    keys = table[key].astype(str).str.strip()
    missing = [k for k in keys if k not in found]
    if missing:
        raise SampleError(f"{len(missing)} row(s) of the CSV match no uploaded DICOM file by {key} "
                          f"(first: '{missing[0]}').")
    table = table.assign(name=[found[k] for k in keys], image=[found[k] for k in keys])
    used = set(table["image"])
    return finish_sample(table, positive_class, [], {k: v for k, v in blobs.items() if k in used})


def sample_from_manifest(manifest: str | Path, positive_class: str, source: str | None = None,
                         modality: str | None = None) -> LocalSample:
    """A manifest.csv (image,label,patient_id[,view,source]); `source` keeps the rows of one source (the "site")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows without patient_id are reported in the sample's notes instead
        frame = load_manifest(manifest)
    if source is not None:
        frame = frame[frame["source"] == source]
        if frame.empty:
            raise SampleError(f"No row of the manifest comes from the source {source!r}.")
    frame = frame.assign(name=[Path(p).name for p in frame["image"]], site=frame["source"])
    if modality is not None and "modality" in frame:
        frame = frame[frame["modality"] == modality]
    return finish_sample(frame, positive_class, [])


def sample_from_folder(folder: str | Path, positive_class: str) -> LocalSample:
    """A folder: its manifest.csv, else its labels.csv (file,label,... relative to it), else class sub-folders."""
    folder = Path(folder)
    root = folder.resolve()
    if (folder / "manifest.csv").is_file():
        sample = sample_from_manifest(folder / "manifest.csv", positive_class)
        if any(not Path(p).resolve().is_relative_to(root) for p in sample.frame["image"]):
            raise SampleError("manifest.csv names a file outside its folder; only the folder's own images are read.")
        return sample
    if (folder / "labels.csv").is_file():
        table = read_label_csv(folder / "labels.csv", "labels.csv")
        if "file" not in table.columns:
            raise SampleError("labels.csv lacks a 'file' column naming each image relative to the folder.")
        paths = [(root / f).resolve() for f in table["file"].astype(str)]
        if any(not p.is_relative_to(root) for p in paths):
            raise SampleError("labels.csv names a file outside its folder.")
        return finish_sample(table.assign(name=table["file"].astype(str), image=[str(p) for p in paths]),
                             positive_class, [])
    frame = import_folder(folder)
    if frame.empty:
        raise SampleError("The folder holds no manifest.csv, no labels.csv and no class sub-folders of images.")
    return finish_sample(frame.assign(name=[Path(p).name for p in frame["image"]]), positive_class, [])



def unseen_by(card: ModelCard, data_root: str | Path, sample: LocalSample) -> LocalSample:
    """The rows of `sample` that the model of `card` never trained or was calibrated on: its train and validation
    splits are rebuilt from `data_root` with the card's recipe (`data.training_table`) and left out."""
    table = training_table(data_root, card.modality, card.classes, seed=int(card.training.get("seed", 0)),
                           add_manifests=card.training.get("add_manifests", ()),
                           extra_train=card.training.get("extra_train", ()))
    seen = set(table.loc[table["split"] != "test", "image"])
    keep = ~sample.frame["image"].isin(seen)
    notes = [*sample.notes, f"{int((~keep).sum())} image(s) that {card.name} was trained or calibrated on were left "
                            f"out; {int(keep.sum())} remain."]
    return LocalSample(sample.frame[keep].reset_index(drop=True), sample.positive_class, sample.blobs, notes)
