"""One-page reports of an analysed image: a self-contained HTML page and a PDF.

A report carries the image, its heatmap overlay, the calibrated probabilities, the operating point and
how it was chosen, the model, and the research-use notice. It names the file by its bare name only and
carries no header field of the file, so a report can be shared without leaking patient identifiers.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from covid_models import RESEARCH_USE_NOTICE, __version__
from covid_models.formatting import class_name
from covid_models.imaging.filenames import bare_file_name
from covid_models.models.inference import Prediction
from covid_models.models.model_card import modality_name

HELD_BACK = ("This image does not look like the chest images the model was trained on; the prediction is held "
             "back: no probability, heatmap or mask is given for it.")


@dataclass(frozen=True)
class ReportContent:
    """What a report shows; built by the app from one analysed image."""

    file_name: str
    modality: str
    prediction: Prediction
    operating_point: str  # the rule by which the threshold was chosen, as the card states it
    explanation: str  # the CAM method's label
    image: np.ndarray  # (H, W) grey in [0, 1] or (H, W, 3) uint8
    overlay: np.ndarray | None  # (H, W, 3) uint8: the heatmap (and masks) over the image; None when held back
    lung_share: float | None = None  # share of the heatmap inside the lung mask, when one was computed
    warnings: tuple[str, ...] = ()  # every warning the page shows with the result, in its words
    rendering: str = ""  # how the pictures were drawn (fixed for reports, whatever the screen shows)
    colour_scale: np.ndarray | None = None  # (h, w, 3) uint8 bar of the heatmap's colours, low to high
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W) float in [0, 1] or uint8 grey/RGB -> PNG bytes."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def result_sentence(prediction: Prediction) -> str:
    """The calibrated positive probability against the operating point, in words."""
    if prediction.out_of_distribution:
        return "Prediction held back: the image is out of distribution."
    if prediction.positive_probability is None:
        return f"Most probable class: {class_name(prediction.label)}."
    side = "at or above" if prediction.positive else "below"
    call = "flagged for review as suggestive of" if prediction.positive else "not flagged for"
    positive = class_name(prediction.positive_class)
    return (f"{positive} probability {prediction.positive_probability:.1%}, {side} the operating "
            f"point {prediction.threshold:.1%}: {call} {positive}.")


def _rows(content: ReportContent) -> list[tuple[str, str]]:
    rows = [("File", bare_file_name(content.file_name)), ("Modality", modality_name(content.modality)),
            ("Model", content.prediction.model), ("Operating point", content.operating_point),
            ("Explanation", content.explanation)]
    if content.lung_share is not None and not content.prediction.out_of_distribution:
        rows.append(("Heatmap inside the lungs", f"{content.lung_share:.0%}"))
    if content.rendering:
        rows.append(("Rendering", content.rendering))
    rows.append(("Created", content.created.strftime("%Y-%m-%d %H:%M UTC") + f" (covid_models {__version__})"))
    return rows


def render_html(content: ReportContent) -> str:
    """A self-contained HTML page (images inlined as base64 PNG)."""
    def img(array: np.ndarray, alt: str) -> str:
        data = base64.b64encode(png_bytes(array)).decode("ascii")
        return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'

    esc = html.escape
    prediction = content.prediction
    facts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _rows(content))
    held_back = prediction.out_of_distribution
    probabilities = "" if held_back else "<table><tr><th>Class</th><th>Calibrated probability</th></tr>" + "".join(
        f"<tr><td>{esc(class_name(c))}</td><td>{p:.1%}</td></tr>"
        for c, p in sorted(prediction.probabilities.items(), key=lambda item: -item[1])) + "</table>"
    warnings = "".join(f'<p class="warn">{esc(text)}</p>' for text in
                       ((HELD_BACK,) if held_back else ()) + content.warnings)
    pictures = img(content.image, "Image")
    if content.overlay is not None and not held_back:
        pictures += img(content.overlay, content.explanation + " heatmap")
        if content.colour_scale is not None:
            pictures += img(content.colour_scale, "Colour scale: low (left) to high (right) contribution")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Screening report: {esc(bare_file_name(content.file_name))}</title>
<style>
body {{ font-family: system-ui, sans-serif; color: #1f2933; max-width: 60rem; margin: 2rem auto; }}
.notice {{ border: 2px solid #b45309; background: #fffbeb; padding: .75rem 1rem; font-weight: 600; }}
.warn {{ border-left: 4px solid #b91c1c; background: #fef2f2; padding: .5rem 1rem; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ text-align: left; padding: .25rem .75rem; }}
th {{ color: #52606d; font-weight: 500; }} .images {{ display: flex; gap: 1rem; }}
figure {{ margin: 0; flex: 1; }} img {{ width: 100%; image-rendering: auto; }}
</style></head><body>
<h1>Chest {esc(modality_name(content.modality))} screening report</h1>
<p class="notice">{esc(RESEARCH_USE_NOTICE)}</p>
<table>{facts}</table>
<h2>Result</h2>
{warnings}<p><strong>{esc(result_sentence(prediction))}</strong></p>
{probabilities}
<div class="images">{pictures}</div>
<p class="notice">{esc(RESEARCH_USE_NOTICE)}</p>
</body></html>
"""


