"""Reading image files: the one place where bytes become a greyscale `Scan`.

Every upload, folder import and script goes through `read_image`, so that format sniffing, size limits,
DICOM handling (rescale, window, MONOCHROME1, compression, multi-frame) and error messages are the same
everywhere. Any failure is an `ImageReadError` whose message tells a radiologist what is wrong and what
to do; no Pillow, pydicom or NumPy exception leaves this module.

Scaling choices (documented because they change what the model sees):
- 8-bit and colour images: value / 255; colour to grey by ITU-R BT.601 luminance; alpha composited on black.
- 16-bit, 32-bit and floating-point images: min-max over the image itself, because radiographs exported
  as 16-bit rarely use the full 0..65535 range (a 12-bit detector stored in 16 bits would look black).
- DICOM: modality LUT or rescale slope/intercept (HU for CT), then the file's VOI LUT, else its first
  Window Center/Width, else a default (lung window for CT, the image's own min..max otherwise);
  MONOCHROME1 is inverted so that dense tissue is always bright.

Memory per file is bounded (several users share one server): files over `MAX_FILE_BYTES` and frames whose decoded
size exceeds `MAX_DECODED_BYTES` are refused before decoding. A DICOM header is parsed first, reading (or, for the
deflated transfer syntax, inflating) at most `MAX_HEADER_BYTES` and only up to the pixel data: its declared size
(rows x columns x frames x samples x bits) is checked before any pixel is read or inflated, and a deflated file is
then inflated no further than that declared size. Parsing stops at a tag that does not ascend (a run of zero
bytes would otherwise parse as millions of empty elements), and an image larger than `WORKING_SIDE` on its
longest side is reduced right after decoding (JPEG already while decoding) by averaging blocks of pixels, so that
only the working size is ever held as float32. The models read at most 512 pixels and the display shows at most
768, so nothing they use is lost; the metadata gives both sizes and the pixel spacing at the working size.
Values that no float32 window can show (beyond +-1e30, e.g. a float TIFF at +-3e38 or a rescale slope of 1e38)
are refused rather than shown as a blank image.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from PIL import Image, features
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

MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 128 * 1024 * 1024  # a file is read whole (an upload is first capped by Streamlit's maxUploadSize)
MAX_HEADER_BYTES = 2 * 1024 * 1024  # a DICOM header (everything before the pixel data) is parsed from at most this
MAX_DECODED_BYTES = 128 * 1024 * 1024  # one decoded frame before reduction (7000 x 7000 at 16 bits: 93 MiB)
WORKING_SIDE = 1024  # longest side kept: models read <= 512 px, the display shows <= 768 px (overlays.DISPLAY_SIDE)
MAX_ABS_VALUE = 1e30  # no scanner or export stores values near float32's limit (3.4e38); such files are damaged
MIN_SIDE = 16  # below this no chest image is readable: it is an icon, a thumbnail or a damaged header
MAX_ASPECT_RATIO = 20.0  # a chest CT slice or radiograph is never a strip
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}
SUPPORTED = "Upload a PNG, JPEG, TIFF or DICOM file."

_LUMA = (0.299, 0.587, 0.114)
_XRAY_MODALITIES = {"CR", "DX", "DR", "RG"}  # XA (angiography) and MG (mammography) are not chest films
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF", "webp": "WEBP"}
_EXTENSIONS = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".jfif": "jpeg", ".bmp": "bmp",
    ".tif": "tiff", ".tiff": "tiff", ".gif": "gif", ".webp": "webp", ".dcm": "dicom", ".dicom": "dicom",
    ".dic": "dicom",
}
IMAGE_SUFFIXES = frozenset(_EXTENSIONS)  # the file names a folder scan picks up (the content decides the format)
_SIGNATURES = (  # DICOM first: its preamble may itself be a TIFF header (dual-format files)
    (128, b"DICM", "dicom"), (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"\xff\xd8\xff", "jpeg"), (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"), (0, b"II*\x00", "tiff"), (0, b"MM\x00*", "tiff"), (0, b"II+\x00", "tiff"),
    (0, b"MM\x00+", "tiff"),
)
_NOT_IMAGES = (
    (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive or an Office document"),
    (b"\x1f\x8b", "a compressed (gzip) file, perhaps a NIfTI volume"), (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"), (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image, which is not supported outside DICOM"),
    (b"\xffO\xffQ", "a JPEG 2000 image, which is not supported outside DICOM"),
    (b"8BPS", "a Photoshop document"), (b"{", "a JSON text file"), (b"<", "a web page or XML file"),
)
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


class ImageReadError(ValueError):
    """Raised for every file that cannot become an image; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class ScanMetadata:
    """What was read and how, free of patient identifiers so that it can be stored and shown."""

    source_format: str
    width: int
    height: int
    modality: str | None
    dicom_modality: str | None
    bits_stored: int | None
    photometric: str | None
    window: tuple[float, float] | None
    pixel_spacing: tuple[float, float] | None
    frames: int
    frame_index: int
    notes: tuple[str, ...]
    dicom_summary: dict[str, str]
    original_width: int | None = None  # the size in the file; width and height are the working size of `pixels`
    original_height: int | None = None


