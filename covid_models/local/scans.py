"""Local validation of whole CT scans by scan-level label: the sample, each scan's reading, and the validation.

A scan sample is a zip holding one folder (or one nested zip / NIfTI file) per scan and one CSV
`scan,label[,patient_id,site,manufacturer]` (`scan_sample_from_zip`), or a folder of scan sub-folders / NIfTI files
with such a CSV (`scan_sample_from_folder`). Scans are read one at a time through `volumes.read_volume` and its
limits; the zip's members are checked before anything is inflated (the same bounded zip reader).

Each scan is analysed once by `scan_analysis.analyse_scan`, the call of the CT scan page and `scripts/analyze_scan.py`
(`score_scans`). A held-back scan (too little lung, too coarse) has no result: it is listed with its reason and left
out of every figure, never counted as negative. `validate_scans` then reuses `local.validation`: the burden (% of
lung) and the secondary classifier's scan probability as continuous scores (`validate`: ROC with patient-bootstrap
intervals, no AUC headline below the minimum counts), the pattern reading ("suggestive of COVID-19") as the operating
point (`operating_point_report`), the confound check over scan metadata (manufacturer, site, slice thickness, pixel
spacing), and a cross-validated logistic model on the quantitative features (`adaptation.adapt`), refused below the
minimum counts. Manufacturer and slice thickness come from the DICOM header when the CSV does not give them.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from covid_models.analysis.ct_quantitative import DENSITY_BANDS
from covid_models.analysis.image_analysis import Hold, free
from covid_models.analysis.scan_analysis import HELD_BACK_SHARE, ScanAnalysis, analyse_scan
from covid_models.imaging.archives import zip_members
from covid_models.imaging.ct_volume import Volume, VolumeLimits
from covid_models.imaging.scan import ImageReadError
from covid_models.imaging.volumes import read_volume
from covid_models.local.samples import NEGATIVE, SampleError, class_counts, finish_sample, read_label_csv
from covid_models.local.validation import (
    ScoredSample,
    ValidationError,
    confound_check,
    operating_point_report,
    patient_counts,
    shortfall,
    validate,
)
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter

MAX_SCANS = 2000
SCAN_LIMITS = VolumeLimits()  # what one scan may cost: `read_volume`'s own limits
SAMPLE_ZIP_LIMITS = VolumeLimits(max_files=200_000, max_total_bytes=64 * 1024**3)  # inflated one scan at a time
SCAN_METADATA = ("manufacturer", "site", "slice_thickness", "pixel_spacing")
FEATURES = ("burden_percent", "severity_score", *(f"band_{band.name}" for band in DENSITY_BANDS), "bilateral",
            "peripheral_percent")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
Progress = Callable[[float, str], None]


@dataclass
class ScanSample:
    """One row per scan: `name`, `image` (a path, or the scan's folder / file inside the zip), `label`, `positive`,
    `patient_id`, `view` (empty), `site`, `manufacturer`; `notes` say what was assumed while reading."""

    frame: pd.DataFrame
    positive_class: str
    members: dict[str, list[Any]] = field(default_factory=dict)  # zip: the scan's members, inflated on read
    notes: list[str] = field(default_factory=list)

    def read(self, index: int) -> Volume:
        """The volume of row `index`, through `read_volume` and its limits."""
        image = str(self.frame["image"].iloc[index])
        if image not in self.members:
            return read_volume(image)
        return read_volume([(member.name, member.read()) for member in self.members[image]])

    def counts(self) -> dict[str, dict[str, int]]:
        """Scans and patients per binary class."""
        return class_counts(self.frame, self.positive_class, "scans")


def _scan_table(data: bytes | Path, what: str) -> pd.DataFrame:
    table = read_label_csv(data, what)
    if "scan" not in table.columns:
        raise SampleError(f"{what} lacks a 'scan' column naming each scan's folder or file "
                          "(columns: scan,label[,patient_id,site,manufacturer]).")
    if len(table) > MAX_SCANS:
        raise SampleError(f"{what} lists {len(table)} scans; at most {MAX_SCANS} can be validated at once.")
    table["scan"] = table["scan"].astype(str).str.strip().str.strip("/")
    return table


def _finish_scans(table: pd.DataFrame, images: list[str], positive_class: str,
                  members: dict[str, list[Any]] | None = None) -> ScanSample:
    manufacturer = table["manufacturer"].fillna("").astype(str).str.strip() if "manufacturer" in table else None
    sample = finish_sample(table.assign(name=table["scan"], image=images), positive_class, [])
    sample.frame["manufacturer"] = "" if manufacturer is None else manufacturer.reset_index(drop=True)
    notes = [note.replace("image(s)", "scan(s)").replace("images of one", "scans of one") for note in sample.notes]
    return ScanSample(sample.frame, positive_class, members or {}, notes)


def scan_sample_from_zip(data: bytes, positive_class: str) -> ScanSample:
    """A zip with one CSV (`scan,label[,...]`) and, per scan, a folder, a nested zip or a NIfTI file named by `scan`
    (relative to the CSV's folder)."""
    try:
        members = [m for m in zip_members(data, SAMPLE_ZIP_LIMITS)]
    except ImageReadError as error:
        raise SampleError(str(error)) from error
    csvs = [m for m in members if m.name.lower().endswith(".csv")]
    if len(csvs) != 1:
        raise SampleError(f"The zip must hold exactly one CSV of labels (scan,label[,patient_id,site,manufacturer]); "
                          f"it holds {len(csvs)}.")
    try:
        table = _scan_table(csvs[0].read(), f"'{csvs[0].name}'")
    except ImageReadError as error:
        raise SampleError(str(error)) from error
    folder = PurePosixPath(csvs[0].name).parent
    declared = {info.filename: info.file_size for info in zipfile.ZipFile(io.BytesIO(data)).infolist()}
    by_scan: dict[str, list[Any]] = {}
    for scan in table["scan"]:
        path = (folder / scan).as_posix() if str(folder) != "." else scan
        exact = [m for m in members if m.name == path]
        inside = [m for m in members if m.name.startswith(path + "/") and m is not csvs[0]]
        if exact and (path.lower().endswith(NIFTI_SUFFIXES) or path.lower().endswith(".zip")):
            by_scan[path] = exact
        elif inside:
            by_scan[path] = inside
        else:
            raise SampleError(f"The scan '{scan}' named in the CSV is not in the zip (a folder, a .zip or a NIfTI file "
                              "is expected).")
        size = sum(declared.get(m.name, 0) for m in by_scan[path])
        if size > SCAN_LIMITS.max_total_bytes or len(by_scan[path]) > SCAN_LIMITS.max_files:
            raise SampleError(f"The scan '{scan}' holds {len(by_scan[path])} files of {size / 2**30:.1f} GB, more than "
                              f"one scan may ({SCAN_LIMITS.max_files} files, "
                              f"{SCAN_LIMITS.max_total_bytes / 2**30:.0f} GB).")
    return _finish_scans(table, [(folder / s).as_posix() if str(folder) != "." else s for s in table["scan"]],
                         positive_class, by_scan)


def scan_sample_from_folder(folder: str | Path, positive_class: str, labels: str | Path | None = None) -> ScanSample:
    """A folder of scan sub-folders or NIfTI files with a CSV (`labels`, else the folder's labels.csv) naming them
    relative to the folder; nothing outside the folder is read."""
    folder = Path(folder)
    root = folder.resolve()
    csv = Path(labels) if labels is not None else folder / "labels.csv"
    if not csv.is_file():
        raise SampleError("The folder has no labels.csv (scan,label[,patient_id,site,manufacturer]).")
    table = _scan_table(csv, csv.name)
    paths = [(root / scan).resolve() for scan in table["scan"]]
    if any(not p.is_relative_to(root) for p in paths):
        raise SampleError(f"{csv.name} names a scan outside the folder.")
    missing = [scan for scan, p in zip(table["scan"], paths, strict=True) if not p.exists()]
    if missing:
        raise SampleError(f"{len(missing)} scan(s) named in {csv.name} are not in the folder (first: '{missing[0]}').")
    return _finish_scans(table, [str(p) for p in paths], positive_class)


# ------------------------------------------------------------------------------------------------- scoring
@dataclass
class ScoredScans:
    """Every read scan's reading (`frame`: the sample's columns plus burden_percent, severity_score, suggestive,
    held_back, secondary_probability, slice_thickness, pixel_spacing and the features), the feature matrix of the
    scans with a result, and the scans that could not be read (name, reason)."""

    frame: pd.DataFrame
    positive_class: str
    unreadable: list[tuple[str, str]]
    threshold: float  # the secondary classifier's operating point

    @property
    def read(self) -> pd.DataFrame:
        """The scans with a result (not held back)."""
        return self.frame[self.frame["held_back"] == ""].reset_index(drop=True)

    @property
    def held_back(self) -> pd.DataFrame:
        return self.frame[self.frame["held_back"] != ""].reset_index(drop=True)

    def as_scored(self, score: str) -> ScoredSample:
        """The scans with a result and a value of `score`, as `local.validation` takes them: `probability` is the
        score, `features` the quantitative features."""
        frame = self.read
        frame = frame[frame[score].notna()].reset_index(drop=True).assign(probability=lambda f: f[score].astype(float))
        probabilities = np.stack([frame["probability"], 1 - frame["probability"]], axis=1) if len(frame) \
            else np.zeros((0, 2))
        features = frame[list(FEATURES)].to_numpy(dtype=float) if len(frame) else np.zeros((0, len(FEATURES)))
        return ScoredSample(frame, probabilities, features, self.positive_class, 0, self.unreadable)


def scan_row(analysis: ScanAnalysis) -> dict[str, Any]:
    """The figures of one scan that the validation uses; a held-back scan has only its reason."""
    reading, metadata = analysis.reading, analysis.metadata
    summary = metadata.summary or {}
    try:
        thickness = float(summary.get("SliceThickness") or metadata.spacing[0])
    except ValueError:
        thickness = float(metadata.spacing[0])
    row: dict[str, Any] = {"held_back": reading.held_back or "", "dicom_manufacturer": summary.get("Manufacturer", ""),
                           "slice_thickness": thickness, "pixel_spacing": float(metadata.spacing[1]),
                           "slices": int(metadata.shape[0])}
    if reading.held_back is not None:
        return row
    burden = reading.lesion_percent()
    row.update({
        "burden_percent": burden, "severity_score": reading.severity_score,
        "suggestive": reading.suggestive, "pattern_not_read": reading.not_read or "",
        "secondary_probability": None if analysis.secondary_held_back else analysis.scan_probability,
        "secondary_withheld": analysis.secondary_held_back,
        "out_of_distribution": analysis.out_of_distribution_share >= HELD_BACK_SHARE,
        "bilateral": float(bool(reading.bilateral)), "peripheral_percent": float(reading.peripheral or 0.0),
        **{f"band_{name}": float(value) for name, value in reading.bands.items()}})
    return row


def score_scans(sample: ScanSample, classifier: Classifier, segmenter: Segmenter | None, *,
                progress: Progress | None = None, hold: Hold = free) -> ScoredScans:
    """Read and analyse each scan once (`analyse_scan`); unreadable scans are named and left out, never fatal.
    `hold(model)` is entered per scan, for the classifier and then the segmenter, never for the whole sample."""
    report = progress or (lambda _fraction, _what: None)
    total = len(sample.frame)
    rows, kept, unreadable = [], [], []
    for index in range(total):
        name = str(sample.frame["name"].iloc[index])

        def step(fraction: float, what: str, index: int = index, name: str = name) -> None:
            report((index + fraction) / total, f"Scan {index + 1} of {total} ({name}): {what}")

        step(0.0, "reading")
        try:
            volume = sample.read(index)
        except ImageReadError as error:
            unreadable.append((name, str(error)))
            continue
        with ExitStack() as stack:
            for model in (classifier, segmenter):
                if model is not None:
                    stack.enter_context(hold(model))
            analysis = analyse_scan(volume, classifier, segmenter, progress=step)
        rows.append(scan_row(analysis))
        kept.append(index)
    report(1.0, "Done")
    frame = sample.frame.iloc[kept].reset_index(drop=True)
    extra = pd.DataFrame(rows, index=frame.index)
    for column in ("burden_percent", "severity_score", "suggestive", "secondary_probability", *FEATURES):
        if column not in extra:
            extra[column] = None
    frame = pd.concat([frame, extra], axis=1)
    if len(frame):
        frame["manufacturer"] = [given or dicom for given, dicom in zip(frame["manufacturer"],
                                                                        frame["dicom_manufacturer"], strict=True)]
        frame = frame.drop(columns="dicom_manufacturer")
    return ScoredScans(frame, sample.positive_class, unreadable, classifier.card.threshold)


# ------------------------------------------------------------------------------------------------- validation
def validate_scans(scored: ScoredScans, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Held-back scans, the burden and the secondary probability as continuous scores, the pattern reading as the
    operating point, the confound check over scan metadata and the cross-validated quantitative model."""
    from covid_models.local.adaptation import AdaptationError, adapt

    read = scored.read
    if read.empty:
        raise ValidationError("no scan of the sample has a result (all unreadable or held back)")
    labels, groups = read["positive"].to_numpy(dtype=int), read["patient_id"].astype(str).to_numpy()
    why = shortfall(labels, groups, scored.positive_class)
    report: dict[str, Any] = {
        "scans": int(len(scored.frame)), "read": int(len(read)), "unreadable": scored.unreadable,
        "held_back": [{"scan": r["name"], "label": r["label"], "reason": r["held_back"]}
                      for _, r in scored.held_back.iterrows()],
        "patients": {scored.positive_class: patient_counts(labels, groups)[1],
                     NEGATIVE: patient_counts(labels, groups)[0]},
        "headline": why is None, "no_headline_because": why}
    scores = {}
    burden = scored.as_scored("burden_percent")
    if len(burden.frame):
        burden.frame["probability"] = burden.frame["probability"] / 100.0  # a share of the lung, not a probability
        result = validate(burden, threshold=1.0, n_resamples=n_resamples)
        for key in ("ece", "reliability", "brier", "threshold", "sensitivity", "specificity", "precision", "npv",
                    "sensitivity_ci95", "specificity_ci95", "precision_ci95", "npv_ci95", "out_of_distribution_share",
                    "image_check_refused_share"):
            result.pop(key, None)
        for row in result["subgroups"]:  # no operating point on the burden alone: the pattern reading is the one
            row.pop("sensitivity", None)
            row.pop("specificity", None)
        scores["burden"] = result
    secondary = scored.as_scored("secondary_probability")
    if len(secondary.frame):
        scores["secondary"] = validate(secondary, scored.threshold, n_resamples=n_resamples)
        scores["secondary"]["withheld"] = int(read["secondary_probability"].isna().sum())
    report["scores"] = scores
    pattern = read[read["suggestive"].notna()]
    if len(pattern):
        y, g = pattern["positive"].to_numpy(dtype=int), pattern["patient_id"].astype(str).to_numpy()
        report["pattern"] = {"scans": int(len(pattern)), **operating_point_report(
            y, pattern["suggestive"].astype(float).to_numpy(), 0.5, g, n_resamples)}
    else:
        report["pattern"] = None
    report["pattern_not_read"] = int(read["suggestive"].isna().sum())
    try:
        report["confounds"] = confound_check(burden, seed=seed, metadata=SCAN_METADATA)
    except ValidationError as error:
        report["confounds"], report["confounds_error"] = None, str(error)
    try:
        adaptation = adapt(burden, seed=seed, n_resamples=n_resamples)
        report["quantitative_model"] = {k: v for k, v in adaptation.report.items() if k != "roc"}
        report["quantitative_model"]["features"] = list(FEATURES)
    except AdaptationError as error:
        report["quantitative_model"], report["quantitative_model_error"] = None, str(error)
    return report


def scan_table(scored: ScoredScans) -> pd.DataFrame:
    """The per-scan table: label, the readings (or the reason a scan was held back) and its metadata."""
    columns = ["name", "label", "patient_id", "manufacturer", "site", "slice_thickness", "pixel_spacing", "held_back",
               "burden_percent", "severity_score", "suggestive", "pattern_not_read", "secondary_probability"]
    frame = scored.frame
    return frame[[c for c in columns if c in frame]].rename(columns={"name": "scan"})
