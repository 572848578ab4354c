"""Analyze: upload chest images and see calibrated probabilities, a heatmap, masks and a downloadable report.

The page lays out `covid_models.analysis.analyse`, the one analysis every page, script and test runs; its
result is cached by the image's content hash with what changes it (model directories, CAM method,
segmentation models), so moving a slider, toggling a mask or changing the display window reruns the script
without recomputing or decoding anything. The window is a display setting only: models get their card's
canonical input. Caches are bounded (2 decoded full-size scans, 128 MB of display-size analyses, 64 windowed
display images as uint8), and batches beyond BATCH_PAGE images are paged, so a long-running server does not
grow without limit and a page never holds more than its caches keep.
Models are used under their lock (pages.shared.model_lock) because a CAM hook on a shared network must not
see another session's forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from covid_models import RESEARCH_USE_NOTICE
from covid_models.analysis import Analysis, analyse
from covid_models.checkpoint import CheckpointError
from covid_models.data import DataError, LeakageError, default_data_dir, held_out_images
from covid_models.explain import METHOD_LABELS, METHODS, SLOW_METHODS
from covid_models.formatting import percent
from covid_models.inference import Prediction
from covid_models.io import (
    WINDOW_PRESETS,
    ImageReadError,
    Scan,
    ScanMetadata,
    content_hash,
    read_dicom_identifiers,
    read_image,
    rewindow,
)
from covid_models.model_card import MODALITY_NAMES, ModelCard, modality_name
from covid_models.overlays import (
    DISPLAY_SIDE,
    INFECTION_COLOR,
    LUNG_COLOR,
    display_size,
    for_display,
    heatmap_overlay,
    mask_overlay,
)
from covid_models.report import (
    ReportContent,
    bare_file_name,
    class_name,
    png_bytes,
    render_html,
    render_pdf,
    result_sentence,
)
from covid_models.segmentation import Segmenter
from pages.shared import (
    LruCache,
    data_dir,
    enter_through_app,
    load_classifier,
    load_segmenter,
    model_cards,
    model_lock,
    show_error,
)

enter_through_app()

ENSEMBLE = "ensemble"
EXAMPLES_PER_CLASS = 2
FILE_WINDOW = "file"
CUSTOM_WINDOW = "custom"
MASK_COLORS = {"lungs": LUNG_COLOR, "infection": INFECTION_COLOR}
MASK_CAPTIONS = {"lungs": "Lung mask", "infection": "Infection mask (ground glass and consolidation)"}
OUTLINE_COLOR = (255, 255, 255)  # a mask outline on the heatmap: white reads on every colour of the jet map
BATCH_PAGE = 24  # images analysed and shown at once; more are paged
ANALYSIS_CACHE_BYTES = 128 * 1024 * 1024  # at least 48 analyses of the largest display size (2.4 MB each)


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
def windowed_image(digest: str, window: tuple[float, float], _upload: Upload) -> np.ndarray:
    """The image under a display window, at display size as uint8: drawn only, never given to a model."""
    scan = read_scan(digest, _upload.data, _upload.name)
    pixels = rewindow(scan, *window)
    return np.round(for_display(pixels, display_size(pixels.shape)) * 255).astype(np.uint8)


@st.cache_resource(show_spinner=False)
def analyses() -> LruCache:
    """Analyses of the server's sessions by (content hash, models, method), bounded in bytes.

    Outside Streamlit's result caches so that a slow heatmap can show its progress (an element updated inside
    a cached function cannot be replayed); an `Analysis` is immutable, so sharing it is safe.
    """
    return LruCache(ANALYSIS_CACHE_BYTES, size=lambda analysis: analysis.nbytes)


def analysis_for(upload: Upload, model_dirs: tuple[str, ...], method: str, modality: str) -> Analysis:
    """The cached analysis of an upload, computed (with a spinner, or a progress bar for slow methods) if missing.

    Raises CheckpointError when a classifier cannot be loaded; a segmentation model that cannot be loaded is
    reported and left out.
    """
    segmenters: dict[str, Segmenter] = {}
    for directory, card in model_cards(task="segmentation", modality=modality):
        try:
            segmenters[directory] = load_segmenter(directory)
        except CheckpointError as error:
            show_error(f"The segmentation model {card.name} could not be loaded: {error}")
    key = (upload.digest, model_dirs, method, tuple(segmenters))
    found = analyses().get(key)
    if found is not None:
        return found
    classifiers = {directory: load_classifier(directory) for directory in model_dirs}
    directories = {id(model): directory for directory, model in (*classifiers.items(), *segmenters.items())}
    scan = read_scan(upload.digest, upload.data, upload.name)
    hold = lambda model: model_lock(directories[id(model)])  # noqa: E731  (one lock per shared network)
    if method in SLOW_METHODS:
        label = f"Computing {METHOD_LABELS[method]}: one forward pass per feature channel, this takes a while"
        bar = st.empty()
        try:
            found = analyse(scan, list(classifiers.values()), list(segmenters.values()), method=method, hold=hold,
                            progress=lambda done: bar.progress(done, text=f"{label} ({percent(done, 0)})"))
        finally:
            bar.empty()
    else:
        with st.spinner(f"Analysing with {METHOD_LABELS[method]}..."):
            found = analyse(scan, list(classifiers.values()), list(segmenters.values()), method=method, hold=hold)
    analyses().put(key, found)
    return found


@st.cache_data(show_spinner=False)
def example_images(root: str, modality: str, per_class: int) -> list[tuple[str, str]]:
    """(label, image path) of a few held-out images per class (see `data.held_out_images`)."""
    test = held_out_images(Path(root), modality)
    picks = [group.sample(min(per_class, len(group)), random_state=0) for _, group in test.groupby("label")]
    return [(row.label, row.image) for row in pd.concat(picks).itertuples()] if picks else []


# ------------------------------------------------------------------------------------------- settings
def model_label(directory: str, cards: dict[str, ModelCard]) -> str:
    return f"Ensemble of all {len(cards)} models" if directory == ENSEMBLE else cards[directory].name


def model_caption(model_dirs: tuple[str, ...], cards: dict[str, ModelCard]) -> str:
    """The chosen model's test AUC from its card (the sidebar is too narrow to put it in the option)."""
    if len(model_dirs) > 1:
        return "Mean of the members' calibrated probabilities."
    test = cards[model_dirs[0]].metrics.get("test")
    test = test if isinstance(test, dict) else {}  # the schema bounds the card's fields, not every metric inside
    auc = test.get("auc")
    return f"Test AUC {auc:.3f} on {test.get('n', '?')} held-out images." if isinstance(auc, float) and auc == auc \
        else "No test AUC recorded in its card."


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
            options = list(cards) + ([ENSEMBLE] if len(cards) > 1 else [])
            choice = st.selectbox(f"{name} model", options, format_func=lambda d, c=cards: model_label(d, c),
                                  key=f"model-{modality}")
            models[modality] = tuple(cards) if choice == ENSEMBLE else (choice,)
            st.caption(model_caption(models[modality], cards))
        method = st.selectbox("Heatmap method", METHODS, format_func=METHOD_LABELS.get, key="method",
                              help="Class activation map for the COVID-19 class. Methods marked slow run one "
                                   "forward pass per feature channel.")
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="opacity")
        show_masks = st.toggle("Show segmentation masks", value=True, key="show-masks")
        outline = st.toggle("Outline the mask on the heatmap", value=True, key="outline")
    return Settings(default_modality, models, method, opacity, show_masks, outline)


