"""Pictures, tables and figures of a `ScanAnalysis` for people: the scan page and the scan report draw these.

Everything works on the analysis's display grid (`ScanAnalysis.display_hu`, aligned with its masks), so moving the
slice slider or changing the window preset only re-windows a small int16 slice: no model runs again.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from covid_models.io import WINDOW_PRESETS, apply_window
from covid_models.lung_mask import LEFT, RIGHT
from covid_models.overlays import INFECTION_COLOR, LUNG_COLOR, heatmap_overlay, mask_overlay, to_rgb
from covid_models.report import ScanReportContent, class_name, scan_result_sentence
from covid_models.scan_analysis import BURDEN_LABEL, ScanAnalysis

DISPLAY_WINDOWS = WINDOW_PRESETS  # display only: the models always get their card's window
MODEL_LIMITS = (
    "What the model cannot do: the CT classifier was trained on single slices cropped from figures of published "
    "papers (the UCSD COVID-CT collection), not on hospital scans, and it scores slices one by one; the scan-level "
    "rule (mean of the top 10 % of slice probabilities) and the slice operating point have not been validated on "
    "whole scans. The infection burden is an estimate from a 2-D model trained on 48 slices. Three shared scans "
    "(one COVID-19, two not) are a smoke test of the pipeline, not an evaluation."
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
        rows.append((zone.lung, zone.zone, f"{zone.lung_ml:.0f}", f"{zone.infection_ml:.1f}", f"{zone.percent:.1f} %",
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
    facts = [("Model", analysis.classifier), ("Scan-level rule", analysis.rule),
             ("Operating point", f"{analysis.threshold:.1%} per slice, chosen by: {analysis.operating_point}"),
             ("Volume", f"{metadata.shape[0]} slices of {metadata.shape[2]} x {metadata.shape[1]}, spacing "
                        f"{spacing} mm ({metadata.source_format})"),
             ("Slices scored", f"{int(analysis.scored.sum())} of {metadata.shape[0]}"),
             ("Lungs", f"right {analysis.lungs.volume_ml(RIGHT):.0f} ml, left {analysis.lungs.volume_ml(LEFT):.0f} ml"
                       " (classical HU mask)")]
    if analysis.out_of_distribution_share > 0:
        facts.append(("Out of distribution", f"{analysis.out_of_distribution_share:.0%} of the scored slices"))
    if analysis.burden is not None and analysis.burden.model:
        facts.append(("Infection model", analysis.burden.model))
    return facts


def key_slice_pictures(analysis: ScanAnalysis) -> list[tuple[str, np.ndarray]]:
    """(caption, picture) of each key slice under the lung window with its masks: the report's and the review's."""
    return [(f"Slice {index + 1}: {why}", axial_picture(analysis, index)) for why, index in analysis.key_slices.items()]


def scan_report_content(analysis: ScanAnalysis, file_name: str) -> ScanReportContent:
    """The report of one analysed scan: result, burden table and the key slices with their masks."""
    return ScanReportContent(
        file_name=file_name, facts=scan_facts(analysis),
        result=scan_result_sentence(analysis.scan_probability, analysis.threshold, analysis.positive_class,
                                    analysis.top_k),
        burden_rows=burden_rows(analysis), burden_note=BURDEN_LABEL, key_slices=key_slice_pictures(analysis),
        limits=MODEL_LIMITS)
