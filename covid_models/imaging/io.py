"""Reading image files: the one place where bytes become a greyscale `Scan`.

Every upload, folder import and script goes through `read_image`, so that format sniffing, size limits,
DICOM handling (rescale, window, MONOCHROME1, compression, multi-frame) and error messages are the same
everywhere. Any failure is an `ImageReadError` whose message tells a radiologist what is wrong and what
to do; no Pillow, pydicom or NumPy exception leaves this module.

This module takes the input (bytes, a stream or a path: a regular file of at most `MAX_FILE_BYTES`, checked before
reading), recognises its format (`formats`) and hands it to its reader: `raster` (PNG, JPEG, TIFF, ... through
Pillow) or `dicom` (header first, then pixels). The `Scan` they return, the limits and the refusals live in `scan`.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from covid_models.imaging.dicom import identifier_fields, read_dicom_header, read_dicom_scan
from covid_models.imaging.formats import extension_notes, sniff
from covid_models.imaging.raster import read_raster
from covid_models.imaging.scan import MAX_FILE_BYTES, MAX_PIXELS, SUPPORTED, ImageReadError, Scan, damaged_message


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
    fmt = sniff(data, name)
    notes = extension_notes(name, fmt)
    try:
        if fmt == "dicom":
            return read_dicom_scan(data, max_pixels, notes, force=data[128:132] != b"DICM")
        return read_raster(data, fmt, max_pixels, notes)
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
        raise ImageReadError(damaged_message(fmt, exc)) from exc


def read_dicom_identifiers(source: str | os.PathLike | bytes | BinaryIO) -> dict[str, str]:
    """Patient and study identifiers of a DICOM file, for an explicit 'show header' view only; never store them."""
    data, name = _read_source(source, None)
    try:
        if sniff(data, name) != "dicom":
            raise ImageReadError("not DICOM")
        dataset = read_dicom_header(data, force=data[128:132] != b"DICM").dataset
        return identifier_fields(dataset)
    except Exception as exc:
        raise ImageReadError("This file is not a readable DICOM file, so it has no DICOM header to show.") from exc


def content_hash(data: bytes) -> str:
    """SHA-256 of the file bytes: identifies an image in the review store without keeping its pixels."""
    return hashlib.sha256(data).hexdigest()


def files_hash(hashes: list[str]) -> str:
    """One SHA-256 for several files (a scan's DICOM series) from their `content_hash`es: names and order do not
    matter, so the same scan uploaded again, renamed or in another order, is recognised."""
    return hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- input
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
