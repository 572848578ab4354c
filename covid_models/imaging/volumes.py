"""Reading CT volumes: DICOM series (folder, uploaded files, zip) and NIfTI, into one canonical `Volume`.

`read_volume` is the one door for every CT upload, folder and script: it takes the source apart (a path, bytes or
uploaded files; a folder or zip through `archives`), hands it to its reader (`series` for DICOM, `nifti`) and turns
every failure into a `VolumeReadError` (an `ImageReadError`) whose message says what is wrong and what to do. The
`Volume` it returns, the limits and the deadline live in `ct_volume`.

Limits are checked from headers before pixels are decoded or inflated: a zip's declared sizes and compression ratio
before any member is inflated; each DICOM file's header (its declared size) before the file is inflated whole; a
NIfTI header's shape and data type before its voxels. Archives are read one member at a time, in memory (nothing is
written to disk), and one read stops at `VolumeLimits.max_seconds`. The metadata keeps technical fields only: study
and series UIDs are used to group slices while reading and then dropped.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covid_models.imaging.archives import Member, folder_members, zip_members
from covid_models.imaging.ct_volume import SUPPORTED_VOLUMES, Deadline, Volume, VolumeLimits, VolumeReadError
from covid_models.imaging.io import read_regular_file, special_file_kind
from covid_models.imaging.nifti import is_nifti, is_nifti_name, nifti_canonical, read_nifti
from covid_models.imaging.scan import ImageReadError
from covid_models.imaging.series import dicom_slices, read_series

Source = str | os.PathLike | bytes | Sequence[tuple[str, bytes]]


def read_volume(source: Source, *, name: str | None = None, series: int | None = None,
                limits: VolumeLimits = VolumeLimits()) -> Volume:
    """A CT volume from a folder or file path, the bytes of one file (`name` for its extension), or uploaded files.

    A folder or a zip is searched (nested folders too) for DICOM files; a `.nii`/`.nii.gz` (path, bytes, or the
    only file of an upload or archive) is read as NIfTI. `series` picks one of the series listed in
    `metadata.series` (by its index); by default the largest axial CT series is read.
    """
    try:
        return _read_volume(source, name, series, limits, Deadline(time.monotonic() + limits.max_seconds,
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
    labels, _, _ = nifti_canonical(data, limits, np.uint8, Deadline(time.monotonic() + limits.max_seconds,
                                                                     limits.max_seconds))
    return labels


def _read_volume(source: Source, name: str | None, series: int | None, limits: VolumeLimits,
                 deadline: Deadline) -> Volume:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            info = path.stat()
        except OSError as exc:
            raise VolumeReadError(f"'{path.name}' does not exist or cannot be opened ({exc.strerror or exc}). "
                                  "Check the path.") from exc
        if path.is_dir():
            return _read_members(list(folder_members(path, limits)), series, limits, deadline)
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
            return _read_members(list(zip_members(data, limits)), series, limits, deadline)
        if is_nifti(data, file_name):
            return read_nifti(data, limits, deadline)
    members = [Member(n, lambda d=d: d, lambda size, d=d: d[:size]) for n, d in files]
    return _read_members(members, series, limits, deadline)


def _read_members(members: list[Member], series: int | None, limits: VolumeLimits, deadline: Deadline
                  ) -> Volume:
    if not members:
        raise VolumeReadError("The upload contains no files. " + SUPPORTED_VOLUMES)
    slices, ignored = dicom_slices(members, limits, deadline)
    if not slices:
        niftis = [m for m in members if is_nifti_name(m.name)]
        if len(niftis) == 1:
            return read_nifti(niftis[0].read(), limits, deadline)
        raise VolumeReadError("No DICOM image was found in the upload. " + SUPPORTED_VOLUMES)
    return read_series(slices, ignored, series, limits, deadline)
