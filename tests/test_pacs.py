"""The PACS connection against a real Orthanc: query, bounded retrieval into the readers, reports stored back, and
every fault a reader can meet (server down, slow, credentials refused, study deleted, mixed-size series)."""
from __future__ import annotations

import csv
import dataclasses
import io
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pacs_fixtures import OrthancServer, series_files, started_orthanc
from scan_phantoms import dicom_series

from covid_models.imaging.ct_volume import VolumeLimits, VolumeReadError
from covid_models.imaging.io import read_image
from covid_models.imaging.volumes import read_volume
from covid_models.models.inference import Classifier
from covid_models.pacs import screening
from covid_models.pacs.client import InstanceRef, Pacs, PacsError, PacsSettings, StudyGoneError, StudyQuery
from covid_models.pacs.scratch_orthanc import xray_dicom
from covid_models.pacs.structured_report import (
    NOTICE,
    read_reading,
    reading_report,
    result_uids,
    store_report,
    verdict_report,
)

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
sys.path.insert(0, str(WEIGHTS.parent / "scripts"))
COPDGENE = "ct-volumes/copdgene-10002k-64/dicom"


@pytest.fixture(scope="module")
def studies(orthanc: OrthancServer, real_data: Path) -> dict[str, str]:
    """Three X-ray studies of 2019 (two DX, one CR; real radiographs at 256 rows) and one small real CT series, on
    this module's own server."""
    images = sorted((real_data / "xray" / "images").glob("*.jpg"))[:3]
    uids = {}
    for index, (name, modality, day) in enumerate([("dx1", "DX", "20190105"), ("dx2", "DX", "20190106"),
                                                   ("cr1", "CR", "20190220")]):
        data = xray_dicom(images[index], accession=f"ACC-{name}", patient_id=f"PAT-{name}", study_date=day,
                          modality=modality, rows=256)
        uids[name] = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID
        orthanc.upload([data])
    files = series_files(real_data / COPDGENE)
    orthanc.upload(files)
    uids["ct"] = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True).StudyInstanceUID
    return uids


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """This module's own server (not the session's, which other test files fill): its queries list exactly what
    the module uploaded."""
    yield from started_orthanc(tmp_path_factory.mktemp("orthanc-queries"))


@pytest.fixture(scope="module")
def pacs(orthanc: OrthancServer) -> Pacs:
    return Pacs(PacsSettings(orthanc.dicomweb_url, timeout=10))


def listed(pacs: Pacs, query: StudyQuery) -> set[str]:
    return {study.uid for study in pacs.search_studies(query, limit=200).studies}


def test_settings_come_from_the_deployment_and_nothing_is_configured_without_a_url():
    assert PacsSettings.from_lookup(lambda _: "") is None
    values = {"COVID_DICOMWEB_URL": "https://pacs.example.org/dicom-web/", "COVID_DICOMWEB_TOKEN": "t0ken"}
    settings = PacsSettings.from_lookup(lambda name: values.get(name, ""))
    assert settings.url == "https://pacs.example.org/dicom-web" and settings.verify is True
    assert not settings.store_results and "t0ken" not in repr(settings)
    assert Pacs(settings).client._session.headers["Authorization"] == "Bearer t0ken"
    with pytest.raises(PacsError, match="http"):
        PacsSettings.from_lookup(lambda name: "ftp://pacs" if name == "COVID_DICOMWEB_URL" else "")


def test_a_query_lists_the_uploaded_studies_by_modality_date_accession_and_patient(pacs, studies):
    assert {studies["dx1"], studies["dx2"], studies["cr1"], studies["ct"]} <= listed(pacs, StudyQuery())
    assert listed(pacs, StudyQuery(modalities=("CT",))) == {studies["ct"]}
    assert listed(pacs, StudyQuery(modalities=("CR",))) == {studies["cr1"]}
    assert listed(pacs, StudyQuery(date_from=date(2019, 1, 6), date_to=date(2019, 2, 1))) == {studies["dx2"]}
    assert listed(pacs, StudyQuery(accession="ACC-dx1")) == {studies["dx1"]}
    assert listed(pacs, StudyQuery(patient_id="PAT-cr1")) == {studies["cr1"]}


