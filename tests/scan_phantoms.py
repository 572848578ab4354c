"""Synthetic chest CT phantoms with known geometry, written as DICOM series, zips and NIfTI files.

The phantom (canonical orientation: slices head to feet, rows anterior to posterior, columns patient right to left)
has a body of soft tissue in air on a table with a flat air channel, scan-field padding (-3024 HU) in the corners,
two box-shaped lungs of -850 HU, a trachea that joins the right lung from above, bowel gas below the lungs, a vessel
inside the left lung and a ground-glass "lesion" of -100 HU inside the right lung. Boxes make every volume exact:
a lung mask that is right voxel for voxel has exactly the boxes' volume.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from torch import nn

from covid_models.imaging.preprocessing import LUNG_WINDOW, Preprocessing
from covid_models.models.model_card import ModelCard
from covid_models.models.segmentation import Segmenter

SHAPE = (40, 64, 64)
SPACING = (2.5, 1.5, 1.5)  # mm between slices, rows, columns
RIGHT_LUNG = (slice(10, 34), slice(16, 48), slice(10, 28))
LEFT_LUNG = (slice(10, 34), slice(16, 48), slice(36, 54))
LESION = (slice(20, 25), slice(26, 32), slice(14, 20))  # inside the right lung
VESSEL = (slice(15, 30), slice(30, 33), slice(44, 47))  # inside the left lung
TRACHEA = (slice(2, 9), slice(20, 24), slice(30, 34))
BRONCHUS = (slice(9, 10), slice(20, 24), slice(26, 34))  # joins the trachea to the right lung's top
BOWEL_GAS = (slice(36, 40), slice(30, 36), slice(20, 30))
TABLE = (slice(0, 40), slice(57, 62), slice(8, 56))  # the scanner table under the body, with a flat air channel
TABLE_CHANNEL = (slice(0, 40), slice(58, 60), slice(10, 54))
LUNG_HU, LESION_HU, BODY_HU = -850, -100, 40
ADULT_SCALE = 2  # `adult_phantom`: twice the in-plane pixels ...
ADULT_SPACING = (10.0, 1.5, 1.5)  # ... and 10 mm slices: 1.24 litres per lung, over the minimum lung volume to read


def adult_phantom() -> np.ndarray:
    """The phantom with lungs of an adult's volume at `ADULT_SPACING` (the small one is held back: too little lung)."""
    return phantom(scale=ADULT_SCALE)


def box_voxels(box: tuple[slice, ...]) -> int:
    return int(np.prod([s.stop - s.start for s in box]))


def phantom(shape: tuple[int, int, int] = SHAPE, scale: int = 1) -> np.ndarray:
    """The phantom's HU (int16) at `scale` times the in-plane resolution of SHAPE."""
    def up(box: tuple[slice, ...]) -> tuple[slice, ...]:
        return box[0], slice(box[1].start * scale, box[1].stop * scale), slice(box[2].start * scale,
                                                                               box[2].stop * scale)

    slices, rows, columns = shape[0], shape[1] * scale, shape[2] * scale
    hu = np.full((slices, rows, columns), -1000, dtype=np.int16)
    yy, xx = np.mgrid[0:rows, 0:columns]
    hu[:, (yy - rows / 2) ** 2 + (xx - columns / 2) ** 2 > (0.7 * rows) ** 2] = -3024  # outside the scan field
    hu[up((slice(0, slices), slice(8, 56), slice(4, 60)))] = BODY_HU
    hu[up(TABLE)] = 100
    hu[up(TABLE_CHANNEL)] = -1000
    for box in (RIGHT_LUNG, LEFT_LUNG):
        hu[up(box)] = LUNG_HU
    hu[up(LESION)] = LESION_HU
    hu[up(VESSEL)] = BODY_HU
    for box in (TRACHEA, BRONCHUS, BOWEL_GAS):
        hu[up(box)] = -1000
    return hu


def dicom_series(hu: np.ndarray, spacing: Sequence[float] = SPACING, *,
                 orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), feet_first: bool = False, modality: str = "CT",
                 series_uid: str | None = None, study_uid: str | None = None, positions: bool = True,
                 identifiers: dict[str, str] | None = None, slice_thickness: float = 5.0) -> list[tuple[str, bytes]]:
    """One DICOM file per slice of a canonical HU volume; the pixel grid is stored as `orientation` says.

    `orientation` (ImageOrientationPatient) may flip rows or columns: the stored pixels are flipped to match, so
    a correct reader gets the same canonical volume back. SliceThickness is deliberately not the slice step.
    """
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    files = []
    for index in range(hu.shape[0]):
        pixels = hu[index]
        if row_dir[0] < 0:
            pixels = pixels[:, ::-1]
        if col_dir[1] < 0:
            pixels = pixels[::-1, :]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = modality
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.SliceThickness = f"{slice_thickness:g}"
        order = index if not feet_first else hu.shape[0] - 1 - index  # numbered from the feet up
        ds.InstanceNumber = order + 1
        height = -index * spacing[0]
        if positions:
            ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
            ds.ImagePositionPatient = ["-48", "-48", f"{height:g}"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        for keyword, value in (identifiers or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = (np.ascontiguousarray(pixels).astype(np.int32) + 1024).astype("<i2").tobytes()
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        files.append((f"IM{order + 1:04d}.dcm", buffer.getvalue()))
    return files


def zipped(files: Sequence[tuple[str, bytes]], folder: str = "export/series1/") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(folder + name, data)
    return buffer.getvalue()


def nifti_ras(hu: np.ndarray, spacing: Sequence[float] = SPACING, *, gz: bool = True) -> bytes:
    """A canonical volume stored as NIfTI with RAS voxel axes (x to the right, y anterior, z superior)."""
    import nibabel as nib

    data = np.ascontiguousarray(hu[::-1, ::-1, ::-1].transpose(2, 1, 0))
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    image = nib.Nifti1Image(data, affine)
    raw = image.to_bytes()
    if not gz:
        return raw
    import gzip

    return gzip.compress(raw)


def with_fitted_threshold(segmenter: Segmenter, lesion_percent: float = 0.5) -> Segmenter:
    """A segmenter whose card carries a (test) lesion-burden threshold of the COVID-19 pattern rule."""
    segmenter.card.extra["ct_reading"] = {"lesion_percent_threshold": lesion_percent, "fit_on": "a test value"}
    return segmenter


class BandSegmenterNet(nn.Module):
    """Infection where the lung-window input lies in a band: the phantom's lesion (-100 HU), not air nor tissue."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        grey = inputs[:, :1] * 0.5 + 0.5  # undo the card's normalisation: [0, 1] under the lung window
        return 100 * torch.minimum(grey - 0.75, 0.9 - grey)


def band_segmenter(image_size: int) -> Segmenter:
    card = ModelCard(name="band-infection", task="segmentation", modality="ct", architecture="unet",
                     classes=["infection"], preprocessing=Preprocessing(image_size=image_size, hu_window=LUNG_WINDOW),
                     operating_points={"fixed": {"threshold": 0.5, "rule": "test"}}, default_operating_point="fixed")
    model = BandSegmenterNet()
    model.register_parameter("anchor", nn.Parameter(torch.zeros(1)))  # a parameter tells the Segmenter the device
    return Segmenter(model, card)
