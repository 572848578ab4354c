"""One DICOM file: its header parsed first and bounded, then its pixels decoded, rescaled and windowed into a `Scan`.

Separate from the raster formats because a DICOM file is parsed by tags, may be compressed or deflated, and carries
modality values (HU for CT) that are windowed for display. The header functions (`read_dicom_header`,
`read_dicom_dataset`) also serve the volume reader, which checks each slice's declared size the same way.

Bounded by construction: a DICOM header is parsed first, reading (or, for the deflated transfer syntax, inflating)
at most `MAX_HEADER_BYTES` and only up to the pixel data: its declared size (rows x columns x frames x samples x bits)
is checked before any pixel is read or inflated, and a deflated file is then inflated no further than that declared
size. Parsing stops at a tag that does not ascend (a run of zero bytes would otherwise parse as millions of empty
elements).

Scaling: modality LUT or rescale slope/intercept (HU for CT), then the file's VOI LUT, else its first
Window Center/Width, else a default (lung window for CT, the image's own min..max otherwise); MONOCHROME1 is
inverted so that dense tissue is always bright. Only an allow-list of technical header fields is kept in the
metadata; identifiers are read only for an explicit 'show header' view (`identifier_fields`).
"""
from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from covid_models.imaging.formats import describe_unknown
from covid_models.imaging.pixels import block_mean, finish_pixels, full_range, luminance, reduced_note, reduction_factor
from covid_models.imaging.scan import (
    MAX_ABS_VALUE,
    MAX_FILE_BYTES,
    SUPPORTED,
    WINDOW_PRESETS,
    ImageReadError,
    Scan,
    ScanMetadata,
    apply_window,
    check_decoded_bytes,
    check_geometry,
    damaged_message,
)