def test_results_come_in_pages_that_say_whether_more_follow(pacs, studies):
    query = StudyQuery(modalities=("CR", "DX"), date_from=date(2019, 1, 1), date_to=date(2019, 12, 31))
    first = pacs.search_studies(query, limit=2)
    second = pacs.search_studies(query, offset=first.next_offset, limit=2)
    assert len(first.studies) == 2 and first.more and len(second.studies) == 1 and not second.more
    assert {s.uid for s in first.studies + second.studies} == {studies["dx1"], studies["dx2"], studies["cr1"]}


def test_a_study_gives_image_items_for_xray_and_a_scan_item_for_each_ct_series(pacs, studies):
    xray = screening.study_items(pacs, studies["dx1"], "xray")
    ct = screening.study_items(pacs, studies["ct"], "ct")
    assert [item.kind for item in xray] == ["image"] and [item.kind for item in ct] == ["scan"]
    assert screening.study_items(pacs, studies["ct"], "xray") == []
    assert "PAT" not in xray[0].label and "ACC" not in xray[0].label  # labels carry no identifier
    assert read_image(screening.fetch_image(pacs, xray[0])).metadata.modality == "xray"
    volume = read_volume(screening.fetch_scan(pacs, ct[0]))
    assert volume.hu.shape == (79, 64, 64)


def test_retrieval_is_refused_before_any_pixel_is_fetched_when_the_declared_size_is_over_the_limit(pacs, studies,
                                                                                                  monkeypatch):
    item = screening.study_items(pacs, studies["ct"], "ct")[0]
    fetched = []
    monkeypatch.setattr(pacs.client, "iter_series", lambda *a, **k: fetched.append(a) or iter(()))
    with pytest.raises(PacsError, match="79 images"):
        pacs.fetch_series(item.ref.study_uid, item.ref.series_uid, VolumeLimits(max_files=50))
    with pytest.raises(PacsError, match="million voxels"):
        pacs.fetch_series(item.ref.study_uid, item.ref.series_uid, VolumeLimits(max_voxels=100_000))
    assert fetched == []


def test_the_report_is_stored_in_the_study_found_by_qido_and_reads_back_and_storing_again_adds_nothing(
        pacs, studies):
    classifier = Classifier.load(WEIGHTS / "xray-efficientnet-lite0")
    item = screening.study_items(pacs, studies["dx2"], "xray")[0]
    data = screening.fetch_image(pacs, item)
    _, prediction = screening.read_xray(data, classifier)
    reading = screening.image_reading(item, classifier, prediction)
    report = reading_report(reading, screening.headers([data]))
    assert store_report(pacs, report) is True
    assert store_report(pacs, reading_report(reading, screening.headers([data]))) is False
    found = pacs.client.search_for_instances(studies["dx2"], search_filters={"Modality": "SR"})
    assert len(found) == 1
    series_uid, sop_uid = result_uids(studies["dx2"], classifier.card.sha256, item.ref.text)
    back = pacs.client.retrieve_instance(studies["dx2"], series_uid, sop_uid)
    assert back.StudyInstanceUID == studies["dx2"] and back.SeriesInstanceUID != item.ref.series_uid
    content = read_reading(back)
    assert content["COVID-19 probability"] == pytest.approx(prediction.positive_probability)
    assert content["Operating point threshold"] == pytest.approx(prediction.threshold)
    assert content["Algorithm Version"] == classifier.card.sha256 and content["Algorithm Name"] == classifier.name
    assert NOTICE in content["comments"]
    verdict = verdict_report(reading, screening.headers([data]), "disagree", "normal", 1)
    assert store_report(pacs, verdict) and read_reading(verdict)["evaluations"][
        "Reviewer verdict on the AI reading"] == "disagree"


