"""The CT scan viewer the CT scan page and a review session's scan item share: slice scrubber, window presets
(display only), lung and infection masks, a coronal plane, the per-slice probability curve.

Everything is drawn from an analysed `ScanAnalysis` (`covid_models.scan_views`), so moving a slider, changing the
window or a mask toggle re-windows a small slice and runs no model; only the heatmap of the current slice, asked for
with its toggle, runs the classifier. A blinded view (`revealed=False`) shows the slices alone: no mask, no slice
probability, no curve, and it opens on the middle slice rather than on the model's most suspicious one.
"""
from __future__ import annotations

import streamlit as st

from covid_models.explain import METHOD_LABELS
from covid_models.scan_analysis import ScanAnalysis, slice_heatmap
from covid_models.scan_views import DISPLAY_WINDOWS, axial_picture, coronal_picture, probability_figure
from pages.shared import load_classifier, model_lock

HEATMAP_METHOD = "gradcam"


def scan_viewer(analysis: ScanAnalysis, classifier_dir: str | None, *, key: str = "scan",
                revealed: bool = True) -> int:
    """Slice scrubber, window presets, overlays, coronal view and probability curve; returns the slice shown.

    `key` prefixes every widget key (one viewer state per page, or per review item); `classifier_dir` None (the model
    is gone) leaves the heatmap out; `revealed` False is the blinded view."""
    slices = len(analysis.slice_probabilities)
    default = analysis.key_slices.get("highest probability", slices // 2) if revealed else slices // 2
    controls = st.columns([3, 2, 3])
    index = controls[0].slider("Slice (head to feet)", 1, slices, default + 1, key=f"{key}-slice") - 1
    window_name = controls[1].radio("Window (display only)", list(DISPLAY_WINDOWS), horizontal=True,
                                    format_func=str.capitalize, key=f"{key}-window")
    show_lungs = show_infection = show_heatmap = False
    if revealed:
        with controls[2]:
            show_lungs = st.toggle("Lung mask", value=True, key=f"{key}-lungs")
            show_infection = st.toggle("Infection", value=analysis.infection is not None, key=f"{key}-infection",
                                       disabled=analysis.infection is None)
            if classifier_dir is not None:
                show_heatmap = st.toggle(f"Heatmap of this slice ({METHOD_LABELS[HEATMAP_METHOD]})", value=False,
                                         key=f"{key}-heatmap")
    window = DISPLAY_WINDOWS[window_name]
    heat = None
    if show_heatmap and classifier_dir is not None:
        with model_lock(classifier_dir):
            heat = slice_heatmap(load_classifier(classifier_dir), analysis.display_hu[index], HEATMAP_METHOD)
    axial, coronal = st.columns(2)
    caption = f"Axial slice {index + 1} of {slices}"
    if revealed:
        probability = analysis.slice_probabilities[index]
        caption += ": " + ("not scored (too little lung)" if probability != probability
                           else f"probability {probability:.1%}")
    axial.image(axial_picture(analysis, index, window, lungs=show_lungs, infection=show_infection, heatmap=heat),
                caption=caption, width="stretch")
    rows = analysis.display_hu.shape[1]
    with coronal:
        row = st.slider("Coronal plane (anterior to posterior)", 1, rows, rows // 2, key=f"{key}-row") - 1
        st.image(coronal_picture(analysis, row, window, lungs=show_lungs, infection=show_infection, current=index),
                 caption="Coronal view (head up); the yellow line is the axial slice", width="stretch")
    if revealed:
        st.plotly_chart(probability_figure(analysis, index), width="stretch", key=f"{key}-curve")
    return index
