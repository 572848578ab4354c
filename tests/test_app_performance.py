"""The model performance page shows the cards' numbers: ROC of every model, metrics at a threshold, card text."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io
import pytest
from app_fixtures import make_weights_dir, page_test
from app_fixtures_b import point_app_at
from streamlit.testing.v1 import AppTest

from covid_models.analysis.figures import threshold_table
from covid_models.metrics import roc_points, threshold_metrics
from covid_models.models.checkpoint import read_card

PAGE = "pages/performance.py"
METRIC_KEYS = {"Sensitivity": "sensitivity", "Specificity": "specificity", "PPV": "precision", "NPV": "npv",
               "Accuracy": "accuracy"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("performance"), segmentation=False)


@pytest.fixture()
def page(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    point_app_at(monkeypatch, tmp_path / "reviews.sqlite3", None)
    return page_test(PAGE, weights, monkeypatch)


def _run(at: AppTest) -> AppTest:
    at.run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown_metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric if m.label in METRIC_KEYS}


def _expected(card, threshold: float) -> dict[str, str]:
    test = card.metrics["test"]
    table = threshold_table(test["roc"], threshold, test["n_positive"], test["n"] - test["n_positive"])
    return {label: f"{table[key]:.3f}" for label, key in METRIC_KEYS.items()}


def _figures(at: AppTest) -> list[go.Figure]:
    return [plotly.io.from_json(element.proto.spec) for element in at.get("plotly_chart")]


def test_roc_chart_lists_every_model_of_the_modality_with_its_auc(page: AppTest, weights: Path) -> None:
    at = _run(page)
    roc = next(figure for figure in _figures(at) if "ROC" in figure.layout.title.text)
    names = [trace.name for trace in roc.data]
    for model in ("xray-fixture-a", "xray-fixture-b"):
        auc = read_card(weights / model).metrics["test"]["auc"]
        assert any(name.startswith(f"{model} — AUC {auc:.3f} (95% CI") for name in names), names
    assert not any("ct-fixture" in name for name in names)


def test_metrics_at_the_default_threshold_match_the_cards_roc(page: AppTest, weights: Path) -> None:
    at = _run(page)
    card = read_card(weights / "xray-fixture-a")
    assert at.slider(key="performance-threshold-xray-fixture-a").value == pytest.approx(card.threshold)
    assert _shown_metrics(at) == _expected(card, card.threshold)


def test_moving_the_threshold_updates_the_metrics_and_the_confusion_matrix(page: AppTest, weights: Path) -> None:
    at = _run(page)
    card = read_card(weights / "xray-fixture-a")
    before = _shown_metrics(at)
    at.slider(key="performance-threshold-xray-fixture-a").set_value(0.2)
    _run(at)
    after = _shown_metrics(at)
    assert after == _expected(card, 0.2)
    assert after != before
    test = card.metrics["test"]
    table = threshold_table(test["roc"], 0.2, test["n_positive"], test["n"] - test["n_positive"])
    confusion = next(figure for figure in _figures(at) if "at threshold 0.200" in (figure.layout.title.text or ""))
    assert [list(row) for row in confusion.data[0].z] == [[table["tn"], table["fp"]], [table["fn"], table["tp"]]]


def test_operating_point_button_sets_the_threshold(page: AppTest, weights: Path) -> None:
    at = _run(page)
    slider = at.slider(key="performance-threshold-xray-fixture-a")
    slider.set_value(0.9)
    _run(at)
    at.button(key="performance-threshold-xray-fixture-a-youden").click()
    _run(at)
    assert at.slider(key="performance-threshold-xray-fixture-a").value == pytest.approx(0.5)


def test_per_source_table_and_model_card_are_shown(page: AppTest, weights: Path) -> None:
    at = _run(page)
    card = read_card(weights / "xray-fixture-a")
    table = at.dataframe[0].value
    assert sorted(table["source"]) == sorted(card.metrics["test"]["per_source"])
    for _, row in table.iterrows():
        assert row["images"] == card.metrics["test"]["per_source"][row["source"]]["n"]
    assert any("Why per source" in c.value for c in at.caption)
    assert any(m.value.startswith("# xray-fixture-a") for m in at.markdown)


def test_ct_modality_shows_the_ct_model(page: AppTest, weights: Path) -> None:
    at = _run(page)
    at.radio(key="performance-modality").set_value("ct")
    _run(at)
    assert at.selectbox(key="performance-model-ct").value == "ct-fixture"
    assert _shown_metrics(at) == _expected(read_card(weights / "ct-fixture"), 0.5)


def test_without_models_the_page_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    point_app_at(monkeypatch, tmp_path / "reviews.sqlite3", None)
    at = _run(page_test(PAGE, empty, monkeypatch))
    assert any(str(empty) in info.value for info in at.info)


def test_the_confusion_at_the_operating_point_is_counted_from_stored_scores(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With the test probabilities in the card, the slider's figures are exact, not the nearest
    ROC point's: at the operating point they equal the card's own."""
    weights = make_weights_dir(tmp_path, segmentation=False)
    path = weights / "xray-fixture-a" / "card.json"
    card = json.loads(path.read_text())
    rng = np.random.default_rng(0)
    positive = rng.random(80) < 0.4
    probability = np.clip(rng.normal(np.where(positive, 0.62, 0.4), 0.18), 0, 1)
    test = card["metrics"]["test"]
    test.update(threshold_metrics(positive, probability, 0.5))  # the card's figures at its operating point 0.5
    test.update(n=80, n_positive=int(positive.sum()), roc=roc_points(positive, probability, max_points=4),
                scores={"probability": probability.tolist(), "positive": positive.tolist()})
    path.write_text(json.dumps(card))
    point_app_at(monkeypatch, tmp_path / "reviews.sqlite3", None)
    at = _run(page_test(PAGE, weights, monkeypatch))
    assert _shown_metrics(at) == {label: f"{test[key]:.3f}" for label, key in METRIC_KEYS.items()}
    confusion = next(figure for figure in _figures(at) if "at threshold 0.500" in (figure.layout.title.text or ""))
    assert [list(row) for row in confusion.data[0].z] == [[test["tn"], test["fp"]], [test["fn"], test["tp"]]]
    assert any(c.value.startswith("Exact") for c in at.caption)


