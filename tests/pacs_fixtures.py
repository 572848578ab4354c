"""A real Orthanc PACS (DICOMweb plugin, `covid_models.pacs.scratch_orthanc`) for the PACS tests, and a series's
DICOM files to upload into it (single radiographs: `scratch_orthanc.xray_dicom`).

`orthanc` is one server for the whole test session, on a free loopback port with its own storage folder and a
generated configuration; it starts when the `Orthanc` binary and the DICOMweb plugin are installed (Debian:
`orthanc`, `orthanc-dicomweb`) and skips with the reason otherwise, unless REQUIRE_ORTHANC=1 (set by .ci/run),
where their absence fails. `OrthancServer` can also be started by a test on its own (wrong credentials, a server
stopped half-way) without touching the shared one.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def series_files(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob("*.dcm"))]
