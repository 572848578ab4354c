"""Figures built from card numbers: the traces and legend texts the pages rely on, and threshold_table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from covid_models.analysis.figures import (
    calibration_figure,
    class_balance_figure,
    confusion_figure,
    count_table,
    image_size_figure,
    roc_figure,
    roc_point,
    threshold_table,
    training_curves_figure,
)
from covid_models.imaging.preprocessing import Preprocessing
from covid_models.metrics import binary_report, roc_points, threshold_metrics
from covid_models.models.model_card import ModelCard

# Two positives, two negatives; thresholds decrease along the curve as sklearn stores them.
HAND_ROC = {"fpr": [0.0, 0.0, 0.5, 0.5, 1.0], "tpr": [0.0, 0.5, 0.5, 1.0, 1.0],
            "thresholds": [1.0, 0.9, 0.6, 0.35, 0.1]}


def _card(name: str, y_true: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> ModelCard:
    return ModelCard(
        name=name, task="classification", modality="xray", architecture="efficientnet_lite0",
        classes=["covid", "normal"], positive_class="covid", preprocessing=Preprocessing(),
        operating_points={"youden": {"threshold": threshold, "rule": "test"},
                          "sensitivity_95": {"threshold": 0.2, "rule": "test"}},
        default_operating_point="youden",
        metrics={"test": binary_report(y_true, score, threshold, n_resamples=50)},
    )


def _scores(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = np.arange(n) % 2
    # Rounded so that the 6-decimal thresholds a card stores are the scores themselves.
    return y_true, np.round(0.3 * y_true + rng.uniform(0, 0.7, n), 4)


# ------------------------------------------------------------------ threshold_table


def test_threshold_table_at_a_stored_point_gives_its_counts_and_ratios() -> None:
    table = threshold_table(HAND_ROC, 0.6, n_pos=2, n_neg=2)
    assert (table["tp"], table["fp"], table["tn"], table["fn"]) == (1, 1, 1, 1)
    assert table["roc_threshold"] == 0.6
    assert table["sensitivity"] == table["specificity"] == table["precision"] == table["npv"] == 0.5


def test_threshold_between_stored_points_takes_the_nearest_stored_point_above() -> None:
    table = threshold_table(HAND_ROC, 0.7, n_pos=2, n_neg=2)
    assert table["roc_threshold"] == 0.9
    assert (table["tp"], table["fp"], table["tn"], table["fn"]) == (1, 0, 2, 1)
    assert table["sensitivity"] == 0.5
    assert table["specificity"] == 1.0
    assert table["precision"] == 1.0
    assert table["npv"] == pytest.approx(2 / 3)
    assert table["threshold"] == 0.7


def test_lowest_threshold_calls_everything_positive_and_npv_is_undefined() -> None:
    table = threshold_table(HAND_ROC, 0.05, n_pos=2, n_neg=2)
    assert (table["tp"], table["fp"], table["tn"], table["fn"]) == (2, 2, 0, 0)
    assert math.isnan(table["npv"])
    assert table["accuracy"] == 0.5


def test_threshold_above_every_stored_point_calls_nothing_positive() -> None:
    roc = {"fpr": [0.0, 1.0], "tpr": [0.5, 1.0], "thresholds": [0.8, 0.1]}
    assert roc_point(roc, 0.95) == (0.0, 0.0, None)
    table = threshold_table(roc, 0.95, n_pos=4, n_neg=6)
    assert (table["tp"], table["fp"], table["tn"], table["fn"]) == (0, 0, 6, 4)
    assert math.isnan(table["precision"])


def test_threshold_table_agrees_with_threshold_metrics_at_every_stored_threshold() -> None:
    y_true, score = _scores(0)
    roc = roc_points(y_true, score)
    n_pos = int(y_true.sum())
    for threshold in roc["thresholds"]:
        table = threshold_table(roc, threshold, n_pos, len(y_true) - n_pos)
        exact = threshold_metrics(y_true, score, threshold)
        assert {k: table[k] for k in ("tp", "fp", "tn", "fn")} == {k: exact[k] for k in ("tp", "fp", "tn", "fn")}
        for key in ("sensitivity", "specificity", "precision", "npv", "accuracy"):
            assert table[key] == pytest.approx(exact[key], nan_ok=True)


# ------------------------------------------------------------------ figures


def test_roc_figure_has_a_chance_line_and_one_curve_per_model_with_auc_and_ci_in_the_legend() -> None:
    cards = [_card("model-a", *_scores(1)), _card("model-b", *_scores(2))]
    figure = roc_figure([(c.name, c) for c in cards], show_operating_points=False)
    names = [trace.name for trace in figure.data]
    assert names[0].startswith("chance")
    for card, name in zip(cards, names[1:], strict=True):
        test = card.metrics["test"]
        low, high = test["auc_ci95"]
        assert name == f"{card.name} — AUC {test['auc']:.3f} (95% CI {low:.3f}–{high:.3f})"
        curve = next(t for t in figure.data if t.name == name)
        assert list(curve.x) == test["roc"]["fpr"]
        assert list(curve.y) == test["roc"]["tpr"]


def test_roc_figure_marks_operating_points_and_the_selected_threshold_on_the_test_curve() -> None:
    card = _card("model-a", *_scores(3))
    roc = card.metrics["test"]["roc"]
    figure = roc_figure([("model-a", card)], current={"model-a": 0.42})
    markers = {trace.name: (trace.x[0], trace.y[0]) for trace in figure.data if trace.mode == "markers"}
    fpr, tpr, _ = roc_point(roc, 0.5)
    assert markers["model-a: operating point youden (threshold 0.500)"] == (fpr, tpr)
    assert "model-a: operating point sensitivity_95 (threshold 0.200)" in markers
    fpr, tpr, _ = roc_point(roc, 0.42)
    assert markers["model-a: selected threshold 0.420"] == (fpr, tpr)


def test_roc_figure_accepts_a_bare_report_and_names_a_curve_without_roc() -> None:
    y_true, score = _scores(4)
    report = binary_report(y_true, score, 0.5, n_resamples=20)
    single_class = binary_report(np.ones(5, dtype=int), np.linspace(0.2, 0.9, 5), 0.5, n_resamples=20)
    figure = roc_figure([("report", report), ("one-class", single_class)])
    names = [trace.name for trace in figure.data]
    assert any(name.startswith("report — AUC") for name in names)
    assert "one-class — no ROC stored (test split has one class)" in names


def test_calibration_figure_shows_ece_in_the_title_and_sizes_markers_by_count() -> None:
    reliability = {"mean_predicted": [0.05, 0.5, 0.9], "observed": [0.1, 0.4, 0.95], "count": [40, 4, 16]}
    figure = calibration_figure(reliability, ece=0.0734)
    assert figure.layout.title.text.endswith("ECE 0.073")
    model = next(trace for trace in figure.data if trace.name == "model")
    assert list(model.x) == reliability["mean_predicted"]
    assert list(model.y) == reliability["observed"]
    sizes = list(model.marker.size)
    assert sizes[0] > sizes[2] > sizes[1]
    bars = next(trace for trace in figure.data if trace.type == "bar")
    assert list(bars.y) == reliability["count"]
    assert any(trace.name == "perfect calibration" for trace in figure.data)


def test_confusion_figure_annotates_the_counts_with_the_labels() -> None:
    figure = confusion_figure([[5, 1], [2, 7]], ["not COVID-19", "covid"])
    heatmap = figure.data[0]
    assert [list(row) for row in heatmap.z] == [[5, 1], [2, 7]]
    assert list(heatmap.x) == list(heatmap.y) == ["not COVID-19", "COVID-19"]
    assert heatmap.texttemplate == "%{z}"
    assert figure.layout.yaxis.title.text == "true"
    assert figure.layout.xaxis.title.text == "predicted"


def test_confusion_figure_takes_labels_and_titles_from_a_dataframe() -> None:
    table = pd.DataFrame([[3, 0], [1, 2]], index=pd.Index(["covid", "normal"], name="model"),
                         columns=pd.Index(["covid", "pneumonia"], name="reviewer"))
    figure = confusion_figure(table, row_title="model", column_title="reviewer")
    assert list(figure.data[0].y) == ["COVID-19", "normal"], "classes as people write them"
    assert list(figure.data[0].x) == ["COVID-19", "pneumonia"]
    assert figure.layout.xaxis.title.text == "reviewer"


def test_training_curves_show_losses_and_val_auc_with_the_best_epoch_marked() -> None:
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "val_auc": 0.6},
               {"epoch": 2, "train_loss": 0.6, "val_loss": 0.7, "val_auc": 0.8},
               {"epoch": 3, "train_loss": 0.4, "val_loss": 0.75, "val_auc": 0.78}]
    figure = training_curves_figure(history)
    traces = {trace.name: trace for trace in figure.data}
    assert list(traces["training loss"].y) == [0.9, 0.6, 0.4]
    assert list(traces["validation loss"].y) == [1.0, 0.7, 0.75]
    assert list(traces["validation AUC"].x) == [1, 2, 3]
    assert (traces["best (kept)"].x[0], traces["best (kept)"].y[0]) == (2, 0.8)


def test_class_balance_has_one_panel_per_split_and_bars_that_add_up_to_the_counts() -> None:
    frame = pd.DataFrame({"split": ["train"] * 5 + ["test"] * 3,
                          "source": ["a", "a", "b", "b", "b", "a", "b", "b"],
                          "label": ["covid", "covid", "normal", "normal", "covid", "covid", "normal", "normal"]})
    counts = count_table(frame)
    figure = class_balance_figure(counts)
    assert [a.text for a in figure.layout.annotations] == ["train split", "test split"]
    assert sum(sum(trace.y) for trace in figure.data) == len(frame)
    train_covid = next(t for t in figure.data if t.name == "covid" and t.xaxis == "x")
    assert dict(zip(train_covid.x, train_covid.y, strict=True)) == {"a": 2, "b": 1}
    assert figure.layout.barmode == "stack"


def test_class_balance_without_a_split_column_is_one_panel_from_card_counts() -> None:
    counts = [{"source": "nih", "label": "normal", "n": 7}, {"source": "ieee", "label": "covid", "n": 4}]
    figure = class_balance_figure(counts)
    assert [a.text for a in figure.layout.annotations] == ["all images"]
    assert sum(sum(trace.y) for trace in figure.data) == 11


def test_image_size_figure_has_one_trace_per_source_with_its_count() -> None:
    frame = pd.DataFrame({"width": [1024, 1024, 300], "height": [1024, 1024, 280], "source": ["nih", "nih", "ieee"],
                          "label": ["normal", "pneumonia", "covid"]})
    figure = image_size_figure(frame)
    assert sorted(trace.name for trace in figure.data) == ["ieee (1)", "nih (2)"]
    nih = next(trace for trace in figure.data if trace.name == "nih (2)")
    assert list(nih.x) == [1024] and [list(c) for c in nih.customdata] == [[2, "normal 1, pneumonia 1"]]


def test_image_size_figure_of_100000_images_sends_a_bounded_number_of_points() -> None:
    """One point per image made 1.6 MB of JSON at 100,000 images; points are per size, binned beyond 2000."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"width": rng.integers(200, 4000, 100_000), "height": rng.integers(200, 4000, 100_000),
                          "source": rng.choice(["nih", "ieee", "bimcv"], 100_000),
                          "label": rng.choice(["covid", "normal"], 100_000)})
    figure = image_size_figure(frame)
    assert sum(len(trace.x) for trace in figure.data) <= 2000
    assert sum(int(n) for trace in figure.data for n, _ in trace.customdata) == 100_000
    assert "binned to" in figure.layout.title.text
    assert len(figure.to_json()) < 300_000
