"""The canonical CT `Volume` every volume reader returns, `VolumeReadError`, and what one read may cost.

A `Volume` holds HU as int16 in one known orientation, whatever the source:
axis 0 = slices from head to feet, axis 1 = rows from anterior to posterior, axis 2 = columns from the
patient's right to the patient's left (the usual axial display: anterior up, patient's left on the viewer's
right), with its spacing in mm along each axis. That is the orientation the CT models expect. Its metadata keeps
technical fields only. The readers of each source (`series` for DICOM, `nifti`) and the entry point
`volumes.read_volume` share this module, so that the contract, the limits (`VolumeLimits`) and the reading deadline
live in one place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from covid_models.imaging.scan import ImageReadError

CANONICAL_ORIENTATION = "slices head to feet, rows anterior to posterior, columns patient right to left"
SUPPORTED_VOLUMES = "Upload a zip of a DICOM series, the DICOM files of one series, or a NIfTI (.nii, .nii.gz) volume."


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


@dataclass(frozen=True)
class Deadline:
    """When one read must have ended; checked between files, slices and slabs."""

    at: float
    seconds: float

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise VolumeReadError(f"Reading this upload took longer than {self.seconds:g} s, the limit for one scan, "
                                  "so it was stopped. Upload one series (a zip of its folder) or a NIfTI volume.")
