"""Streamlit-side helpers shared by the pages: where models and data live, cached loaders, error display, and
how one image's `Analysis` and one CT scan's `ScanAnalysis` are laid out (the Analyze, CT scan and Review pages
show the same thing the same way).

Heavy objects (networks, the review database engine, analyses) are cached resources so that a rerun caused by a
slider move or a click never reloads or recomputes them; no business logic lives here, only in `covid_models`.
"""
from __future__ import annotations

import io
import os
import runpy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from streamlit import config
from streamlit.errors import FragmentHandledException
from streamlit.logger import get_logger
from streamlit.runtime.scriptrunner import get_script_run_ctx

from covid_models.analysis.ct_quantitative import (
    COVID_PATTERN_RULE,
    MIN_LESION_DIAMETER_MM,
    SECONDARY_LABEL,
    QuantitativeReading,
)
from covid_models.analysis.explain import METHOD_LABELS
from covid_models.analysis.image_analysis import OUTLINE_COLOR, Analysis, Hold, analyse
from covid_models.analysis.overlays import (
    DISPLAY_SIDE,
    INFECTION_COLOR,
    LUNG_COLOR,
    colour_scale,
    heatmap_overlay,
    mask_overlay,
)
from covid_models.analysis.scan_analysis import BURDEN_LABEL, ScanAnalysis, analyse_scan
from covid_models.analysis.scan_views import (
    MODEL_LIMITS,
    burden_rows,
    criteria_rows,
    reading_rows,
    scan_facts,
    secondary_sentence,
)
from covid_models.formatting import class_name
from covid_models.imaging.io import read_image
from covid_models.imaging.scan import Scan
from covid_models.imaging.volumes import read_volume
from covid_models.models.checkpoint import CheckpointError, read_card
from covid_models.models.discovery import LUNG_SEGMENTER, ModelFolders, discover_models, find_models, pinned_folder
from covid_models.models.inference import Classifier
from covid_models.models.model_card import ModelCard
from covid_models.models.segmentation import Segmenter
from covid_models.reviews.store import ReviewStore
from covid_models.training.data_folders import allowed_data_roots, confined_folder, default_data_dir
from covid_models.training.manifests import DataError

WEIGHTS_DIR_ENV = "COVID_WEIGHTS_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRY_SCRIPT = REPO_ROOT / "streamlit_app.py"
ANALYSIS_CACHE_BYTES = 128 * 1024 * 1024  # at least 48 analyses of the largest display size (2.4 MB each)
OPACITY = 0.45  # the heatmap's opacity on screen unless the reader moves the Analyze page's slider
MASK_COLORS = {"lungs": LUNG_COLOR, "infection": INFECTION_COLOR}
MASK_CAPTIONS = {"lungs": "Lung mask", "infection": "Infection mask (ground glass and consolidation)"}
_run = threading.local()  # Streamlit runs each script run of a session in one thread
_log = get_logger(__name__)  # Streamlit's handler and level: the warm-up's line shows in the server's output


@contextmanager
def app_navigation() -> Iterator[None]:
    """Marks the pages run inside it as entered through the app's navigation (used by streamlit_app.py), and is
    the one place where an error no page expected becomes a message: the visitor never sees a traceback (it goes to
    the server's log), and the session goes on. Streamlit's own stop and rerun signals are not errors and pass."""
    _run.navigated = True
    try:
        yield
    except FragmentHandledException:
        raise  # already shown by Streamlit's fragment machinery
    except Exception as error:  # noqa: BLE001 - the last line of defence: anything a page did not catch
        _log.exception("a page failed while rendering")
        st.error(f"This page could not be shown completely: an unexpected error occurred ({type(error).__name__}). "
                 "It has been logged for the maintainers. Try again, or upload another file; if it happens again, "
                 "report what you uploaded.", icon=":material/error:")
    finally:
        _run.navigated = False


def enter_through_app() -> None:
    """Called first by every page: when Streamlit ran the page without the app's entry script, run that instead.

    On a freshly started server, Streamlit serves the first request in its legacy `pages/` mode, so a
    bookmarked link such as /dataset runs this page directly: no research-use notice, and a sidebar listing
    every script of the folder. Running streamlit_app.py here hands the run to `st.navigation`, which shows
    the requested page inside the app and ends the legacy mode for the rest of the server's life.
    (A page tested on its own, as its own main script, is left alone.)
    """
    context = get_script_run_ctx()
    if getattr(_run, "navigated", False) or context is None:
        return
    if Path(context.main_script_path).resolve() != ENTRY_SCRIPT:
        return
    runpy.run_path(str(ENTRY_SCRIPT), run_name="__main__")
    st.stop()  # the page has been shown by the navigation; nothing more of this outer run


