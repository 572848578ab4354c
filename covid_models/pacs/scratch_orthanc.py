"""A throwaway Orthanc PACS (with its DICOMweb plugin) on a loopback port, and the DX studies uploaded into it: for
the tests and scripts/benchmark_pacs.py.

It runs from a generated configuration with its own storage folder, HTTP only (no DICOM port), and optionally with
registered users (basic authentication). Needs the `Orthanc` binary and the DICOMweb plugin (Debian: `orthanc`,
`orthanc-dicomweb`); `missing_orthanc` says why one cannot start here. `xray_dicom` writes one radiograph as a
DICOM file in a study of its own.
"""
from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import requests
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins"),
               Path("/usr/local/share/orthanc/plugins"))
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc")


def plugin_dir() -> Path | None:
    return next((d for d in PLUGIN_DIRS if (d / DICOMWEB_PLUGIN).is_file()), None)


def missing_orthanc() -> str | None:
    """Why no Orthanc can be started here, or None."""
    if orthanc_binary() is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if plugin_dir() is None:
        return f"the Orthanc DICOMweb plugin ({DICOMWEB_PLUGIN}) is not installed (Debian: orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OrthancServer:
    """One Orthanc process on 127.0.0.1 with HTTP only (no DICOM port), storage under `folder`."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        self.folder, self.users = folder, users or {}
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "covid-test-pacs", "HttpPort": self.port, "RemoteAccessAllowed": False,
            "DicomServerEnabled": False, "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"), "Plugins": [str(plugin_dir())],
            "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
            "StorageCompression": False, "StableAge": 1, "HttpTimeout": 60, "LimitFindResults": 0,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
        }
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items()), None)

    def start(self, timeout: float = 30) -> None:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 (kept open by the process)
        self.process = subprocess.Popen([orthanc_binary(), str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.base}/system", auth=self.auth, timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within the timeout")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def upload(self, files: list[bytes]) -> None:
        """Store files through Orthanc's REST API (the tests' STOW-RS goes through the library)."""
        for data in files:
            requests.post(f"{self.base}/instances", data=data, auth=self.auth, timeout=60).raise_for_status()

    def delete_study(self, study_uid: str) -> None:
        found = requests.post(f"{self.base}/tools/lookup", data=study_uid, auth=self.auth, timeout=10).json()
        for entry in found:
            requests.delete(f"{self.base}/studies/{entry['ID']}", auth=self.auth, timeout=10).raise_for_status()


def xray_dicom(image: Path | np.ndarray, *, study_uid: str | None = None, accession: str = "",
               patient_id: str = "TEST-1", study_date: str = "20240105", modality: str = "DX",
               rows: int | None = None) -> bytes:
    """A DX radiograph (MONOCHROME2) holding a real X-ray image (a path, 8-bit, resized to `rows` when given) or
    given pixels (16-bit when they are uint16, else 8-bit), as a DICOM file."""
    if isinstance(image, Path):
        picture = Image.open(image).convert("L")
        if rows is not None:
            picture = picture.resize((round(picture.width * rows / picture.height), rows))
        pixels = np.asarray(picture, dtype=np.uint8)
    else:
        pixels = np.asarray(image)
        pixels = pixels if pixels.dtype == np.uint16 else pixels.astype(np.uint8)
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
    bits = 8 * pixels.dtype.itemsize
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
