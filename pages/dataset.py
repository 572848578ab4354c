"""Dataset statistics: what each shipped model was trained on (from its card) and a live look at a data folder.

The live part reads the manifests of a curated data folder (COVID_DATA_DIR or a path typed here): class
balance per source and split, image sizes, a few sample images per class, and the patient-leakage check.
Results (the split, the leakage check, the figures and tables) are computed once per manifest content
(a SHA-256 of the manifest and near_duplicates.csv) for the whole server, so a rerun or a second visitor only
lays them out; they are recomputed when a manifest changes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, UnidentifiedImageError

from covid_models.analysis.figures import class_balance_figure, count_table, image_size_figure, mask_fraction_figure
from covid_models.models.model_card import ModelCard
from covid_models.training.data_folders import typed_folders_allowed
from covid_models.training.manifests import DataError, file_fingerprint, read_manifest_csv
from covid_models.training.splits import classification_statistics
from pages.shared import data_dir, enter_through_app, model_cards, show_error, typed_folder

enter_through_app()

CLASSIFICATION_SETS = {"xray": "Chest X-ray classification", "ct": "Chest CT classification"}
SEGMENTATION_TITLES = {"xray-lungs": "X-ray lung segmentation", "ct-infection": "CT infection segmentation"}
GALLERY_PER_CLASS = 4
SPLIT_SEED = 0
FOLDER_KEY = "dataset-folder"


# ------------------------------------------------------------------ cached reading (path + mtime keyed)


@st.cache_resource(show_spinner="Reading the manifest...", max_entries=4)
def classification_stats(manifest: str, fingerprint: str, root: str) -> dict:
    """`classification_statistics` of a manifest, plus the tables and figures the page shows of it.

    Shared by every session (a resource, not copied on each read: 100,000 rows would be unpickled on every
    rerun); callers only read it. `fingerprint` (see `manifest_fingerprint`) is part of the cache key only.
    """
    stats = classification_statistics(manifest, Path(root), seed=SPLIT_SEED)
    frame = stats["frame"]
    stats["balance_figure"] = class_balance_figure(count_table(frame))
    stats["crosstab"] = pd.crosstab([frame["split"], frame["source"]], frame["label"], margins=True,
                                    margins_name="total")
    stats["size_figure"] = image_size_figure(frame) if {"width", "height"} <= set(frame.columns) else None
    stats["patients"] = frame["patient_id"].nunique()
    return stats


def manifest_fingerprint(manifest: Path, root: Path) -> str:
    """The cache key of a manifest's statistics: its content and the near-duplicate list beside it."""
    return file_fingerprint(manifest, root / "near_duplicates.csv")


@st.cache_data(show_spinner="Reading the manifest...")
def segmentation_frame(manifest: str, mtime: float) -> pd.DataFrame:
    """A segmentation manifest (image, mask, source, patient_id, mask_fraction) with absolute paths and sizes.

    Read here rather than by `load_manifest`, which requires the `label` column these sets do not have.
    """
    _, frame = read_manifest_csv(manifest, {"image", "mask"})
    if "source" not in frame.columns:
        frame["source"] = "unknown"
    if not {"width", "height"} <= set(frame.columns):
        sizes = [image_size(p) for p in frame["image"]]
        frame["width"] = [s[0] for s in sizes]
        frame["height"] = [s[1] for s in sizes]
    return frame


def image_size(path: str) -> tuple[float, float]:
    """(width, height) from the file header only; NaN for a missing or unreadable file."""
    try:
        with Image.open(path) as image:
            return float(image.width), float(image.height)
    except (OSError, UnidentifiedImageError):
        return float("nan"), float("nan")


def manifests(root: Path) -> dict[str, Path]:
    """The manifests of a curated data folder, by set name (xray, ct, and each segmentation set)."""
    found = {name: root / name / "manifest.csv" for name in CLASSIFICATION_SETS}
    found.update({p.parent.name: p for p in sorted((root / "segmentation").glob("*/manifest.csv"))})
    return {name: path for name, path in found.items() if path.is_file()}


# ------------------------------------------------------------------ the data the models saw (cards)


