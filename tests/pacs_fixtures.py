"""A real Orthanc PACS (DICOMweb plugin, `covid_models.pacs.scratch_orthanc`) for the PACS tests, and small DICOM
studies to upload into it.

`orthanc` is one server for the whole test session, on a free loopback port with its own storage folder and a
generated configuration; it starts when the `Orthanc` binary and the DICOMweb plugin are installed (Debian:
`orthanc`, `orthanc-dicomweb`) and skips with the reason otherwise, unless REQUIRE_ORTHANC=1 (set by .ci/run),
where their absence fails. `OrthancServer` can also be started by a test on its own (wrong credentials, a server
stopped half-way) without touching the shared one.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from covid_models.pacs.scratch_orthanc import OrthancServer, missing_orthanc


def require_orthanc_or_skip(reason: str) -> None:
    if os.environ.get("REQUIRE_ORTHANC") == "1":
        pytest.fail(f"REQUIRE_ORTHANC=1 but {reason}")
    pytest.skip(reason)


def started_orthanc(folder: Path, users: dict[str, str] | None = None) -> Iterator[OrthancServer]:
    reason = missing_orthanc()
    if reason is not None:
        require_orthanc_or_skip(reason)
    server = OrthancServer(folder, users)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """The session's Orthanc, without authentication."""
    yield from started_orthanc(tmp_path_factory.mktemp("orthanc"))


def xray_dicom(image: Path | np.ndarray, *, study_uid: str | None = None, accession: str = "",
               patient_id: str = "TEST-1", study_date: str = "20240105", modality: str = "DX",
               rows: int | None = None) -> bytes:
    """A DX radiograph (8-bit MONOCHROME2) holding a real X-ray image (a path) or given pixels."""
    if isinstance(image, Path):
        picture = Image.open(image).convert("L")
        if rows is not None:
            picture = picture.resize((round(picture.width * rows / picture.height), rows))
        pixels = np.asarray(picture, dtype=np.uint8)
    else:
        pixels = np.asarray(image, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = modality, patient_id, "Test^Patient"
    ds.AccessionNumber, ds.StudyDate, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = accession, study_date, "1", 1, 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def series_files(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob("*.dcm"))]
