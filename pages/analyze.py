"""Analyze: upload chest images and see calibrated probabilities, a heatmap, masks and a downloadable report.

Every expensive step is cached by the image's content hash together with what changes its result
(window, model directories, CAM method, segmentation model), so moving a slider or toggling a mask
reruns the script without recomputing or even decoding anything. Results are cached at display size and
the caches are bounded (2 decoded full-size scans; 64 images and 64 heatmaps as uint8 and 128 masks as packed
bits at no more than 768 px, plus 16 MB of slow-method heatmaps: about 100 MB when full), so a long-running
server does not grow without limit.
Models are used under their lock (pages.shared.model_lock) because a CAM hook on a shared network must not
see another session's forward pass.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from covid_models import RESEARCH_USE_NOTICE
from covid_models.checkpoint import CheckpointError, ModelCard
from covid_models.data import DataError, LeakageError, default_data_dir, ensure_split, load_dataset
from covid_models.explain import METHOD_LABELS, METHODS, SLOW_METHODS, Progress, heatmap
from covid_models.inference import Ensemble, Prediction
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
from covid_models.segmentation import cam_mass_inside
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

MODALITY_NAMES = {"xray": "X-ray", "ct": "CT"}
ENSEMBLE = "ensemble"
LOW_LUNG_SHARE = 0.5
EXAMPLES_PER_CLASS = 2
FILE_WINDOW = "file"
CUSTOM_WINDOW = "custom"
MASK_COLORS = {"lungs": LUNG_COLOR, "infection": INFECTION_COLOR}
MASK_CAPTIONS = {"lungs": "Lung mask", "infection": "Infection mask (ground glass and consolidation)"}
OUTLINE_COLOR = (255, 255, 255)  # a mask outline on the heatmap: white reads on every colour of the jet map
SLOW_HEATMAP_BYTES = 16 * 1024 * 1024  # Score-CAM and Ablation-CAM maps kept (uint8 at display size: about 28)


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


class Pixels:
    """The image under a window, decoded only when a cached result is missing, and then once per rerun."""

    def __init__(self, upload: Upload, window: tuple[float, float] | None):
        self.upload, self.window = upload, window

    @functools.cached_property
    def full(self) -> np.ndarray:
        scan = read_scan(self.upload.digest, self.upload.data, self.upload.name)
        return scan.pixels if self.window is None else rewindow(scan, *self.window)


@st.cache_data(max_entries=64, show_spinner=False)
def display_image(digest: str, window: tuple[float, float] | None, _pixels: Pixels) -> np.ndarray:
    """The image at display size as uint8 (a quarter of float32 in the cache)."""
    full = _pixels.full
    return np.round(for_display(full, display_size(full.shape)) * 255).astype(np.uint8)


@st.cache_data(max_entries=512, show_spinner=False)
def classify(digest: str, window: tuple[float, float] | None, model_dirs: tuple[str, ...], _pixels: Pixels
             ) -> Prediction:
    """The calibrated prediction of one model, or of the ensemble of several."""
    members = [load_classifier(directory) for directory in model_dirs]
    with _locks(model_dirs):
        return members[0].predict(_pixels.full) if len(members) == 1 else Ensemble(members).predict(_pixels.full)


def compute_heatmap(model_dirs: tuple[str, ...], method: str, pixels: np.ndarray,
                    progress: Progress | None = None) -> np.ndarray:
    """CAM for the positive class at display size as uint8 (a quarter of float32 in a cache); for an
    ensemble, the mean of its members' maps. `progress` hears the fraction done (slow methods only)."""
    maps = []
    for number, directory in enumerate(model_dirs):
        classifier = load_classifier(directory)
        member_progress = None if progress is None else \
            (lambda done, n=number: progress((n + done) / len(model_dirs)))
        with model_lock(directory):
            maps.append(heatmap(classifier, pixels, method, progress=member_progress))
    mean = for_display(np.mean(maps, axis=0).astype(np.float32), display_size(pixels.shape))
    low, high = float(mean.min()), float(mean.max())
    scaled = (mean - low) / (high - low) if high > low else np.zeros_like(mean)
    return np.round(scaled * 255).astype(np.uint8)


@st.cache_data(max_entries=64, show_spinner=False)
def explain(digest: str, window: tuple[float, float] | None, model_dirs: tuple[str, ...], method: str,
            _pixels: Pixels) -> np.ndarray:
    """The heatmap of a fast method, cached."""
    return compute_heatmap(model_dirs, method, _pixels.full)


@st.cache_resource(show_spinner=False)
def slow_heatmaps() -> LruCache:
    """Heatmaps of the slow methods: computed outside Streamlit's caches so that they can show progress."""
    return LruCache(SLOW_HEATMAP_BYTES, size=lambda array: array.nbytes)