@pytest.mark.slow
def test_a_scan_report_carries_the_burden_and_severity_when_given(pacs, studies):
    item = screening.study_items(pacs, studies["ct"], "ct")[0]
    files = screening.fetch_scan(pacs, item)
    classifier = Classifier.load(WEIGHTS / "ct-efficientnet-lite0")
    _, analysis = screening.read_ct(files, classifier)
    reading = screening.scan_reading(item, classifier, analysis, burden_percent=12.5, severity_score=7)
    assert reading.kind == "scan" and reading.item.sop_uid == "" and reading.threshold == analysis.threshold
    assert (reading.lesion_burden_percent, reading.severity_score) == (12.5, 7)
    evidence = screening.headers([data for _, data in files])
    read = read_reading(reading_report(dataclasses.replace(reading, probability=0.7), evidence))
    assert read["Lesion burden (percent of lung volume)"] == 12.5 and read["Severity score"] == 7
    held = read_reading(reading_report(dataclasses.replace(reading, probability=None), evidence))
    assert "Severity score" not in held and "COVID-19 probability" not in held


# ------------------------------------------------------------------------------------------------- faults
def test_a_server_that_is_down_gives_a_clear_message(tmp_path):
    with _server(tmp_path) as server:
        pacs = Pacs(PacsSettings(server.dicomweb_url, timeout=5))
        assert pacs.search_studies(StudyQuery()).studies == []
        server.stop()
        with pytest.raises(PacsError, match="could not be reached"):
            pacs.search_studies(StudyQuery())