def test_without_stored_scores_the_page_says_its_figures_are_approximate(page: AppTest) -> None:
    at = _run(page)
    at.slider(key="performance-threshold-xray-fixture-a").set_value(0.333)
    _run(at)
    assert any("Approximate" in w.value and "metrics.test.scores" in w.value for w in at.warning)


def test_the_headline_auc_has_the_within_source_figures_beside_it(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """The shipped X-ray card's pooled AUC never stands without ieee8023's 0.605, and
    undefined cells read n/a."""
    from conftest import WEIGHTS_DIR

    point_app_at(monkeypatch, tmp_path / "reviews.sqlite3", None)
    at = _run(page_test(PAGE, WEIGHTS_DIR, monkeypatch))
    markdown = [m.value for m in at.markdown]
    headline = next(i for i, text in enumerate(markdown) if text.startswith("**Test AUC 0.948"))
    assert "within ieee8023 (65 test images): AUC 0.605" in markdown[headline + 1]
    assert any("No AUC (n/a) within nih" in text for text in markdown)
    per_source = next(d.value for d in at.dataframe if "source" in d.value.columns)
    assert per_source.set_index("source").loc["nih", "AUC"] == "n/a"
    assert "None" not in per_source.to_csv() and "nan" not in per_source.to_csv()


def test_the_shipped_ct_model_shows_its_result_on_the_real_dicom_scans(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The robustness table of the card (evaluate.py --volumes) sits under the headline AUC."""
    from conftest import WEIGHTS_DIR

    point_app_at(monkeypatch, tmp_path / "reviews.sqlite3", None)
    at = _run(page_test(PAGE, WEIGHTS_DIR, monkeypatch))
    at.radio(key="performance-modality").set_value("ct")
    _run(at)
    table = next(frame.value for frame in at.dataframe if "scan-level probability" in frame.value.columns)
    assert set(table["scan"]) == {"ricord-1a-000082", "lung-pet-ct-dx-a0002", "copdgene-10002k-64"}
    ricord = table.set_index("scan").loc["ricord-1a-000082"]
    assert ricord["label"] == "covid" and 0.0 <= ricord["scan-level probability"] <= 1.0