@st.cache_data(max_entries=128, show_spinner=False)
def segment(digest: str, window: tuple[float, float] | None, segmenter_dir: str, _pixels: Pixels
            ) -> tuple[np.ndarray, tuple[int, int]]:
    """A mask at display size, packed eight pixels to a byte for the cache, with its shape (see `unpacked`)."""
    segmenter = load_segmenter(segmenter_dir)
    with model_lock(segmenter_dir):
        mask = segmenter.mask(_pixels.full)
    mask = for_display(np.asarray(mask, dtype=bool), display_size(_pixels.full.shape))
    return np.packbits(mask), mask.shape


def unpacked(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


class _locks:
    """Hold the locks of several models (in a fixed order, so two sessions cannot deadlock)."""

    def __init__(self, directories: tuple[str, ...]):
        self.locks = [model_lock(d) for d in sorted(set(directories))]

    def __enter__(self) -> None:
        for lock in self.locks:
            lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(self.locks):
            lock.release()


@st.cache_data(show_spinner=False)
def example_rows(root: str, modality: str, per_class: int) -> list[tuple[str, str]]:
    """(label, image path) of a few test-split images per class: the official split, else a seeded patient one."""
    frame = load_dataset(root, modality)
    if "split" not in frame.columns or frame["split"].isna().any():
        frame = ensure_split(frame, seed=0, data_root=Path(root))
    test = frame[frame["split"] == "test"].sort_values("image")
    picks = [group.sample(min(per_class, len(group)), random_state=0) for _, group in test.groupby("label")]
    return [(row.label, row.image) for row in pd.concat(picks).itertuples()] if picks else []


# ------------------------------------------------------------------------------------------- settings
def model_label(directory: str, cards: dict[str, ModelCard]) -> str:
    return f"Ensemble of all {len(cards)} models" if directory == ENSEMBLE else cards[directory].name


def model_caption(model_dirs: tuple[str, ...], cards: dict[str, ModelCard]) -> str:
    """The chosen model's test AUC from its card (the sidebar is too narrow to put it in the option)."""
    if len(model_dirs) > 1:
        return "Mean of the members' calibrated probabilities."
    test = cards[model_dirs[0]].metrics.get("test") or {}
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


def operating_point_text(model_dirs: tuple[str, ...], prediction: Prediction) -> str:
    """Which operating point the threshold is and how it was chosen, from the card."""
    if len(model_dirs) > 1:
        return (f"threshold {prediction.threshold:.1%}: the mean of the members' operating points, a convenience "
                "that was not validated for the ensemble")
    card = load_classifier(model_dirs[0]).card
    name = card.default_operating_point
    if name is None:
        return f"threshold {prediction.threshold:.1%} (the card defines no operating point; 0.5 by default)"
    rule = card.operating_points[name].get("rule", "rule not recorded")
    return f"'{name}', threshold {prediction.threshold:.1%}, chosen by: {rule}"


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


def result_block(prediction: Prediction, modality: str, model_dirs: tuple[str, ...]) -> None:
    if prediction.out_of_distribution:
        st.error(f"This does not look like a chest {MODALITY_NAMES[modality]} the model was trained on; "
                 "the prediction is held back.", icon=":material/block:")
        with st.expander("Probabilities (held back: not to be interpreted)"):
            probability_table(prediction)
        return
    left, right = st.columns([2, 3])
    with left:
        if prediction.positive_probability is not None:
            st.metric(f"{class_name(prediction.positive_class)} probability (calibrated)",
                      f"{prediction.positive_probability:.1%}")
            if prediction.positive:
                st.markdown(":orange-badge[:material/flag: At or above the operating point]")
            else:
                st.markdown(":blue-badge[Below the operating point]")
        st.caption(result_sentence(prediction))
        st.caption("Operating point: " + operating_point_text(model_dirs, prediction))
    with right:
        probability_table(prediction)


def trust_signal(share: float, target: str) -> None:
    """How much of the heatmap lies inside the mask: a COVID-19 heatmap outside the lungs reads no disease."""
    if np.isnan(share):
        st.caption("The heatmap is empty, so its share inside the mask is undefined.")
        return
    if target != "lungs":
        st.caption(f"{share:.0%} of the heatmap lies inside the {target} mask.")
        return
    text = f"{share:.0%} of the heatmap lies inside the lungs."
    if share < LOW_LUNG_SHARE:
        st.warning(text + " The model looked mostly outside the lungs (labels, borders, devices): treat this "
                   "prediction with suspicion.", icon=":material/visibility_off:")
    else:
        st.success(text, icon=":material/visibility:")


def analyse(upload: Upload, settings: Settings) -> dict:
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
    st.caption(f"{MODALITY_NAMES[modality]} {origin}; {metadata.width} x {metadata.height} pixels, "
               f"{metadata.source_format.upper()}."
               + (f" Reference label in the dataset: **{upload.reference_label}**." if upload.reference_label else ""))
    if dicom:
        dicom_header(upload, metadata)
    window = window_choice(upload, metadata, windowable)
    pixels = Pixels(upload, window)
    shown = display_image(upload.digest, window, pixels).astype(np.float32) / 255
    model_dirs = settings.models.get(modality)
    if not model_dirs:
        st.warning(f"No {MODALITY_NAMES[modality]} classifier is installed, so this image cannot be analysed.")
        st.image(shown, width=DISPLAY_SIDE // 2, clamp=True)
        return row | {"Modality": MODALITY_NAMES[modality], "Result": "not analysed: no model"}
    try:
        prediction = classify(upload.digest, window, model_dirs, pixels)
        cam = heatmap_for(upload, window, model_dirs, settings.method, pixels).astype(np.float32) / 255
    except CheckpointError as error:
        show_error(f"The model could not be loaded: {error}")
        return row | {"Modality": MODALITY_NAMES[modality], "Result": "not analysed: the model could not be loaded"}
    result_block(prediction, modality, model_dirs)
    masks = masks_for(upload, window, pixels, modality)
    overlay = heatmap_overlay(shown, cam, settings.opacity)
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
    if not masks:
        target = "lung" if modality == "xray" else "infection"
        st.caption(f"No {target} segmentation model for {MODALITY_NAMES[modality]} is installed, so no mask and no "
                   "share of the heatmap inside it can be shown.")
    shares = {target: cam_mass_inside(cam, mask) for target, mask in masks.items()}
    for target, share in shares.items():
        trust_signal(share, target)
    lung_share = shares.get("lungs")
    lung_share = None if lung_share is None or np.isnan(lung_share) else lung_share
    downloads(upload, modality, prediction, model_dirs, settings, shown, overlay, lung_share)
    st.caption(":material/health_and_safety: Research use only: not for diagnosis. Review by a radiologist.")
    return row | {"Modality": MODALITY_NAMES[modality], "Model": prediction.model,
            "COVID-19 probability": None if prediction.out_of_distribution else prediction.positive_probability,
            "Result": "held back (out of distribution)" if prediction.out_of_distribution
            else "at or above the operating point" if prediction.positive else "below the operating point"}


def heatmap_for(upload: Upload, window: tuple[float, float] | None, model_dirs: tuple[str, ...], method: str,
                pixels: Pixels) -> np.ndarray:
    """The heatmap (uint8), cached; a slow method shows a progress bar while it is computed."""
    if method not in SLOW_METHODS:
        with st.spinner(f"Computing {METHOD_LABELS[method]}..."):
            return explain(upload.digest, window, model_dirs, method, pixels)
    key = (upload.digest, window, model_dirs, method)
    cam = slow_heatmaps().get(key)
    if cam is None:
        label = f"Computing {METHOD_LABELS[method]}: one forward pass per feature channel, this takes a while"
        bar = st.empty()
        try:
            cam = compute_heatmap(model_dirs, method, pixels.full,
                                  lambda done: bar.progress(done, text=f"{label} ({done:.0%})"))
        finally:
            bar.empty()
        slow_heatmaps().put(key, cam)
    return cam


def masks_for(upload: Upload, window: tuple[float, float] | None, pixels: Pixels, modality: str
              ) -> dict[str, np.ndarray]:
    """target -> display-size mask from each segmentation model of the modality (none when none is installed)."""
    masks: dict[str, np.ndarray] = {}
    for directory, card in model_cards(task="segmentation", modality=modality):
        try:
            mask = unpacked(*segment(upload.digest, window, directory, pixels))
        except CheckpointError as error:
            show_error(f"The segmentation model {card.name} could not be loaded: {error}")
            continue
        masks.setdefault(card.classes[0], mask)  # the card's only class is its target
    return masks


def downloads(upload: Upload, modality: str, prediction: Prediction, model_dirs: tuple[str, ...], settings: Settings,
              shown: np.ndarray, overlay: np.ndarray, lung_share: float | None) -> None:
    """Annotated PNG and the report; built only when clicked (the callables run on download)."""
    stem = Path(bare_file_name(upload.name)).stem
    content = ReportContent(file_name=upload.name, modality=modality, prediction=prediction,
                            operating_point=operating_point_text(model_dirs, prediction),
                            explanation=METHOD_LABELS[settings.method], image=shown, overlay=overlay,
                            lung_share=lung_share)
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
            name = MODALITY_NAMES[modality]
            try:
                rows = example_rows(str(root), modality, EXAMPLES_PER_CLASS)
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
rows = [analyse(item, settings) for item in items]
if len(items) > 1:
    with summary_slot:
        st.markdown(f"**{len(items)} images**; details of each below.")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "COVID-19 probability": st.column_config.NumberColumn(format="percent")})