class _server:
    """A private Orthanc for a test that stops it or signs in to it."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        self._started = started_orthanc(folder, users)

    def __enter__(self) -> OrthancServer:
        return next(self._started)

    def __exit__(self, *_exc: object) -> None:
        self._started.close()


def test_wrong_credentials_are_named_as_such(tmp_path):
    with _server(tmp_path, {"reader": "right-password"}) as server:
        good = Pacs(PacsSettings(server.dicomweb_url, username="reader", password="right-password"))
        assert good.search_studies(StudyQuery()).studies == []
        bad = Pacs(PacsSettings(server.dicomweb_url, username="reader", password="wrong"))
        with pytest.raises(PacsError, match="refused the credentials") as raised:
            bad.search_studies(StudyQuery())
        assert "wrong" not in str(raised.value)


def test_a_slow_server_times_out_with_a_clear_message():
    """Orthanc cannot be made slow: a local socket that accepts and never answers stands in for it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    pacs = Pacs(PacsSettings(f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web", timeout=0.5))
    with pytest.raises(PacsError, match="did not answer within 0.5 s"):
        pacs.search_studies(StudyQuery())
    listener.close()


def test_a_study_deleted_between_query_and_retrieve_is_named_and_others_still_read(orthanc, pacs, real_data):
    image = sorted((real_data / "xray" / "images").glob("*.jpg"))[5]
    doomed = xray_dicom(image, rows=128, accession="ACC-doomed")
    orthanc.upload([doomed])
    header = pydicom.dcmread(io.BytesIO(doomed), stop_before_pixels=True)
    item = screening.study_items(pacs, header.StudyInstanceUID, "xray")[0]
    orthanc.delete_study(header.StudyInstanceUID)
    with pytest.raises(StudyGoneError, match="no longer in the PACS"):
        screening.fetch_image(pacs, item)
    with pytest.raises(StudyGoneError):
        pacs.fetch_series(item.ref.study_uid, item.ref.series_uid)
    with pytest.raises(StudyGoneError):
        pacs.fetch_instance(InstanceRef(item.ref.study_uid, item.ref.series_uid, "1.2.3"))


def test_a_series_with_mixed_image_sizes_gives_the_volume_readers_message(orthanc, pacs):
    hu = np.full((6, 32, 32), -800, dtype=np.int16)
    files = [data for _, data in dicom_series(hu)]
    odd = dicom_series(np.full((1, 48, 48), -800, dtype=np.int16))[0][1]
    first = pydicom.dcmread(io.BytesIO(files[0]))
    ds = pydicom.dcmread(io.BytesIO(odd))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
    ds.ImagePositionPatient = ["-48", "-48", "-30"]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    orthanc.upload([*files, buffer.getvalue()])
    item = screening.study_items(pacs, first.StudyInstanceUID, "ct")[0]
    with pytest.raises(VolumeReadError) as raised:
        read_volume(screening.fetch_scan(pacs, item))
    assert "different sizes" in str(raised.value)


# ------------------------------------------------------------------------------------------------ the batch
def test_pacs_screen_writes_the_csv_and_the_reports_and_a_second_run_adds_nothing(orthanc, pacs, studies, tmp_path,
                                                                                  monkeypatch):
    import pacs_screen

    monkeypatch.setenv("COVID_DICOMWEB_URL", orthanc.dicomweb_url)
    out = tmp_path / "screen.csv"
    argv = [str(WEIGHTS / "xray-efficientnet-lite0"), "--from", "2019-01-01", "--to", "2019-03-01", "--store",
            "--out", str(out)]
    assert pacs_screen.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert {row["file"].split("/")[0] for row in rows} == {studies["dx1"], studies["dx2"], studies["cr1"]}
    assert all(row["status"] == "ok" and row["positive_probability"] for row in rows)
    reports = {uid: len(pacs.client.search_for_instances(uid, search_filters={"Modality": "SR"}))
               for uid in (studies["dx1"], studies["dx2"], studies["cr1"])}
    assert all(count >= 1 for count in reports.values())
    assert pacs_screen.main(argv) == 0
    assert len(list(csv.DictReader(out.open()))) == len(rows)
    assert reports == {s: len(pacs.client.search_for_instances(s, search_filters={"Modality": "SR"}))
                       for s in reports}


def test_pacs_screen_names_a_failing_study_and_goes_on(orthanc, pacs, studies, tmp_path, monkeypatch):
    import pacs_screen

    monkeypatch.setenv("COVID_DICOMWEB_URL", orthanc.dicomweb_url)
    real_fetch = screening.fetch_image
    broken = studies["dx1"]

    def fetch(pacs_, item):
        if item.ref.study_uid == broken:
            raise StudyGoneError("This study is no longer in the PACS (deleted or moved since it was listed).")
        return real_fetch(pacs_, item)

    monkeypatch.setattr(screening, "fetch_image", fetch)
    out = tmp_path / "screen.csv"
    assert pacs_screen.main([str(WEIGHTS / "xray-efficientnet-lite0"), "--from", "2019-01-01", "--to", "2019-03-01",
                             "--out", str(out)]) == 0
    rows = {row["file"].split("/")[0]: row for row in csv.DictReader(out.open())}
    assert rows[broken]["status"] == "error" and "no longer in the PACS" in rows[broken]["error"]
    assert rows[studies["dx2"]]["status"] == "ok" and rows[studies["cr1"]]["status"] == "ok"


@pytest.mark.slow
def test_pacs_screen_reads_a_ct_series_as_one_scan(orthanc, studies, tmp_path, monkeypatch):
    import pacs_screen

    monkeypatch.setenv("COVID_DICOMWEB_URL", orthanc.dicomweb_url)
    out = tmp_path / "ct.csv"
    assert pacs_screen.main([str(WEIGHTS / "ct-efficientnet-lite0"), "--modality", "CT", "--from", "2006-01-01",
                             "--to", "2006-01-01", "--out", str(out)]) == 0
    (row,) = list(csv.DictReader(out.open()))
    study, series = row["file"].split("/")  # a scan: study and series, no instance
    assert study == studies["ct"] and row["status"] == "ok" and row["threshold"]
    assert row["out_of_distribution"] == "True" or row["positive_probability"]
