"""Pictures, tables and figures of a `ScanAnalysis` for people: the scan page and the scan report draw these.

Everything works on the analysis's display grid (`ScanAnalysis.display_hu`, aligned with its masks), so moving the
slice slider or changing the window preset only re-windows a small int16 slice: no model runs again.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from covid_models.analysis.ct_quantitative import DENSITY_BANDS, SECONDARY_LABEL, SEVERITY_SOURCE, QuantitativeReading
from covid_models.analysis.overlays import INFECTION_COLOR, LUNG_COLOR, heatmap_overlay, mask_overlay, to_rgb
from covid_models.analysis.report import ScanReportContent, scan_result_sentence
from covid_models.analysis.scan_analysis import BURDEN_LABEL, ScanAnalysis
from covid_models.formatting import class_name
from covid_models.imaging.lung_mask import LEFT, RIGHT
from covid_models.imaging.scan import WINDOW_PRESETS, apply_window

DISPLAY_WINDOWS = WINDOW_PRESETS  # display only: the models always get their card's window
MODEL_LIMITS = (
    "What the models cannot do: the result is a quantitative reading in HU inside a classical lung mask; its lesion "
    "burden comes from a 2-D infection segmenter (an estimate, not a measurement) and the one fitted threshold of the "
    "COVID-19 pattern rule was fitted on real non-COVID screening CT slices, not validated on whole scans. The CT "
    "classifier was trained on single slices cropped from figures of published papers, not on hospital scans: it "
    "is a secondary reading only. The segmenter cannot tell COVID-19 from other opacities: a tumour, atelectasis, "
    "another pneumonia or partial volume on thick slices counts as lesion, and with lesions in both lungs such a "
    "scan can meet the pattern rule (one of the three non-COVID shared scans, a lung adenocarcinoma on 8 mm slices, "
    "does). Four shared scans (one COVID-19, three not) are a smoke test of the pipeline, not an evaluation."
)


def axial_picture(analysis: ScanAnalysis, index: int, window: tuple[float, float] = WINDOW_PRESETS["lung"], *,
                  lungs: bool = True, infection: bool = True, heatmap: np.ndarray | None = None,
                  opacity: float = 0.4) -> np.ndarray:
    """One axial slice under a display window, with the lung (blue) and infection (red) masks and a heatmap."""
    picture = to_rgb(apply_window(analysis.display_hu[index], *window))
    if heatmap is not None:
        picture = heatmap_overlay(picture, heatmap, opacity)
    if lungs:
        picture = mask_overlay(picture, analysis.lungs.labels[index] > 0, LUNG_COLOR, alpha=0.15, contour_width=1)
    if infection and analysis.infection is not None:
        picture = mask_overlay(picture, analysis.infection[index], INFECTION_COLOR, alpha=0.5, contour_width=0)
    return picture


def coronal_picture(analysis: ScanAnalysis, row: int, window: tuple[float, float] = WINDOW_PRESETS["lung"], *,
                    lungs: bool = True, infection: bool = True, current: int | None = None) -> np.ndarray:
    """A coronal plane (head up) through `row`, stretched to true proportions; `current` marks the axial slice."""
    picture = to_rgb(apply_window(analysis.display_hu[:, row, :], *window))
    if lungs:
        picture = mask_overlay(picture, analysis.lungs.labels[:, row, :] > 0, LUNG_COLOR, alpha=0.15, contour_width=1)
    if infection and analysis.infection is not None:
        picture = mask_overlay(picture, analysis.infection[:, row, :], INFECTION_COLOR, alpha=0.5, contour_width=0)
    if current is not None:
        picture[current, :] = (255, 210, 0)
    slice_mm, _, column_mm = analysis.lungs.spacing
    height = max(1, round(picture.shape[0] * slice_mm / column_mm))
    return np.asarray(Image.fromarray(picture).resize((picture.shape[1], height), Image.Resampling.NEAREST))


def probability_figure(analysis: ScanAnalysis, current: int | None = None) -> go.Figure:
    """Per-slice probability (head on the left), the slice operating point, the scan-level value, the current slice."""
    slices = np.arange(len(analysis.slice_probabilities))
    values = [None if np.isnan(v) else float(v) for v in analysis.slice_probabilities]
    positive = class_name(analysis.positive_class)
    figure = go.Figure(go.Scatter(x=slices, y=values, mode="lines+markers", marker={"size": 4},
                                  name=f"{positive} probability", connectgaps=False))
    figure.add_hline(y=analysis.threshold, line_dash="dash", line_color="#b45309",
                     annotation_text=f"slice operating point {analysis.threshold:.0%}")
    if analysis.scan_probability is not None:
        figure.add_hline(y=analysis.scan_probability, line_dash="dot", line_color="#1d4ed8",
                         annotation_text=f"scan level {analysis.scan_probability:.0%}",
                         annotation_position="bottom right")
    if current is not None:
        figure.add_vline(x=current, line_color="#dc2626", annotation_text=f"slice {current + 1}")
    figure.update_layout(height=280, margin={"l": 40, "r": 20, "t": 20, "b": 40}, showlegend=False,
                         xaxis_title="slice (head to feet; gaps: no lung, not scored)",
                         yaxis_title="probability", yaxis_range=[0, 1])
    return figure


def burden_rows(analysis: ScanAnalysis) -> list[tuple[str, ...]]:
    """The burden table, header first: one row per zone, then each lung, then the total."""
    burden = analysis.burden
    if burden is None:
        return []
    rows: list[tuple[str, ...]] = [("Lung", "Zone", "Lung (ml)", "Infection (ml)", "Involved", "Score (0-5)")]
    for zone in burden.zones:
        rows.append((zone.lung, zone.zone, f"{zone.lung_ml:.0f}", f"{zone.lesion_ml:.1f}", f"{zone.percent:.1f} %",
                     str(zone.score)))
    for label, side in ((RIGHT, "right"), (LEFT, "left")):
        rows.append((side, "whole lung", f"{analysis.lungs.volume_ml(label):.0f}",
                     f"{burden.infection_ml_by_lung[side]:.1f}", f"{burden.percent_by_lung[side]:.1f} %", ""))
    rows.append(("both", "total", f"{sum(burden.lung_ml.values()):.0f}", f"{burden.infection_ml:.1f}",
                 f"{burden.percent:.1f} %", f"{burden.severity_score} / 30"))
    return rows


def scan_facts(analysis: ScanAnalysis) -> list[tuple[str, str]]:
    """Model, rule, operating point and scan geometry as (field, value) rows (the page's caption and the report)."""
    metadata = analysis.metadata
    spacing = " x ".join(f"{v:.2f}" for v in metadata.spacing)
    facts = [("Volume", f"{metadata.shape[0]} slices of {metadata.shape[2]} x {metadata.shape[1]}, spacing "
                        f"{spacing} mm ({metadata.source_format})"),
             ("Slices scored", f"{int(analysis.scored.sum())} of {metadata.shape[0]}"),
             ("Lungs", f"right {analysis.lungs.volume_ml(RIGHT):.0f} ml, left {analysis.lungs.volume_ml(LEFT):.0f} ml"
                       " (classical HU mask)")]
    if analysis.burden is not None and analysis.burden.model:
        facts.append(("Infection model", analysis.burden.model))
    facts.append(("Secondary classifier", f"{analysis.classifier}; {analysis.rule}; operating point "
                                          f"{analysis.threshold:.1%} per slice, chosen by: {analysis.operating_point}"))
    if analysis.out_of_distribution_share > 0:
        facts.append(("Out of distribution", f"{analysis.out_of_distribution_share:.0%} of the scored slices "
                                             "(secondary classifier's guard)"))
    return facts


def unit_name(reading: QuantitativeReading) -> str:
    return "ml" if reading.unit == "ml" else "cm²"


def reading_rows(reading: QuantitativeReading) -> list[tuple[str, str]]:
    """The quantitative reading as (figure, value) rows: lungs, density bands, lesion, distribution, severity."""
    unit = unit_name(reading)
    rows = [("Lungs", f"right {reading.lung['right']:.0f} {unit}, left {reading.lung['left']:.0f} {unit}, total "
                      f"{reading.lung_total:.0f} {unit} (classical HU mask)")]
    rows += [(f"{band.name.capitalize()} ({band.limits})", f"{reading.bands[band.name]:.1f} % of lung")
             for band in DENSITY_BANDS]
    if reading.held_back:
        return rows  # lungs and density say why; no lesion or score of a held-back scan
    if reading.lesion is None:
        rows.append(("Lesion", "no infection model: not measured"))
        return rows
    digits = 1 if reading.unit == "ml" else 2
    rows.append(("Lesion", f"right {reading.lesion['right']:.{digits}f} {unit} ({reading.lesion_percent('right'):.2f} "
                           f"%), left {reading.lesion['left']:.{digits}f} {unit} "
                           f"({reading.lesion_percent('left'):.2f} %), total {reading.lesion_total:.{digits}f} {unit} "
                           f"({reading.lesion_percent():.2f} % of lung)"))
    if reading.lesion_total:
        dense = ", ".join(f"{name} {value:.0f} %" for name, value in (reading.lesion_bands or {}).items() if value)
        rows.append(("Lesion density", dense))
        rows.append(("Distribution", ("bilateral" if reading.bilateral else "one lung") +
                     f"; {reading.peripheral:.0f} % of the lesion in the outer third (the lungs' own share there: "
                     f"{reading.lung_peripheral:.0f} %)" + ("; zones: " + ", ".join(
                         f"{zone} {share:.0f} %" for zone, share in reading.zone_shares.items()) if reading.zones
                         else "")))
    if reading.severity_score is not None:
        rows.append(("Severity score", f"{reading.severity_score} / {5 * len(reading.zones)} ({SEVERITY_SOURCE}; six "
                                       "zones, thirds of each lung's height, approximate the lobes)"))
    return rows


def criteria_rows(reading: QuantitativeReading) -> list[tuple[str, ...]]:
    """The COVID-19 pattern rule's criteria, header first; empty when the rule was not applied."""
    if not reading.criteria:
        return []
    return [("Criterion", "Measured", "Needed", "Met"),
            *((c.name, c.value, c.needed, "yes" if c.met else "no") for c in reading.criteria)]


def secondary_sentence(analysis: ScanAnalysis) -> str:
    """The figure-crop classifier's scan-level reading, labelled as secondary; withheld when it may not be read."""
    if analysis.held_back:
        return "Secondary reading: none, the scan is held back."
    if analysis.secondary_held_back:
        reason = ("no slice with lung" if analysis.scan_probability is None else
                  f"{analysis.out_of_distribution_share:.0%} of the scored slices are unlike its training slices")
        return f"{SECONDARY_LABEL} Withheld: {reason}."
    return SECONDARY_LABEL + " " + scan_result_sentence(analysis.scan_probability, analysis.threshold,
                                                        analysis.positive_class, analysis.top_k)


def key_slice_pictures(analysis: ScanAnalysis) -> list[tuple[str, np.ndarray]]:
    """(caption, picture) of each key slice under the lung window with its masks: the report's and the review's
    (none for a held-back scan: a key slice is a finding)."""
    if analysis.held_back:
        return []
    return [(f"Slice {index + 1}: {why}", axial_picture(analysis, index)) for why, index in analysis.key_slices.items()]


def scan_report_content(analysis: ScanAnalysis, file_name: str) -> ScanReportContent:
    """The report of one analysed scan: result, burden table and the key slices with their masks."""
    held = analysis.held_back
    return ScanReportContent(
        file_name=file_name, facts=scan_facts(analysis), result=analysis.reading.verdict,
        burden_rows=[] if held else burden_rows(analysis), burden_note=BURDEN_LABEL,
        key_slices=key_slice_pictures(analysis), limits=MODEL_LIMITS, reading_rows=reading_rows(analysis.reading),
        criteria_rows=[] if held else criteria_rows(analysis.reading), secondary=secondary_sentence(analysis))
