"""Reading CT volumes: DICOM series (folder, uploaded files, zip) and NIfTI, into one canonical `Volume`.

A `Volume` holds HU as int16 in one known orientation, whatever the source:
axis 0 = slices from head to feet, axis 1 = rows from anterior to posterior, axis 2 = columns from the
patient's right to the patient's left (the usual axial display: anterior up, patient's left on the viewer's
right), with its spacing in mm along each axis. That is the orientation the CT models expect.

Every failure is a `VolumeReadError` (an `io.ImageReadError`) whose message says what is wrong and what to do.
Limits are checked from headers before pixels are decoded or inflated: a zip's declared sizes and compression
ratio before any member is inflated; a member's first bytes (a DICOM signature, else it is ignored) and its DICOM
header (parsed from at most `io.MAX_HEADER_BYTES`: each slice's declared size) before the member is inflated whole;
a NIfTI header's shape and data type before its voxels, which are then inflated and converted slab by slab straight
into the result (never a second copy of the volume). Archives are read one member at a time, in memory (nothing is
written to disk), and one read stops at `VolumeLimits.max_seconds`. The metadata keeps technical fields only:
study and series UIDs are used to group slices while reading and then dropped.
"""
from __future__ import annotations

import gzip
import io
import os
import time
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from covid_models.imaging.io import (
    MAX_HEADER_BYTES,
    ImageReadError,
    looks_like_dicom,
    read_dicom_dataset,
    read_dicom_header,
    read_regular_file,
    special_file_kind,
)

CANONICAL_ORIENTATION = "slices head to feet, rows anterior to posterior, columns patient right to left"
NIFTI_AXES = ("L", "P", "I")  # nibabel axis codes of (x, y, z) after reorientation; stored as (z, y, x)
SUPPORTED_VOLUMES = "Upload a zip of a DICOM series, the DICOM files of one series, or a NIfTI (.nii, .nii.gz) volume."
_SUMMARY_KEYWORDS = ("Modality", "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "KVP",
                     "ConvolutionKernel", "SliceThickness", "PatientPosition")
_ORIENTATION_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 0.1  # relative: slice steps may differ by 10 % (rounding in positions) but not more
_GAP_FACTOR = 1.5  # a step this many times the usual one means missing slices
_SIGNATURE_BYTES = 132  # a DICOM file's preamble and 'DICM'
_META_BYTES = 64 * 1024  # room for the file meta information before the header's MAX_HEADER_BYTES


class VolumeReadError(ImageReadError):
    """Raised for every upload that cannot become a CT volume; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class VolumeLimits:
    """What one upload may cost, checked before decoding (declared sizes) and while reading (actual sizes)."""

    max_slices: int = 1500
    max_voxels: int = 200_000_000  # 400 MB as int16; a 512 x 512 series of 760 slices
    max_files: int = 5000
    max_file_bytes: int = 64 * 1024 * 1024  # one file of a series, and one slice's declared pixel data
    max_slice_pixels: int = 2048 * 2048  # CT slices are 512 x 512, rarely 1024 x 1024
    max_total_bytes: int = 2 * 1024**3  # inflated bytes of an archive, folder or NIfTI, all members together
    max_ratio: float = 50.0  # a zip inflating to more than max_file_bytes may not be compressed more than this
    max_seconds: float = 180.0  # one read (255 JPEG-lossless 512 x 512 slices: 15 s on a loaded 2-core machine)
    min_slices: int = 3


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in an upload, described without identifiers (its UIDs stay in the reader)."""

    index: int
    modality: str | None
    slices: int
    rows: int
    columns: int
    axial: bool

    @property
    def label(self) -> str:
        plane = "axial" if self.axial else "not axial"
        return f"Series {self.index + 1}: {self.modality or 'unknown modality'}, {self.slices} images of " \
               f"{self.columns} x {self.rows}, {plane}"


@dataclass(frozen=True)
class VolumeMetadata:
    """What was read and how, free of patient identifiers so that it can be stored and shown."""

    source_format: str  # "dicom-series" or "nifti"
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm between slices, rows, columns
    sorted_by: str  # how the slice order was found
    series: tuple[SeriesInfo, ...] = ()  # every series of the upload (DICOM), the chosen one included
    chosen_series: int | None = None
    notes: tuple[str, ...] = ()
    summary: dict[str, str] = field(default_factory=dict)  # technical header fields only


