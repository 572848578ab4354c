"""The files of an upload, each read on demand: a folder's, or a zip's, checked before anything is inflated.

Separate from the volume readers because a labelled sample of images or scans (`local.samples`, `local.scans`) is
read through the same bounded zip reader. A zip's encryption, member paths, counts, declared sizes and compression
ratio are checked before any member is inflated; members are then inflated one at a time, in memory (nothing is
written to disk), never beyond their declared size or the archive's budget of actual bytes. `Member.head(n)` gives
a file's first n bytes (a zip member is inflated only so far), so that a reader can look at a header first.
"""
from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from covid_models.imaging.ct_volume import VolumeLimits, VolumeReadError


@dataclass(frozen=True)
class Member:
    """One file of an upload, read on demand so that an archive or folder is never held inflated in memory;
    `head(n)` gives its first n bytes (a zip member is inflated only so far)."""

    name: str
    read: Callable[[], bytes]
    head: Callable[[int], bytes]


def folder_members(folder: Path, limits: VolumeLimits) -> Iterator[Member]:
    """The files under `folder` (nested folders too; hidden files skipped), at most `limits.max_files`."""
    count = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        count += 1
        if count > limits.max_files:
            raise VolumeReadError(f"This folder holds more than {limits.max_files} files. Point at one series.")
        yield Member(str(path.relative_to(folder)), lambda p=path: _read_file(p, limits),
                     lambda size, p=path: _read_file(p, limits, size))


def _read_file(path: Path, limits: VolumeLimits, size: int | None = None) -> bytes:
    """The file, or its first `size` bytes; a file over `limits.max_file_bytes` is refused unread."""
    if path.stat().st_size > limits.max_file_bytes:
        raise VolumeReadError(f"'{path.name}' is larger than {limits.max_file_bytes // 2**20} MB, too large for "
                              "one CT slice.")
    with open(path, "rb") as handle:
        return handle.read(limits.max_file_bytes if size is None else size)


def zip_members(data: bytes, limits: VolumeLimits) -> Iterator[Member]:
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
        yield Member(name, lambda i=info: _inflate(archive, i, budget, limits),
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
