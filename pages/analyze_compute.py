"""The Analyze page's model work, each piece done once per image and kept in bounded server caches: decoding, the
chest-image check (whose guard pass and lung mask the analysis reuses), the prediction, the analysis (a slow heatmap
one at a time on the server, on private copies of the networks, with a cancel), a DICOM CT slice's reading in HU,
and the windowed display image.

Separate from the layout so that a rerun (a slider, a toggle, a window) draws from these caches and runs no model.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import streamlit as st

from covid_models.analysis.ct_quantitative import SliceQuantities, read_dicom_slice
from covid_models.analysis.explain import METHOD_LABELS, SLOW_METHODS
from covid_models.analysis.image_analysis import Analysis, analyse, predict, private_copy
from covid_models.analysis.image_checks import ImageCheck, check_image, lung_mask
from covid_models.analysis.overlays import display_size, for_display
from covid_models.imaging.io import read_image
from covid_models.imaging.scan import Scan, ScanMetadata, rewindow
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.inference import Classifier, Prediction
from covid_models.models.segmentation import Segmenter
from pages.analyze_inputs import Upload
from pages.analyze_settings import Settings
from pages.shared import (
    LruCache,
    analyses,
    analysis_key,
    hold_for,
    load_classifier,
    load_segmenter,
    model_cards,
    model_lock,
    segmenters_for,
)

SMALL_RESULTS = 4096  # predictions and image checks kept (a few hundred bytes each)
LUNG_MASK_BYTES = 32 * 1024 * 1024  # display-size lung masks kept between the check and the analysis (<= 0.6 MB each)
SLOW_SLOTS = 1  # slow heatmaps computed at once: on a shared server's few cores, more would only slow each other


@st.cache_resource(max_entries=2, show_spinner=False)
def read_scan(digest: str, _data: bytes, name: str) -> Scan:
    """The decoded file, shared by the server's sessions (a Scan is immutable); few kept, as they are full size."""
    return read_image(_data, name=name)


@st.cache_data(max_entries=1024, show_spinner=False)
def scan_facts(digest: str, _data: bytes, name: str) -> tuple[ScanMetadata, bool]:
    """The file's metadata and whether it can be re-windowed: all a rerun needs when the results are cached."""
    scan = read_scan(digest, _data, name)
    return scan.metadata, scan.modality_values is not None


@st.cache_data(max_entries=64, show_spinner=False)
def dicom_slice_reading(digest: str, segmenter_dir: str | None, _upload: Upload) -> SliceQuantities | None:
    """The quantitative reading of a DICOM CT slice in HU, with the first infection model (cached by content)."""
    scan = read_scan(digest, _upload.data, _upload.name)
    if segmenter_dir is None:
        return read_dicom_slice(scan)
    with model_lock(segmenter_dir):
        return read_dicom_slice(scan, load_segmenter(segmenter_dir))


@st.cache_data(max_entries=64, show_spinner=False)
def windowed_image(digest: str, window: tuple[float, float], _upload: Upload) -> np.ndarray:
    """The image under a display window, at display size as uint8: drawn only, never given to a model."""
    scan = read_scan(digest, _upload.data, _upload.name)
    pixels = rewindow(scan, *window)
    return np.round(for_display(pixels, display_size(pixels.shape)) * 255).astype(np.uint8)


@st.cache_resource(show_spinner=False)
def small_results() -> LruCache:
    """Predictions and image checks of the server's sessions by key: small, so counted by number."""
    return LruCache(SMALL_RESULTS, size=lambda _value: 1)


@st.cache_resource(show_spinner=False)
def slow_slots() -> threading.BoundedSemaphore:
    """Slow heatmaps computed at once on the server (each on its own copy of the network); the rest wait in line."""
    return threading.BoundedSemaphore(SLOW_SLOTS)


@st.cache_resource(show_spinner=False)
def lung_masks() -> LruCache:
    """The X-ray lung segmenter's display-size masks by (upload, model): made once for the chest-image check and
    shown again by the analysis."""
    return LruCache(LUNG_MASK_BYTES, size=lambda mask: mask.nbytes)


def lung_segmenter_dir() -> str | None:
    """The installed X-ray lung segmenter, which the chest-image check reads."""
    return next((d for d, card in model_cards("segmentation", "xray") if card.classes == ["lungs"]), None)


def image_check_for(upload: Upload, settings: Settings) -> ImageCheck:
    """Whether the upload is a chest image and which modality it looks like (cached by content and models)."""
    guard_dirs = tuple((modality, dirs[0]) for modality, dirs in sorted(settings.models.items()))
    lung_dir = lung_segmenter_dir()
    key = ("check", upload.digest, guard_dirs, lung_dir)
    found = small_results().get(key)
    if found is None:
        models: dict[str, Classifier | Segmenter] = {}
        for _modality, directory in guard_dirs:
            try:
                models[directory] = load_classifier(directory)
            except CheckpointError:
                continue  # reported where the model is used
        if lung_dir is not None:
            try:
                models[lung_dir] = load_segmenter(lung_dir)
            except CheckpointError:
                lung_dir = None
        guards = {modality: models[d] for modality, d in guard_dirs if d in models}
        scan = read_scan(upload.digest, upload.data, upload.name)
        with st.spinner("Checking that this is a chest image..."):
            lungs = None
            if lung_dir is not None:
                lungs = lung_mask(models[lung_dir], scan, hold_for(models))
                lung_masks().put((upload.digest, lung_dir), lungs)
            found = check_image(scan, upload.data, guards, lungs, hold=hold_for(models))
        small_results().put(key, found)
    return found


