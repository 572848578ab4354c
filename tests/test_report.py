"""One-page reports: self-contained HTML and PDF with the result, the notice, and no patient identifiers."""
from __future__ import annotations

import base64
import re
import zlib

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from covid_models import RESEARCH_USE_NOTICE
from covid_models.analysis.report import HELD_BACK, ReportContent, png_bytes, render_html, render_pdf
from covid_models.imaging.filenames import bare_file_name
from covid_models.imaging.io import read_dicom_identifiers, read_image
from covid_models.models.inference import Prediction

PREDICTION = Prediction(model="xray-test-model", probabilities={"covid": 0.734, "normal": 0.166, "pneumonia": 0.1},
                        label="covid", positive_class="covid", positive_probability=0.734, threshold=0.42,
                        positive=True)


def pdf_text(pdf: bytes) -> str:
    """The text drawn by a PDF's content streams (Flate-decoded), whitespace-normalised."""
    chunks = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, flags=re.S):
        try:
            chunks.append(zlib.decompress(stream))
        except zlib.error:
            chunks.append(stream)
    shown = re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", b"\n".join(chunks))
    text = " ".join(re.sub(rb"\\(.)", rb"\1", s).decode("latin-1") for s in shown)
    return re.sub(r"\s+", " ", text)


def content(**changes) -> ReportContent:
    rng = np.random.default_rng(0)
    image = rng.random((64, 80)).astype(np.float32)
    overlay = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    values = dict(file_name="/home/reports/DOE^JANE/chest-01.png", modality="xray", prediction=PREDICTION,
                  operating_point="'youden', threshold 42.0%, chosen by: maximum of Youden's J on validation",
                  explanation="Grad-CAM", image=image, overlay=overlay, lung_share=0.82)
    values.update(changes)
    return ReportContent(**values)


def test_html_report_is_self_contained_with_notice_probabilities_and_images():
    page = render_html(content())
    assert RESEARCH_USE_NOTICE in page
    for probability in ("73.4%", "16.6%", "10.0%"):
        assert probability in page
    assert "xray-test-model" in page and "Youden" in page and "82%" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert "http://" not in page and "https://" not in page  # nothing fetched when opened offline


def test_pdf_report_is_one_page_with_notice_and_probabilities():
    pdf = render_pdf(content())
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1
    text = pdf_text(pdf)
    assert RESEARCH_USE_NOTICE in text
    for probability in ("73.4%", "16.6%", "10.0%"):
        assert probability in text
    assert "xray-test-model" in text


@pytest.mark.parametrize("render", [render_html, lambda c: pdf_text(render_pdf(c))])
def test_reports_name_the_file_without_its_folders(render):
    text = render(content())
    assert "chest-01.png" in text
    assert "DOE" not in text and "/home/reports" not in text


def test_reports_of_a_dicom_image_carry_none_of_its_identifiers():
    path = get_testdata_file("CT_small.dcm")
    scan = read_image(path)
    report = content(file_name="CT_small.dcm", modality="ct", image=scan.pixels,
                     overlay=np.stack([(scan.pixels * 255).astype(np.uint8)] * 3, axis=-1))
    identifiers = [v for v in read_dicom_identifiers(path).values() if len(v) >= 5]
    assert "CompressedSamples^CT1" in identifiers
    for text in (render_html(report), pdf_text(render_pdf(report))):
        for value in identifiers:
            assert value not in text


def test_out_of_distribution_reports_hold_the_prediction_back():
    held = content(prediction=Prediction(**{**PREDICTION.__dict__, "out_of_distribution": True}))
    assert HELD_BACK in render_html(held)
    assert HELD_BACK in pdf_text(render_pdf(held))
    assert "flagged for review" not in render_html(held)


def test_bare_file_name_drops_posix_and_windows_folders():
    assert bare_file_name("C:\\Patients\\Smith John\\img.dcm") == "img.dcm"
    assert bare_file_name("/data/Smith/img.png") == "img.png"
    assert bare_file_name("") == "image"


def test_png_bytes_accepts_float_grey_and_uint8_rgb():
    assert png_bytes(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)).startswith(b"\x89PNG")
    assert png_bytes(np.zeros((8, 8, 3), np.uint8)).startswith(b"\x89PNG")
