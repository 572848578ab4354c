"""The CT scan viewer the CT scan page and a review session's scan item share: slice scrubber, window presets
(display only), lung and infection masks, a coronal plane, the per-slice probability curve.

Everything is drawn from an analysed `ScanAnalysis` (`covid_models.analysis.scan_views`), so moving a slider, changing
the window or a mask toggle re-windows a small slice and runs no model; only the heatmap of the current slice, asked for
with its toggle, runs the classifier. A blinded view (`revealed=False`) shows the slices alone: no mask, no slice
probability, no curve, and it opens on the middle slice rather than on the model's most suspicious one. A held-back scan
shows its slices and lung mask only; the classifier's probabilities and heatmap only where its secondary reading may be
shown. A heatmap gets its colour scale and the share of it inside the lungs (a warning when under half, as for X-rays).
"""
from __future__ import annotations

import streamlit as st

from covid_models.analysis.explain import METHOD_LABELS
from covid_models.analysis.image_analysis import mask_share_signal
from covid_models.analysis.overlays import colour_scale
from covid_models.analysis.scan_analysis import ScanAnalysis, slice_heatmap
from covid_models.analysis.scan_views import DISPLAY_WINDOWS, axial_picture, coronal_picture, probability_figure
from covid_models.models.segmentation import cam_mass_inside
from pages.shared import load_classifier, model_lock

HEATMAP_METHOD = "gradcam"


def scan_viewer(analysis: ScanAnalysis, classifier_dir: str | None, *, key: str = "scan",
                revealed: bool = True) -> int:
    """Slice scrubber, window presets, overlays, coronal view and probability curve; returns the slice shown.

    `key` prefixes every widget key (one viewer state per page, or per review item); `classifier_dir` None (the model
    is gone) leaves the heatmap out; `revealed` False is the blinded view."""
    slices = len(analysis.slice_probabilities)
    secondary = revealed and not analysis.secondary_held_back
    findings = revealed and not analysis.held_back
    default = analysis.key_slices.get("largest infection", slices // 2) if findings else slices // 2
    controls = st.columns([3, 2, 3])
    index = controls[0].slider("Slice (head to feet)", 1, slices, default + 1, key=f"{key}-slice") - 1
    window_name = controls[1].radio("Window (display only)", list(DISPLAY_WINDOWS), horizontal=True,
                                    format_func=str.capitalize, key=f"{key}-window")
    show_lungs = show_infection = show_heatmap = False
    if revealed:
        with controls[2]:
            show_lungs = st.toggle("Lung mask", value=True, key=f"{key}-lungs")
            show_infection = st.toggle("Infection", value=findings and analysis.infection is not None,
                                       key=f"{key}-infection", disabled=not findings or analysis.infection is None)
            if classifier_dir is not None:
                show_heatmap = st.toggle(f"Heatmap of this slice ({METHOD_LABELS[HEATMAP_METHOD]}, secondary "
                                         "classifier)", value=False, key=f"{key}-heatmap", disabled=not secondary)
    window = DISPLAY_WINDOWS[window_name]
    heat = None
    if show_heatmap and secondary and classifier_dir is not None:
        with model_lock(classifier_dir):
            heat = slice_heatmap(load_classifier(classifier_dir), analysis.display_hu[index], HEATMAP_METHOD)
    axial, coronal = st.columns(2)
    caption = f"Axial slice {index + 1} of {slices}"
    if secondary:
        probability = analysis.slice_probabilities[index]
        caption += ": " + ("not scored (too little lung)" if probability != probability
                           else f"secondary classifier {probability:.1%}")
    show_infection = show_infection and findings
    axial.image(axial_picture(analysis, index, window, lungs=show_lungs, infection=show_infection, heatmap=heat),
                caption=caption, width="stretch")
    if heat is not None:
        axial.image(colour_scale(256, 10), caption="Heatmap colour scale: low (blue, left) to high (red, right) "
                                                   "contribution to the secondary classifier's score", width="stretch")
        signal = mask_share_signal("lungs", cam_mass_inside(heat, analysis.lungs.labels[index] > 0))
        getattr(axial, signal.level if signal.level != "note" else "caption")(signal.text)
    rows = analysis.display_hu.shape[1]
    with coronal:
        row = st.slider("Coronal plane (anterior to posterior)", 1, rows, rows // 2, key=f"{key}-row") - 1
        st.image(coronal_picture(analysis, row, window, lungs=show_lungs, infection=show_infection, current=index),
                 caption="Coronal view (head up); the yellow line is the axial slice", width="stretch")
    if secondary:
        st.plotly_chart(probability_figure(analysis, index), width="stretch", key=f"{key}-curve")
    return index
