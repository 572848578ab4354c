"""How the Analyze page lays out one image: its modality (asked when the file and the settings disagree), the DICOM
header, the probability against the operating point, the analysis (as `pages.shared.show_analysis` shows it on
the Review page too) under a chosen display window, and the downloads; and the image's row of the batch summary.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from covid_models.analysis.ct_quantitative import SECONDARY_LABEL, QuantitativeReading
from covid_models.analysis.explain import METHOD_LABELS
from covid_models.analysis.image_analysis import (
    REPORT_RENDERING,
    Analysis,
    mask_share_signal,
    multiclass_note,
    operating_point_text,
    report_content,
    trust_signals,
    window_label,
)
from covid_models.analysis.image_checks import ImageCheck, choose_modality, refusal_text
from covid_models.analysis.overlays import DISPLAY_SIDE, display_size, for_display
from covid_models.analysis.report import png_bytes, render_html, render_pdf, result_sentence
from covid_models.analysis.scan_views import reading_rows
from covid_models.formatting import class_name, percent
from covid_models.imaging.filenames import bare_file_name
from covid_models.imaging.io import read_dicom_identifiers
from covid_models.imaging.scan import WINDOW_PRESETS, ImageReadError, ScanMetadata
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.inference import Prediction
from covid_models.models.model_card import modality_name
from covid_models.models.segmentation import cam_mass_inside
from pages.analyze_compute import (
    analysis_for,
    dicom_slice_reading,
    image_check_for,
    read_scan,
    scan_facts,
    windowed_image,
)
from pages.analyze_inputs import Upload
from pages.analyze_settings import Settings
from pages.shared import infection_models, load_classifier, show_analysis, show_error, slice_reading_block

FILE_WINDOW = "file"
CUSTOM_WINDOW = "custom"


def show_upload(upload: Upload, settings: Settings) -> dict:
    """Show one image's analysis; returns its row of the batch summary (never a probability of a held-back image)."""
    st.subheader(bare_file_name(upload.name), divider="gray")
    row = {"File": bare_file_name(upload.name), "Modality": None, "Model": None, "COVID-19 probability": None}
    try:
        metadata, windowable = scan_facts(upload.digest, upload.data, upload.name)
    except ImageReadError as error:
        show_error(str(error))
        return row | {"Result": "not analysed: the file could not be read"}
    dicom = metadata.source_format == "dicom"
    check = image_check_for(upload, settings)
    if check.refused:
        st.error(refusal_text(check), icon=":material/block:")
        return row | {"Result": "refused: not a chest image"}
    chosen = modality_for(upload, metadata, check, settings)
    if chosen is None:
        return row | {"Result": "waiting: choose the modality"}
    modality, origin = chosen
    if dicom and metadata.modality is None and metadata.dicom_modality:
        origin += f" (the file's Modality tag '{metadata.dicom_modality}' is not a chest X-ray or CT)"
    st.caption(f"{modality_name(modality)} {origin}; {metadata.width} x {metadata.height} pixels, "
               f"{metadata.source_format.upper()}."
               + (f" Reference label in the dataset: **{upload.reference_label}**." if upload.reference_label else ""))
    if dicom:
        dicom_header(upload, metadata)
    row["Modality"] = modality_name(modality)
    quantities = dicom_slice_reading(upload.digest, next(iter(infection_models()), None), upload) \
        if dicom and modality == "ct" and windowable else None
    if quantities is not None:
        slice_reading_block(quantities.reading)
    model_dirs = settings.models.get(modality)
    if not model_dirs:
        st.warning(f"No {modality_name(modality)} classifier is installed, so this image cannot be analysed.")
        scan = read_scan(upload.digest, upload.data, upload.name)
        st.image(for_display(scan.pixels, display_size(scan.pixels.shape)), width=DISPLAY_SIDE // 2, clamp=True)
        return row | {"Result": "not analysed: no model"}
    try:
        classifiers = {directory: load_classifier(directory) for directory in model_dirs}
    except CheckpointError as error:
        show_error(f"The model could not be loaded: {error}")
        return row | {"Result": "not analysed: the model could not be loaded"}
    multiclass = multiclass_note(next(iter(classifiers.values())).card)
    prediction, analysis = analysis_for(
        upload, classifiers, settings.method, modality, check,
        lambda found: result_block(found, operating_point_text(list(classifiers.values()), found), modality,
                                   multiclass))
    row |= {"Model": prediction.model, "COVID-19 probability": probability_cell(prediction),
            "Result": "held back (out of distribution)" if prediction.out_of_distribution
            else "at or above the operating point" if prediction.positive else "below the operating point"}
    if quantities is not None:  # a DICOM CT slice's result is its quantitative reading; the classifier is secondary
        row["Result"] = quantities.reading.verdict
    if analysis is None:
        return row
    window = None if prediction.out_of_distribution else window_choice(upload, metadata, windowable)
    shown = None if window is None else windowed_image(upload.digest, window, upload).astype(np.float32) / 255
    show_analysis(analysis, opacity=settings.opacity, show_masks=settings.show_masks,
                  outline_on_heatmap=settings.outline_on_heatmap, shown=shown,
                  image_caption="Image" + (f" (window {window[0]:g} / {window[1]:g})" if window else ""),
                  multiclass=multiclass)
    if quantities is not None and quantities.has_lungs and not prediction.out_of_distribution:
        signal = mask_share_signal("lungs", cam_mass_inside(analysis.heat, quantities.lung_mask()))
        getattr(st, "caption" if signal.level == "note" else signal.level)(f"{signal.text} (HU lung mask)")
    downloads(upload, analysis, settings, None if quantities is None else quantities.reading)
    st.caption(":material/health_and_safety: Research use only: not for diagnosis. Review by a radiologist.")
    return row


def modality_for(upload: Upload, metadata: ScanMetadata, check: ImageCheck, settings: Settings
                 ) -> tuple[str, str] | None:
    """(modality, where it comes from); None while the user has not answered the question the page asks."""
    choice = choose_modality(metadata.modality, upload.modality, check.modality, settings.default_modality)
    if choice.ask is None:
        return choice.modality, choice.origin
    detected, chosen = choice.ask
    st.warning(f"This image looks like a chest {modality_name(detected)}, but the settings say "
               f"{modality_name(chosen)}. Which is it?", icon=":material/help:")
    answer = st.radio("Analyse this image as", [detected, chosen], index=None, horizontal=True,
                      format_func=lambda m: f"{modality_name(m)}" + (" (as it looks)" if m == detected else
                                                                     " (as in the settings)"),
                      key=f"modality-{upload.digest[:16]}")
    return None if answer is None else (answer, "as you confirmed")


def result_block(prediction: Prediction, operating_point: str, modality: str, multiclass: str | None) -> None:
    """The probability against the operating point; for a held-back image, the reason and nothing to read."""
    if prediction.out_of_distribution:
        st.error(trust_signals(modality, prediction, {})[0].text, icon=":material/block:")
        return
    left, right = st.columns([2, 3])
    with left:
        if prediction.positive_probability is not None:
            st.metric(f"{class_name(prediction.positive_class)} probability (calibrated)",
                      percent(prediction.positive_probability))
            if prediction.positive:
                st.markdown(":orange-badge[:material/flag: At or above the operating point]")
            else:
                st.markdown(":blue-badge[Below the operating point]")
        st.caption(result_sentence(prediction))
        st.caption("Operating point: " + operating_point)
    with right:
        probability_table(prediction)
        if multiclass:
            st.caption(":material/warning: " + multiclass)


def probability_table(prediction: Prediction) -> None:
    probabilities = prediction.probabilities
    frame = pd.DataFrame({"Class": list(probabilities), "Probability": list(probabilities.values())})
    st.dataframe(frame.sort_values("Probability", ascending=False), hide_index=True, width="stretch",
                 column_config={"Probability": st.column_config.ProgressColumn(
                     "Calibrated probability", format="percent", min_value=0.0, max_value=1.0)})


def probability_cell(prediction: Prediction) -> str:
    """The batch table's probability: none for a held-back image."""
    return "held back" if prediction.out_of_distribution else percent(prediction.positive_probability)


def window_choice(upload: Upload, metadata: ScanMetadata, windowable: bool) -> tuple[float, float] | None:
    """Window presets for DICOM images that keep their modality values; None keeps the window read from the file."""
    if not windowable:
        return None
    file_window = metadata.window
    presets = {FILE_WINDOW: window_label(metadata)}
    if metadata.dicom_modality == "CT":
        presets.update({name: f"{name.capitalize()} ({c:g} / {w:g})" for name, (c, w) in WINDOW_PRESETS.items()})
    presets[CUSTOM_WINDOW] = "Custom"
    key = f"window-{upload.digest[:16]}"
    choice = st.radio("Window (centre / width)", list(presets), format_func=presets.get, horizontal=True, key=key)
    if choice == FILE_WINDOW:
        return None
    if choice == CUSTOM_WINDOW:
        start_c, start_w = file_window or WINDOW_PRESETS["lung"]
        left, right = st.columns(2)
        centre = left.number_input("Centre", value=float(start_c), step=10.0, key=f"{key}-c")
        width = right.number_input("Width", value=float(start_w), min_value=1.0, step=10.0, key=f"{key}-w")
        return float(centre), float(width)
    return WINDOW_PRESETS[choice]


def dicom_header(upload: Upload, metadata: ScanMetadata) -> None:
    with st.expander("DICOM header (technical fields only)"):
        summary = metadata.dicom_summary
        st.dataframe(pd.DataFrame({"Field": list(summary), "Value": list(summary.values())}), hide_index=True,
                     width="stretch")
        if metadata.notes:
            st.caption("Reading notes: " + "; ".join(metadata.notes))
    with st.expander("Patient identifiers in the file header (not stored)"):
        st.caption("Shown only on request, never stored, never put into reports or review sessions.")
        if st.toggle("Show identifiers", value=False, key=f"identifiers-{upload.digest[:16]}"):
            try:
                identifiers = read_dicom_identifiers(upload.data)
            except ImageReadError as error:
                show_error(str(error))
            else:
                st.dataframe(pd.DataFrame({"Field": list(identifiers), "Value": list(identifiers.values())}),
                             hide_index=True, width="stretch")


def downloads(upload: Upload, analysis: Analysis, settings: Settings, reading: QuantitativeReading | None = None
              ) -> None:
    """Annotated PNG and the report, drawn with fixed settings (never the screen's); built only when clicked. A DICOM
    CT slice's report leads with its quantitative reading."""
    stem = Path(bare_file_name(upload.name)).stem
    content = report_content(analysis, upload.name, METHOD_LABELS[analysis.method])
    if reading is not None:
        content = replace(content, warnings=(reading.verdict, *(f"{k}: {v}" for k, v in reading_rows(reading)),
                                             SECONDARY_LABEL, *content.warnings))
    key = f"{upload.digest[:16]}-{settings.method}"
    first, second, third = st.columns(3)
    if content.overlay is not None:
        first.download_button("Annotated image (PNG)", lambda: png_bytes(content.overlay),
                              file_name=f"{stem}-heatmap.png", mime="image/png", on_click="ignore",
                              icon=":material/image:", key=f"png-{key}")
    second.download_button("Report (PDF)", lambda: render_pdf(content), file_name=f"{stem}-report.pdf",
                           mime="application/pdf", on_click="ignore", icon=":material/picture_as_pdf:",
                           key=f"pdf-{key}")
    third.download_button("Report (HTML)", lambda: render_html(content), file_name=f"{stem}-report.html",
                          mime="text/html", on_click="ignore", icon=":material/description:", key=f"html-{key}")
    st.caption(f"Reports and the annotated image use fixed rendering: {REPORT_RENDERING}.")
