"""The Review page's "From PACS" source against a real Orthanc: a query lists the uploaded studies, a session made
from it shows the X-ray (and, slow, the RICORD CT scan), a verdict is saved and goes back as an SR, the database
keeps hashes and UIDs only, and a PACS that goes away later costs nothing saved."""
from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from app_fixtures import PROJECT_ROOT, page_test
from app_fixtures_b import clear_streamlit_caches, point_app_at, register_on_review_page
from pacs_fixtures import series_files
from streamlit.testing.v1 import AppTest

from covid_models.pacs.scratch_orthanc import xray_dicom
from covid_models.reviews.store import ReviewStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PAGE = "pages/review.py"
WEIGHTS = PROJECT_ROOT / "weights"
RICORD = "ct-volumes/ricord-1a-000082/dicom"


def _run(at: AppTest) -> AppTest:
    at.run(timeout=600)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _signed_in(monkeypatch, database: Path, url: str | None) -> AppTest:
    point_app_at(monkeypatch, database, None)
    if url is None:
        monkeypatch.delenv("COVID_DICOMWEB_URL", raising=False)
    else:
        monkeypatch.setenv("COVID_DICOMWEB_URL", url)
    monkeypatch.setenv("COVID_DICOMWEB_STORE", "1")
    at = page_test(PAGE, WEIGHTS, monkeypatch, timeout=600)
    _run(at)
    register_on_review_page(at, "Dr Pacs", "a long enough passphrase", timeout=600)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _session_from(at: AppTest, model: str, *, accession: str = "", patient_id: str = "") -> AppTest:
    at.selectbox(key="review-pacs-model").set_value(model)
    at.text_input(key="review-pacs-accession").input(accession)
    at.text_input(key="review-pacs-patient").input(patient_id)
    at.button(key="review-pacs-search").click()
    _run(at)
    chosen = at.multiselect(key="review-pacs-chosen-0")
    assert len(chosen.options) == 1
    chosen.set_value([chosen.options[0]])
    _run(at)
    at.button(key="review-pacs-start").click()
    return _run(at)


def _heading(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith(("#### Image ", "#### CT scan ")))


def _sr_count(pacs_client, study_uid: str) -> int:
    return len(pacs_client.search_for_instances(study_uid, search_filters={"Modality": "SR"}))


def test_nothing_about_a_pacs_is_shown_when_none_is_configured(tmp_path, monkeypatch):
    at = _signed_in(monkeypatch, tmp_path / "reviews.sqlite3", None)
    assert not any("PACS" in h.value for h in at.subheader)


def test_a_session_from_a_pacs_query_shows_the_xray_saves_the_verdict_and_sends_it_back(orthanc, real_data, tmp_path,
                                                                                       monkeypatch):
    from covid_models.pacs.client import Pacs, PacsSettings

    image = sorted((real_data / "xray" / "images").glob("*.jpg"))[10]
    data = xray_dicom(image, accession="ACC-REVIEW-1", patient_id="PID-REVIEW-77", rows=320)
    study_uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID
    orthanc.upload([data])
    database = tmp_path / "reviews.sqlite3"
    at = _signed_in(monkeypatch, database, orthanc.dicomweb_url)
    assert any(h.value == "Start a session from the PACS" for h in at.subheader)
    _session_from(at, "xray-efficientnet-lite0", accession="ACC-REVIEW-1")
    assert _heading(at).startswith("#### Image 1 of 1: DX series 1 image 1")
    assert at.image, "the X-ray is shown"
    client = Pacs(PacsSettings(orthanc.dicomweb_url)).client
    assert _sr_count(client, study_uid) == 1  # the reading went back
    at.button(key="review-agree").click()
    _run(at)
    with ReviewStore(f"sqlite:///{database}") as store:
        (info,) = store.sessions()
        (item,) = store.items(info.id)
    assert item.verdict == "agree" and item.pacs_ref.startswith(study_uid + "/")
    assert _sr_count(client, study_uid) == 2  # and the verdict
    stored = database.read_bytes()
    assert b"PID-REVIEW-77" not in stored and b"ACC-REVIEW-1" not in stored and b"Test^Patient" not in stored

    # The server restarts and the PACS is gone: the item says why, the verdict stays
    clear_streamlit_caches()
    monkeypatch.setenv("COVID_DICOMWEB_URL", "http://127.0.0.1:9/dicom-web")
    again = page_test(PAGE, WEIGHTS, monkeypatch, timeout=600)
    again.query_params["session"] = info.token
    _run(again)
    again.text_input(key="review-reviewer").input("Dr Pacs")
    again.text_input(key="review-passphrase").input("a long enough passphrase")
    again.button(key="review-sign-in").click()
    _run(again)
    assert any("could not be reached" in w.value for w in again.warning)
    assert any("Agree" in s.value for s in again.success)


@pytest.mark.slow
def test_a_ct_session_from_the_pacs_shows_the_ricord_scan(orthanc, real_data, tmp_path, monkeypatch):
    files = series_files(real_data / RICORD)
    orthanc.upload(files)
    patient_id = str(pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True).PatientID)
    at = _signed_in(monkeypatch, tmp_path / "reviews.sqlite3", orthanc.dicomweb_url)
    _session_from(at, "ct-efficientnet-lite0", patient_id=patient_id)
    assert _heading(at).startswith("#### CT scan 1 of 1: CT series")
    assert at.image or at.get("plotly_chart"), "the scan is shown"
