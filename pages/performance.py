"""Model performance: what holds within one source first, then the pooled figures, the 3-class confusion matrix,
ROC curves of every shipped model, a threshold to explore, calibration and the card.

Every number comes from the model cards (test split metrics computed at training time), so the page
needs neither the test images nor a GPU. Each AUC shows one interval, with how it was computed, and "flagged"
is defined once (`trust.FLAGGED`).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from covid_models.analysis.figures import (
    calibration_figure,
    card_test_report,
    confusion_at,
    confusion_figure,
    roc_figure,
    training_curves_figure,
)
from covid_models.formatting import class_name
from covid_models.models.checkpoint import MODEL_CARD_FILE
from covid_models.models.model_card import ModelCard, display_name, is_adapted
from covid_models.models.trust import (
    FLAGGED,
    POOLED_INTERVAL,
    auc_qualifiers,
    headline_auc,
    volume_rows,
    within_source_figures,
)
from pages.shared import enter_through_app, model_cards, weights_dir

enter_through_app()

MODALITY_NAMES = {"xray": "Chest X-ray", "ct": "Chest CT"}
SOURCE_CONFOUNDING = (
    "**Why per source?** In the public COVID-19 collections, label and source go together: every COVID X-ray "
    "comes from papers and teaching websites, while nearly all normal and pneumonia films come from one US "
    "hospital. A network can reach a high overall AUC by recognising *where an image comes from* (its size, "
    "compression, text and arrows) instead of the disease. A source whose images all carry one label has no AUC "
    "(shown as n/a); within-source results are the honest ones to read."
)


def _number(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _threshold_key(card: ModelCard) -> str:
    return f"performance-threshold-{card.name}"


def _threshold_section(card: ModelCard) -> float:
    """The slider and what it implies; returns the chosen threshold (for the ROC marker)."""
    test = card_test_report(card)
    key = _threshold_key(card)
    if key not in st.session_state:
        st.session_state[key] = round(card.threshold, 3)

    def use_point(value: float) -> None:
        st.session_state[key] = round(value, 3)

    threshold = st.slider(f"Threshold: a case is called **{card.positive_class}** when its probability is at or "
                          "above it", min_value=0.0, max_value=1.0, step=0.005, key=key, format="%.3f")
    buttons = st.columns(max(len(card.operating_points), 1))
    for column, (name, point) in zip(buttons, card.operating_points.items(), strict=False):
        marker = " (default)" if name == card.default_operating_point else ""
        column.button(f"{name}{marker}: {float(point['threshold']):.3f}", key=f"{key}-{name}",
                      on_click=use_point, args=(float(point["threshold"]),), help=point.get("rule"),
                      width="stretch")
    if not test.get("roc") and not test.get("scores"):
        st.warning("This card stores no ROC points (its test split has a single class), so metrics at other "
                   "thresholds cannot be shown.")
        return threshold
    table = confusion_at(test, threshold)
    shown = (("Sensitivity", "sensitivity", "share of positive test images called positive"),
             ("Specificity", "specificity", "share of negative test images called negative"),
             ("Accuracy", "accuracy", f"{card.positive_class}-vs-rest accuracy"),
             ("PPV", "precision", "positive predictive value: share of positive calls that are right "
                                  "(depends on the test split's prevalence)"),
             ("NPV", "npv", "negative predictive value: share of negative calls that are right"))
    for row in (shown[:3], shown[3:]):
        for column, (label, key_name, help_text) in zip(st.columns(3), row, strict=False):
            column.metric(label, _number(table[key_name]), help=help_text)
    negative = f"not {class_name(card.positive_class)}"
    st.plotly_chart(confusion_figure([[table["tn"], table["fp"]], [table["fn"], table["tp"]]],
                                     [negative, card.positive_class], title=f"Test split at threshold {threshold:.3f}"),
                    key=f"performance-confusion-{card.name}")
    if table["exact"]:
        st.caption("Exact: counted from the test split's stored probabilities at this threshold.")
    elif table["roc_threshold"] is not None and abs(table["roc_threshold"] - threshold) > 1e-9:
        st.warning(f"Approximate: counts read from the nearest stored ROC point at or above the threshold "
                   f"({table['roc_threshold']:.3f}). The exact figures need the test split's stored probabilities "
                   "(the card field metrics.test.scores), which this card lacks.", icon=":material/warning:")
    return threshold


def _per_source_table(test: dict) -> pd.DataFrame:
    """Per-source results with every missing or undefined number written "n/a", as the text says."""
    rows = [{"source": source, "images": sub.get("n"), "labels": ", ".join(f"{k}: {v}" for k, v in
                                                                            sub.get("by_label", {}).items()),
             **{name: _number(sub.get(key)) for name, key in (("AUC", "auc"), ("sensitivity", "sensitivity"),
                                                             ("specificity", "specificity"),
                                                             ("accuracy", "accuracy"))}}
            for source, sub in test.get("per_source", {}).items()]
    return pd.DataFrame(rows)


def _interval(ci: list | None) -> str:
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci and len(ci) == 2 and None not in ci else "n/a"


def _within_source_first(card: ModelCard) -> None:
    """The figures that hold within one source, before any pooled figure: AUC, sensitivity and specificity."""
    st.subheader("Within one source: the figures to read first")
    figures = within_source_figures(card)
    if not figures:
        st.warning("No within-source figure is recorded for this model: every source of its test split holds one "
                   "label, so its pooled AUC below may measure where images come from, not the disease.",
                   icon=":material/warning:")
        return
    positive = class_name(card.positive_class or "")
    for row in figures:
        columns = st.columns(3)
        columns[0].metric(f"AUC within {row['source']}", _number(row["auc"]),
                          help=f"{row['images']} test images; {row['interval']}")
        columns[1].metric(f"Sensitivity within {row['source']}", _number(row["sensitivity"]),
                          help=f"share of its {positive} test images flagged, at the default operating point")
        columns[2].metric(f"Specificity within {row['source']}", _number(row["specificity"]),
                          help=f"share of its test images without {positive} not flagged, at the default "
                               "operating point")
        flagged, negatives = row["flagged_negatives"]
        st.caption(f"{row['source']}: {row['images']} test images; AUC {_number(row['auc'])}, "
                   f"{row['interval']}: {_interval(row['auc_ci95'])}."
                   + (f" {flagged} of its {negatives} test images without {positive} were flagged."
                      if negatives else ""))
    st.caption(FLAGGED[0].upper() + FLAGGED[1:] + ".")


def _multiclass(card: ModelCard) -> None:
    """The confusion matrix of the most probable class as a labelled table (3-class models: the weak reading)."""
    test = card_test_report(card)
    classes, matrix = test.get("classes"), test.get("confusion_matrix")
    if not classes or not matrix or len(classes) < 3:
        return
    st.subheader(f"The {len(classes)}-class reading")
    table = pd.DataFrame(matrix, columns=[f"predicted {class_name(c)}" for c in classes])
    table.insert(0, "true class", [class_name(c) for c in classes])
    st.dataframe(table, hide_index=True, width="stretch", key=f"performance-multiclass-{card.name}")
    accuracy = test.get("multiclass_accuracy")
    st.caption(f"Test images by true class (rows) and most probable class (columns); the most probable class is "
               f"right for {_number(accuracy)} of them. Only the {class_name(card.positive_class or '')} "
               "probability against the operating point is validated; the reading among the other classes is not.")


def _headline(card: ModelCard) -> None:
    """The pooled AUC with what qualifies it beside it: within-source AUC, source probe, per-source table."""
    st.subheader("All sources pooled")
    st.markdown("**" + headline_auc(card) + "**")
    st.caption(f"The interval of this AUC: {POOLED_INTERVAL}.")
    for line in auc_qualifiers(card):
        st.markdown(f"- {line}")
    per_source = _per_source_table(card_test_report(card))
    if not per_source.empty:
        st.dataframe(per_source, hide_index=True, width="stretch", key=f"performance-per-source-{card.name}")
    st.caption(SOURCE_CONFOUNDING)
    volumes = volume_rows(card)
    if volumes:
        st.markdown("**On real DICOM CT scans** (HU through the model's own window; the scan-level probability is "
                    "the mean of the top 10 % of lung slices):")
        st.dataframe(pd.DataFrame(volumes), hide_index=True, width="stretch", key=f"performance-volumes-{card.name}")
        st.caption((card.metrics.get("volumes") or {}).get("note", "") + ". A model that reads the disease ranks the "
                   "COVID scan above the others; slices of the COVID scan are not labelled one by one, so there is "
                   "no slice AUC.")


def _adapted_beside_base(card: ModelCard, by_name: dict[str, tuple[str, ModelCard]]) -> None:
    """An adapted head's cross-validated figures beside its base model's, on the same local sample and overall."""
    base_name = card.extra["base_model"].get("name")
    local = card.metrics.get("test") or {}
    base_local = card.metrics.get("base_on_local_sample") or {}
    rows = [{"model": display_name(card), "on the local sample": f"AUC {_number(local.get('auc'))} "
             f"({_interval(local.get('auc_ci95'))}), cross-validated by patient"},
            {"model": f"{base_name} (its base)", "on the local sample": f"AUC {_number(base_local.get('auc'))} "
             f"({_interval(base_local.get('auc_ci95'))}), as shipped"}]
    st.info(f"A head adapted to {card.extra.get('adapted_to')} on the frozen features of {base_name}: its figures "
            f"below are cross-validated on {local.get('n', '?')} images of that site (each image scored by a head that "
            "never saw its patient), not a held-out test split.", icon=":material/tune:")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key=f"performance-adapted-{card.name}")
    if base_name in by_name:
        st.caption(f"{base_name} on its own test split: {headline_auc(by_name[base_name][1])}")


def _interval(values: list | None) -> str:
    return "n/a" if not values or None in values else f"95% CI {values[0]:.3f}-{values[1]:.3f}"


def _model_details(directory: str, card: ModelCard) -> None:
    test = card_test_report(card)
    st.subheader("Calibration")
    if test.get("reliability"):
        st.plotly_chart(calibration_figure(test["reliability"], test.get("ece")),
                        key=f"performance-calibration-{card.name}")
        st.caption(f"Probabilities are temperature-scaled (T = {card.temperature:.3f}, fitted on the validation "
                   "split). Points near the diagonal mean a predicted 0.8 is right about 80% of the time.")
    else:
        st.info("This card stores no reliability curve.")

    st.subheader("Training curves")
    history = card.training.get("history") or []
    if history:
        st.plotly_chart(training_curves_figure(history), key=f"performance-training-{card.name}")
    else:
        st.info("This card stores no training history.")

    st.subheader("Model card")
    markdown = Path(directory) / MODEL_CARD_FILE
    if markdown.is_file():
        st.markdown(markdown.read_text(encoding="utf-8"))
    else:
        st.info(f"{MODEL_CARD_FILE} is missing from {directory}.")
    with st.expander("card.json (every stored fact)"):
        st.json(card.to_dict(), expanded=1)


def main() -> None:
    st.title("Model performance")
    st.caption("Measured on each model's held-out test split at training time; read from the model cards.")
    modalities = [m for m in MODALITY_NAMES if model_cards("classification", m)]
    if not modalities:
        st.info(f"No classification model found in {weights_dir()}. Train one with scripts/train.py or point "
                "COVID_WEIGHTS_DIR at a folder of model directories.")
        return
    modality = st.radio("Modality", modalities, format_func=MODALITY_NAMES.get, horizontal=True,
                        key="performance-modality")
    cards = model_cards("classification", modality)
    by_name = {card.name: (directory, card) for directory, card in cards}
    name = st.selectbox("Model to examine (threshold, calibration, card)", list(by_name),
                        key=f"performance-model-{modality}", format_func=lambda n: display_name(by_name[n][1]))
    directory, card = by_name[name]
    if is_adapted(card):
        _adapted_beside_base(card, by_name)

    _within_source_first(card)
    _headline(card)
    _multiclass(card)
    left, right = st.columns([1, 1], gap="large")
    with right:
        st.subheader(f"{name} at a threshold")
        threshold = _threshold_section(card)
    with left:
        st.subheader("ROC curves")
        st.plotly_chart(roc_figure([(c.name, c) for _, c in cards], current={name: threshold}),
                        key="performance-roc")
        st.caption("Markers: each model's operating points (chosen on the validation split), and the open circle "
                   f"at the selected threshold. Each AUC's interval: {POOLED_INTERVAL}; a card's within-source AUC "
                   "is beside its pooled one.")
    _model_details(directory, card)


main()
