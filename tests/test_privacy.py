"""Patient identifiers of a DICOM file never leave its header, except in the one expander that shows them on request.

A CT slice carries made-up identifiers (name, IDs, birth date, accession number, institution, physicians,
UIDs) in a folder path that names the patient too. It goes once through everything the app does with an
upload: reading, the Analyze page (with the identifier expander opened), the report the page would offer,
a review session with a verdict, its CSV export. Every sink is then searched for every identifier: what the
pages send to the browser, the review database file itself (all tables and columns, WAL included), the
export, the HTML and PDF reports (PDF streams decompressed), log records at DEBUG, warnings and console output.

File names: the app keeps the bare file name only (folders are dropped everywhere), because the folder of a
PACS export often names the patient. The bare name itself is stored and shown as it is, so files must not be
*named* after the patient: export them under non-identifying names (e.g. the SOP instance number).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import torch
from app_fixtures import make_weights_dir, page_test
from app_fixtures_b import point_app_at, register_on_review_page
from pydicom.data import get_testdata_file
from sqlalchemy import create_engine, inspect, text

import covid_models.analysis.report
from covid_models.analysis.report import render_html, render_pdf
from covid_models.imaging.io import read_dicom_identifiers, read_image

IDENTIFIERS = {
    "PatientName": "Doe^Janet",
    "PatientID": "PID-48151623",
    "OtherPatientIDs": "OPID-27182818",
    "PatientBirthDate": "19450101",
    "PatientAddress": "12 Quenby Lane Springfield",
    "PatientTelephoneNumbers": "555-0199-311",
    "AccessionNumber": "ACC-42",
    "StudyID": "STUDY-31337",
    "InstitutionName": "St Elsewhere Hospital",
    "InstitutionAddress": "159 Westphall Road Boston",
    "ReferringPhysicianName": "Kildare^James",
    "PerformingPhysicianName": "Craig^Mark",
    "OperatorsName": "Ehrlich^Victor",
    "StationName": "ELSEWHERE-CT7",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.4815162342",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.4815162343",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.4815162344",
}
# The values, plus the pieces and spellings a formatter could turn them into.
FORBIDDEN = sorted({*IDENTIFIERS.values(), "Janet", "Doe Janet", "Janet Doe", "48151623", "27182818",
                    "1945-01-01", "01.01.1945", "01/01/1945", "Quenby", "0199-311", "STUDY-31337", "Elsewhere",
                    "ELSEWHERE", "Kildare", "Craig^Mark", "Ehrlich", "Westphall", "4815162342", "4815162343",
                    "4815162344"})
UPLOAD_NAME = "/exports/Doe^Janet PID-48151623/ACC-42/scan-0001.dcm"  # what a careless export path looks like
BARE_NAME = "scan-0001.dcm"
REVIEWER = "Dr Privacy Test"
NOTE = "reviewed without identifiers"
IDENTIFIER_EXPANDER = "Patient identifiers"


def identifying_dicom() -> bytes:
    """pydicom's CT_small.dcm with every identifier replaced by a made-up one."""
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        if keyword in dataset:
            setattr(dataset, keyword, "20200314")
    for keyword, value in IDENTIFIERS.items():
        setattr(dataset, keyword, value)
    dataset.file_meta.MediaStorageSOPInstanceUID = IDENTIFIERS["SOPInstanceUID"]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def leaks(content: str | bytes) -> list[str]:
    """The forbidden strings found in `content` (bytes are searched as UTF-8 and as UTF-16, as PDFs and
    Arrow tables may store them)."""
    if isinstance(content, str):
        return [token for token in FORBIDDEN if token in content]
    return [token for token in FORBIDDEN
            if any(token.encode(codec) in content for codec in ("utf-8", "utf-16-be", "utf-16-le"))]


def pdf_text(pdf: bytes) -> str:
    """Every string of a PDF: its literal strings, in the file and in its (Flate) streams, unescaped."""
    chunks = [pdf]
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        with contextlib.suppress(zlib.error):
            chunks.append(zlib.decompress(match.group(1)))
    strings = []
    for chunk in chunks:
        for literal in re.finditer(rb"\(((?:\\.|[^\\)])*)\)", chunk, re.S):
            strings.append(re.sub(rb"\\(.)", rb"\1", literal.group(1)).decode("latin-1"))
        for hexa in re.finditer(rb"<([0-9A-Fa-f\s]+)>", chunk):
            raw = bytes.fromhex(re.sub(rb"\s", b"", hexa.group(1)).decode())
            strings.append(raw.decode("utf-16-be", "replace") if raw[:2] == b"\xfe\xff" else raw.decode("latin-1"))
    return "\n".join(strings)


