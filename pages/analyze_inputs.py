"""What the Analyze page is given to analyse: uploaded files (hashed once per upload), one-click examples from the
data folder's test split, and the page of a large batch shown now.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from covid_models.imaging.io import content_hash
from covid_models.models.model_card import MODALITY_NAMES, modality_name
from covid_models.training.data_folders import default_data_dir
from covid_models.training.manifests import DataError
from covid_models.training.splits import LeakageError, held_out_images
from pages.shared import data_dir, show_error

EXAMPLES_PER_CLASS = 2
BATCH_PAGE = 24  # images analysed and shown at once; more are paged


@dataclass(frozen=True)
class Upload:
    """One image handed to the page, by the uploader or an example button."""

    name: str
    data: bytes
    digest: str
    reference_label: str | None = None  # the dataset's label, for examples only
    modality: str | None = None  # known for examples (the dataset's); uploads take the DICOM tag or the setting


@st.cache_data(show_spinner=False)
def example_images(root: str, modality: str, per_class: int) -> list[tuple[str, str]]:
    """(label, image path) of a few held-out images per class (see `data.held_out_images`)."""
    test = held_out_images(Path(root), modality)
    picks = [group.sample(min(per_class, len(group)), random_state=0) for _, group in test.groupby("label")]
    return [(row.label, row.image) for row in pd.concat(picks).itertuples()] if picks else []


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
