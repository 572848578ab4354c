"""The `Scan` every image reader returns, the `ImageReadError` every refusal raises, and the limits they check.

A `Scan` is a 2-D greyscale image in [0, 1], plus (DICOM) the modality values it was windowed from; its metadata
holds no patient identifier. The readers (`raster` for PNG, JPEG, TIFF and other Pillow formats, `dicom` for DICOM)
and the entry point `io.read_image` share this module, so that the contract, the limits and the wording of a refusal
live in one place. Memory per file is bounded (several users share one server): files over `MAX_FILE_BYTES` and
frames whose decoded size exceeds `MAX_DECODED_BYTES` are refused before decoding; an image larger than
`WORKING_SIDE` on its longest side is reduced right after decoding (see `pixels`). The models read at most 512
pixels and the display shows at most 768, so nothing they use is lost. Values that no float32 window can show
(beyond +-`MAX_ABS_VALUE`, e.g. a float TIFF at +-3e38 or a rescale slope of 1e38) are refused rather than shown as
a blank image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 128 * 1024 * 1024  # a file is read whole (an upload is first capped by Streamlit's maxUploadSize)
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


# ---------------------------------------------------------------------------- checks before decoding
def check_geometry(width: int, height: int, max_pixels: int) -> None:
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


def damaged_message(fmt: str, exc: BaseException) -> str:
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


def check_decoded_bytes(size: int) -> None:
    """Refuse before decoding a frame that would itself exceed the memory one upload may take."""
    if size > MAX_DECODED_BYTES:
        raise ImageReadError(
            f"This image is too large to analyse safely (decoding it would take {size / 2**20:,.0f} MB of memory; "
            f"the limit is {MAX_DECODED_BYTES / 2**20:.0f} MB). Downsize it or export a smaller version."
        )
