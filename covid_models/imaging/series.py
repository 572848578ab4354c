"""DICOM series into a `Volume`: each file's header read first, slices grouped by series, ordered, checked, decoded.

Separate from the other sources because a DICOM upload is many files that must be found to form one volume: files
are grouped by study and series UID (the UIDs are dropped once grouped), the largest axial CT series is chosen
unless another is asked for, slices are sorted along the slice normal (else by InstanceNumber), and mixed sizes,
orientations and spacings, duplicates and gaps are refused with a message that says so. Bounded: a member's first
bytes (a DICOM signature, else it is ignored) and its DICOM header (parsed from at most `dicom.MAX_HEADER_BYTES`:
each slice's declared size) are read before the member is inflated whole.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from covid_models.imaging.archives import Member
from covid_models.imaging.ct_volume import (
    Deadline,
    SeriesInfo,
    Volume,
    VolumeLimits,
    VolumeMetadata,
    VolumeReadError,
)
from covid_models.imaging.dicom import MAX_HEADER_BYTES, read_dicom_dataset, read_dicom_header
from covid_models.imaging.formats import looks_like_dicom
from covid_models.imaging.scan import ImageReadError

_SUMMARY_KEYWORDS = ("Modality", "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "KVP",
                     "ConvolutionKernel", "SliceThickness", "PatientPosition")
_ORIENTATION_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 0.1  # relative: slice steps may differ by 10 % (rounding in positions) but not more
_GAP_FACTOR = 1.5  # a step this many times the usual one means missing slices
_SIGNATURE_BYTES = 132  # a DICOM file's preamble and 'DICM'
_META_BYTES = 64 * 1024  # room for the file meta information before the header's MAX_HEADER_BYTES


@dataclass(frozen=True)
class DicomSlice:
    """One DICOM file's place in its series, from its header only: the grouping keys (study, series and instance
    UIDs, dropped once grouped), its size and its geometry; the file itself is read again only to decode it."""

    member: Member
    study: str
    series: str
    instance: str
    modality: str | None
    rows: int
    columns: int
    frames: int
    orientation: np.ndarray | None  # (6,) row and column direction cosines
    position: np.ndarray | None  # (3,)
    pixel_spacing: tuple[float, float] | None
    instance_number: int | None
    between_slices: float | None  # SpacingBetweenSlices, else SliceThickness (fallback only)
    summary: dict[str, str]


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None


def _number(value: Any) -> float | None:
    try:
        number = float(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) else None


def _slice_header(member: Member, limits: VolumeLimits) -> DicomSlice | None:
    """The geometry of one DICOM file, from its first bytes only; None when the file is not DICOM (it is then
    ignored). A file declaring more pixels than a CT slice has refuses the upload before anything is inflated."""
    if not looks_like_dicom(member.head(_SIGNATURE_BYTES)):
        return None
    try:
        header = read_dicom_header(member.head(MAX_HEADER_BYTES + _META_BYTES), force=True)
    except ImageReadError:
        return None  # a file that is not DICOM (or whose header is damaged) is ignored, not fatal
    ds = header.dataset
    if ds.get("Rows") is None or ds.get("Columns") is None:
        return None  # DICOMDIR, structured reports, presentation states: no image
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows * columns > limits.max_slice_pixels or header.declared_bytes > limits.max_file_bytes:
        side = int(limits.max_slice_pixels ** 0.5)
        raise VolumeReadError(f"A file of this upload ('{Path(member.name).name}') declares an image of {columns} x "
                              f"{rows} pixels ({header.declared_bytes / 2**20:,.0f} MB of pixel data); a CT slice has "
                              f"at most {side} x {side}, so the upload was not read. Upload the CT series itself.")
    spacing = _floats(ds.get("PixelSpacing") or [], 2)
    between = _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness"))
    number = _number(ds.get("InstanceNumber"))
    return DicomSlice(
        member=member, study=str(ds.get("StudyInstanceUID", "")), series=str(ds.get("SeriesInstanceUID", "")),
        instance=str(ds.get("SOPInstanceUID", "")) or member.name,
        modality=str(ds.get("Modality", "")).strip().upper() or None, rows=rows, columns=columns,
        frames=int(_number(ds.get("NumberOfFrames")) or 1), orientation=_floats(ds.get("ImageOrientationPatient")
                                                                                 or [], 6),
        position=_floats(ds.get("ImagePositionPatient") or [], 3),
        pixel_spacing=None if spacing is None or (spacing <= 0).any() else (float(spacing[0]), float(spacing[1])),
        instance_number=None if number is None else int(number), between_slices=between,
        summary={kw: str(ds[kw].value)[:64] for kw in _SUMMARY_KEYWORDS if ds.get(kw) not in (None, "")},
    )


def _is_axial(orientation: np.ndarray | None) -> bool:
    if orientation is None:
        return True  # unknown: taken as axial, and said so in the notes
    normal = np.cross(orientation[:3], orientation[3:])
    return bool(abs(normal[2]) >= 0.9)


def dicom_slices(members: list[Member], limits: VolumeLimits, deadline: Deadline) -> tuple[list[DicomSlice], int]:
    """The DICOM images among `members`, each from its header only, and how many members were ignored (not DICOM,
    or DICOM without an image)."""
    slices, ignored = [], 0
    for member in members:
        deadline.check()
        header = _slice_header(member, limits)
        if header is None:
            ignored += 1
        else:
            slices.append(header)
    return slices, ignored


def read_series(slices: list[DicomSlice], ignored: int, series: int | None, limits: VolumeLimits, deadline: Deadline
                ) -> Volume:
    """The volume of one series among `slices` (`series` by its index, else the largest axial CT series)."""
    groups: dict[tuple[str, str], dict[str, DicomSlice]] = defaultdict(dict)
    for item in slices:
        groups[(item.study, item.series)].setdefault(item.instance, item)  # a file given twice counts once
    ordered = sorted(groups.values(), key=lambda g: _series_rank(list(g.values())), reverse=True)
    infos = tuple(_series_info(index, list(group.values())) for index, group in enumerate(ordered))
    if series is None:
        chosen = 0
    elif 0 <= series < len(ordered):
        chosen = series
    else:
        raise VolumeReadError(f"There is no series {series + 1}; this upload holds {len(ordered)}.")
    notes = []
    if ignored:
        notes.append(f"{ignored} file(s) that are not DICOM images were ignored")
    if len(ordered) > 1:
        notes.append(f"{len(ordered)} series found; {infos[chosen].label} read")
    return _series_volume(list(ordered[chosen].values()), infos, chosen, notes, limits, deadline)


def _series_rank(group: list[DicomSlice]) -> tuple[bool, int]:
    first = group[0]
    return first.modality == "CT" and _is_axial(first.orientation), len(group)


def _series_info(index: int, group: list[DicomSlice]) -> SeriesInfo:
    first = group[0]
    return SeriesInfo(index=index, modality=first.modality, slices=len(group), rows=first.rows,
                      columns=first.columns, axial=_is_axial(first.orientation))


def _series_volume(group: list[DicomSlice], infos: tuple[SeriesInfo, ...], chosen: int, notes: list[str],
                   limits: VolumeLimits, deadline: Deadline) -> Volume:
    first = group[0]
    if first.modality != "CT":
        raise VolumeReadError(f"This series is {first.modality or 'of unknown modality'}, not CT: only chest CT "
                              "volumes can be analysed here." + _others(infos, chosen))
    if any(item.frames > 1 for item in group):
        raise VolumeReadError("This series is stored as multi-frame (enhanced) DICOM, which is not supported. "
                              "Export it as one file per slice.")
    if len(group) < limits.min_slices:
        raise VolumeReadError(f"This series has {len(group)} image(s); a CT volume needs at least "
                              f"{limits.min_slices} slices. For a single slice, use the Analyze page.")
    if len(group) > limits.max_slices:
        raise VolumeReadError(f"This series has {len(group)} slices; at most {limits.max_slices} can be analysed. "
                              "Export a thicker reconstruction.")
    if len({(item.rows, item.columns) for item in group}) > 1:
        raise VolumeReadError("The images of this series have different sizes (mixed sizes), so they do not form "
                              "one volume. Export the series again.")
    if len(group) * first.rows * first.columns > limits.max_voxels:
        raise VolumeReadError(f"This series has {len(group) * first.rows * first.columns / 1e6:.0f} million voxels; "
                              f"the limit is {limits.max_voxels / 1e6:.0f} million. Export a thicker reconstruction.")
    spacings = {item.pixel_spacing for item in group}
    if None in spacings:
        raise VolumeReadError("Some images of this series give no pixel spacing, so volumes cannot be measured.")
    row_spacing, column_spacing = first.pixel_spacing
    if any(abs(s[0] - row_spacing) > 1e-3 * row_spacing or abs(s[1] - column_spacing) > 1e-3 * column_spacing
           for s in spacings):
        raise VolumeReadError("The images of this series have different pixel spacings (inconsistent spacing), so "
                              "they do not form one volume. Export the series again.")
    ordered, step, sorted_by, flips = _slice_order(group, notes, infos, chosen)
    hu = np.empty((len(ordered), first.rows, first.columns), dtype=np.int16)
    summary = dict(first.summary)
    for index, item in enumerate(ordered):
        deadline.check()
        hu[index] = _decode_hu(item, summary)
    if flips[0]:
        hu = hu[:, ::-1, :]
    if flips[1]:
        hu = hu[:, :, ::-1]
    metadata = VolumeMetadata(
        source_format="dicom-series", shape=tuple(hu.shape), spacing=(step, row_spacing, column_spacing),
        sorted_by=sorted_by, series=infos, chosen_series=chosen, notes=tuple(notes), summary=summary)
    return Volume(hu=np.ascontiguousarray(hu), metadata=metadata)


def _others(infos: tuple[SeriesInfo, ...], chosen: int) -> str:
    others = [info.label for info in infos if info.index != chosen]
    return (" Other series in this upload: " + "; ".join(others) + ".") if others else ""


def _slice_order(group: list[DicomSlice], notes: list[str], infos: tuple[SeriesInfo, ...], chosen: int
                 ) -> tuple[list[DicomSlice], float, str, tuple[bool, bool]]:
    """Slices from head to feet, the distance between them, how that was found, and in-plane flips (rows, cols)."""
    geometry = all(item.orientation is not None and item.position is not None for item in group)
    if geometry:
        orientation = group[0].orientation
        if any(np.abs(item.orientation - orientation).max() > _ORIENTATION_TOLERANCE for item in group):
            raise VolumeReadError("The images of this series are not all oriented the same way (inconsistent "
                                  "orientation), so they do not form one volume. Export the series again.")
        normal = np.cross(orientation[:3], orientation[3:])
        if abs(normal[2]) < 0.9:
            raise VolumeReadError("This series is not axial (it is a sagittal, coronal or oblique reconstruction); "
                                  "the lung analysis needs axial slices." + _others(infos, chosen))
        # patient +z is the head (DICOM LPS): sort by height, highest first
        heights = np.asarray([item.position @ normal for item in group]) * np.sign(normal[2])
        order = np.argsort(-heights, kind="stable")
        steps = -np.diff(heights[order])
        ordered = [group[i] for i in order]
        sorted_by = "ImagePositionPatient along the slice normal"
        if abs(normal[2]) < 0.999:
            notes.append(f"gantry tilt or oblique slices ({np.degrees(np.arccos(abs(normal[2]))):.1f} degrees) "
                         "ignored")
        flips = (bool(orientation[4] < 0), bool(orientation[0] < 0))
    else:
        numbers = [item.instance_number for item in group]
        if None in numbers:
            raise VolumeReadError("The slices of this series carry neither their position (ImagePositionPatient) "
                                  "nor an InstanceNumber, so their order is unknown. Export the series again.")
        ordered = sorted(group, key=lambda item: item.instance_number)
        sorted_numbers = np.asarray([item.instance_number for item in ordered])
        if len(set(numbers)) < len(numbers):
            raise VolumeReadError("Two slices of this series have the same InstanceNumber and no position, so their "
                                  "order is unknown. Export the series again.")
        spacing = group[0].between_slices
        if spacing is None or spacing <= 0:
            raise VolumeReadError("The slices of this series give no position and no slice spacing, so the volume "
                                  "cannot be measured. Export the series again.")
        steps = np.diff(sorted_numbers).astype(np.float64) * spacing
        sorted_by = "InstanceNumber (no slice positions in the files; head-to-feet order assumed)"
        notes.append("no ImagePositionPatient: slices sorted by InstanceNumber, spacing from the header")
        flips = (False, False)
    if (steps < 0.01).any():
        raise VolumeReadError("Two slices of this series lie at the same position (a duplicate or a second "
                              "acquisition mixed in). Export one acquisition of the series.")
    step = float(np.median(steps))
    gaps = steps > _GAP_FACTOR * step
    if gaps.any():
        missing = int(np.round(steps[gaps] / step).sum() - gaps.sum())
        raise VolumeReadError(f"This series has gaps: about {missing} slice(s) are missing between the "
                              f"{len(group)} present (the usual step is {step:.2f} mm). Upload the complete series.")
    if np.abs(steps - step).max() > _SPACING_TOLERANCE * step:
        raise VolumeReadError(f"The distance between slices of this series varies ({steps.min():.2f} to "
                              f"{steps.max():.2f} mm: inconsistent spacing), so it is not one regular volume.")
    return ordered, step, sorted_by, flips


def _decode_hu(item: DicomSlice, summary: dict[str, str]) -> np.ndarray:
    """One slice's HU as int16 (rounded; clipped to int16), decoded through pydicom's plugins."""
    data = item.member.read()
    try:
        header = read_dicom_header(data, force=True)
        if (header.dataset.get("Rows"), header.dataset.get("Columns")) != (item.rows, item.columns):
            raise ValueError("the file changed since its header was read")
        ds = read_dicom_dataset(data, header, force=True)
        if not hasattr(ds.file_meta, "TransferSyntaxUID"):
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        syntax = ds.file_meta.TransferSyntaxUID
        summary.setdefault("TransferSyntax", syntax.name)
        raw = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        raise VolumeReadError(f"A slice of this series ('{Path(item.member.name).name}') could not be decoded: "
                              "its pixel data is damaged or uses an encoding the installed decoders do not handle. "
                              "Export the series again as uncompressed DICOM.") from exc
    if raw.ndim != 2:
        raise VolumeReadError("This series holds colour images, not CT slices.")
    if ds.get("ModalityLUTSequence"):
        values = apply_modality_lut(raw, ds)
    else:
        slope = _number(ds.get("RescaleSlope"))
        intercept = _number(ds.get("RescaleIntercept")) or 0.0
        slope = 1.0 if slope in (None, 0.0) else slope
        if slope == 1.0 and float(intercept).is_integer():
            values = raw.astype(np.int32) + int(intercept)
        else:
            values = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return np.clip(np.rint(values) if values.dtype.kind == "f" else values, -32768, 32767).astype(np.int16)