def _compact(counts: object) -> str:
    if not isinstance(counts, dict) or not counts:
        return "—"
    return ", ".join(f"{key}: {value}" for key, value in counts.items())


def _card_row(card: ModelCard) -> dict:
    data = card.data
    return {"model": card.name, "task": card.task, "modality": card.modality,
            "images": data.get("n_images"), "patients": data.get("n_patients"),
            "per split": _compact(data.get("by_split")), "per label": _compact(data.get("by_label")),
            "per source": _compact(data.get("by_source")), "manifest": data.get("manifest_sha256", "—")}


def models_section() -> None:
    cards = model_cards()
    if not cards:
        st.info("No model directory found, so there is no training data to describe. The live statistics of a "
                "data folder are below.")
        return
    st.dataframe(pd.DataFrame([_card_row(card) for _, card in cards]), hide_index=True, width="stretch",
                 column_config={"images": st.column_config.NumberColumn(format="%d"),
                                "patients": st.column_config.NumberColumn(format="%d")})
    with_counts = {card.name: card for _, card in cards if card.data.get("counts")}
    if not with_counts:
        st.caption("These cards store no per-source counts.")
        return
    name = st.selectbox("Class balance of the data a model saw", list(with_counts), key="dataset-card-model")
    card = with_counts[name]
    st.plotly_chart(class_balance_figure(card.data["counts"]), key="dataset-card-balance")
    sizes = {axis: card.data[axis] for axis in ("width", "height") if isinstance(card.data.get(axis), dict)}
    if sizes:
        st.caption("Image size in pixels (min / median / max): " + "; ".join(
            f"{axis} {values.get('min')} / {values.get('50%')} / {values.get('max')}"
            for axis, values in sizes.items()))


# ------------------------------------------------------------------ the live data folder


NO_MANIFESTS = ("That folder holds none of the manifests this page reads (xray/manifest.csv, ct/manifest.csv, "
                "segmentation/<set>/manifest.csv). Is it the curated data folder?")


def chosen_folder() -> Path | None:
    """The configured data folder or, where $COVID_DATA_ROOTS allows typing one, the folder typed on this page
    (kept in st.session_state['data_dir'] for every page). Typed folders outside the roots are refused without
    saying whether they exist."""
    if not typed_folders_allowed():
        folder = data_dir()
        if folder is None:
            st.info("No data folder is configured on this server (COVID_DATA_DIR), so there are no live statistics.")
        elif not manifests(folder):
            show_error(NO_MANIFESTS)
            return None
        return folder
    if FOLDER_KEY not in st.session_state:
        st.session_state[FOLDER_KEY] = str(st.session_state.get("data_dir") or data_dir() or "")
    typed = st.text_input("Data folder", key=FOLDER_KEY, placeholder="/path/to/data (holding xray/ and ct/)",
                          help="The curated data root, inside the folders this server allows (COVID_DATA_ROOTS). "
                               "COVID_DATA_DIR sets the default for every page.").strip()
    if not typed:
        st.info("Type the path of a data folder to see its live statistics.")
        return None
    path, problem = typed_folder(typed)
    if path is not None and not manifests(path):
        problem = NO_MANIFESTS
    if problem is not None:
        st.session_state.pop("data_dir", None)
        show_error(problem)
        return None
    st.session_state["data_dir"] = str(path)
    return path


def leakage_result(stats: dict, name: str) -> None:
    if not stats["official_split"]:
        st.info(f"The {name} manifest has no split column: the splits shown are the seeded patient-level split "
                f"(seed {SPLIT_SEED}) that scripts/train.py makes, keeping near-duplicate pairs together.")
    if stats["leakage"] is not None:
        st.error(f"Patient-leakage check failed: {stats['leakage']}", icon=":material/gpp_bad:")
    else:
        frame = stats["frame"]
        st.success(f"Patient-leakage check passed: none of the {stats['patients']} patients and none of "
                   f"the {len(frame)} images appears in more than one split.", icon=":material/verified_user:")
    if stats["near_duplicates"]:
        st.warning(f"{len(stats['near_duplicates'])} near-duplicate pair(s) listed in near_duplicates.csv fall on "
                   "both sides of a split; their patient ids differ, so the patient check cannot see them: "
                   + "; ".join(stats["near_duplicates"]), icon=":material/content_copy:")