MAX_HEADER_BYTES = 2 * 1024 * 1024  # a DICOM header (everything before the pixel data) is parsed from at most this
_XRAY_MODALITIES = {"CR", "DX", "DR", "RG"}  # XA (angiography) and MG (mammography) are not chest films
_SUMMARY_KEYWORDS = (
    "Modality", "BodyPartExamined", "ViewPosition", "PatientPosition", "ImageType", "Manufacturer",
    "ManufacturerModelName", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated",
    "BitsStored", "PixelRepresentation", "PhotometricInterpretation", "PixelSpacing", "ImagerPixelSpacing",
    "SliceThickness", "KVP", "ConvolutionKernel", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "WindowCenter", "WindowWidth",
)
_IDENTIFIER_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientSex", "PatientAge",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress", "StationName",
    "DeviceSerialNumber", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "StudyDate", "StudyTime", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyDescription",
    "SeriesDescription", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
)
_PIXEL_KEYWORDS = {0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData", 0x7FE00010: "PixelData"}
_HEADER_END = 0x7FE00008  # the first pixel data tag: the header is every element before it
_DATASET_END = 0x7FE00011  # just past PixelData: trailing elements (padding, signatures) are never parsed
_NATIVE_SYNTAXES = {"", ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                    DeflatedExplicitVRLittleEndian}  # pixel data stored uncompressed, as large as declared
_DEFER_BYTES = 256 * 1024  # header values larger than this (private blobs, thumbnails) are skipped while parsing
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


# ------------------------------------------------------------------------------------------------ header first
@dataclass(frozen=True)
class DicomHeader:
    """A DICOM file's elements before its pixel data, and what follows them; no pixel was read or inflated."""

    dataset: FileDataset
    pixel_keyword: str | None  # PixelData, FloatPixelData or DoubleFloatPixelData; None when no pixel data follows
    pixel_offset: int  # where that element starts in the dataset stream (inflated, for a deflated file)
    deflated: bool

    @property
    def declared_bytes(self) -> int:
        """Rows x Columns x frames x samples x bits allocated, in bytes: the pixel data as stored uncompressed."""
        ds = self.dataset
        values = [_header_int(ds, keyword, default) for keyword, default in (
            ("Rows", 0), ("Columns", 0), ("NumberOfFrames", 1), ("SamplesPerPixel", 1), ("BitsAllocated", 16))]
        rows, columns, frames, samples, bits = (max(value, 1) for value in values)
        return -(-rows * columns * frames * samples * bits // 8)


def read_dicom_header(data: bytes, *, force: bool = False) -> DicomHeader:
    """The header of a DICOM file (or of the first bytes of one), parsed only up to the pixel data and from a
    size-limited stream: at most `MAX_HEADER_BYTES` are read (values over `_DEFER_BYTES`, such as private blobs, are
    skipped unread) or, for a deflated file, inflated. Its declared size can then be checked before any pixel is read.
    ImageReadError when the bytes are not DICOM or the header is damaged."""
    data = _with_preamble(data)
    meta_end, syntax = _file_meta_end(data)
    deflated = syntax == DeflatedExplicitVRLittleEndian
    body = _inflated(data[meta_end:], MAX_HEADER_BYTES) if deflated else data[meta_end:meta_end + 2]
    if body[:2] == b"\x00\x00":  # group 0000: a network command, or zero bytes (which pydicom parses without end)
        raise ImageReadError(f"This file is not a readable image ({describe_unknown(data)}). {SUPPORTED}")
    stream = _ReadBudget(body if deflated else data, MAX_HEADER_BYTES + meta_end)
    dataset = _parse(data[:meta_end], stream, deflated, _stops_before(_HEADER_END), force, defer=_DEFER_BYTES)
    offset = stream.tell()
    little = dataset.original_encoding[1] is not False
    tag_bytes = (body if deflated else data)[offset:offset + 4]
    tag = (int.from_bytes(tag_bytes[:2], "little" if little else "big") << 16
           | int.from_bytes(tag_bytes[2:], "little" if little else "big")) if len(tag_bytes) == 4 else None
    keyword = _PIXEL_KEYWORDS.get(tag)
    if keyword is None and (len(body) >= MAX_HEADER_BYTES if deflated else stream.left == 0):
        raise ImageReadError(f"This DICOM file's header (the part before its image) is larger than "
                             f"{MAX_HEADER_BYTES // 2**20} MB, far beyond any scanner's; it was not read. Export it "
                             "again without private data.")
    return DicomHeader(dataset=dataset, pixel_keyword=keyword, pixel_offset=offset, deflated=deflated)


def read_dicom_dataset(data: bytes, header: DicomHeader, *, force: bool = False) -> FileDataset:
    """The whole DICOM file up to its pixel data included, once `header` (from `read_dicom_header`) was checked.

    Pixel data stored uncompressed (deflated or not) whose declared size exceeds `MAX_FILE_BYTES` is refused, and a
    deflated file is inflated no further than its declared pixel data: what it holds beyond is never inflated.
    """
    if _syntax_of(header) in _NATIVE_SYNTAXES and header.declared_bytes > MAX_FILE_BYTES:
        raise ImageReadError(
            f"This DICOM image is too large to analyse safely (its pixel data would take "
            f"{header.declared_bytes / 2**20:,.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB). "
            "Export a smaller version or fewer frames."
        )
    data = _with_preamble(data)
    meta_end, _ = _file_meta_end(data)
    if not header.deflated:
        return _parse(b"", io.BytesIO(data), False, _stops_before(_DATASET_END), force)
    body = _inflated(data[meta_end:], header.pixel_offset + 12 + header.declared_bytes + 1)  # 12: element header
    return _parse(data[:meta_end], io.BytesIO(body), True, _stops_before(_DATASET_END), force)


def identifier_fields(dataset: pydicom.Dataset) -> dict[str, str]:
    """The patient and study identifiers of a parsed header (allow-list), for an explicit 'show header' view only."""
    return {kw: _format_value(dataset[kw].value) for kw in _IDENTIFIER_KEYWORDS if dataset.get(kw)}


class _ReadBudget(io.BytesIO):
    """A stream that gives at most `budget` bytes in all, however they are asked for; seeking past a deferred value
    costs nothing. A header's parse thus reads, and costs, at most that much."""

    def __init__(self, data: bytes, budget: int):
        super().__init__(data)
        self.left = budget

    def read(self, size: int | None = -1) -> bytes:
        size = self.left if size is None or size < 0 else min(size, self.left)
        chunk = super().read(size)
        self.left -= len(chunk)
        return chunk


def _syntax_of(header: DicomHeader) -> str:
    """The transfer syntax UID of the file ('' for a file without one: its pixel data is then stored uncompressed)."""
    meta = getattr(header.dataset, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _header_int(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword) or default)
    except (TypeError, ValueError):
        return default


def _file_meta_end(data: bytes) -> tuple[int, str]:
    """Where the File Meta Information (group 0002, explicit VR little endian by the standard) ends, and the
    transfer syntax it names ('' when absent)."""
    position, syntax = (132 if data[128:132] == b"DICM" else 0), ""
    while len(data) >= position + 8 and data[position:position + 2] == b"\x02\x00":
        element, vr = int.from_bytes(data[position + 2:position + 4], "little"), data[position + 4:position + 6]
        if vr in _LONG_VRS:
            length, start = int.from_bytes(data[position + 8:position + 12], "little"), position + 12
        else:
            length, start = int.from_bytes(data[position + 6:position + 8], "little"), position + 8
        if element == 0x0010:
            syntax = data[start:start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        position = start + length
    return min(position, len(data)), syntax


def _inflated(deflated: bytes, limit: int) -> bytes:
    """At most `limit` bytes of a raw deflate stream: what lies beyond is never inflated."""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated, limit)
    except zlib.error as exc:
        raise ImageReadError(damaged_message("dicom", exc)) from exc


def _stops_before(end: int) -> Callable[[Any, Any, Any], bool]:
    """pydicom's stop condition: before `end` or any later tag, and at a tag that does not ascend (a damaged or
    crafted file; a run of zero bytes would otherwise parse as millions of empty elements). The same tag may come
    twice in a row: pydicom asks about the first element twice when its VR is not the expected one."""
    previous, repeats = -1, 0

    def stop(tag: int, _vr: Any, _length: Any) -> bool:
        nonlocal previous, repeats
        repeats = repeats + 1 if tag == previous else 0
        if tag >= end or tag < previous or repeats > 1:
            return True
        previous = tag
        return False

    return stop


def _parse(meta: bytes, stream: io.BytesIO, deflated: bool, stop: Callable[[Any, Any, Any], bool],
           force: bool, defer: int | None = None) -> FileDataset:
    """The file (`stream`) parsed until `stop`, values over `defer` bytes skipped; for a deflated file, `meta` is
    its file meta information and `stream` its inflated dataset, which pydicom would otherwise inflate whole."""
    try:
        if not deflated:
            return read_partial(stream, stop, defer_size=defer, force=force)
        file_meta = read_partial(io.BytesIO(meta), force=force)
        body = read_dataset(stream, False, True, stop_when=stop, defer_size=defer)
        dataset = FileDataset(stream, body, file_meta.preamble, file_meta.file_meta, is_implicit_VR=False,
                              is_little_endian=True)
        dataset.set_original_encoding(False, True, dataset._character_set)
        return dataset
    except ImageReadError:
        raise
    except InvalidDicomError as exc:
        raise ImageReadError(f"This file is not a readable image (it is not DICOM). {SUPPORTED}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged header
        raise ImageReadError(damaged_message("dicom", exc)) from exc


def _with_preamble(data: bytes) -> bytes:
    """pydicom expects 'DICM' at offset 128; some writers drop the preamble but keep the magic."""
    return b"\x00" * 128 + data if data[:4] == b"DICM" else data


# ------------------------------------------------------------------------------------------------------ pixels
def read_dicom_scan(data: bytes, max_pixels: int, notes: list[str], *, force: bool) -> Scan:
    """The `Scan` of a DICOM file (its middle frame when it holds several), with `notes` on what was done; `force`
    reads a file without the 'DICM' signature. Size and geometry are checked from the header before decoding."""
    header = read_dicom_header(data, force=force)
    ds = header.dataset
    if force and header.pixel_keyword is None and not any(kw in ds for kw in ("SOPClassUID", "Modality")):
        raise ImageReadError(f"This file is not a readable image ({describe_unknown(data)}). {SUPPORTED}")
    if header.pixel_keyword is None:
        sop = UID(str(ds.SOPClassUID)).name if ds.get("SOPClassUID") else ""
        if not sop or "Image Storage" in sop:  # an image object without its pixels was cut short
            raise ImageReadError(damaged_message("dicom", EOFError()))
        raise ImageReadError(
            f"This DICOM file contains no image (it is a '{sop}' object, without pixel data). "
            "Upload an image of the series (CT slice or radiograph) instead."
        )
    if ds.get("Rows") is None or ds.get("Columns") is None:
        raise ImageReadError("This DICOM file has pixel data but no image size (Rows/Columns). Export it again.")
    rows, columns = int(ds.Rows), int(ds.Columns)
    check_geometry(columns, rows, max_pixels)
    transfer_syntax = _transfer_syntax(ds)
    frames = max(1, int(ds.get("NumberOfFrames") or 1))
    index = (frames - 1) // 2
    samples, bits_allocated = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 16)
    check_decoded_bytes(rows * columns * samples * max(1, bits_allocated // 8))
    ds = read_dicom_dataset(data, header, force=force)
    ds.buffer = None  # for a deflated file, its inflated copy (as large as the pixels): no longer needed once parsed
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    if frames > 1:
        notes.append(f"middle frame {index + 1} of {frames} used")
    raw = _decode(ds, transfer_syntax, index if frames > 1 else None)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper() or None
    factor = reduction_factor(columns, rows)
    if factor > 1:  # palette indices cannot be averaged: every factor-th pixel is kept instead
        raw = raw[::factor, ::factor].copy() if photometric == "PALETTE COLOR" else _block_mean_as(raw, factor)
        notes.append(reduced_note(columns, rows, raw.shape))
    dicom_modality = str(ds.get("Modality", "")).strip().upper() or None
    window: tuple[float, float] | None = None
    values: np.ndarray | None = None
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        pixels = luminance(rgb) / np.float32(np.iinfo(rgb.dtype).max)
        notes.append("palette colour converted to grey")
    elif raw.ndim == 3:
        pixels = luminance(raw) / np.float32(2 ** int(ds.get("BitsStored", 8)) - 1)
        notes.append(f"{photometric or 'colour'} image converted to grey (luminance)")
    else:
        values = _modality_values(raw, ds, index)
        pixels, window = _window_dicom(values, raw, ds, index, dicom_modality, notes)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
            notes.append("MONOCHROME1 inverted so that dense tissue is bright")
    return Scan(
        pixels=finish_pixels(pixels),
        metadata=ScanMetadata(
            source_format="dicom", width=pixels.shape[1], height=pixels.shape[0],
            modality="ct" if dicom_modality == "CT" else "xray" if dicom_modality in _XRAY_MODALITIES else None,
            dicom_modality=dicom_modality, bits_stored=int(ds.BitsStored) if ds.get("BitsStored") else None,
            photometric=photometric, window=window, pixel_spacing=_pixel_spacing(ds, index, factor), frames=frames,
            frame_index=index, notes=tuple(notes), dicom_summary=_summary(ds, transfer_syntax),
            original_width=columns, original_height=rows,
        ),
        modality_values=None if values is None else np.ascontiguousarray(values, dtype=np.float32),
    )


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    """The file's transfer syntax (inferred for headerless files), checked to have a working decoder."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is None:
        implicit, little = ds.original_encoding
        if little is None:
            raise ImageReadError("This DICOM file does not say how its image is encoded. Export it again.")
        uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = uid
    uid = UID(str(uid))
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise ImageReadError(
            f"This DICOM image uses an encoding this tool cannot decode ('{uid.name}'). "
            "Export it again as uncompressed (Explicit VR Little Endian), JPEG or JPEG 2000."
        )
    return uid


def _block_mean_as(raw: np.ndarray, factor: int) -> np.ndarray:
    """`block_mean` back in the stored type, so that LUTs and windows treat it as they treat the file's values."""
    means = block_mean(raw, factor)
    return np.rint(means).astype(raw.dtype) if np.issubdtype(raw.dtype, np.integer) else means.astype(raw.dtype)


def _decode(ds: pydicom.Dataset, transfer_syntax: UID, index: int | None) -> np.ndarray:
    """Decoded pixels of the selected frame (the stored pixel data is dropped from `ds` once decoded, and never
    cached on it); a failure names the compression, the usual culprit."""
    try:
        raw = pixel_array(ds, index=index)
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                del ds[keyword]
        return raw
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        if "less than expected" in str(exc) or isinstance(exc, EOFError):
            raise ImageReadError(damaged_message("dicom", EOFError())) from exc
        raise ImageReadError(
            f"This DICOM image (encoded as '{transfer_syntax.name}') could not be decoded: its pixel data is "
            "damaged or uses a variant the installed decoders do not handle. Export it again as uncompressed "
            "(Explicit VR Little Endian) and re-upload."
        ) from exc


def _frame_value(ds: pydicom.Dataset, index: int, sequence: str, keyword: str) -> Any:
    """A top-level attribute, else its per-frame or shared functional group (enhanced multi-frame files)."""
    if ds.get(keyword) is not None:
        return ds[keyword].value
    for groups, item in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        group_seq = ds.get(groups)
        if group_seq and len(group_seq) > item and group_seq[item].get(sequence):
            value = group_seq[item].get(sequence)[0].get(keyword)
            if value is not None:
                return value
    return None


def _first_float(value: Any) -> float | None:
    """First value of a possibly multi-valued numeric attribute, or None when absent or not a number."""
    if value is None:
        return None
    try:
        number = float(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) else None


def _modality_values(raw: np.ndarray, ds: pydicom.Dataset, index: int) -> np.ndarray:
    """Stored values -> modality values (HU for CT) by the Modality LUT or rescale slope/intercept."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(raw, ds).astype(np.float32)
    slope = _first_float(_frame_value(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first_float(_frame_value(ds, index, "PixelValueTransformationSequence", "RescaleIntercept"))
    values = raw.astype(np.float32)
    if slope is not None and slope != 0 and (slope, intercept or 0.0) != (1.0, 0.0):
        with np.errstate(over="ignore", invalid="ignore"):
            values = values * np.float32(slope) + np.float32(intercept or 0.0)
        finite = values[np.isfinite(values)]
        if (np.isinf(values) & np.isfinite(raw)).any() or (finite.size and np.abs(finite).max() > MAX_ABS_VALUE):
            raise ImageReadError(
                f"This DICOM image's values are out of range once its rescale slope {slope:g} and intercept "
                f"{intercept or 0:g} are applied (beyond +-{MAX_ABS_VALUE:.0e}), so it cannot be shown or analysed. "
                "Its rescale attributes are wrong or the file is damaged; export it again."
            )
    return values


def _window_dicom(
    values: np.ndarray, raw: np.ndarray, ds: pydicom.Dataset, index: int, modality: str | None, notes: list[str]
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The file's VOI LUT, else its window, else a modality default; returns pixels and the window used."""
    if ds.get("VOILUTSequence") and np.issubdtype(raw.dtype, np.integer):
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries = apply_voi(np.arange(descriptor[1], descriptor[1] + (descriptor[0] or 2**16)), ds).astype(np.float32)
        mapped = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float32)
        lo, hi = float(entries.min()), float(entries.max())
        notes.append("VOI LUT from the file applied")
        return ((mapped - lo) / (hi - lo) if hi > lo else np.zeros_like(mapped)), None
    center = _first_float(_frame_value(ds, index, "FrameVOILUTSequence", "WindowCenter"))
    width = _first_float(_frame_value(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    if center is not None and width is not None and width >= 1:
        notes.append(f"window from the file: centre {center:g}, width {width:g}")
        return apply_window(values, center, width), (center, width)
    if width is not None and width < 1:
        notes.append(f"invalid window width {width:g} in the file ignored")
    if modality == "CT":
        center, width = WINDOW_PRESETS["lung"]
        notes.append(f"no window in the file: lung window (centre {center:g}, width {width:g}) used")
        return apply_window(values, center, width), (center, width)
    _, lo, hi = full_range(values)
    center, width = (lo + hi) / 2 + 0.5, hi - lo + 1
    notes.append(f"no window in the file: full range {lo:g}..{hi:g} used")
    return apply_window(values, center, width), (center, width)


def _pixel_spacing(ds: pydicom.Dataset, index: int, factor: int = 1) -> tuple[float, float] | None:
    """(row, column) spacing in mm of the working pixels: the file's, times the reduction factor."""
    spacing = _frame_value(ds, index, "PixelMeasuresSequence", "PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        row, column = (float(v) for v in spacing[:2])
    except (TypeError, ValueError):
        return None
    if not (row > 0 and column > 0 and np.isfinite([row, column]).all()):
        return None
    return (row * factor, column * factor)


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)[:128]
    return str(value)[:128]


def _summary(ds: pydicom.Dataset, transfer_syntax: UID) -> dict[str, str]:
    """Technical header fields only (allow-list), so that no identifier can slip into stored metadata."""
    summary = {kw: _format_value(ds[kw].value) for kw in _SUMMARY_KEYWORDS if ds.get(kw) not in (None, "")}
    summary["TransferSyntax"] = transfer_syntax.name
    if ds.get("SOPClassUID"):
        summary["SOPClass"] = UID(str(ds.SOPClassUID)).name
    return summary