@dataclass(frozen=True, eq=False)
class Scan:
    """A 2-D greyscale image in [0, 1], plus (DICOM) the modality values it was windowed from."""

    pixels: np.ndarray
    metadata: ScanMetadata
    modality_values: np.ndarray | None


# ---------------------------------------------------------------------------------------------- public API
def read_image(
    source: str | os.PathLike | bytes | BinaryIO, *, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> Scan:
    """Read a PNG, JPEG, BMP, TIFF, GIF, WEBP or DICOM file into a `Scan`.

    `name` is the original file name (uploads arrive as bytes; streams and paths supply their own). The format
    is sniffed from the content, never taken from the extension: the name only adds a note when its extension
    disagrees, and lets a '.dcm' file without any DICOM signature be tried as DICOM. Streams are read from the
    start. A path must name a regular file of at most `MAX_FILE_BYTES` (checked before reading: pipes and devices
    are refused, never read). `max_pixels` is checked against the header before anything is decoded; images
    larger than `WORKING_SIDE` come back reduced to it (`metadata.original_width/height` keep the file's size).
    """
    data, name = _read_source(source, name)
    fmt = _sniff(data, name)
    notes = _extension_notes(name, fmt)
    try:
        if fmt == "dicom":
            return _read_dicom(data, max_pixels, notes, force=data[128:132] != b"DICM")
        return _read_pillow(data, fmt, max_pixels, notes)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(
            "This image is too large to decode with the memory available. Export a smaller version."
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"This image is too large to analyse safely (its header declares more than "
            f"{max_pixels / 1e6:.0f} megapixels). Downsize it or export a smaller version."
        ) from exc
    except Exception as exc:  # any decoder failure means a damaged file for the user
        raise ImageReadError(_damaged_message(fmt, exc)) from exc


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear window (PS3.3 C.11.2.1.2.1): values at or below the bottom edge -> 0, above the top -> 1."""
    center, width = float(center), float(width)
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        raise ValueError(f"a window needs a finite centre and a width of at least 1, got ({center}, {width})")
    values = np.asarray(values, dtype=np.float32)
    if width == 1:
        out = (values > center - 0.5).astype(np.float32)
    else:
        out = (values - np.float32(center - 0.5)) / np.float32(width - 1) + np.float32(0.5)
    return np.ascontiguousarray(np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0), dtype=np.float32)


def rewindow(scan: Scan, center: float, width: float) -> np.ndarray:
    """Pixels of a DICOM scan under another window, inverted like the original for MONOCHROME1."""
    if scan.modality_values is None:
        raise ValueError("only greyscale DICOM scans carry modality values that can be re-windowed")
    pixels = apply_window(scan.modality_values, center, width)
    return 1.0 - pixels if scan.metadata.photometric == "MONOCHROME1" else pixels


def read_dicom_identifiers(source: str | os.PathLike | bytes | BinaryIO) -> dict[str, str]:
    """Patient and study identifiers of a DICOM file, for an explicit 'show header' view only; never store them."""
    data, name = _read_source(source, None)
    try:
        if _sniff(data, name) != "dicom":
            raise ImageReadError("not DICOM")
        dataset = read_dicom_header(data, force=data[128:132] != b"DICM").dataset
        return {kw: _format_value(dataset[kw].value) for kw in _IDENTIFIER_KEYWORDS if dataset.get(kw)}
    except Exception as exc:
        raise ImageReadError("This file is not a readable DICOM file, so it has no DICOM header to show.") from exc


def content_hash(data: bytes) -> str:
    """SHA-256 of the file bytes: identifies an image in the review store without keeping its pixels."""
    return hashlib.sha256(data).hexdigest()


def files_hash(hashes: list[str]) -> str:
    """One SHA-256 for several files (a scan's DICOM series) from their `content_hash`es: names and order do not
    matter, so the same scan uploaded again, renamed or in another order, is recognised."""
    return hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()


# ---------------------------------------------------------------------------------- input and sniffing
def special_file_kind(mode: int) -> str | None:
    """What a file that is not a regular file or a folder is ('a named pipe', 'a device', ...), from its `st_mode`;
    None for a regular file or a folder. Such a file is never read: a pipe blocks, a device never ends."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path`, refused (ImageReadError) when it is a folder, a pipe, a device or
    larger than `max_bytes`.

    The file is opened without blocking (a pipe would wait for a writer) and checked on the open file itself, so
    that nothing swapped in after a check is read; a file that grows meanwhile is still read only so far. OSError
    (missing, no permission, a looping link) is left to the caller.
    """
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise ImageReadError("This is a folder, not a file.")
        kind = special_file_kind(info.st_mode)
        if kind is not None:
            raise ImageReadError(f"This is {kind}, not a regular file, so it was not read.")
        _check_file_size(info.st_size, max_bytes)
        return handle.read(max_bytes + 1)


def _check_file_size(size: int, limit: int = MAX_FILE_BYTES) -> None:
    if size > limit:
        raise ImageReadError(
            f"This file is too large to analyse safely ({size / 2**20:,.0f} MB; the limit is "
            f"{limit / 2**20:.0f} MB). Export a smaller or compressed version."
        )


def _read_source(source: Any, name: str | None) -> tuple[bytes, str | None]:
    """All inputs become bytes, so sniffing and decoders see one kind of thing."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            data = read_regular_file(source, MAX_FILE_BYTES)
            name = name or Path(source).name
        elif hasattr(source, "read"):
            if getattr(source, "seekable", lambda: False)():
                source.seek(0)  # an upload already read once (e.g. by read_image) is read again whole
            data = source.read()
            name = name or getattr(source, "name", None)
            if not isinstance(data, (bytes, bytearray)):
                raise ImageReadError("The upload could not be read as a file. Upload the image file itself.")
            data = bytes(data)
        else:
            raise ImageReadError(f"Cannot read an image from a {type(source).__name__}. {SUPPORTED}")
    except OSError as exc:
        raise ImageReadError(f"The file could not be opened ({exc.strerror or exc}). Check that it exists.") from exc
    _check_file_size(len(data))
    if not data:
        raise ImageReadError("This file is empty (0 bytes). It may not have finished uploading or copying; try again.")
    return data, None if name is None else str(name)


def _sniff(data: bytes, name: str | None) -> str:
    """Format from magic bytes; an unknown content raises with a guess at what the file is."""
    for offset, magic, fmt in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "bmp"
    if _looks_like_headerless_dicom(data) or (name and Path(name).suffix.lower() in (".dcm", ".dicom", ".dic")):
        return "dicom"
    raise ImageReadError(f"This file is not a readable image ({_describe_unknown(data)}). {SUPPORTED}")


def _looks_like_headerless_dicom(data: bytes) -> bool:
    """DICOM written without its 128-byte preamble starts with a group 0002 or 0008 tag."""
    return data[:4] == b"DICM" or data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _describe_unknown(data: bytes) -> str:
    for magic, what in _NOT_IMAGES:
        if data.startswith(magic):
            return f"it looks like {what}"
    if data[4:8] == b"ftyp":
        photo = data[8:12] in (b"heic", b"heix", b"mif1", b"avif")
        return "it looks like a HEIC/AVIF photo; export it as JPEG" if photo else "it looks like a video"
    if len(data) >= 348 and 348 in (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")):
        return "it looks like a NIfTI volume; export slices as DICOM or PNG"
    sample = data[:1024]
    if sum(32 <= b < 127 or b in (9, 10, 13) for b in sample) > 0.95 * len(sample):
        return "it looks like a text file"
    return "its format was not recognised"


def _extension_notes(name: str | None, fmt: str) -> list[str]:
    suffix = Path(name).suffix.lower() if name else ""
    expected = _EXTENSIONS.get(suffix)
    if expected and expected != fmt:
        return [f"file name ends in {suffix} but the content is {fmt.upper()}; read as {fmt.upper()}"]
    return []


def _with_preamble(data: bytes) -> bytes:
    """pydicom expects 'DICM' at offset 128; some writers drop the preamble but keep the magic."""
    return b"\x00" * 128 + data if data[:4] == b"DICM" else data


# --------------------------------------------------------------------------------------- shared checks
def _check_geometry(width: int, height: int, max_pixels: int) -> None:
    """Reject from the header, before decoding, so a small file cannot expand into gigabytes."""
    if width * height > max_pixels:
        raise ImageReadError(
            f"This image is too large to analyse safely ({width} x {height} = {width * height / 1e6:.0f} "
            f"megapixels; the limit is {max_pixels / 1e6:.0f}). Downsize it or export a smaller version."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(
            f"This image is too small to be a medical image ({width} x {height} pixels; at least "
            f"{MIN_SIDE} x {MIN_SIDE} is needed). It may be an icon or a thumbnail; upload the full image."
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageReadError(
            f"This image has an implausible shape for a chest image ({width} x {height} pixels). "
            "It may be a strip, a banner or a damaged file; upload the full image."
        )


def _damaged_message(fmt: str, exc: BaseException) -> str:
    """Truncation or damage, told apart by the decoders' wording; the technical cause stays chained."""
    text = str(exc).lower()
    label = "DICOM" if fmt == "dicom" else fmt.upper()
    if isinstance(exc, EOFError) or "truncated" in text or "less than expected" in text or "end of file" in text:
        return (
            f"This {label} file is incomplete (it ends early), probably cut off during upload or export. "
            "Export it again and re-upload."
        )
    return (
        f"This {label} file is damaged and could not be decoded. "
        "Export it again from the viewer or PACS, or upload another file."
    )


def _finish(pixels: np.ndarray) -> np.ndarray:
    """The contract every Scan meets: 2-D, float32, finite, in [0, 1], C-contiguous."""
    pixels = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luminance, channel by channel in float32 to bound memory on large images."""
    grey = np.zeros(rgb.shape[:2], dtype=np.float32)
    for channel, weight in enumerate(_LUMA):
        grey += rgb[..., channel].astype(np.float32) * np.float32(weight)
    return grey


def _full_range(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max over the finite values; a constant image becomes black."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ImageReadError("This image contains no valid pixel values. Export it again or upload another file.")
    lo, hi = float(finite.min()), float(finite.max())
    _check_value_range(lo, hi)
    scaled = (values - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(values)
    return scaled, lo, hi


def _check_value_range(lo: float, hi: float) -> None:
    """Values near float32's limit overflow every scaling (the image would come out blank): refuse them."""
    if max(abs(lo), abs(hi)) > MAX_ABS_VALUE:
        raise ImageReadError(
            f"This image's pixel values are out of range ({lo:.3g} to {hi:.3g}; images stay far within "
            f"+-{MAX_ABS_VALUE:.0e}), so it cannot be shown or analysed. The file is damaged or was exported with "
            "a wrong scale; export it again."
        )


def reduction_factor(width: int, height: int, side: int = WORKING_SIDE) -> int:
    """The block size that brings the longest side to at most `side` (1: the image is kept as it is)."""
    return max(1, -(-max(width, height) // side))


def _block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor x factor block of an (H, W) or (H, W, C) array as float32, a strip at a time.

    Edge blocks that the size does not fill are averaged over the pixels they hold. Strips bound the float32
    temporaries to a few MB whatever the image size.
    """
    strip = factor * 64
    parts = []
    for top in range(0, values.shape[0], strip):
        block = values[top:top + strip]
        rows = np.arange(0, block.shape[0], factor)
        columns = np.arange(0, block.shape[1], factor)
        sums = np.add.reduceat(np.add.reduceat(block, rows, axis=0, dtype=np.float32), columns, axis=1)
        counts = np.outer(np.diff(rows, append=block.shape[0]), np.diff(columns, append=block.shape[1]))
        parts.append(sums / counts.reshape(counts.shape + (1,) * (block.ndim - 2)).astype(np.float32))
    return np.concatenate(parts)


def _reduced_note(width: int, height: int, shape: tuple[int, ...]) -> str:
    return (f"reduced from {width} x {height} to {shape[1]} x {shape[0]} pixels for analysis (block mean); "
            f"models read at most 512 and the display shows at most 768 pixels")


# ---------------------------------------------------------------------------- PNG, JPEG, TIFF, ... (Pillow)
def _read_pillow(data: bytes, fmt: str, max_pixels: int, notes: list[str]) -> Scan:
    if fmt == "webp" and not features.check("webp"):
        raise ImageReadError("WEBP images are not supported by this installation. Convert the file to PNG.")
    with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]]) as image:
        width, height = image.size
        _check_geometry(width, height, max_pixels)
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            image.seek(0)
            notes.append(f"first frame of {frames} used")
        factor = reduction_factor(width, height)
        if factor > 1 and fmt == "jpeg":  # the JPEG decoder scales by 1/2, 1/4 or 1/8 for free
            image.draft(image.mode, (-(-width // factor), -(-height // factor)))
            factor = reduction_factor(*image.size)
        _check_decoded_bytes(image.size[0] * image.size[1] * _PIL_BYTES_PER_PIXEL.get(image.mode, 4))
        image.load()
        orientation = _exif_orientation(image, notes)
        reduced = factor > 1 or image.size != (width, height)
        pixels, bits = _pillow_to_grey(image, notes) if factor == 1 else _reduced_pillow_grey(image, factor, notes)
        if orientation is not None:
            pixels = np.asarray(Image.fromarray(np.asarray(pixels, dtype=np.float32), "F").transpose(orientation))
        if reduced:
            notes.append(_reduced_note(width, height, pixels.shape))
        mode = image.mode
    return Scan(
        pixels=_finish(pixels),
        metadata=ScanMetadata(
            source_format=fmt, width=pixels.shape[1], height=pixels.shape[0], modality=None, dicom_modality=None,
            bits_stored=bits, photometric=mode, window=None, pixel_spacing=None, frames=frames, frame_index=0,
            notes=tuple(notes), dicom_summary={}, original_width=width, original_height=height,
        ),
        modality_values=None,
    )


_PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I;16S": 2}
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "F")
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # as ImageOps.exif_transpose; applied to the grey result, so that a large image is turned after its reduction


def _check_decoded_bytes(size: int) -> None:
    """Refuse before decoding a frame that would itself exceed the memory one upload may take."""
    if size > MAX_DECODED_BYTES:
        raise ImageReadError(
            f"This image is too large to analyse safely (decoding it would take {size / 2**20:,.0f} MB of memory; "
            f"the limit is {MAX_DECODED_BYTES / 2**20:.0f} MB). Downsize it or export a smaller version."
        )


def _exif_orientation(image: Image.Image, notes: list[str]) -> Image.Transpose | None:
    """Phones and some exporters store the image sideways plus an EXIF tag saying how to turn it."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block should not lose a readable image
        notes.append("EXIF data unreadable; image shown as stored")
        return None
    if orientation in _EXIF_TRANSPOSE:
        notes.append(f"EXIF orientation {orientation} applied")
        return _EXIF_TRANSPOSE[orientation]
    return None


def _reduced_pillow_grey(image: Image.Image, factor: int, notes: list[str]) -> tuple[np.ndarray, int]:
    """`_pillow_to_grey` of a large image at 1/`factor` of its size, converted strip by strip.

    High-depth images are averaged before their min-max scaling, which must see the whole (reduced) image.
    """
    width, height = image.size
    strip_rows = factor * 64
    strip_notes: list[str] = []
    parts = []
    for top in range(0, height, strip_rows):
        strip = image.crop((0, top, width, min(height, top + strip_rows)))
        if image.mode in _HIGH_DEPTH_MODES:
            values = np.asarray(strip).astype(np.float32)
        else:
            values, _ = _pillow_to_grey(strip, strip_notes if top == 0 else [])
        parts.append(_block_mean(values, factor))
    reduced = np.concatenate(parts)
    if image.mode in _HIGH_DEPTH_MODES:
        return _scaled_high_depth(reduced, image.mode, notes)
    notes.extend(strip_notes)
    return reduced, 8 if image.mode != "1" else 1


def _scaled_high_depth(values: np.ndarray, mode: str, notes: list[str]) -> tuple[np.ndarray, int]:
    """16-bit, 32-bit and float values min-max scaled over the image itself, and the bit depth."""
    scaled, lo, hi = _full_range(values)
    bits = 16 if mode.startswith("I;16") else 32
    notes.append(f"{bits}-bit image scaled from its own range ({lo:g}..{hi:g})")
    return scaled, bits


def _pillow_to_grey(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, int]:
    """Greyscale float pixels and the bit depth they came from."""
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        return _scaled_high_depth(np.asarray(image).astype(np.float32), mode, notes)
    if mode == "1":
        return np.asarray(image, dtype=np.float32), 1
    if mode == "L" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.float32) / np.float32(255), 8
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    if mode not in ("L", "LA"):
        kind = "palette" if mode in ("P", "PA") else mode
        notes.append(f"{kind} image converted to grey (luminance)")
    rgb = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    grey = _luminance(rgb) / np.float32(255)
    if has_alpha:
        grey *= rgb[..., 3].astype(np.float32) / np.float32(255)
        notes.append("transparent areas composited on black")
    return grey, 8


# -------------------------------------------------------------------------------------------- DICOM
_PIXEL_KEYWORDS = {0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData", 0x7FE00010: "PixelData"}
_HEADER_END = 0x7FE00008  # the first pixel data tag: the header is every element before it
_DATASET_END = 0x7FE00011  # just past PixelData: trailing elements (padding, signatures) are never parsed
_NATIVE_SYNTAXES = {"", ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                    DeflatedExplicitVRLittleEndian}  # pixel data stored uncompressed, as large as declared
_DEFER_BYTES = 256 * 1024  # header values larger than this (private blobs, thumbnails) are skipped while parsing
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


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


def looks_like_dicom(head: bytes) -> bool:
    """'DICM' after the 128-byte preamble or at the start (preamble dropped), or a file without any header that
    starts with a group 0002 or 0008 tag: the first bytes decide, never the file name."""
    return head[128:132] == b"DICM" or _looks_like_headerless_dicom(head)


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
        raise ImageReadError(f"This file is not a readable image ({_describe_unknown(data)}). {SUPPORTED}")
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
        raise ImageReadError(_damaged_message("dicom", exc)) from exc


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
        raise ImageReadError(_damaged_message("dicom", exc)) from exc


def _read_dicom(data: bytes, max_pixels: int, notes: list[str], *, force: bool) -> Scan:
    header = read_dicom_header(data, force=force)
    ds = header.dataset
    if force and header.pixel_keyword is None and not any(kw in ds for kw in ("SOPClassUID", "Modality")):
        raise ImageReadError(f"This file is not a readable image ({_describe_unknown(data)}). {SUPPORTED}")
    if header.pixel_keyword is None:
        sop = UID(str(ds.SOPClassUID)).name if ds.get("SOPClassUID") else ""
        if not sop or "Image Storage" in sop:  # an image object without its pixels was cut short
            raise ImageReadError(_damaged_message("dicom", EOFError()))
        raise ImageReadError(
            f"This DICOM file contains no image (it is a '{sop}' object, without pixel data). "
            "Upload an image of the series (CT slice or radiograph) instead."
        )
    if ds.get("Rows") is None or ds.get("Columns") is None:
        raise ImageReadError("This DICOM file has pixel data but no image size (Rows/Columns). Export it again.")
    rows, columns = int(ds.Rows), int(ds.Columns)
    _check_geometry(columns, rows, max_pixels)
    transfer_syntax = _transfer_syntax(ds)
    frames = max(1, int(ds.get("NumberOfFrames") or 1))
    index = (frames - 1) // 2
    samples, bits_allocated = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 16)
    _check_decoded_bytes(rows * columns * samples * max(1, bits_allocated // 8))
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
        notes.append(_reduced_note(columns, rows, raw.shape))
    dicom_modality = str(ds.get("Modality", "")).strip().upper() or None
    window: tuple[float, float] | None = None
    values: np.ndarray | None = None
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        pixels = _luminance(rgb) / np.float32(np.iinfo(rgb.dtype).max)
        notes.append("palette colour converted to grey")
    elif raw.ndim == 3:
        pixels = _luminance(raw) / np.float32(2 ** int(ds.get("BitsStored", 8)) - 1)
        notes.append(f"{photometric or 'colour'} image converted to grey (luminance)")
    else:
        values = _modality_values(raw, ds, index)
        pixels, window = _window_dicom(values, raw, ds, index, dicom_modality, notes)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
            notes.append("MONOCHROME1 inverted so that dense tissue is bright")
    return Scan(
        pixels=_finish(pixels),
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
    """`_block_mean` back in the stored type, so that LUTs and windows treat it as they treat the file's values."""
    means = _block_mean(raw, factor)
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
            raise ImageReadError(_damaged_message("dicom", EOFError())) from exc
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
    _, lo, hi = _full_range(values)
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