@dataclass(frozen=True, eq=False)
class Volume:
    """HU (int16, (slices, rows, columns)) in the canonical orientation, with its spacing and metadata."""

    hu: np.ndarray
    metadata: VolumeMetadata

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.metadata.spacing

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


# ---------------------------------------------------------------------------------------------- public API
Source = str | os.PathLike | bytes | Sequence[tuple[str, bytes]]


def read_volume(source: Source, *, name: str | None = None, series: int | None = None,
                limits: VolumeLimits = VolumeLimits()) -> Volume:
    """A CT volume from a folder or file path, the bytes of one file (`name` for its extension), or uploaded files.

    A folder or a zip is searched (nested folders too) for DICOM files; a `.nii`/`.nii.gz` (path, bytes, or the
    only file of an upload or archive) is read as NIfTI. `series` picks one of the series listed in
    `metadata.series` (by its index); by default the largest axial CT series is read.
    """
    try:
        return _read_volume(source, name, series, limits, _Deadline(time.monotonic() + limits.max_seconds,
                                                                    limits.max_seconds))
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise VolumeReadError("This volume is too large to read with the memory available. "
                              "Export fewer slices or a downsampled volume.") from exc
    except Exception as exc:  # any decoder or archive failure is a damaged upload for the user
        raise VolumeReadError(f"This upload could not be read as a CT volume ({type(exc).__name__}). "
                              "Export it again and re-upload. " + SUPPORTED_VOLUMES) from exc


def read_label_volume(source: str | os.PathLike | bytes, *, limits: VolumeLimits = VolumeLimits()) -> np.ndarray:
    """A NIfTI label map (e.g. a reference lung mask) as uint8 in the canonical orientation."""
    data = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else bytes(source)
    labels, _, _ = _nifti_canonical(data, limits, np.uint8, _Deadline(time.monotonic() + limits.max_seconds,
                                                                      limits.max_seconds))
    return labels


# ---------------------------------------------------------------------------------------- members of an upload
@dataclass(frozen=True)
class _Deadline:
    """When one read must have ended; checked between files, slices and slabs."""

    at: float
    seconds: float

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise VolumeReadError(f"Reading this upload took longer than {self.seconds:g} s, the limit for one scan, "
                                  "so it was stopped. Upload one series (a zip of its folder) or a NIfTI volume.")


@dataclass(frozen=True)
class _Member:
    """One file of an upload, read on demand so that an archive or folder is never held inflated in memory;
    `head(n)` gives its first n bytes (a zip member is inflated only so far)."""

    name: str
    read: Callable[[], bytes]
    head: Callable[[int], bytes]


def _read_volume(source: Source, name: str | None, series: int | None, limits: VolumeLimits,
                 deadline: _Deadline) -> Volume:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            info = path.stat()
        except OSError as exc:
            raise VolumeReadError(f"'{path.name}' does not exist or cannot be opened ({exc.strerror or exc}). "
                                  "Check the path.") from exc
        if path.is_dir():
            return _read_members(list(_folder_members(path, limits)), series, limits, deadline)
        kind = special_file_kind(info.st_mode)
        if kind is not None:
            raise VolumeReadError(f"'{path.name}' is {kind}, not a regular file, so it was not read. "
                                  + SUPPORTED_VOLUMES)
        try:
            data = read_regular_file(path, limits.max_total_bytes)
        except OSError as exc:
            raise VolumeReadError(f"'{path.name}' could not be opened ({exc.strerror or exc}).") from exc
        except ImageReadError as exc:
            raise VolumeReadError(f"'{path.name}': {exc}") from exc
        return _read_volume(data, name or path.name, series, limits, deadline)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_volume([(name or "upload", bytes(source))], None, series, limits, deadline)
    files = list(source)
    if not files:
        raise VolumeReadError("Nothing was uploaded. " + SUPPORTED_VOLUMES)
    if len(files) > limits.max_files:
        raise VolumeReadError(f"{len(files)} files were uploaded; at most {limits.max_files} can be read at once.")
    if len(files) == 1:
        file_name, data = files[0]
        if not data:
            raise VolumeReadError("This file is empty (0 bytes). It may not have finished uploading; try again.")
        if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
            return _read_members(list(_zip_members(data, limits)), series, limits, deadline)
        if _is_nifti(data, file_name):
            return _read_nifti(data, limits, deadline)
    members = [_Member(n, lambda d=d: d, lambda size, d=d: d[:size]) for n, d in files]
    return _read_members(members, series, limits, deadline)