def prediction_key(upload: Upload, classifiers: dict[str, Classifier]) -> tuple:
    return ("prediction", upload.digest, tuple(classifiers))


def prediction_for(upload: Upload, classifiers: dict[str, Classifier]) -> Prediction:
    """The prediction alone, cached: shown before a slow heatmap, and again if that heatmap is cancelled."""
    key = prediction_key(upload, classifiers)
    found = small_results().get(key)
    if found is None:
        found = predict(read_scan(upload.digest, upload.data, upload.name), list(classifiers.values()),
                        hold_for(dict(classifiers)))
        small_results().put(key, found)
    return found


def slow_analysis(upload: Upload, classifiers: dict[str, Classifier], segmenters: dict[str, Segmenter],
                  method: str, prediction: Prediction, key: tuple, masks: dict[str, np.ndarray]) -> Analysis | None:
    """A slow heatmap on private copies of the networks, one at a time on the server, with a status and a cancel.

    No shared lock is held while it runs, so other sessions' analyses go on. Returns None once cancelled (the
    Cancel button reruns the script, which stops this run at its next progress update).
    """
    flag = f"cancelled-{hash(key)}"
    if st.session_state.get(flag):
        st.info(f"{METHOD_LABELS[method]} was cancelled: the probability above stands without a heatmap.",
                icon=":material/cancel:")
        st.button("Compute the heatmap", key=f"restart-{hash(key)}", on_click=st.session_state.pop, args=(flag, None))
        return None
    status, cancel = st.empty(), st.empty()
    cancel.button("Cancel the heatmap", key=f"cancel-{hash(key)}", icon=":material/cancel:",
                  on_click=st.session_state.__setitem__, args=(flag, True))
    slots = slow_slots()
    while not slots.acquire(timeout=0.5):
        status.info("Waiting for another analysis: another user's slow heatmap is being computed; this one starts "
                    "when it ends (the probability above is final).", icon=":material/hourglass_top:")
    label = f"Computing {METHOD_LABELS[method]}: one forward pass per feature channel, this takes a while"
    try:
        shared = hold_for({**classifiers, **segmenters})
        copies = [private_copy(classifier, shared) for classifier in classifiers.values()]
        found = analyse(read_scan(upload.digest, upload.data, upload.name), copies, list(segmenters.values()),
                        method=method, hold=shared, prediction=prediction, masks=masks,
                        progress=lambda done: status.progress(done, text=f"{label} ({done:.0%})"))
    finally:
        slots.release()
    status.empty()
    cancel.empty()
    return found


def analysis_for(upload: Upload, classifiers: dict[str, Classifier], method: str, modality: str, check: ImageCheck,
                 show_prediction: Callable[[Prediction], None]) -> tuple[Prediction, Analysis | None]:
    """The cached analysis of an upload, computed if missing; `show_prediction` draws the prediction as soon as it
    exists. No model work is done twice: a single model's prediction is the chest-image check's guard pass (else
    it comes from the same forward pass as a Grad-CAM-like map), and the check's lung mask is the one shown.

    A held-back image gets no slow heatmap (none of its heatmap is ever shown). The analysis is None when a slow
    heatmap was cancelled. A segmentation model that cannot be loaded is reported and left out.
    """
    segmenters = segmenters_for(modality)
    lung_dir = lung_segmenter_dir()
    checked_mask = lung_masks().get((upload.digest, lung_dir)) if lung_dir in segmenters else None
    masks = {} if checked_mask is None else {segmenters[lung_dir].target: checked_mask}
    prediction = small_results().get(prediction_key(upload, classifiers))
    guard = check.predictions.get(modality)  # the guard of the modality is its first chosen model
    if prediction is None and len(classifiers) == 1 and guard is not None \
            and guard.model == next(iter(classifiers.values())).name:
        prediction = guard
    if prediction is None and method in SLOW_METHODS:
        prediction = prediction_for(upload, classifiers)  # shown before the slow heatmap, which it may rule out
    if prediction is not None and prediction.out_of_distribution and method in SLOW_METHODS:
        method = "gradcam"
    key = analysis_key(upload.digest, classifiers, method, segmenters)
    found = analyses().get(key)
    if found is not None:
        show_prediction(found.prediction)
    elif method in SLOW_METHODS:
        show_prediction(prediction)
        found = slow_analysis(upload, classifiers, segmenters, method, prediction, key, masks)
        if found is None:
            return prediction, None
        analyses().put(key, found)
    else:  # without a known prediction, `analyse` takes it from the heatmap's forward pass
        with st.spinner(f"Analysing with {METHOD_LABELS[method]}..."):
            found = analyse(read_scan(upload.digest, upload.data, upload.name), list(classifiers.values()),
                            list(segmenters.values()), method=method, hold=hold_for({**classifiers, **segmenters}),
                            prediction=prediction, on_prediction=show_prediction, masks=masks)
        analyses().put(key, found)
    small_results().put(prediction_key(upload, classifiers), found.prediction)
    return found.prediction, found
