"""The model's reading of a Review item, made as the other pages make it: an image screened and predicted as at every
door (`image_checks.screen`, the library's `predict`), analysed as on the Analyze page (from the analyses cache the
pages share), a whole CT scan analysed as on the CT scan page (its analysis kept in a bounded server cache, never its
bytes), and the label the reviewer agrees or disagrees with; `pacs_hooks` lends them to the PACS source.

Separate from the drawing: starting a session, showing an item and the PACS source read items the same way.
"""
from __future__ import annotations

import streamlit as st

from covid_models.analysis.image_analysis import Analysis, analyse, predict
from covid_models.analysis.image_checks import check_models, screen
from covid_models.analysis.scan_analysis import ScanAnalysis
from covid_models.imaging.io import read_image
from covid_models.imaging.scan import ImageReadError
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.inference import Prediction
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import ItemView
from pages.review_pacs import PageHooks
from pages.review_state import MESSAGE_KEY, open_session
from pages.shared import (
    LruCache,
    analyses,
    analysis_key,
    hold_for,
    infection_models,
    load_classifier,
    load_segmenter,
    model_lock,
    run_scan_analysis,
    segmenters_for,
    weights_dir,
)

HEATMAP_METHOD = "gradcam"  # fast, and what the Analyze page shows by default (so its cached analyses serve here)
SCAN_CACHE_BYTES = 256 * 1024 * 1024  # analysed scans of all reviewers: about 70 MB for a 255-slice 512 px scan


@st.cache_resource(show_spinner=False)
def review_scans() -> LruCache:
    """Analysed scans by `scan_key`, bounded in bytes: what a scan item shows, without the scan's bytes."""
    return LruCache(SCAN_CACHE_BYTES, size=lambda analysis: analysis.nbytes)


def scan_key(reviewer: Reviewer, digest: str, directory: str | None) -> tuple:
    """A reviewer's scan is never shown to another reviewer (as with uploads); the model is part of its reading."""
    return reviewer.key, digest, directory


@st.cache_data(max_entries=512, show_spinner=False)
def screening(digest: str, directory: str, _data: bytes, _name: str) -> tuple[str, str, Prediction]:
    """(status, why, prediction) of an upload screened as at every door (`image_checks.screen`: the chest-image and
    modality checks, then the model's guard); the prediction is stored with the session only when not refused."""
    classifier = load_classifier(directory)
    models = check_models(classifier, weights_dir(), load_classifier, load_segmenter)
    screened = screen(read_image(_data, name=_name), _data, classifier, models,
                      hold_for({directory: classifier, **models.directories}))
    return screened.status, screened.reason, screened.prediction


@st.cache_data(max_entries=512, show_spinner=False)
def prediction(digest: str, directory: str, _data: bytes, _name: str) -> Prediction:
    """The model's calibrated prediction, stored with the session (the library's `predict`, as on Analyze)."""
    return predict(read_image(_data, name=_name), [load_classifier(directory)], lambda _: model_lock(directory))


def held_back(item: ItemView, data: bytes | None, directory: str | None) -> bool:
    """Whether the model holds its reading of the image back (out of distribution): as stored with the session, or,
    for a session stored before that was kept, as the model says now; False when that cannot be known (the image not
    on the server, the model gone or unreadable)."""
    if item.held_back:
        return True
    if data is None or directory is None:
        return False
    try:
        return prediction(item.image_hash, directory, data, item.display_name).out_of_distribution
    except (ImageReadError, CheckpointError):
        return False


def review_analysis(digest: str, name: str, data: bytes, directory: str, modality: str) -> Analysis:
    """The image's analysis as the Analyze page makes it (Grad-CAM, the modality's masks), from the cache the two
    pages share, else computed under the models' locks; only ever asked for by a page that holds the image."""
    segmenters = segmenters_for(modality)
    key = analysis_key(digest, [directory], HEATMAP_METHOD, segmenters)
    found = analyses().get(key)
    if found is None:
        classifier = load_classifier(directory)
        with st.spinner("Analysing the image..."):
            found = analyse(read_image(data, name=name), [classifier], list(segmenters.values()),
                            method=HEATMAP_METHOD, hold=hold_for({directory: classifier, **segmenters}))
        analyses().put(key, found)
    return found


def review_scan(reviewer: Reviewer, files: list[tuple[str, bytes]], digest: str, directory: str) -> ScanAnalysis:
    """The scan analysed as the CT scan page does (the largest axial series, the first infection model), kept in the
    server's scan cache."""
    analysis = run_scan_analysis(files, None, directory, next(iter(infection_models()), None))
    review_scans().put(scan_key(reviewer, digest, directory), analysis)
    return analysis


def pacs_hooks() -> PageHooks:
    """What the "From PACS" source (pages/review_pacs.py) uses of the Review page."""
    return PageHooks(review_scan, open_session, MESSAGE_KEY)