def _folder_members(folder: Path, limits: VolumeLimits) -> Iterator[_Member]:
    count = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        count += 1
        if count > limits.max_files:
            raise VolumeReadError(f"This folder holds more than {limits.max_files} files. Point at one series.")
        yield _Member(str(path.relative_to(folder)), lambda p=path: _read_file(p, limits),
                      lambda size, p=path: _read_file(p, limits, size))


def _read_file(path: Path, limits: VolumeLimits, size: int | None = None) -> bytes:
    """The file, or its first `size` bytes; a file over `limits.max_file_bytes` is refused unread."""
    if path.stat().st_size > limits.max_file_bytes:
        raise VolumeReadError(f"'{path.name}' is larger than {limits.max_file_bytes // 2**20} MB, too large for "
                              "one CT slice.")
    with open(path, "rb") as handle:
        return handle.read(limits.max_file_bytes if size is None else size)


def _zip_members(data: bytes, limits: VolumeLimits) -> Iterator[_Member]:
    """Members of a zip, checked before anything is inflated: encryption, paths, counts, declared sizes and the
    compression ratio (no CT series compresses 50:1; zero-filled members do, a thousand to one)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise VolumeReadError("This zip archive is damaged and cannot be opened. Create it again and re-upload.") \
            from exc
    files = [info for info in infos if not info.is_dir()]
    if len(files) > limits.max_files:
        raise VolumeReadError(f"This zip holds {len(files)} files; at most {limits.max_files} can be read.")
    declared, compressed = 0, 0
    budget = _Budget(limits.max_total_bytes)
    for info in files:
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise VolumeReadError(f"This zip contains a path that climbs out of the archive ('{parts[-1]}'): "
                                  "it is unsafe and was not read. Create the zip from the series folder itself.")
        if info.flag_bits & 0x1:
            raise VolumeReadError("This zip is encrypted (password-protected). Upload an unencrypted zip.")
        if info.file_size > limits.max_file_bytes:
            raise VolumeReadError(f"This zip contains a file of {info.file_size / 2**20:.0f} MB, too large for "
                                  "one CT slice or volume.")
        declared += info.file_size
        compressed += info.compress_size
    if declared > limits.max_total_bytes:
        raise VolumeReadError(f"This zip inflates to {declared / 2**30:.1f} GB, more than the "
                              f"{limits.max_total_bytes / 2**30:.0f} GB limit. Upload one series.")
    if declared > limits.max_file_bytes and declared > limits.max_ratio * max(compressed, 1):
        raise VolumeReadError(f"This zip inflates to {declared / 2**20:,.0f} MB from {compressed / 2**20:,.1f} MB, "
                              f"more than {limits.max_ratio:g} times its size: no CT series compresses so far (it is "
                              "padding or a 'zip bomb'), so it was not read. Zip the series folder itself.")
    for info in files:
        name = info.filename
        if name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith("."):
            continue
        yield _Member(name, lambda i=info: _inflate(archive, i, budget, limits),
                      lambda size, i=info: _inflate_head(archive, i, size))


@dataclass
class _Budget:
    """Bytes an archive may still inflate to (actual bytes, not the declared ones, which can lie)."""

    left: int


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, limits: VolumeLimits) -> bytes:
    """One member, in chunks, stopping at its declared size or the budget, whichever is smaller."""
    chunks, total = [], 0
    cap = min(info.file_size, limits.max_file_bytes, budget.left)
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(1 << 20):
                total += len(chunk)
                if total > cap:
                    raise VolumeReadError("This zip inflates to more than it declares or than the upload limit "
                                          "allows (a 'zip bomb'); it was not read.")
                chunks.append(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        raise VolumeReadError("This zip archive is damaged (a member fails its checksum or cannot be "
                              "decompressed). Create it again and re-upload.") from exc
    budget.left -= total
    return b"".join(chunks)


def _inflate_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> bytes:
    """The first `size` bytes of a member (at most its declared size): the rest is not inflated."""
    try:
        with archive.open(info) as stream:
            return stream.read(min(size, info.file_size))
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, zlib.error) as exc:
        raise VolumeReadError("This zip archive is damaged (a member cannot be decompressed). Create it again and "
                              "re-upload.") from exc


# ---------------------------------------------------------------------------------------------- DICOM series
@dataclass(frozen=True)
class _Slice:
    member: _Member
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


def _header(member: _Member, limits: VolumeLimits) -> _Slice | None:
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
    return _Slice(
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


def _read_members(members: list[_Member], series: int | None, limits: VolumeLimits, deadline: _Deadline
                  ) -> Volume:
    if not members:
        raise VolumeReadError("The upload contains no files. " + SUPPORTED_VOLUMES)
    slices, ignored = [], 0
    for member in members:
        deadline.check()
        header = _header(member, limits)
        if header is None:
            ignored += 1
        else:
            slices.append(header)
    if not slices:
        niftis = [m for m in members if _is_nifti_name(m.name)]
        if len(niftis) == 1:
            return _read_nifti(niftis[0].read(), limits, deadline)
        raise VolumeReadError("No DICOM image was found in the upload. " + SUPPORTED_VOLUMES)
    groups: dict[tuple[str, str], dict[str, _Slice]] = defaultdict(dict)
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
    return _read_series(list(ordered[chosen].values()), infos, chosen, notes, limits, deadline)


def _series_rank(group: list[_Slice]) -> tuple[bool, int]:
    first = group[0]
    return first.modality == "CT" and _is_axial(first.orientation), len(group)


def _series_info(index: int, group: list[_Slice]) -> SeriesInfo:
    first = group[0]
    return SeriesInfo(index=index, modality=first.modality, slices=len(group), rows=first.rows,
                      columns=first.columns, axial=_is_axial(first.orientation))


def _read_series(group: list[_Slice], infos: tuple[SeriesInfo, ...], chosen: int, notes: list[str],
                 limits: VolumeLimits, deadline: _Deadline) -> Volume:
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


def _slice_order(group: list[_Slice], notes: list[str], infos: tuple[SeriesInfo, ...], chosen: int
                 ) -> tuple[list[_Slice], float, str, tuple[bool, bool]]:
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


def _decode_hu(item: _Slice, summary: dict[str, str]) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------------- NIfTI
def _is_nifti_name(name: str) -> bool:
    return name.lower().endswith((".nii", ".nii.gz"))


def _is_nifti(data: bytes, name: str) -> bool:
    if data[:2] == b"\x1f\x8b":
        return True
    if len(data) >= 348 and (int.from_bytes(data[:4], "little") in (348, 540) or
                             int.from_bytes(data[:4], "big") in (348, 540)):
        return True
    return _is_nifti_name(name)


_SLAB_BYTES = 16 * 1024 * 1024  # NIfTI voxels are inflated and converted this much at a time


def _nifti_stream(data: bytes) -> BinaryIO:
    """The uncompressed NIfTI file as a stream: a gzip is inflated as it is read, never further."""
    return gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" else io.BytesIO(data)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    try:
        chunk = stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeReadError("This .nii.gz file is damaged or cut short (its compression is broken). "
                              "Export it again.") from exc
    if len(chunk) < size:
        raise VolumeReadError("This NIfTI file is damaged or cut short. Export it again.")
    return chunk


def _nifti_header(stream: BinaryIO, limits: VolumeLimits):
    """The NIfTI-1 or NIfTI-2 header, checked (shape, voxel count, data type, inflated size) before any voxel."""
    import nibabel as nib

    head = _read_exactly(stream, 348)
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    klass = nib.Nifti1Image if 348 in sizes else nib.Nifti2Image if 540 in sizes else None
    if klass is nib.Nifti2Image:
        head += _read_exactly(stream, 540 - 348)
    try:
        header = klass.header_class.from_fileobj(io.BytesIO(head), check=False) if klass else None
        shape = tuple(int(v) for v in header.get_data_shape()) if header is not None else ()
        dtype = header.get_data_dtype() if header is not None else None
    except Exception as exc:  # noqa: BLE001 - any header nibabel cannot read is a damaged header for the user
        raise VolumeReadError("This file is not a readable NIfTI volume (damaged header). " + SUPPORTED_VOLUMES) \
            from exc
    if header is None or header["magic"].item() not in (b"n+1", b"n+2"):
        raise VolumeReadError("This file is not a readable NIfTI volume (damaged header, or a separate .hdr/.img "
                              "pair). " + SUPPORTED_VOLUMES)
    spatial = shape[:3]
    if len(shape) < 3 or any(v < 1 for v in shape) or any(v != 1 for v in shape[3:]):
        raise VolumeReadError(f"This NIfTI image has shape {shape}; a single 3-D CT volume is needed.")
    voxels = int(np.prod(spatial))
    if voxels > limits.max_voxels:
        raise VolumeReadError(f"This NIfTI volume has {voxels / 1e6:.0f} million voxels; the limit is "
                              f"{limits.max_voxels / 1e6:.0f} million.")
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise VolumeReadError("This NIfTI volume does not hold grey values (it is colour or complex).")
    inflated = int(header.get_data_offset()) + voxels * dtype.itemsize
    if inflated > limits.max_total_bytes:
        raise VolumeReadError(f"This NIfTI volume would inflate to {inflated / 2**30:.1f} GB ({voxels / 1e6:.0f} "
                              f"million voxels of {dtype.itemsize} bytes), more than the "
                              f"{limits.max_total_bytes / 2**30:.0f} GB limit. Export it as 16-bit integers (HU).")
    return header, len(head)


def _nifti_canonical(data: bytes, limits: VolumeLimits, out_dtype: type, deadline: _Deadline
                     ) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float]]:
    """Scaled voxels as `out_dtype` (rounded, clipped, NaN as 0) in the canonical (head-to-feet, anterior-to-
    posterior, right-to-left) order, their spacing, and the lowest and highest scaled values.

    Voxels are inflated and converted slab by slab, each written through a view of the result that has the file's
    axis order and directions: only the result, one slab and the compressed input are ever held.
    """
    import nibabel as nib

    stream = _nifti_stream(data)
    header, position = _nifti_header(stream, limits)
    shape, dtype = tuple(int(v) for v in header.get_data_shape()[:3]), header.get_data_dtype()
    current = nib.orientations.io_orientation(header.get_best_affine())
    target = nib.orientations.axcodes2ornt(NIFTI_AXES)
    transform = nib.orientations.ornt_transform(current, target)
    canonical, zooms = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis in range(3):
        canonical[int(transform[axis, 0])] = shape[axis]
        zooms[int(transform[axis, 0])] = float(header.get_zooms()[axis])
    if not all(np.isfinite(zooms)) or min(zooms) <= 0:
        raise VolumeReadError("This NIfTI volume gives no valid voxel size, so it cannot be measured.")
    result = np.empty(canonical[::-1], dtype=out_dtype)  # (z, y, x)
    as_stored = nib.orientations.apply_orientation(result.transpose(2, 1, 0),
                                                   nib.orientations.ornt_transform(target, current))
    slope, inter = header.get_slope_inter()
    scaled = slope is not None and (slope, inter) != (1.0, 0.0) and np.isfinite([slope, inter]).all()
    limits_of_type = np.iinfo(out_dtype)
    offset = int(header.get_data_offset())
    while position < offset:
        deadline.check()
        position += len(_read_exactly(stream, min(offset - position, _SLAB_BYTES)))
    plane = shape[0] * shape[1] * dtype.itemsize
    step = max(1, _SLAB_BYTES // plane)
    low, high = np.inf, -np.inf
    for start in range(0, shape[2], step):
        deadline.check()
        count = min(step, shape[2] - start)
        slab = np.frombuffer(_read_exactly(stream, plane * count), dtype=dtype).reshape(
            (shape[0], shape[1], count), order="F").astype(np.float32)
        if scaled:
            slab = slab * np.float32(slope) + np.float32(inter)
        slab = np.nan_to_num(slab, nan=0.0, posinf=limits_of_type.max, neginf=limits_of_type.min)
        low, high = min(low, float(slab.min())), max(high, float(slab.max()))
        as_stored[:, :, start:start + count] = np.clip(np.rint(slab), limits_of_type.min, limits_of_type.max)
    return result, (zooms[2], zooms[1], zooms[0]), (low, high)


def _read_nifti(data: bytes, limits: VolumeLimits, deadline: _Deadline) -> Volume:
    hu, spacing, (low, high) = _nifti_canonical(data, limits, np.int16, deadline)
    if hu.shape[0] < limits.min_slices:
        raise VolumeReadError(f"This NIfTI volume has {hu.shape[0]} slice(s); a CT volume needs at least "
                              f"{limits.min_slices}.")
    if low > -500 or high < -200:
        raise VolumeReadError(f"This NIfTI volume does not look like a CT in Hounsfield units (values {low:g} to "
                              f"{high:g}; air is about -1000 HU). It may be a mask, an MRI or a rescaled image.")
    metadata = VolumeMetadata(source_format="nifti", shape=tuple(hu.shape), spacing=spacing,
                              sorted_by="NIfTI affine (reoriented to the canonical axes)",
                              notes=("read as NIfTI: no modality tag; taken as CT because its values span air",),
                              summary={"Modality": "CT (assumed)"})
    return Volume(hu=hu, metadata=metadata)
