"""Plotly figures for the dashboard: ROC, calibration, confusion, training curves and dataset statistics.

Pure functions from the numbers stored in model cards (or a manifest) to `go.Figure`, so the pages only
choose what to show and the figures can be tested without a browser. `threshold_table` reads the
confusion counts at any threshold back from a card's stored ROC points, which is what lets the
performance page move a threshold without the test images.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from covid_models.formatting import class_name
from covid_models.metrics import threshold_metrics
from covid_models.models.model_card import ModelCard
from covid_models.models.trust import within_source_short

CHANCE_COLOUR = "#9e9e9e"
_MARKER_SYMBOLS = ("diamond", "square", "triangle-up", "star", "cross", "x")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def card_test_report(source: ModelCard | Mapping[str, Any]) -> Mapping[str, Any]:
    """The test-split report of a card, or `source` itself when it already is such a report."""
    if isinstance(source, ModelCard):
        return source.metrics.get("test", {})
    return source


def roc_legend(name: str, metrics: Mapping[str, Any], within: str = "") -> str:
    """'name — AUC 0.912 (95% CI 0.871–0.950)': the legend entry of one ROC curve; with `within` (the card's
    within-source figure, `trust.within_source_short`) beside it: '..., pooled; within ieee8023 0.605 (n=65)'."""
    ci = metrics.get("auc_ci95") or (None, None)
    text = f"{name} — AUC {_fmt(metrics.get('auc'))}"
    if ci[0] is not None and ci[1] is not None:
        text += f" (95% CI {_fmt(ci[0])}–{_fmt(ci[1])})"
    if within:
        text += f"; {within}" if within.startswith("all test images") else f", pooled; {within}"
    return text


# ------------------------------------------------------------------ reading the stored ROC at a threshold


def roc_point(roc: Mapping[str, Sequence[float]], threshold: float) -> tuple[float, float, float | None]:
    """(fpr, tpr, stored threshold) of the stored ROC point that stands for `threshold`.

    A card keeps a thinned ROC (sklearn's corners, at most 200 points), so a threshold between two stored
    points takes the nearest stored point at or above it: the lowest stored threshold >= `threshold`,
    i.e. the last such point as thresholds decrease along the curve. When `threshold` lies above every
    stored one, nothing is called positive: (0, 0, None). Between stored points the counts are therefore
    those of a slightly stricter cut-off than asked for; exact counts need the scores (scripts/evaluate.py).
    """
    thresholds = np.asarray(roc["thresholds"], dtype=float)
    at_or_above = np.flatnonzero(thresholds >= threshold - 1e-12)
    if len(at_or_above) == 0:
        return 0.0, 0.0, None
    index = int(at_or_above[-1])
    return float(roc["fpr"][index]), float(roc["tpr"][index]), float(thresholds[index])


def threshold_table(roc: Mapping[str, Sequence[float]], threshold: float, n_pos: int, n_neg: int) -> dict[str, Any]:
    """Confusion counts, sensitivity, specificity, PPV, NPV and accuracy at `threshold` from stored ROC points.

    Counts are the stored rates times the class sizes (`n_pos` positives, `n_neg` negatives), rounded; the
    point used is `roc_point`'s, reported as `roc_threshold`. Keys follow `metrics.threshold_metrics`
    (`precision` is the PPV); a ratio with an empty denominator is NaN.
    """
    fpr, tpr, stored = roc_point(roc, threshold)
    tp = int(round(tpr * n_pos))
    fp = int(round(fpr * n_neg))
    fn, tn = n_pos - tp, n_neg - fp

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "threshold": float(threshold),
        "roc_threshold": stored,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "accuracy": ratio(tp + tn, n_pos + n_neg),
    }


def confusion_at(test: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """Confusion counts and rates of a card's test report at `threshold`, exact when the report stores its scores.

    `test["scores"]` ({"probability": [...], "positive": [...]}, one entry per test image) gives the exact
    confusion (`metrics.threshold_metrics`, `roc_threshold` None); without it the counts are read from the
    nearest stored ROC point (`threshold_table`), which is approximate. `exact` says which.
    """
    scores = test.get("scores") or {}
    probability, positive = scores.get("probability"), scores.get("positive")
    if probability is not None and positive is not None and len(probability) == len(positive) > 0:
        return {**threshold_metrics(np.asarray(positive, dtype=bool), np.asarray(probability, dtype=float),
                                    threshold), "roc_threshold": None, "exact": True}
    n_pos = int(test["n_positive"])
    return {**threshold_table(test["roc"], threshold, n_pos, int(test["n"]) - n_pos), "exact": False}


# ------------------------------------------------------------------ model performance


def roc_figure(
    curves: Sequence[tuple[str, ModelCard | Mapping[str, Any]]],
    *,
    current: Mapping[str, float] | None = None,
    show_operating_points: bool = True,
) -> go.Figure:
    """ROC curves of several models on one chart, AUC and its CI in each legend entry, with a card's
    within-source AUC beside its pooled one.

    Each curve is (name, card or test report). `current` maps a curve's name to a threshold to mark on it
    (the page's slider); a card's operating points are marked too, at the test ROC point of their threshold.
    Curves without stored ROC points (a test split with one class) are listed in the legend as unavailable.
    """
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance (AUC 0.5)",
                                line={"dash": "dash", "color": CHANCE_COLOUR, "width": 1}, hoverinfo="skip"))
    palette = _palette()
    for index, (name, source) in enumerate(curves):
        metrics = card_test_report(source)
        roc = metrics.get("roc")
        colour = palette[index % len(palette)]
        if not roc:
            figure.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": colour},
                                        name=f"{name} — no ROC stored (test split has one class)"))
            continue
        figure.add_trace(go.Scatter(
            x=roc["fpr"], y=roc["tpr"], mode="lines", legendgroup=name,
            name=roc_legend(name, metrics, within_source_short(source) if isinstance(source, ModelCard) else ""),
            line={"color": colour, "width": 2, "shape": "hv"}, customdata=roc["thresholds"],
            hovertemplate="threshold %{customdata:.3f}<br>1 − specificity %{x:.3f}<br>sensitivity %{y:.3f}"
                          f"<extra>{name}</extra>"))
        if show_operating_points and isinstance(source, ModelCard):
            for symbol, (point_name, point) in zip(_MARKER_SYMBOLS, source.operating_points.items(), strict=False):
                fpr, tpr, _ = roc_point(roc, float(point["threshold"]))
                figure.add_trace(go.Scatter(
                    x=[fpr], y=[tpr], mode="markers", legendgroup=name,
                    name=f"{name}: operating point {point_name} (threshold {float(point['threshold']):.3f})",
                    marker={"symbol": symbol, "size": 11, "color": colour, "line": {"color": "white", "width": 1}},
                    hovertemplate=f"{point_name}: {point.get('rule', '')}<br>"
                                  "test sensitivity %{y:.3f}, specificity %{customdata:.3f}"
                                  f"<extra>{name}</extra>", customdata=[1 - fpr]))
        if current and name in current:
            fpr, tpr, _ = roc_point(roc, current[name])
            figure.add_trace(go.Scatter(
                x=[fpr], y=[tpr], mode="markers", legendgroup=name,
                name=f"{name}: selected threshold {current[name]:.3f}",
                marker={"symbol": "circle-open", "size": 16, "color": colour, "line": {"width": 3}},
                hovertemplate="selected threshold<br>sensitivity %{y:.3f}<extra></extra>"))
    figure.update_layout(
        xaxis={"title": {"text": "1 − specificity (false positive rate)"}, "range": [-0.02, 1.02]},
        yaxis={"title": {"text": "sensitivity (true positive rate)"}, "range": [-0.02, 1.02],
               "scaleanchor": "x", "scaleratio": 1},
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0},
        margin={"l": 10, "r": 10, "t": 40, "b": 10}, height=560, title={"text": "ROC curves on the test split"},
    )
    return figure


def calibration_figure(reliability: Mapping[str, Sequence[float]], ece: float | None = None) -> go.Figure:
    """Reliability diagram: observed positive rate against mean predicted probability per bin.

    Marker area follows the bin's image count (also drawn as bars below), so a far-off bin holding three
    images is not mistaken for a badly calibrated model. The ECE, when given, is in the title.
    """
    predicted = list(reliability.get("mean_predicted", []))
    observed = list(reliability.get("observed", []))
    counts = list(reliability.get("count", []))
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.04)
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                                line={"dash": "dash", "color": CHANCE_COLOUR, "width": 1}, hoverinfo="skip"),
                     row=1, col=1)
    largest = max(counts, default=1) or 1
    figure.add_trace(go.Scatter(
        x=predicted, y=observed, mode="lines+markers", name="model",
        marker={"size": [8 + 22 * math.sqrt(c / largest) for c in counts], "color": _palette()[0]},
        customdata=counts,
        hovertemplate="mean predicted %{x:.3f}<br>observed %{y:.3f}<br>%{customdata} images<extra></extra>"),
        row=1, col=1)
    figure.add_trace(go.Bar(x=predicted, y=counts, name="images per bin", width=0.06,
                            marker={"color": CHANCE_COLOUR}, hovertemplate="%{y} images<extra></extra>"),
                     row=2, col=1)
    title = "Calibration on the test split"
    if ece is not None:
        title += f" — ECE {_fmt(ece)}"
    figure.update_layout(title={"text": title}, height=520, showlegend=True,
                         legend={"orientation": "h", "y": -0.12}, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    figure.update_xaxes(range=[-0.03, 1.03], row=1, col=1)
    figure.update_xaxes(range=[-0.03, 1.03], title={"text": "mean predicted COVID probability"}, row=2, col=1)
    figure.update_yaxes(range=[-0.05, 1.05], title={"text": "observed fraction positive"}, row=1, col=1)
    figure.update_yaxes(title={"text": "images"}, row=2, col=1)
    return figure


def confusion_figure(
    matrix: Sequence[Sequence[int]] | pd.DataFrame,
    labels: Sequence[str] | None = None,
    *,
    row_title: str = "true",
    column_title: str = "predicted",
    title: str | None = None,
) -> go.Figure:
    """Annotated heatmap of a confusion table (rows `row_title`, columns `column_title`).

    A DataFrame brings its own row and column labels (as ReviewSummary.confusion does); a list of lists
    uses `labels` for both. Classes are written as people write them ("covid" -> "COVID-19").
    """
    if isinstance(matrix, pd.DataFrame):
        rows, columns, values = [str(i) for i in matrix.index], [str(c) for c in matrix.columns], matrix.to_numpy()
    else:
        values = np.asarray(matrix)
        rows = columns = [str(label) for label in (labels or range(len(values)))]
    rows, columns = [class_name(r) for r in rows], [class_name(c) for c in columns]
    figure = go.Figure(go.Heatmap(
        z=np.asarray(values).tolist(), x=columns, y=rows, colorscale="Blues", showscale=False, texttemplate="%{z}",
        textfont={"size": 18}, hovertemplate=f"{row_title} %{{y}}<br>{column_title} %{{x}}<br>%{{z}} images"
                                             "<extra></extra>"))
    figure.update_layout(
        xaxis={"title": {"text": column_title}, "type": "category"},
        yaxis={"title": {"text": row_title}, "autorange": "reversed", "type": "category"},
        height=(150 if title else 110) + 70 * len(rows), width=max(360, 160 + 110 * len(columns)),
        margin={"l": 10, "r": 10, "t": 50 if title else 10, "b": 10},
        title={"text": title} if title else None,
    )
    return figure


def training_curves_figure(history: Sequence[Mapping[str, float]]) -> go.Figure:
    """Training and validation loss (top) and validation AUC (bottom) per epoch."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=("loss", "validation AUC"))
    epochs = [record.get("epoch", index + 1) for index, record in enumerate(history)]
    palette = _palette()
    for column, label, colour in (("train_loss", "training loss", palette[0]),
                                  ("val_loss", "validation loss", palette[1])):
        if any(column in record for record in history):
            figure.add_trace(go.Scatter(x=epochs, y=[record.get(column) for record in history], name=label,
                                        mode="lines+markers", line={"color": colour}), row=1, col=1)
    if any("val_auc" in record for record in history):
        aucs = [record.get("val_auc") for record in history]
        figure.add_trace(go.Scatter(x=epochs, y=aucs, name="validation AUC", mode="lines+markers",
                                    line={"color": palette[2]}), row=2, col=1)
        finite = [a for a in aucs if a is not None and math.isfinite(a)]
        if finite:
            best = int(np.nanargmax(np.array([np.nan if a is None else a for a in aucs], dtype=float)))
            figure.add_trace(go.Scatter(x=[epochs[best]], y=[aucs[best]], mode="markers", name="best (kept)",
                                        marker={"symbol": "star", "size": 14, "color": palette[2]}), row=2, col=1)
    figure.update_xaxes(title={"text": "epoch"}, row=2, col=1)
    figure.update_layout(height=520, legend={"orientation": "h", "y": -0.15},
                         margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return figure


# ------------------------------------------------------------------ dataset statistics


def count_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per (split, source, label) from one row per image; the shape `data_summary` stores as `counts`."""
    keys = [c for c in ("split", "source", "label") if c in frame.columns]
    return frame.groupby(keys, dropna=False).size().rename("n").reset_index()


def class_balance_figure(counts: pd.DataFrame | Sequence[Mapping[str, Any]]) -> go.Figure:
    """Stacked bars of images per source and label, one panel per split when there is a split column.

    `counts` has columns source, label, n and optionally split (a card's `data["counts"]` or
    `count_table(manifest)`); stacking by label within a source shows at a glance when one label comes
    from one source only (the confounding the performance page warns about).
    """
    table = pd.DataFrame(list(counts) if not isinstance(counts, pd.DataFrame) else counts)
    if table.empty:
        return go.Figure(layout={"title": {"text": "no images"}})
    if "source" not in table.columns:
        table["source"] = "unknown"
    splits = [s for s in ("train", "val", "test") if "split" in table.columns and s in set(table["split"])]
    splits += sorted({str(s) for s in table.get("split", pd.Series(dtype=str)).dropna()} - set(splits))
    panels = splits or [None]
    figure = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                           subplot_titles=[f"{p} split" if p else "all images" for p in panels])
    labels = sorted(table["label"].astype(str).unique())
    palette = _palette()
    sources = sorted(table["source"].astype(str).unique())
    for column, split in enumerate(panels, start=1):
        part = table if split is None else table[table["split"].astype(str) == split]
        for index, label in enumerate(labels):
            per_source = part[part["label"].astype(str) == label].groupby("source")["n"].sum()
            figure.add_trace(go.Bar(
                x=sources, y=[int(per_source.get(s, 0)) for s in sources], name=label, legendgroup=label,
                showlegend=column == 1, marker={"color": palette[index % len(palette)]},
                hovertemplate=f"{label}<br>source %{{x}}<br>%{{y}} images<extra>{split or 'all'}</extra>"),
                row=1, col=column)
    figure.update_layout(barmode="stack", height=420, legend={"title": {"text": "label"}},
                         margin={"l": 10, "r": 10, "t": 50, "b": 10})
    figure.update_yaxes(title={"text": "images"}, row=1, col=1)
    return figure


SIZE_POINTS = 2000  # at most this many points in the image-size chart, however many images


def image_size_table(frame: pd.DataFrame, max_points: int = SIZE_POINTS) -> tuple[pd.DataFrame, int]:
    """Images per (source, width, height) with their labels, and the bin width in pixels (1: exact sizes).

    Sizes are binned on a grid that doubles until at most `max_points` (source, size) points remain, so that the
    chart sent to the browser stays small (100,000 images sent one point each made 1.6 MB of JSON).
    """
    table = pd.DataFrame({
        "source": frame["source"].astype(str) if "source" in frame.columns else "unknown",
        "label": frame["label"].astype(str) if "label" in frame.columns else "",
        "width": pd.to_numeric(frame["width"], errors="coerce"),
        "height": pd.to_numeric(frame["height"], errors="coerce"),
    }).dropna(subset=["width", "height"])
    step = 1
    while table.groupby(["source", table["width"] // step, table["height"] // step]).ngroups > max_points:
        step *= 2
    if step > 1:
        table["width"] = (table["width"] // step) * step + step / 2
        table["height"] = (table["height"] // step) * step + step / 2
    keys = ["source", "width", "height"]
    by_label = table.groupby([*keys, "label"]).size().rename("n").reset_index()
    by_label["text"] = by_label["label"] + " " + by_label["n"].astype(str)
    points = by_label.groupby(keys).agg(n=("n", "sum"), labels=("text", ", ".join)).reset_index()
    return points, step


def image_size_figure(frame: pd.DataFrame) -> go.Figure:
    """Width against height of the images, one point per size and source (area by image count; labels on hover).

    Columns width, height, source and label. Sources that differ in size (uniform 1024 px hospital films against
    cropped paper figures) are another way a model can tell the source instead of the disease.
    """
    points, step = image_size_table(frame)
    figure = go.Figure()
    palette = _palette()
    largest = max(int(points["n"].max()) if len(points) else 1, 1)
    for index, (source, part) in enumerate(points.groupby("source")):
        figure.add_trace(go.Scatter(
            x=part["width"], y=part["height"], mode="markers", name=f"{source} ({int(part['n'].sum())})",
            marker={"color": palette[index % len(palette)], "opacity": 0.6,
                    "size": [6 + 18 * math.sqrt(n / largest) for n in part["n"]]},
            customdata=np.stack([part["n"], part["labels"]], axis=1),
            hovertemplate="%{x} × %{y} px<br>%{customdata[0]} images: %{customdata[1]}<extra>" + source + "</extra>"))
    title = "Image sizes" + (f" (binned to {step} px)" if step > 1 else "")
    figure.update_layout(xaxis={"title": {"text": "width (px)"}}, yaxis={"title": {"text": "height (px)"}},
                         height=420, legend={"title": {"text": "source (images)"}},
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, title={"text": title})
    return figure


def mask_fraction_figure(fractions: Sequence[float]) -> go.Figure:
    """Histogram of the share of each image that its mask covers (a segmentation set's `mask_fraction`)."""
    figure = go.Figure(go.Histogram(x=list(fractions), xbins={"start": 0, "end": 1, "size": 0.05},
                                    marker={"color": _palette()[0]}, name="images",
                                    hovertemplate="%{x}<br>%{y} images<extra></extra>"))
    figure.update_layout(xaxis={"title": {"text": "share of the image inside the mask"}, "range": [0, 1]},
                         yaxis={"title": {"text": "images"}}, height=320, bargap=0.05,
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, title={"text": "Mask coverage"})
    return figure


def _palette() -> list[str]:
    import plotly.express as px

    return list(px.colors.qualitative.Plotly)
