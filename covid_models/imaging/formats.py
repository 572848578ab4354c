"""Which format a file is, from its first bytes (never from its name), and what it looks like when it is no image.

One table of signatures serves the image reader (`io.read_image`), the DICOM header parser (what a refused file
looks like) and the volume reader (which members of an upload are DICOM), so that a new format is recognised in one
place. The file name only adds a note when its extension disagrees, and lets a '.dcm' file without any DICOM
signature be tried as DICOM.
"""
from __future__ import annotations

from pathlib import Path

from covid_models.imaging.scan import SUPPORTED, ImageReadError

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


def sniff(data: bytes, name: str | None) -> str:
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
    raise ImageReadError(f"This file is not a readable image ({describe_unknown(data)}). {SUPPORTED}")


def _looks_like_headerless_dicom(data: bytes) -> bool:
    """DICOM written without its 128-byte preamble starts with a group 0002 or 0008 tag."""
    return data[:4] == b"DICM" or data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def looks_like_dicom(head: bytes) -> bool:
    """'DICM' after the 128-byte preamble or at the start (preamble dropped), or a file without any header that
    starts with a group 0002 or 0008 tag: the first bytes decide, never the file name."""
    return head[128:132] == b"DICM" or _looks_like_headerless_dicom(head)


def describe_unknown(data: bytes) -> str:
    """What a file that is no readable image looks like, for the message that refuses it."""
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


def extension_notes(name: str | None, fmt: str) -> list[str]:
    """A note when the file name's extension names another format than the content (the content wins)."""
    suffix = Path(name).suffix.lower() if name else ""
    expected = _EXTENSIONS.get(suffix)
    if expected and expected != fmt:
        return [f"file name ends in {suffix} but the content is {fmt.upper()}; read as {fmt.upper()}"]
    return []
