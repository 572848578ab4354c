"""Analyze: upload chest images and see calibrated probabilities, a heatmap, masks and a downloadable report.

The page lays out `covid_models.analysis.image_analysis.analyse`, the one analysis every page, script and test runs; its
result is cached by the image's content hash with what changes it (model directories, CAM method,
segmentation models), so moving a slider, toggling a mask or changing the display window reruns the script
without recomputing or decoding anything. The window is a display setting only: models get their card's
canonical input. Caches are bounded (2 decoded full-size scans, 128 MB of display-size analyses, 64 windowed
display images as uint8), and batches beyond BATCH_PAGE images are paged, so a long-running server does not
grow without limit and a page never holds more than its caches keep.
Models are used under their lock (pages.shared.model_lock) because a CAM hook on a shared network must not
see another session's forward pass. The analysis is laid out by `pages.shared.show_analysis`, as on the Review page.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from covid_models import RESEARCH_USE_NOTICE
from covid_models.analysis.ct_quantitative import (
    SECONDARY_LABEL,
    QuantitativeReading,
    SliceQuantities,
    read_dicom_slice,
)
from covid_models.analysis.explain import METHOD_LABELS, METHODS, SLOW_METHODS
from covid_models.analysis.formatting import percent
from covid_models.analysis.image_analysis import (
    REPORT_RENDERING,
    Analysis,
    analyse,
    mask_share_signal,
    multiclass_note,
    operating_point_text,
    predict,
    private_copy,
    report_content,
    trust_signals,
    window_label,
)
from covid_models.analysis.image_checks import ImageCheck, check_image, choose_modality, lung_mask, refusal_text
from covid_models.analysis.overlays import DISPLAY_SIDE, display_size, for_display
from covid_models.analysis.report import (
    bare_file_name,
    class_name,
    png_bytes,
    render_html,
    render_pdf,
    result_sentence,
)
from covid_models.analysis.scan_views import reading_rows
from covid_models.analysis.trust import headline_auc, single_source, within_source
from covid_models.imaging.io import (
    WINDOW_PRESETS,
    ImageReadError,
    Scan,
    ScanMetadata,
    content_hash,
    read_dicom_identifiers,
    read_image,
    rewindow,
)
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.inference import Classifier, Prediction
from covid_models.models.model_card import MODALITY_NAMES, ModelCard, display_name, is_adapted, modality_name
from covid_models.models.segmentation import Segmenter, cam_mass_inside
from covid_models.training.data_folders import default_data_dir
from covid_models.training.manifests import DataError
from covid_models.training.splits import LeakageError, held_out_images
from pages.shared import (
    OPACITY,
    LruCache,
    analyses,
    analysis_key,
    data_dir,
    enter_through_app,
    hold_for,
    infection_models,
    load_classifier,
    load_segmenter,
    model_cards,
    model_lock,
    segmenters_for,
    show_analysis,
    show_error,
    slice_reading_block,
)

enter_through_app()

ENSEMBLE = "ensemble"
EXAMPLES_PER_CLASS = 2
FILE_WINDOW = "file"
CUSTOM_WINDOW = "custom"
SMALL_RESULTS = 4096  # predictions and image checks kept (a few hundred bytes each)
LUNG_MASK_BYTES = 32 * 1024 * 1024  # display-size lung masks kept between the check and the analysis (<= 0.6 MB each)
SLOW_SLOTS = 1  # slow heatmaps computed at once: on a shared server's few cores, more would only slow each other
BATCH_PAGE = 24  # images analysed and shown at once; more are paged


@dataclass(frozen=True)
class Upload:
    """One image handed to the page, by the uploader or an example button."""

    name: str
    data: bytes
    digest: str
    reference_label: str | None = None  # the dataset's label, for examples only
    modality: str | None = None  # known for examples (the dataset's); uploads take the DICOM tag or the setting


@dataclass(frozen=True)
class Settings:
    default_modality: str
    models: dict[str, tuple[str, ...]]  # modality -> model directories (several = ensemble)
    method: str
    opacity: float
    show_masks: bool
    outline_on_heatmap: bool


# ------------------------------------------------------------------------------------ cached computation
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


@st.cache_data(show_spinner=False)
def example_images(root: str, modality: str, per_class: int) -> list[tuple[str, str]]:
    """(label, image path) of a few held-out images per class (see `data.held_out_images`)."""
    test = held_out_images(Path(root), modality)
    picks = [group.sample(min(per_class, len(group)), random_state=0) for _, group in test.groupby("label")]
    return [(row.label, row.image) for row in pd.concat(picks).itertuples()] if picks else []


# ------------------------------------------------------------------------------------------- settings
def model_label(directory: str, cards: dict[str, ModelCard], members: dict[str, ModelCard]) -> str:
    return f"Ensemble of all {len(members)} models" if directory == ENSEMBLE else display_name(cards[directory])


def model_caption(model_dirs: tuple[str, ...], cards: dict[str, ModelCard]) -> str:
    """The chosen model's test AUC from its card with its within-source figure beside it (the sidebar is too
    narrow to put them in the option)."""
    if len(model_dirs) > 1:
        return "Mean of the members' calibrated probabilities."
    card = cards[model_dirs[0]]
    if is_adapted(card):
        test = card.metrics.get("test") or {}
        ci = test.get("auc_ci95") or [float("nan")] * 2
        return (f"A head adapted to {card.extra.get('adapted_to')} on {card.extra['base_model'].get('name')}: "
                f"cross-validated AUC {test.get('auc', float('nan')):.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}) on "
                f"{test.get('n', '?')} images of that site, a figure for that site only. Details on Model performance.")
    if (source := single_source(card)) is not None:
        return headline_auc(card) + (f" All test images come from one source ({source}): the AUC is a within-source "
                                     "figure and says nothing of images from other hospitals or scanners. Details "
                                     "on Model performance.")
    within = within_source(card)
    return headline_auc(card) + " " + (
        f"Within-source AUC, {'; '.join(within)}: the number to read, as pooled sources can be told apart by "
        "where the images come from." if within else "No within-source AUC recorded: the headline may measure "
        "the images' source, not the disease.") + " Details on Model performance."


def ensemble_members(cards: dict[str, ModelCard]) -> dict[str, ModelCard]:
    """The models an ensemble averages: the shipped (not site-adapted) ones sharing the first one's classes."""
    shipped = {d: c for d, c in cards.items() if not is_adapted(c)}
    classes = next((c.classes for c in shipped.values()), None)
    return {d: c for d, c in shipped.items() if c.classes == classes}


