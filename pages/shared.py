"""Streamlit-side helpers shared by the pages: where models and data live, cached loaders, error display.

Heavy objects (networks, the review database engine) are cached resources so that a rerun caused by a
slider move or a click never reloads them; no business logic lives here, only in `covid_models`.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import streamlit as st

from covid_models.checkpoint import ModelCard
from covid_models.data import default_data_dir
from covid_models.inference import Classifier, discover_models
from covid_models.reviews import ReviewStore
from covid_models.segmentation import Segmenter

WEIGHTS_DIR_ENV = "COVID_WEIGHTS_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent


def weights_dir() -> Path:
    """$COVID_WEIGHTS_DIR when set, else the shipped `weights/` folder of the repository."""
    value = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else REPO_ROOT / "weights"


@st.cache_resource(show_spinner="Loading the model...")
def load_classifier(directory: str) -> Classifier:
    """One network per model directory for the whole server process."""
    return Classifier.load(directory)


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


@st.cache_data(show_spinner=False, ttl=60)
def _model_cards(weights: str, task: str | None, modality: str | None) -> list[tuple[str, ModelCard]]:
    return [(str(directory), card) for directory, card in discover_models(weights, task, modality)]


def model_cards(task: str | None = None, modality: str | None = None) -> list[tuple[str, ModelCard]]:
    """(directory, card) of the shipped models matching task and modality, sorted by directory.

    Cached per weights folder as well, so that pointing the app at another folder takes effect at once,
    and for a minute only, so that a model directory written while the app runs appears without a restart.
    """
    return _model_cards(str(weights_dir()), task, modality)


@st.cache_resource(show_spinner=False)
def review_store() -> ReviewStore:
    """The review database (DATABASE_URL, else the SQLite file of COVID_REVIEW_DB or the default)."""
    return ReviewStore()


def data_dir() -> Path | None:
    """The curated data folder: $COVID_DATA_DIR, else a folder the user typed (st.session_state["data_dir"])."""
    found = default_data_dir()
    if found is not None:
        return found
    typed = str(st.session_state.get("data_dir") or "").strip()
    return Path(typed).expanduser() if typed and Path(typed).expanduser().is_dir() else None


def show_error(message: str) -> None:
    """A user-readable error box; the page goes on."""
    st.error(f"Could not complete this step. {message}", icon=":material/error:")
