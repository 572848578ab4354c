"""What holds within one source goes wherever a result or a headline figure goes: the page's signals, the PDF and
HTML reports, the model card's table, the ROC legend and the Model performance page, which leads with it. Every
figure is read from the card (`covid_models.models.trust`), never written here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from app_fixtures import page_test
from app_fixtures_b import point_app_at
from conftest import WEIGHTS_DIR
from test_report import pdf_text

from covid_models.analysis.figures import roc_figure
from covid_models.analysis.image_analysis import analyse, report_content
from covid_models.analysis.report import render_html, render_pdf
from covid_models.imaging.io import read_image
from covid_models.models.card_markdown import render_model_card
from covid_models.models.checkpoint import read_card
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter
from covid_models.training.splits import held_out_images

XRAY = WEIGHTS_DIR / "xray-efficientnet-lite0"
CT = WEIGHTS_DIR / "ct-efficientnet-lite0"
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def ieee8023() -> dict:
    return read_card(XRAY).metrics["test"]["per_source"]["ieee8023"]


def test_the_reports_of_a_flagged_ieee8023_film_carry_the_within_source_figures(real_data: Path) -> None:
    classifier = Classifier.load(XRAY)
    lungs = Segmenter.load(WEIGHTS_DIR / "xray-lungs-unet")
    test = held_out_images(real_data, "xray")
    films = test[(test["source"] == "ieee8023") & (test["label"] == "covid")]["image"]
    analysis = next(found for path in films[:10]
                    if (found := analyse(read_image(path), [classifier], [lungs])).prediction.positive)
    source = ieee8023()
    expected = [f"within ieee8023 ({source['n']} test images) AUC {source['auc']:.3f}",
                f"specificity {source['specificity']:.3f}",
                f"{source['fp']} of its {source['fp'] + source['tn']} test images without COVID-19 were flagged"]
    assert any(all(text in signal.text for text in expected) for signal in analysis.signals if signal.level ==
               "warning"), "the page shows it"
    content = report_content(analysis, "film.jpg", "Grad-CAM")
    html, pdf = render_html(content), pdf_text(render_pdf(content))
    for text in expected:
        assert text in html and text in pdf, text


def test_the_model_card_table_and_the_roc_legend_put_the_within_source_auc_beside_the_pooled_one() -> None:
    card, source = read_card(XRAY), ieee8023()
    markdown = render_model_card(card)
    assert f"| AUC within one source (read this first) | within ieee8023 {source['auc']:.3f} (n={source['n']}) |" \
        in markdown
    assert "| true \\ predicted | covid | normal | pneumonia |" in markdown, "the confusion matrix is a table"
    (legend,) = [trace.name for trace in roc_figure([(card.name, card)]).data if trace.name.startswith(card.name)
                 and "AUC" in trace.name]
    assert f"pooled; within ieee8023 {source['auc']:.3f}" in legend
    assert (WEIGHTS_DIR / "xray-efficientnet-lite0" / "MODEL_CARD.md").read_text() == markdown, \
        "the shipped MODEL_CARD.md is the card rendered now"


def _page(monkeypatch, tmp_path: Path, modality: str = "xray"):
    point_app_at(monkeypatch, tmp_path / "reviews.sqlite3", None)
    at = page_test("pages/performance.py", WEIGHTS_DIR, monkeypatch)
    at.run(timeout=120)
    if modality != "xray":
        at.radio(key="performance-modality").set_value(modality)
        at.run(timeout=120)
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_performance_page_leads_with_the_within_source_figures(monkeypatch, tmp_path: Path) -> None:
    at = _page(monkeypatch, tmp_path)
    source = ieee8023()
    first = [(m.label, m.value) for m in at.metric][:3]
    assert first == [("AUC within ieee8023", f"{source['auc']:.3f}"),
                     ("Sensitivity within ieee8023", f"{source['sensitivity']:.3f}"),
                     ("Specificity within ieee8023", f"{source['specificity']:.3f}")]
    subheaders = [h.value for h in at.subheader]
    assert subheaders.index("Within one source: the figures to read first") < subheaders.index("All sources pooled")


def test_the_three_class_confusion_matrix_is_a_labelled_table(monkeypatch, tmp_path: Path) -> None:
    at = _page(monkeypatch, tmp_path)
    test = read_card(XRAY).metrics["test"]
    table = next(frame.value for frame in at.dataframe if "true class" in frame.value.columns)
    assert list(table.columns) == ["true class", "predicted COVID-19", "predicted normal", "predicted pneumonia"]
    assert list(table["true class"]) == ["COVID-19", "normal", "pneumonia"]
    assert table.drop(columns="true class").to_numpy().tolist() == test["confusion_matrix"]
    assert not any(str(test["confusion_matrix"]) in m.value for m in at.markdown), "no Python list"


def test_one_auc_has_one_interval_and_flagged_is_defined_once(monkeypatch, tmp_path: Path) -> None:
    """The CT card is tested on one source: its AUC appears as pooled and as within-source, with one interval."""
    at = _page(monkeypatch, tmp_path, "ct")
    test = read_card(CT).metrics["test"]
    texts = [e.value for e in [*at.markdown, *at.caption]]
    auc = f"{test['auc']:.3f}"
    intervals = {m for text in texts for m in re.findall(rf"AUC {auc}[^.]*?(\d\.\d{{3}}-\d\.\d{{3}})", text)}
    assert intervals == {f"{test['auc_ci95'][0]:.3f}-{test['auc_ci95'][1]:.3f}"}
    assert sum(text.startswith("Flagged:") for text in at.caption.values) == 1