def weights_dir() -> Path:
    """$COVID_WEIGHTS_DIR when set, else the shipped `weights/` folder of the repository."""
    value = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else REPO_ROOT / "weights"


@st.cache_resource(show_spinner="Loading the model...")
def load_classifier(directory: str) -> Classifier:
    """One network per model directory for the whole server process; a model cropped to a segmenter's lungs
    shares the page's cached copy of that segmenter."""
    folder = pinned_folder(read_card(directory), LUNG_SEGMENTER, Path(directory).parent)
    if folder is None:
        return Classifier.load(directory)
    return Classifier.load(directory, lung_segmenter=load_segmenter(str(folder)))


@st.cache_resource(show_spinner="Loading the segmentation model...")
def load_segmenter(directory: str) -> Segmenter:
    """One segmentation network per model directory for the whole server process."""
    return Segmenter.load(directory)


@st.cache_resource(show_spinner=False)
def model_lock(directory: str) -> threading.Lock:
    """One lock per model directory, shared by every page and session of the server.

    A cached network is shared; CAM hooks registered on it must not capture another session's forward pass,
    so every use of a model (prediction, heatmap, mask) holds its lock.
    """
    return threading.Lock()


@contextmanager
def held(directory: str) -> Iterator[None]:
    """A shared network's lock, held for one fast step; says so when another analysis is using the network."""
    lock = model_lock(directory)
    if not lock.acquire(blocking=False):
        notice = st.empty()
        notice.caption(":material/hourglass_top: Waiting for another analysis to finish with this model...")
        lock.acquire()
        notice.empty()
    try:
        yield
    finally:
        lock.release()


def hold_for(models: dict[str, Classifier | Segmenter]) -> Hold:
    """`hold(model)` for the analysis: the lock of a shared network, nothing for a private copy."""
    directories = {id(model): directory for directory, model in models.items()}
    return lambda model: held(directories[id(model)]) if id(model) in directories else nullcontext()


def segmenters_for(modality: str) -> dict[str, Segmenter]:
    """The installed segmentation models of a modality; one that cannot be loaded is reported and left out."""
    segmenters: dict[str, Segmenter] = {}
    for directory, card in model_cards(task="segmentation", modality=modality):
        try:
            segmenters[directory] = load_segmenter(directory)
        except CheckpointError as error:
            show_error(f"The segmentation model {card.name} could not be loaded: {error}")
    return segmenters


@st.cache_resource(show_spinner=False)
def analyses() -> LruCache:
    """Analyses of the server's sessions and pages by `analysis_key`, bounded in bytes.

    Outside Streamlit's result caches so that a slow heatmap can show its progress (an element updated inside
    a cached function cannot be replayed); an `Analysis` is immutable, so sharing it is safe. The Analyze and
    Review pages key it alike, so an image reviewed after it was analysed is not computed again.
    """
    return LruCache(ANALYSIS_CACHE_BYTES, size=lambda analysis: analysis.nbytes)


def analysis_key(digest: str, classifiers: Iterable[str], method: str, segmenters: Iterable[str]) -> tuple:
    """What an analysis depends on: the image's content hash, the model directories and the CAM method."""
    return digest, tuple(classifiers), method, tuple(segmenters)


