"""A real Orthanc PACS (DICOMweb plugin) for the PACS tests, and small DICOM studies to upload into it.

`orthanc` is one server for the whole test session, on a free loopback port with its own storage folder and a
generated configuration; it starts when the `Orthanc` binary and the DICOMweb plugin are installed (Debian:
`orthanc`, `orthanc-dicomweb`) and skips with the reason otherwise, unless REQUIRE_ORTHANC=1 (set by .ci/run),
where their absence fails. `OrthancServer` can also be started by a test on its own (wrong credentials, a server
stopped half-way) without touching the shared one.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
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


def require_orthanc_or_skip(reason: str) -> None:
    if os.environ.get("REQUIRE_ORTHANC") == "1":
        pytest.fail(f"REQUIRE_ORTHANC=1 but {reason}")
    pytest.skip(reason)


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
