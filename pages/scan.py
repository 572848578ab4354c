"""CT scan: upload a whole series (zip, DICOM files) or a NIfTI volume and see its quantitative reading and burden.

The analysis (`covid_models.analysis.scan_analysis.analyse_scan`) runs once per upload content, series and models, with
a progress bar, and is kept in this browser session (the last `KEPT_SCANS` scans, about 70 MB each for a 255-slice 512 x
512 scan: masks and display HU on a 256 x 256 grid). Moving the slice or row slider, changing the window preset or the
overlays only re-draws pictures from it; the heatmap of the current slice is computed on request.
"""
from __future__ import annotations

import streamlit as st

from covid_models import RESEARCH_USE_NOTICE
from covid_models.analysis.report import render_scan_html, render_scan_pdf
from covid_models.analysis.scan_analysis import ScanAnalysis
from covid_models.analysis.scan_views import scan_report_content
from covid_models.imaging.ct_volume import SUPPORTED_VOLUMES, VolumeReadError
from covid_models.imaging.io import content_hash, files_hash
from covid_models.models.checkpoint import CheckpointError
from pages.scan_viewer import scan_viewer
from pages.shared import (
    LruCache,
    burden_block,
    enter_through_app,
    infection_models,
    model_cards,
    run_scan_analysis,
    scan_result_block,
    show_error,
)

enter_through_app()

KEPT_SCANS = 2
NO_SEGMENTER = ""


def session_scans() -> LruCache:
    """This session's analysed scans, the least recently used dropped beyond KEPT_SCANS."""
    if "scan-cache" not in st.session_state:
        st.session_state["scan-cache"] = LruCache(KEPT_SCANS, size=lambda _value: 1)
    return st.session_state["scan-cache"]


def upload_digest(uploaded: list) -> str:
    """One hash for the upload's content: the sorted hashes of its files (names and order do not matter).

    Each file is hashed once per upload (by its file id), not on every rerun.
    """
    hashes: dict[str, str] = st.session_state.setdefault("scan-file-hashes", {})
    for file in uploaded:
        if file.file_id not in hashes:
            hashes[file.file_id] = content_hash(file.getvalue())
    return files_hash([hashes[file.file_id] for file in uploaded])


def model_choice() -> tuple[str | None, str | None]:
    with st.sidebar:
        st.subheader("Scan settings")
        classifiers = dict(model_cards(task="classification", modality="ct"))
        if not classifiers:
            st.caption("No CT classifier is installed.")
            return None, None
        classifier = st.selectbox("CT model", list(classifiers), format_func=lambda d: classifiers[d].name,
                                  key="scan-model")
        segmenters = infection_models()
        options = [*segmenters, NO_SEGMENTER]
        segmenter = st.selectbox("Infection model", options, key="scan-segmenter",
                                 format_func=lambda d: segmenters[d].name if d else "None (no burden)")
    return classifier, segmenter or None


def analyse(files: list[tuple[str, bytes]], digest: str, series: int | None, classifier_dir: str,
            segmenter_dir: str | None) -> ScanAnalysis:
    """The upload read and analysed with a progress bar, or this session's earlier result for the same input."""
    key = (digest, series, classifier_dir, segmenter_dir)
    cached = session_scans().get(key)
    if cached is not None:
        return cached
    analysis = run_scan_analysis(files, series, classifier_dir, segmenter_dir)
    session_scans().put(key, analysis)
    return analysis


def report_block(analysis: ScanAnalysis, name: str) -> None:
    content = scan_report_content(analysis, name)
    left, right = st.columns(2)
    left.download_button("Download the report (HTML)", render_scan_html(content), file_name="ct-scan-report.html",
                         mime="text/html", icon=":material/download:", key="scan-report-html")
    right.download_button("Download the report (PDF)", render_scan_pdf(content), file_name="ct-scan-report.pdf",
                          mime="application/pdf", icon=":material/download:", key="scan-report-pdf")


# -------------------------------------------------------------------------------------------------- page
st.title("Analyze a CT scan")
st.warning(RESEARCH_USE_NOTICE, icon=":material/health_and_safety:")
classifier_dir, segmenter_dir = model_choice()
uploaded = st.file_uploader(
    "A chest CT scan: a zip of the series, the DICOM files of one series (select them all), or a NIfTI volume",
    accept_multiple_files=True, key="scan-uploads",
    help="Nested folders in a zip are fine. Several series: the largest axial CT is read and the others listed.")
if not uploaded:
    st.info(SUPPORTED_VOLUMES, icon=":material/upload:")
    st.stop()
if classifier_dir is None:
    st.warning("No CT classifier is installed, so scans cannot be analysed.")
    st.stop()
files = [(file.name, file.getvalue()) for file in uploaded]
name = files[0][0] if len(files) == 1 else f"{len(files)} files"
digest = upload_digest(uploaded)
known = st.session_state.get("scan-series-labels", {}).get(digest, [])
series_index = None
if len(known) > 1:  # drawn before the analysis, so that a series that cannot be read can be changed back
    series_index = st.selectbox("Series", [None, *range(len(known))], key=f"scan-series-{digest[:16]}",
                                format_func=lambda i: "Largest axial CT (default)" if i is None else known[i])
try:
    result = analyse(files, digest, series_index, classifier_dir, segmenter_dir)
except VolumeReadError as error:
    show_error(str(error))
    st.stop()
except CheckpointError as error:
    show_error(f"The model could not be loaded: {error}")
    st.stop()
labels = [info.label for info in result.metadata.series]
st.session_state["scan-series-labels"] = {digest: labels}
if len(labels) > 1 and not known:
    st.rerun()  # shows the series selector; the analysis is kept
if result.metadata.notes:
    st.caption("Reading notes: " + "; ".join(result.metadata.notes))
scan_result_block(result)
scan_viewer(result, classifier_dir)
burden_block(result)
report_block(result, name)