def show_analysis(analysis: Analysis, *, opacity: float = OPACITY, show_masks: bool = True,
                  outline_on_heatmap: bool = True, shown: np.ndarray | None = None, image_caption: str = "Image",
                  multiclass: str | None = None) -> None:
    """The image, the heatmap with its colour scale and the mask side by side, then the trust signals.

    A held-back analysis gets the image alone: no heatmap, mask or share of it (its reason goes with the result).
    `shown`: the image to draw under the overlays (a display window), else the analysis's own; `multiclass`: the
    3-class note, shown beside the probabilities rather than here.
    """
    if analysis.held_back:
        st.image(analysis.grey, caption=f"{image_caption} (held back: no heatmap or mask is shown)", clamp=True,
                 width=DISPLAY_SIDE // 2)
        return
    shown = analysis.grey if shown is None else shown
    masks = analysis.masks
    overlay = heatmap_overlay(shown, analysis.heat, opacity)
    if masks and outline_on_heatmap:
        overlay = mask_overlay(overlay, next(iter(masks.values())), color=OUTLINE_COLOR, alpha=0.0)
    columns = st.columns(3 if masks and show_masks else 2)
    columns[0].image(shown, caption=image_caption, clamp=True, width="stretch")
    columns[1].image(overlay, caption=f"{METHOD_LABELS[analysis.method]} for "
                                      f"{class_name(analysis.prediction.positive_class)}", width="stretch")
    columns[1].image(colour_scale(256, 10), caption="Colour scale: low (blue, left) to high (red, right) "
                                                    "contribution to the score", width="stretch")
    if masks and show_masks:
        target, mask = next(iter(masks.items()))
        columns[2].image(mask_overlay(shown, mask, color=MASK_COLORS.get(target, LUNG_COLOR)),
                         caption=MASK_CAPTIONS.get(target, f"{target.capitalize()} mask"), width="stretch")
    for signal in analysis.signals:
        if signal.level == "warning":
            st.warning(signal.text, icon=":material/visibility_off:")
        elif signal.level == "success":
            st.success(signal.text, icon=":material/visibility:")
        elif signal.level == "note" and signal.text != multiclass:
            st.caption(signal.text)


def infection_models() -> dict[str, ModelCard]:
    """The installed CT infection segmenters by directory: what gives a scan its infection burden."""
    return {d: c for d, c in model_cards(task="segmentation", modality="ct") if c.classes == ["infection"]}


def run_scan_analysis(files: list[tuple[str, bytes]], series: int | None, classifier_dir: str,
                      segmenter_dir: str | None) -> ScanAnalysis:
    """An upload read as one CT volume and analysed under the models' locks, with a progress bar (not cached)."""
    bar = st.progress(0.0, text="Reading the series...")
    try:
        volume = read_volume(files, series=series)
        classifier = load_classifier(classifier_dir)
        segmenter = load_segmenter(segmenter_dir) if segmenter_dir else None
        locks = sorted({classifier_dir, *([segmenter_dir] if segmenter_dir else [])})
        for directory in locks:
            model_lock(directory).acquire()
        try:
            return analyse_scan(volume, classifier, segmenter, progress=lambda fraction, what: bar.progress(
                min(1.0, fraction), text=f"{what}..."))
        finally:
            for directory in reversed(locks):
                model_lock(directory).release()
    finally:
        bar.empty()


READING_LABEL = "Quantitative CT reading: COVID-19 pattern"


def scan_result_block(analysis: ScanAnalysis) -> None:
    """The scan's result, its quantitative reading in HU (criteria, density bands, lesion, distribution, severity),
    the facts, the classifier as a secondary reading and what the models cannot do. A held-back scan shows its
    reason and no verdict, probability or flag."""
    reading = analysis.reading
    left, right = st.columns([2, 3])
    with left:
        if analysis.held_back:
            st.error(reading.verdict, icon=":material/block:")
        elif reading.suggestive is None:
            st.warning(reading.verdict, icon=":material/help:")
        else:
            # short values: a metric never wraps, and the review item's column is narrow; the badge says it in full
            st.metric(READING_LABEL, "Suggestive" if reading.suggestive else "Not suggestive")
            if reading.suggestive:
                st.markdown(":orange-badge[:material/flag: Pattern suggestive of COVID-19]")
            else:
                st.markdown(":blue-badge[Pattern not suggestive of COVID-19]")
        if not analysis.held_back and reading.lesion is not None:
            st.metric("Lesion burden", f"{reading.lesion_percent():.1f} % of lung")
            st.metric("Severity score (6 zones)", f"{reading.severity_score} / {5 * len(reading.zones)}")
        if not analysis.held_back:
            st.caption(COVID_PATTERN_RULE + (f" Threshold fitted on: {reading.fit_on}." if reading.fit_on else ""))
    with right:
        criteria = criteria_rows(reading)
        if criteria and not analysis.held_back:
            st.dataframe(pd.DataFrame(criteria[1:], columns=criteria[0]), hide_index=True, width="stretch")
        st.dataframe(pd.DataFrame(reading_rows(reading), columns=["Quantitative reading (HU)", "Value"]),
                     hide_index=True, width="stretch")
        st.dataframe(pd.DataFrame(scan_facts(analysis), columns=["", "Value"]), hide_index=True, width="stretch")
    st.caption(secondary_sentence(analysis))
    st.caption(MODEL_LIMITS)


def slice_reading_block(reading: QuantitativeReading) -> None:
    """A DICOM CT slice's quantitative reading in HU, the result of such a slice; the classifier's reading below it is
    secondary."""
    st.markdown("**Quantitative reading of this CT slice (HU)**")
    if reading.held_back:
        st.error(reading.verdict, icon=":material/block:")
    elif reading.suggestive is None:
        st.warning(reading.verdict, icon=":material/help:")
    elif reading.suggestive:
        st.markdown(":orange-badge[:material/flag: Pattern suggestive of COVID-19 on this slice]")
    else:
        st.markdown(":blue-badge[Pattern not suggestive of COVID-19 on this slice]")
    criteria = criteria_rows(reading)
    if criteria and not reading.held_back:
        st.dataframe(pd.DataFrame(criteria[1:], columns=criteria[0]), hide_index=True, width="stretch")
    st.dataframe(pd.DataFrame(reading_rows(reading), columns=["Quantitative reading (HU)", "Value"]),
                 hide_index=True, width="stretch")
    if not reading.held_back:
        st.caption(COVID_PATTERN_RULE + (f" Threshold fitted on: {reading.fit_on}." if reading.fit_on else ""))
    st.caption(SECONDARY_LABEL)


def burden_block(analysis: ScanAnalysis) -> None:
    """The infection burden table by zone, lung and in total, with how it was estimated (none when held back)."""
    st.subheader("Infection burden")
    if analysis.held_back:
        st.caption("The scan is held back, so no burden is shown.")
        return
    if analysis.burden is None:
        st.caption("No infection model was chosen, so no burden was computed.")
        return
    st.caption(BURDEN_LABEL + f" Lesions under {MIN_LESION_DIAMETER_MM:g} mm across and outside the lungs are not "
               "counted. Zones are thirds of each lung's height and approximate the lobes; 0-5 per zone by percent "
               "involved (Pan et al. 2020: 0 none, 1 under 5 %, 2 5-25 %, 3 25-50 %, 4 50-75 %, 5 over 75 %).")
    header, *rows = burden_rows(analysis)
    st.dataframe(pd.DataFrame(rows, columns=header), hide_index=True, width="stretch")


def _warm_scan() -> Scan:
    """A generated 512 px film (a smooth gradient, so the heatmap is not empty), read as an upload is."""
    ramp = np.linspace(0, 255, 512, dtype=np.float32)
    pixels = (np.add.outer(ramp, ramp) / 2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return read_image(buffer.getvalue(), name="warm-up.png")


@st.cache_resource(show_spinner=False)
def _warmed_models(weights: str) -> int:
    """Every model of `weights` loaded into the server's caches and run once through `analyse`; how many ran.

    The first analysis in a process pays lazy imports (torch's compiler stack through timm and torchvision),
    kernel choices and allocator growth: about 1.7 s that the first visitor would otherwise wait for. The
    loaders called here are nested in this cached function, so Streamlit shows no spinner for them.
    """
    scan, warmed = _warm_scan(), 0
    segmentation = discover_models(weights, "segmentation")
    classifiers = sorted(discover_models(weights, "classification"), key=lambda found: found[1].modality != "xray")
    for directory, card in classifiers:  # X-ray first: the Analyze page opens on it
        classifier = load_classifier(str(directory))
        segmenters = {str(d): load_segmenter(str(d)) for d, c in segmentation if c.modality == card.modality}
        locks = {id(classifier): model_lock(str(directory))} | {id(s): model_lock(d) for d, s in segmenters.items()}
        analyse(scan, [classifier], list(segmenters.values()), hold=lambda model, locks=locks: locks[id(model)])
        warmed += 1
    return warmed


def _warm(weights: str) -> None:
    started = time.perf_counter()
    try:
        _log.info("warmed %d classifier(s) of %s in %.1f s", _warmed_models(weights), weights,
                  time.perf_counter() - started)
    except Exception:  # a broken model directory is reported by the page that uses it, not by this thread
        _log.exception("warming the models of %s failed", weights)


@st.cache_resource(show_spinner=False)
def warm_models_in_background() -> threading.Thread | None:
    """Starts, once per server process, the loading and first run of every shipped model in a thread (not a
    daemon: a process that ends during the warm-up waits for it instead of aborting inside torch).

    Called by the app's start-up (streamlit_app.py's lifespan, which waits for the thread before the server
    answers) and by each run of its script, where it is a no-op once started; a run that comes before the warm-up
    is done waits on the same cached loaders and locks, never loads a model twice. Under AppTest (no server, a
    process that ends with the test) nothing is started.
    """
    if config.get_option("global.appTest"):  # looked up on the module: AppTest patches it there
        return None
    thread = threading.Thread(target=_warm, args=(str(weights_dir()),), name="warm-models")
    thread.start()
    return thread


@st.cache_data(show_spinner=False, ttl=60)
def _model_folders(weights: str) -> ModelFolders:
    return find_models(weights)


def refresh_model_list() -> None:
    """Forget the cached model listing (a model folder was just published), so every page lists it at once."""
    _model_folders.clear()


def model_cards(task: str | None = None, modality: str | None = None) -> list[tuple[str, ModelCard]]:
    """(directory, card) of the shipped models matching task and modality, sorted by directory.

    Cached per weights folder as well, so that pointing the app at another folder takes effect at once,
    and for a minute only, so that a model directory written while the app runs appears without a restart.
    Folders whose card fails the schema are left out (see `skipped_models_note`).
    """
    return [(str(directory), card) for directory, card in _model_folders(str(weights_dir())).found
            if (task is None or card.task == task) and (modality is None or card.modality == modality)]


def skipped_models_note() -> None:
    """A note in the sidebar naming each model folder left out and why (its card fails the schema)."""
    skipped = _model_folders(str(weights_dir())).skipped
    if not skipped:
        return
    with st.sidebar:
        st.warning(f"{len(skipped)} model folder(s) skipped: their card.json does not satisfy the schema (or names an "
                   "architecture this version cannot build), so they are not offered.", icon=":material/rule:")
        for name, reason in skipped:
            st.text(f"{name}: {reason}")  # as text: a folder name is not Markdown


@st.cache_resource(show_spinner=False)
def review_store() -> ReviewStore:
    """The review database (DATABASE_URL, else the SQLite file of COVID_REVIEW_DB or the default)."""
    return ReviewStore()


def data_dir() -> Path | None:
    """The curated data folder: $COVID_DATA_DIR, else a folder the user typed (st.session_state["data_dir"]) when it
    lies inside the allowed roots ($COVID_DATA_ROOTS; see `typed_folder`)."""
    found = default_data_dir()
    if found is not None:
        return found
    folder, _ = typed_folder(str(st.session_state.get("data_dir") or ""))
    return folder


def typed_folder(text: str) -> tuple[Path | None, str | None]:
    """(folder, None) for a typed folder inside the allowed roots, else (None, a message fit for the page).

    The verdict is cached per text and roots for the whole server, refusals included, so a rerun or another visitor
    typing the same path costs nothing; the message never names a server path nor an OS error.
    """
    roots = tuple(str(root) for root in allowed_data_roots())
    path, message = _typed_folder(text.strip(), roots)
    return (Path(path) if path else None), message


@st.cache_data(show_spinner=False, ttl=300, max_entries=256)
def _typed_folder(text: str, roots: tuple[str, ...]) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    try:
        return str(confined_folder(text, [Path(root) for root in roots])), None
    except DataError as error:
        return None, str(error)


def show_error(message: str) -> None:
    """A user-readable error box; the page goes on."""
    st.error(f"Could not complete this step. {message}", icon=":material/error:")


class LruCache:
    """Values by key for the whole server process, least recently used dropped beyond `max_size`.

    For results that must not go through Streamlit's caches: uploaded files kept for the review page, and
    heatmaps computed with a progress bar (elements updated inside a cached function cannot be replayed).
    `size` measures a value (bytes, array nbytes); the newest value is kept even when it alone is larger.
    """

    def __init__(self, max_size: int, size: Callable[[Any], int]):
        self.max_size, self.size = max_size, size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            self._items[key] = value
            self._total += self.size(value)
            while self._total > self.max_size and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._total -= self.size(dropped)

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value