def rendered(node, inside: bool = False) -> Iterator[tuple[bool, bytes]]:
    """(inside the identifier expander?, serialized message) for every block and element the page sends."""
    proto = getattr(node, "proto", None)
    if type(node).__name__ == "Expander" and node.label.startswith(IDENTIFIER_EXPANDER):
        inside = True
    if proto is not None:
        yield inside, proto.SerializeToString()
    for child in getattr(node, "children", {}).values():
        yield from rendered(child, inside)


@contextlib.contextmanager
def console_and_logs() -> Iterator[dict[str, list[str]]]:
    """Everything written meanwhile: log records at DEBUG (the app's, Streamlit's, pydicom's), warnings,
    and output on stdout/stderr, at the Python level and at the file-descriptor level."""
    captured: dict[str, list[str]] = {"logs": [], "warnings": [], "console": []}

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured["logs"].append(self.format(record))

    recorder = Recorder(logging.DEBUG)
    recorder.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("", "streamlit", "pydicom", "covid_models", "sqlalchemy")]
    levels = [logger.level for logger in loggers]
    python_out = io.StringIO()
    with tempfile.TemporaryFile() as fd_out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for logger in loggers:
            logger.addHandler(recorder)
            logger.setLevel(logging.DEBUG)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(fd_out.fileno(), 1)
        os.dup2(fd_out.fileno(), 2)
        try:
            with contextlib.redirect_stdout(python_out), contextlib.redirect_stderr(python_out):
                yield captured
        finally:
            for descriptor, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, descriptor)
                os.close(copy)
            for logger, level in zip(loggers, levels, strict=True):
                logger.removeHandler(recorder)
                logger.setLevel(level)
            fd_out.seek(0)
            captured["console"] = [python_out.getvalue(), fd_out.read().decode("utf-8", "replace")]
            captured["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]


@dataclasses.dataclass
class Sinks:
    """What the flow left behind, sink by sink."""

    scan_metadata: str
    page_outside: list[bytes]
    page_inside: list[bytes]
    page_texts_before_opening: list[bytes]
    reports_html: list[str]
    reports_pdf: list[str]
    database_files: dict[str, bytes]
    database_rows: dict[str, list[str]]
    csv_export: str
    review_page: list[bytes]
    captured: dict[str, list[str]]


def analyze_page(weights: Path, data: bytes, monkeypatch: pytest.MonkeyPatch, reports: list
                 ) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Upload on the Analyze page, open the identifier expander; returns what was sent before and after."""
    original = covid_models.analysis.report.ReportContent

    def recording(**fields):
        reports.append(original(**fields))
        return reports[-1]

    # what the page's downloads would hold
    monkeypatch.setattr(covid_models.analysis.report, "ReportContent", recording)
    at = page_test("pages/analyze.py", weights, monkeypatch).run()
    at.file_uploader(key="uploads").set_value([(UPLOAD_NAME, data, "application/dicom")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    before = [message for _, message in rendered(at._tree)]
    toggle = next(t for t in at.toggle if t.label == "Show identifiers")
    at.toggle(key=toggle.key).set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    after = list(rendered(at._tree))
    return ([m for inside, m in after if not inside], [m for inside, m in after if inside], before)


def review_page(weights: Path, data: bytes, database: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Start a review session on the upload, record a verdict with a note; returns what the page sent."""
    point_app_at(monkeypatch, database, None)
    at = page_test("pages/review.py", weights, monkeypatch).run()
    register_on_review_page(at, REVIEWER, "privacy test passphrase")
    at.radio(key="review-modality").set_value("ct")
    at.run()
    at.file_uploader(key="review-uploads").set_value([(UPLOAD_NAME, data, "application/dicom")])
    at.run()
    at.button(key="review-start").click()
    at.run()
    session = int(at.session_state["review-session"])
    at.text_area(key=f"review-note-{session}-0").input(NOTE)
    at.button(key="review-agree").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return [message for _, message in rendered(at._tree)]


def database_contents(database: Path) -> tuple[dict[str, bytes], dict[str, list[str]], str]:
    """The database's files (main file, WAL, journal), every row of every table, and the session's CSV."""
    from covid_models.reviews.store import ReviewStore

    files = {path.name: path.read_bytes() for path in database.parent.glob(database.name + "*")}
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        rows = {table: [repr(tuple(row)) for row in connection.execute(text(f'SELECT * FROM "{table}"'))]
                for table in inspect(connection).get_table_names()}
    engine.dispose()
    with ReviewStore(f"sqlite:///{database}") as store:
        csv_text = store.export_csv(store.sessions()[0].id)
    return files, rows, csv_text


@pytest.fixture(scope="module")
def sinks(tmp_path_factory: pytest.TempPathFactory) -> Sinks:
    """The whole flow once, with every log, warning and console line captured."""
    root = tmp_path_factory.mktemp("privacy")
    weights = make_weights_dir(root, segmentation=False)
    data = identifying_dicom()
    database = root / "db" / "reviews.sqlite3"
    reports: list = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # AppTest reruns compute heatmaps; one thread beats two contending ones
    try:
        with pytest.MonkeyPatch.context() as monkeypatch, console_and_logs() as captured:
            scan = read_image(data, name=UPLOAD_NAME)
            outside, inside, before = analyze_page(weights, data, monkeypatch, reports)
            review = review_page(weights, data, database, monkeypatch)
            html = [render_html(content) for content in reports]
            pdf = [pdf_text(render_pdf(content)) for content in reports]
            files, rows, csv_text = database_contents(database)
    finally:
        torch.set_num_threads(threads)
    return Sinks(
        scan_metadata=repr(scan.metadata) + repr(dataclasses.asdict(scan.metadata)), page_outside=outside,
        page_inside=inside, page_texts_before_opening=before, reports_html=html, reports_pdf=pdf,
        database_files=files, database_rows=rows, csv_export=csv_text, review_page=review, captured=captured)


def test_the_test_file_really_carries_the_identifiers():
    data = identifying_dicom()
    assert set(IDENTIFIERS.values()) <= set(leaks(data))
    shown = read_dicom_identifiers(data)
    assert {key: shown[key] for key in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName")} == {
        key: IDENTIFIERS[key] for key in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName")}


def test_the_scan_metadata_holds_no_identifier(sinks):
    assert "dicom" in sinks.scan_metadata and "GE MEDICAL SYSTEMS" in sinks.scan_metadata
    assert leaks(sinks.scan_metadata) == []


def test_the_analyze_page_shows_identifiers_only_inside_their_expander_and_only_on_request(sinks):
    assert leaks(b"".join(sinks.page_texts_before_opening)) == []
    inside = b"".join(sinks.page_inside)
    assert {"Doe^Janet", "PID-48151623", "St Elsewhere Hospital"} <= set(leaks(inside))  # the expander works
    outside = b"".join(sinks.page_outside)
    assert b"GE MEDICAL SYSTEMS" in outside and BARE_NAME.encode() in outside  # technical header and bare name
    assert leaks(outside) == []


def test_the_reports_the_page_offers_hold_no_identifier(sinks):
    assert sinks.reports_html, "the page built no report"
    for html, pdf in zip(sinks.reports_html, sinks.reports_pdf, strict=True):
        assert BARE_NAME in html and BARE_NAME in pdf and "Research use only" in pdf
        assert leaks(html) == []
        assert leaks(pdf) == []


def test_the_review_database_holds_the_bare_file_name_and_no_identifier(sinks):
    rows = "\n".join(row for table in sinks.database_rows.values() for row in table)
    assert {"review_sessions", "review_items", "verdicts"} <= set(sinks.database_rows)
    assert BARE_NAME in rows and REVIEWER in rows and NOTE in rows
    assert leaks(rows) == []
    for name, content in sinks.database_files.items():
        assert leaks(content) == [], name


def test_the_csv_export_holds_no_identifier(sinks):
    assert BARE_NAME in sinks.csv_export and "agree" in sinks.csv_export
    assert leaks(sinks.csv_export) == []


def test_the_review_page_shows_no_identifier(sinks):
    shown = b"".join(sinks.review_page)
    assert BARE_NAME.encode() in shown
    assert leaks(shown) == []


def test_no_log_record_warning_or_console_output_names_the_patient(sinks):
    for sink, lines in sinks.captured.items():
        assert leaks("\n".join(lines)) == [], sink