def ensemble_caption(name: str, count: int) -> str | None:
    """Why no ensemble is offered, when it is not (point 13): an ensemble needs two models of one modality."""
    if count > 1:
        return None
    return (f"Ensemble: not available for {name}, because only one {name} classifier is installed; an ensemble "
            "averages two or more models of one modality.")


def settings_sidebar() -> Settings:
    with st.sidebar:
        st.subheader("Analysis settings")
        default_modality = st.radio(
            "Modality of images without a DICOM Modality tag", list(MODALITY_NAMES), format_func=MODALITY_NAMES.get,
            horizontal=True, key="modality",
            help="PNG, JPEG and TIFF files do not say what they show; DICOM files do, and their tag wins.")
        models: dict[str, tuple[str, ...]] = {}
        for modality, name in MODALITY_NAMES.items():
            cards = dict(model_cards(task="classification", modality=modality))
            if not cards:
                st.caption(f"No {name} classifier is installed.")
                continue
            members = ensemble_members(cards)
            options = list(cards) + ([ENSEMBLE] if len(members) > 1 else [])
            choice = st.selectbox(f"{name} model", options, key=f"model-{modality}",
                                  format_func=lambda d, c=cards, m=members: model_label(d, c, m))
            models[modality] = tuple(members) if choice == ENSEMBLE else (choice,)
            st.caption(model_caption(models[modality], cards))
            if (why := ensemble_caption(name, len(members))) is not None:
                st.caption(why)
        method = st.selectbox("Heatmap method", METHODS, format_func=METHOD_LABELS.get, key="method",
                              help="Class activation map for the COVID-19 class. Methods marked slow run one "
                                   "forward pass per feature channel.")
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, OPACITY, 0.05, key="opacity")
        show_masks = st.toggle("Show segmentation masks", value=True, key="show-masks")
        outline = st.toggle("Outline the mask on the heatmap", value=True, key="outline")
    return Settings(default_modality, models, method, opacity, show_masks, outline)


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


# ---------------------------------------------------------------------------------------------- display
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


def probability_table(prediction: Prediction) -> None:
    probabilities = prediction.probabilities
    frame = pd.DataFrame({"Class": list(probabilities), "Probability": list(probabilities.values())})
    st.dataframe(frame.sort_values("Probability", ascending=False), hide_index=True, width="stretch",
                 column_config={"Probability": st.column_config.ProgressColumn(
                     "Calibrated probability", format="percent", min_value=0.0, max_value=1.0)})


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