def window_choice(upload: Upload, metadata: ScanMetadata, windowable: bool) -> tuple[float, float] | None:
    """Window presets for DICOM images that keep their modality values; None keeps the window read from the file."""
    if not windowable:
        return None
    file_window = metadata.window
    presets = {FILE_WINDOW: "As in the file" + (f" ({file_window[0]:g} / {file_window[1]:g})" if file_window else "")}
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


def result_block(analysis: Analysis) -> None:
    prediction = analysis.prediction
    for signal in analysis.signals:
        if signal.level == "error":
            st.error(signal.text, icon=":material/block:")
    if prediction.out_of_distribution:
        with st.expander("Probabilities (held back: not to be interpreted)"):
            probability_table(prediction)
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
        st.caption("Operating point: " + analysis.operating_point)
    with right:
        probability_table(prediction)


def trust_signals(analysis: Analysis) -> None:
    """Where the heatmap lies and what is missing (the held-back error is shown with the result)."""
    for signal in analysis.signals:
        if signal.level == "warning":
            st.warning(signal.text, icon=":material/visibility_off:")
        elif signal.level == "success":
            st.success(signal.text, icon=":material/visibility:")
        elif signal.level == "note":
            st.caption(signal.text)


def show_upload(upload: Upload, settings: Settings) -> dict:
    """Show one image's analysis; returns its row of the batch summary."""
    st.subheader(bare_file_name(upload.name), divider="gray")
    row = {"File": bare_file_name(upload.name), "Modality": None, "Model": None, "COVID-19 probability": None}
    try:
        metadata, windowable = scan_facts(upload.digest, upload.data, upload.name)
    except ImageReadError as error:
        show_error(str(error))
        return row | {"Result": "not analysed: the file could not be read"}
    dicom = metadata.source_format == "dicom"
    modality = metadata.modality or upload.modality or settings.default_modality
    origin = "from the DICOM Modality tag" if metadata.modality \
        else "from the dataset" if upload.modality else "as chosen in the settings"
    if dicom and metadata.modality is None and metadata.dicom_modality:
        origin += f" (the file's Modality tag '{metadata.dicom_modality}' is not a chest X-ray or CT)"
    st.caption(f"{modality_name(modality)} {origin}; {metadata.width} x {metadata.height} pixels, "
               f"{metadata.source_format.upper()}."
               + (f" Reference label in the dataset: **{upload.reference_label}**." if upload.reference_label else ""))
    if dicom:
        dicom_header(upload, metadata)
    window = window_choice(upload, metadata, windowable)
    row["Modality"] = modality_name(modality)
    model_dirs = settings.models.get(modality)
    if not model_dirs:
        st.warning(f"No {modality_name(modality)} classifier is installed, so this image cannot be analysed.")
        scan = read_scan(upload.digest, upload.data, upload.name)
        st.image(for_display(scan.pixels, display_size(scan.pixels.shape)), width=DISPLAY_SIDE // 2, clamp=True)
        return row | {"Result": "not analysed: no model"}
    try:
        analysis = analysis_for(upload, model_dirs, settings.method, modality)
    except CheckpointError as error:
        show_error(f"The model could not be loaded: {error}")
        return row | {"Result": "not analysed: the model could not be loaded"}
    prediction = analysis.prediction
    result_block(analysis)
    # The window changes only what is drawn: the analysis (models' input: the card's canonical one) stays as it is.
    shown = analysis.grey if window is None else windowed_image(upload.digest, window, upload).astype(np.float32) / 255
    masks = analysis.masks
    overlay = heatmap_overlay(shown, analysis.heat, settings.opacity)
    if masks and settings.outline_on_heatmap:
        overlay = mask_overlay(overlay, next(iter(masks.values())), color=OUTLINE_COLOR, alpha=0.0)
    columns = st.columns(3 if masks and settings.show_masks else 2)
    columns[0].image(shown, caption="Image" + (f" (window {window[0]:g} / {window[1]:g})" if window else ""),
                     clamp=True, width="stretch")
    cam_caption = f"{METHOD_LABELS[settings.method]} for {class_name(prediction.positive_class)}"
    if prediction.out_of_distribution:
        cam_caption += " (held back with the prediction: not to be interpreted)"
    columns[1].image(overlay, caption=cam_caption, width="stretch")
    if masks and settings.show_masks:
        target, mask = next(iter(masks.items()))
        columns[2].image(mask_overlay(shown, mask, color=MASK_COLORS.get(target, LUNG_COLOR)),
                         caption=MASK_CAPTIONS.get(target, f"{target.capitalize()} mask"), width="stretch")
    trust_signals(analysis)
    downloads(upload, analysis, settings, shown, overlay)
    st.caption(":material/health_and_safety: Research use only: not for diagnosis. Review by a radiologist.")
    return row | {"Model": prediction.model,
                  "COVID-19 probability": None if prediction.out_of_distribution else prediction.positive_probability,
                  "Result": "held back (out of distribution)" if prediction.out_of_distribution
                  else "at or above the operating point" if prediction.positive else "below the operating point"}


def downloads(upload: Upload, analysis: Analysis, settings: Settings, shown: np.ndarray, overlay: np.ndarray) -> None:
    """Annotated PNG and the report; built only when clicked (the callables run on download)."""
    stem = Path(bare_file_name(upload.name)).stem
    content = ReportContent(file_name=upload.name, modality=analysis.modality, prediction=analysis.prediction,
                            operating_point=analysis.operating_point, explanation=METHOD_LABELS[settings.method],
                            image=shown, overlay=overlay, lung_share=analysis.lung_share)
    key = f"{upload.digest[:16]}-{settings.method}"
    first, second, third = st.columns(3)
    first.download_button("Annotated image (PNG)", lambda: png_bytes(overlay), file_name=f"{stem}-heatmap.png",
                          mime="image/png", on_click="ignore", icon=":material/image:", key=f"png-{key}")
    second.download_button("Report (PDF)", lambda: render_pdf(content), file_name=f"{stem}-report.pdf",
                           mime="application/pdf", on_click="ignore", icon=":material/picture_as_pdf:",
                           key=f"pdf-{key}")
    third.download_button("Report (HTML)", lambda: render_html(content), file_name=f"{stem}-report.html",
                          mime="text/html", on_click="ignore", icon=":material/description:", key=f"html-{key}")


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
