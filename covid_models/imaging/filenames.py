"""The one rule for the file name a report, a review session or a page may show: the bare name only.

A path's folders often name a patient (``/data/DOE^JOHN/chest.png``), so everything that keeps or prints an
uploaded file's name keeps its last component only, of either separator style, without control characters.
"""
from __future__ import annotations

import unicodedata
from pathlib import PureWindowsPath

MAX_FILE_NAME_CHARS = 120


def bare_file_name(name: object, fallback: str = "image", limit: int = MAX_FILE_NAME_CHARS) -> str:
    """The last path component of `name` (POSIX or Windows), without control characters, at most `limit`
    characters (shortened in the middle so the extension stays); `fallback` when nothing is left."""
    text = "".join(ch for ch in str(name) if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    bare = " ".join(PureWindowsPath(text.replace("/", "\\")).name.split())
    if not bare:
        return fallback
    if len(bare) <= limit:
        return bare
    stem, dot, extension = bare.rpartition(".")
    extension = dot + extension if stem and len(extension) < 12 else ""
    return bare[: limit - 3 - len(extension)] + "..." + extension