def _latin1(text: str) -> str:
    """The PDF core fonts cover Latin-1 only; anything else becomes '?' rather than failing."""
    return text.replace("\u2013", "-").replace("\u2014", "-").encode("latin-1", "replace").decode("latin-1")


def _new_pdf(title: str, heading: str):
    """An A4 one-page PDF with its title, creator and heading written; returns it and its text width (mm)."""
    from fpdf import FPDF

    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(False)
    pdf.set_title(_latin1(title))
    pdf.set_creator(f"covid_models {__version__}")
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(width, 9, _latin1(heading), new_x="LMARGIN", new_y="NEXT")
    return pdf, width


def render_pdf(content: ReportContent) -> bytes:
    """An A4 one-page PDF with the same content as the HTML report."""
    pdf, width = _new_pdf(f"Screening report: {bare_file_name(content.file_name)}",
                          f"Chest {modality_name(content.modality)} screening report")
    _notice(pdf, width)
    pdf.ln(2)
    pdf.set_font("Helvetica", "", 9.5)
    for key, value in _rows(content):
        pdf.set_font("Helvetica", "B", 9.5)
        pdf.cell(45, 5.5, _latin1(key))
        pdf.set_font("Helvetica", "", 9.5)
        pdf.multi_cell(width - 45, 5.5, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(width, 7, "Result", new_x="LMARGIN", new_y="NEXT")
    prediction = content.prediction
    held_back = prediction.out_of_distribution
    pdf.set_text_color(185, 28, 28)
    pdf.set_font("Helvetica", "B", 9.5)
    for warning in ((HELD_BACK,) if held_back else ()) + content.warnings:
        pdf.multi_cell(width, 5, _latin1(warning), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "B", 10)
    pdf.multi_cell(width, 5.5, _latin1(result_sentence(prediction)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9.5)
    for name, probability in () if held_back else sorted(prediction.probabilities.items(), key=lambda item: -item[1]):
        pdf.cell(45, 5.5, _latin1(class_name(name)))
        pdf.cell(30, 5.5, f"{probability:.1%}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    top = pdf.get_y()
    side = (width - 6) / 2
    panels = [(content.image, "Image")]
    if content.overlay is not None and not held_back:
        panels.append((content.overlay, f"{content.explanation} heatmap"))
    for index, (array, caption) in enumerate(panels):
        x = pdf.l_margin + index * (side + 6)
        picture = Image.open(io.BytesIO(png_bytes(array)))
        height = min(side * picture.height / picture.width, pdf.h - top - 45)
        pdf.image(picture, x=x, y=top, w=height * picture.width / picture.height, h=height)
        pdf.set_xy(x, top + height + 1)
        pdf.set_font("Helvetica", "I", 8.5)
        pdf.cell(side, 4, _latin1(caption))
        if index == 1 and content.colour_scale is not None:
            pdf.image(Image.open(io.BytesIO(png_bytes(content.colour_scale))), x=x, y=top + height + 6, w=side / 2,
                      h=3)
            pdf.set_xy(x + side / 2 + 2, top + height + 5.5)
            pdf.cell(side / 2, 4, "colour scale: low to high")
    pdf.set_y(pdf.h - 30)
    _notice(pdf, width)
    return bytes(pdf.output())


def _notice(pdf, width: float) -> None:
    pdf.set_fill_color(255, 251, 235)
    pdf.set_draw_color(180, 83, 9)
    pdf.set_font("Helvetica", "B", 9.5)
    pdf.multi_cell(width, 5, _latin1(RESEARCH_USE_NOTICE), border=1, fill=True, padding=2,
                   new_x="LMARGIN", new_y="NEXT")


# ------------------------------------------------------------------------------------------------ CT scans
@dataclass(frozen=True)
class ScanReportContent:
    """What a scan report shows; built from one `ScanAnalysis` (see `scan_report_content`)."""

    file_name: str
    facts: list[tuple[str, str]]  # (field, value): model, rule, operating point, slices, lungs
    result: str  # the scan-level sentence
    burden_rows: list[tuple[str, ...]]  # header first
    burden_note: str
    key_slices: list[tuple[str, np.ndarray]]  # (caption, (H, W, 3) uint8 picture)
    limits: str  # what the model cannot do
    reading_rows: list[tuple[str, str]] = field(default_factory=list)  # the quantitative reading (figure, value)
    criteria_rows: list[tuple[str, ...]] = field(default_factory=list)  # the COVID-19 pattern rule, header first
    secondary: str = ""  # the figure-crop classifier's reading, labelled as secondary
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


def scan_result_sentence(probability: float | None, threshold: float, positive_class: str, top_k: int) -> str:
    """The scan-level probability against the operating point, in words."""
    if probability is None:
        return "No slice with lung was found, so the scan was not scored."
    positive = class_name(positive_class)
    side = "at or above" if probability >= threshold else "below"
    return (f"Scan-level {positive} probability {probability:.1%} (mean of the top {top_k} slices), {side} the "
            f"slice operating point {threshold:.1%}.")


def render_scan_html(content: ScanReportContent) -> str:
    """A self-contained HTML page for a CT scan (key slices inlined as base64 PNG)."""
    esc = html.escape

    def img(array: np.ndarray, alt: str) -> str:
        data = base64.b64encode(png_bytes(array)).decode("ascii")
        return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"><figcaption>{esc(alt)}' \
               "</figcaption></figure>"

    facts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in
                    [("File", bare_file_name(content.file_name)), *content.facts,
                     ("Created", content.created.strftime("%Y-%m-%d %H:%M UTC") + f" (covid_models {__version__})")])
    def table(rows_with_header: list[tuple[str, ...]]) -> str:
        header, *rows = rows_with_header or [()]
        return "<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>"

    burden = table(content.burden_rows) if content.burden_rows else "<p>None shown.</p>"
    reading = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in content.reading_rows)
    criteria = table(content.criteria_rows) if content.criteria_rows else ""
    figures = "".join(img(picture, caption) for caption, picture in content.key_slices)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CT scan report: {esc(bare_file_name(content.file_name))}</title>
<style>
body {{ font-family: system-ui, sans-serif; color: #1f2933; max-width: 60rem; margin: 2rem auto; }}
.notice {{ border: 2px solid #b45309; background: #fffbeb; padding: .75rem 1rem; font-weight: 600; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ text-align: left; padding: .25rem .75rem; }}
th {{ color: #52606d; font-weight: 500; }} .images {{ display: flex; gap: 1rem; }}
figure {{ margin: 0; flex: 1; }} img {{ width: 100%; }}
</style></head><body>
<h1>Chest CT scan screening report</h1>
<p class="notice">{esc(RESEARCH_USE_NOTICE)}</p>
<table>{facts}</table>
<h2>Result</h2>
<p><strong>{esc(content.result)}</strong></p>
{criteria}
<h2>Quantitative reading (HU)</h2>
<table>{reading}</table>
<h2>Infection burden</h2>
<p>{esc(content.burden_note)}</p>
{burden}
<p>{esc(content.secondary)}</p>
<h2>Key slices</h2>
<div class="images">{figures}</div>
<p>{esc(content.limits)}</p>
<p class="notice">{esc(RESEARCH_USE_NOTICE)}</p>
</body></html>
"""


def _pdf_pairs(pdf, width: float, rows, *, key_width: float, size: float, height: float) -> None:
    """Key (bold) and value rows, the value wrapping beside its key."""
    for key, value in rows:
        pdf.set_font("Helvetica", "B", size)
        pdf.cell(key_width, height, _latin1(key))
        pdf.set_font("Helvetica", "", size)
        pdf.multi_cell(width - key_width, height, _latin1(value), new_x="LMARGIN", new_y="NEXT")


def _pdf_table(pdf, width: float, rows: list[tuple[str, ...]], height: float) -> None:
    """A bordered table, header row in bold (nothing for no rows)."""
    if not rows:
        return
    columns = len(rows[0])
    for number, row in enumerate(rows):
        pdf.set_font("Helvetica", "B" if number == 0 else "", 7.5)
        for cell in row:
            pdf.cell(width / columns, height, _latin1(str(cell)), border=1)
        pdf.ln(height)
    pdf.ln(1)


def render_scan_pdf(content: ScanReportContent) -> bytes:
    """An A4 one-page PDF with the same content as the scan's HTML report."""
    pdf, width = _new_pdf(f"CT scan report: {bare_file_name(content.file_name)}", "Chest CT scan screening report")
    _notice(pdf, width)
    pdf.ln(2)
    facts = [("File", bare_file_name(content.file_name)), *content.facts,
             ("Created", content.created.strftime("%Y-%m-%d %H:%M UTC") + f" (covid_models {__version__})")]
    _pdf_pairs(pdf, width, facts, key_width=42, size=8.5, height=4.5)
    pdf.ln(1)
    pdf.set_font("Helvetica", "B", 10)
    pdf.multi_cell(width, 5, _latin1(content.result), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    _pdf_table(pdf, width, content.criteria_rows, 4)
    _pdf_pairs(pdf, width, content.reading_rows, key_width=50, size=7.5, height=3.6)
    pdf.ln(1)
    pdf.set_font("Helvetica", "I", 7.5)
    pdf.multi_cell(width, 3.6, _latin1(content.burden_note), new_x="LMARGIN", new_y="NEXT")
    _pdf_table(pdf, width, content.burden_rows, 3.8)
    pdf.set_font("Helvetica", "", 7.5)
    pdf.multi_cell(width, 3.6, _latin1(content.secondary), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    top = pdf.get_y()
    count = max(1, len(content.key_slices))
    side = (width - 6 * (count - 1)) / count
    room = pdf.h - top - 50  # the pictures take what is left above the limits and the notice
    for index, (caption, picture_array) in enumerate(content.key_slices if room > 20 else []):
        x = pdf.l_margin + index * (side + 6)
        picture = Image.open(io.BytesIO(png_bytes(picture_array)))
        height = min(side * picture.height / picture.width, room)
        pdf.image(picture, x=x, y=top, w=height * picture.width / picture.height, h=height)
        pdf.set_xy(x, top + height + 1)
        pdf.set_font("Helvetica", "I", 8)
        pdf.multi_cell(side, 4, _latin1(caption))
    pdf.set_y(pdf.h - 42)
    pdf.set_font("Helvetica", "", 7.5)
    pdf.multi_cell(width, 3.6, _latin1(content.limits), new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(pdf.h - 24)
    _notice(pdf, width)
    return bytes(pdf.output())