def probability_cell(prediction: Prediction) -> str:
    """The batch table's probability: none for a held-back image."""
    return "held back" if prediction.out_of_distribution else percent(prediction.positive_probability)


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


# ------------------------------------------------------------------------------------------------ inputs
def examples_section(default_modality: str) -> None:
    """One-click example images from the test split of the configured data folder.

    The curated layout (xray/ and ct/ manifests) gives examples of each modality; any other folder
    (a manifest, a class-per-folder tree) is taken to hold images of the modality chosen in the settings.
    """
    with st.expander("Try an example image from the test split", expanded=False):
        if default_data_dir() is None:
            st.text_input("Data folder (the curated dataset with xray/ and ct/, or a folder per class)",
                          key="data_dir", placeholder="/path/to/data",
                          help="Set COVID_DATA_DIR before starting the app to skip this step.")
        root = data_dir()
        if root is None:
            return
        curated = [m for m in MODALITY_NAMES if (root / m / "manifest.csv").is_file()]
        for modality in curated or [default_modality]:
            name = modality_name(modality)
            try:
                rows = example_images(str(root), modality, EXAMPLES_PER_CLASS)
            except (DataError, LeakageError, OSError) as error:
                st.caption(f"No {name} examples: {error}")
                continue
            if not rows:
                continue
            st.markdown(f"**{name}**")
            columns = st.columns(3)
            for index, (label, path) in enumerate(rows):
                columns[index % len(columns)].button(f"{label}: {Path(path).name}", key=f"example-{path}",
                                                     on_click=add_example, args=(path, label, modality),
                                                     width="stretch")


def add_example(path: str, label: str, modality: str) -> None:
    """Button callback: runs before the rerun, so the example is analysed in the same click."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        show_error(f"The example {Path(path).name} could not be read ({error.strerror}).")
        return
    examples: list[Upload] = st.session_state.setdefault("examples", [])
    if all(example.digest != content_hash(data) for example in examples):
        examples.append(Upload(Path(path).name, data, content_hash(data), reference_label=label, modality=modality))


def uploads() -> list[Upload]:
    files = st.file_uploader(
        "Chest X-ray or CT images: PNG, JPEG, TIFF or DICOM (drag and drop, several at once)",
        accept_multiple_files=True, key="uploads",
        help="DICOM files may lack an extension; every file's format is recognised from its content.")
    digests: dict[str, str] = st.session_state.setdefault("upload-digests", {})  # file id -> hash, once per upload
    items = []
    for file in files or []:
        data = file.getvalue()
        if file.file_id not in digests:
            digests[file.file_id] = content_hash(data)
        items.append(Upload(file.name, data, digests[file.file_id]))
    return items + list(st.session_state.get("examples", []))


def batch_page(items: list[Upload]) -> list[Upload]:
    """The images shown now: all of them up to BATCH_PAGE, else the page of them the user picks.

    The analyses cache holds more than a page, so moving a slider or a toggle never recomputes a shown image.
    """
    if len(items) <= BATCH_PAGE:
        return items
    starts = list(range(0, len(items), BATCH_PAGE))
    label = {start: f"Images {start + 1}-{min(start + BATCH_PAGE, len(items))}" for start in starts}
    st.info(f"{len(items)} images: they are analysed and shown {BATCH_PAGE} at a time, so that the page stays "
            "responsive. Choose which ones below.", icon=":material/view_carousel:")
    start = st.selectbox("Images shown", starts, format_func=label.get, key="batch-page")
    return items[start:start + BATCH_PAGE]


# -------------------------------------------------------------------------------------------------- page
st.title("Analyze chest images")
st.warning(RESEARCH_USE_NOTICE, icon=":material/health_and_safety:")
settings = settings_sidebar()
items = uploads()
examples_section(settings.default_modality)
if st.session_state.get("examples") and st.button("Remove the example images", icon=":material/delete:"):
    st.session_state["examples"] = []
    st.rerun()
if not items:
    st.info("Upload one or more images to analyse them.", icon=":material/upload:")
    st.stop()
summary_slot = st.container()
shown_items = batch_page(items)
rows = [show_upload(item, settings) for item in shown_items]
if len(shown_items) > 1:
    with summary_slot:
        st.markdown(f"**{len(shown_items)} images**; details of each below.")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "COVID-19 probability": st.column_config.NumberColumn(format="percent")})