def gallery(frame: pd.DataFrame, column: str, seed: int, captions: str = "label") -> None:
    """A few seeded thumbnails per value of `column` (a label, or the source for segmentation sets)."""
    rng = np.random.default_rng(seed)
    for value, part in frame.groupby(column):
        picks = part.iloc[np.sort(rng.choice(len(part), size=min(GALLERY_PER_CLASS, len(part)), replace=False))]
        st.markdown(f"**{value}** ({len(part)} images)")
        images = picks["image"].tolist()
        if captions == "mask":
            for image, mask in zip(images, picks["mask"], strict=True):
                st.image([image, mask], caption=[Path(image).name, "mask"], width=140)
        else:
            st.image(images, caption=[Path(p).name for p in images], width=140)


def classification_tab(name: str, manifest: Path, root: Path, seed: int) -> None:
    stats = classification_stats(str(manifest), manifest_fingerprint(manifest, root), str(root))
    frame = stats["frame"]
    columns = st.columns(4)
    columns[0].metric("Images", len(frame))
    columns[1].metric("Patients", stats["patients"])
    columns[2].metric("Sources", frame["source"].nunique())
    columns[3].metric("Labels", frame["label"].nunique())
    leakage_result(stats, name)
    st.subheader("Class balance per source and split")
    st.plotly_chart(stats["balance_figure"], key=f"dataset-balance-{name}")
    st.dataframe(stats["crosstab"], width="stretch")
    if stats["size_figure"] is not None:
        st.subheader("Image sizes")
        st.plotly_chart(stats["size_figure"], key=f"dataset-sizes-{name}")
    st.subheader("Sample images per class")
    gallery(frame, "label", seed)


def segmentation_tab(name: str, manifest: Path, seed: int) -> None:
    frame = segmentation_frame(str(manifest), manifest.stat().st_mtime)
    columns = st.columns(4)
    columns[0].metric("Image/mask pairs", len(frame))
    columns[1].metric("Patients", frame["patient_id"].nunique() if "patient_id" in frame.columns else "n/a")
    columns[2].metric("Sources", frame["source"].nunique())
    if "mask_fraction" in frame.columns:
        columns[3].metric("Mean mask coverage", f"{frame['mask_fraction'].mean():.1%}")
        st.plotly_chart(mask_fraction_figure(frame["mask_fraction"].tolist()), key=f"dataset-masks-{name}")
    st.plotly_chart(image_size_figure(frame), key=f"dataset-sizes-{name}")
    st.subheader("Sample pairs")
    gallery(frame, "source", seed, captions="mask")


def folder_section() -> None:
    root = chosen_folder()
    if root is None:
        return
    found = manifests(root)
    seed = int(st.number_input("Sample seed (which thumbnails are shown)", min_value=0, value=0, step=1,
                               key="dataset-seed"))
    titles = {name: CLASSIFICATION_SETS.get(name) or SEGMENTATION_TITLES.get(name) or f"Segmentation: {name}"
              for name in found}
    for tab, (name, manifest) in zip(st.tabs(list(titles.values())), found.items(), strict=True):
        with tab:
            st.caption(f"From {manifest.relative_to(root).as_posix()}")
            try:
                if name in CLASSIFICATION_SETS:
                    classification_tab(name, manifest, root, seed)
                else:
                    segmentation_tab(name, manifest, seed)
            except (DataError, ValueError, KeyError) as error:
                show_error(f"{manifest.relative_to(root).as_posix()} could not be read: {error}")
            except OSError:  # its message would name server paths
                show_error(f"{manifest.relative_to(root).as_posix()} could not be read (a file of it is missing "
                           "or unreadable).")


def main() -> None:
    st.title("Dataset statistics")
    st.header("Data the models saw")
    st.caption("From each model's card: the images and patients of its training manifest.")
    models_section()
    st.header("A data folder, live")
    folder_section()


main()
