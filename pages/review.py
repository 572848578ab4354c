"""Review session: a radiologist works through a batch of images, agreeing or disagreeing with the model.

Verdicts are committed to the review database one by one (covid_models.reviews.store), so a reload, an app
restart or a closed laptop loses nothing. A session belongs to the reviewer who started it: signed in
through the app's OpenID Connect login when one is configured, else by name and passphrase. Its link
(`?session=<token>&item=<n>`) names it by an unguessable token and reopens it, at the image the reader was
on, for its reviewer only. The database keeps each image's SHA-256 and bare file name, never its pixels, so
uploaded images live in a server-side cache per reviewer for the life of the process; after a restart they
are found again in the data folder (by file name, checked against the hash) or re-uploaded (matched by hash).

The page reads only what it shows: the session's counts (SQL aggregates), the current item, and the
summary or CSV only when asked for, so a rerun costs the same at 100 or 100,000 images.
Once the reader may see the model's reading (at once, or after their own in a blinded session), the image is shown
as the Analyze page shows it: `covid_models.analysis.image_analysis.analyse` laid out by `pages.shared.show_analysis`
(heatmap,
lung or infection mask, the share of the heatmap inside the lungs and its warning), from the analyses cache the two
pages share. A held-back (out-of-distribution) image shows none of that and no reading, blinded or not: it gets the
reason, and only the verdicts that need no reading (unsure, non-diagnostic), since the label a reader could
disagree with, or agree with by a blinded reading, would give the held-back reading away.

In a CT session a whole scan (a zip of a DICOM series, the DICOM files of one series, or a NIfTI volume) can be one
item: its reading is `covid_models.analysis.scan_analysis.analyse_scan`'s scan-level result, shown with the CT scan
page's
blocks (result, the viewer of `pages.scan_viewer` with its slice scrubber, window presets and masks, probability
curve, burden); scrubbing and windowing redraw from the cached analysis and run no model. A scan's bytes are never
kept: its analysis lives in a bounded server cache (`review_scans`), and once gone the stored reading is shown and the
scan asked for again (matched by content, as the CT scan page hashes an upload).

In a blinded session the reader first records their own reading of the image or scan (shown without its file name,
masks or anything of the model's); the model's reading is then revealed on the same item, where the reader agrees or
disagrees with it, and only that verdict (or Next) moves on.
"""
from __future__ import annotations

import io
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from covid_models.analysis.figures import confusion_figure
from covid_models.analysis.image_analysis import Analysis, analyse, predict
from covid_models.analysis.image_checks import HELD_BACK, REFUSED, check_models, screen
from covid_models.analysis.overlays import DISPLAY_SIDE, display_size, for_display
from covid_models.analysis.scan_analysis import ScanAnalysis
from covid_models.imaging.io import ImageReadError, content_hash, files_hash, read_image
from covid_models.imaging.volumes import VolumeReadError
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.inference import Prediction
from covid_models.models.model_card import ModelCard, display_name
from covid_models.reviews.names import admin_token_problem
from covid_models.reviews.store import (
    VERDICT_TEXT,
    ItemView,
    NewItem,
    NotYoursError,
    ReviewDatabaseError,
    Reviewer,
    ReviewError,
    ReviewStore,
    SessionInfo,
    StaleVerdictError,
    session_token,
)
from covid_models.training.manifests import DataError, load_dataset
from covid_models.training.splits import LeakageError, held_out_images
from pages.review_pacs import PageHooks, pacs_image, pacs_scan, pacs_session_form, send_verdict
from pages.scan_viewer import scan_viewer
from pages.shared import (
    LruCache,
    analyses,
    analysis_key,
    burden_block,
    data_dir,
    enter_through_app,
    hold_for,
    infection_models,
    load_classifier,
    load_segmenter,
    model_cards,
    model_lock,
    review_store,
    run_scan_analysis,
    scan_result_block,
    segmenters_for,
    show_analysis,
    show_error,
    weights_dir,
)

enter_through_app()

MODALITY_NAMES = {"xray": "Chest X-ray", "ct": "Chest CT"}
SOURCE_UPLOAD, SOURCE_DATA = "upload", "data"
REVIEWER_CACHE_BYTES = 64 * 1024 * 1024  # uploads kept per reviewer; a batch larger than this is refused
SERVER_CACHE_BYTES = 128 * 1024 * 1024  # all reviewers together (the app's budget); least recently active go first
SCAN_CACHE_BYTES = 256 * 1024 * 1024  # analysed scans of all reviewers: about 70 MB for a 255-slice 512 px scan
SCAN_SUFFIXES = (".zip", ".nii", ".nii.gz")  # one such file is one scan; DICOM files uploaded together are one more
KIND_NAMES = {"image": "Image", "scan": "CT scan"}
HEATMAP_METHOD = "gradcam"  # fast, and what the Analyze page shows by default (so its cached analyses serve here)
MAX_BATCH = 200
MAX_NAMES_LISTED = 20
SHORTCUTS = {"agree": "A", "disagree": "D", "unsure": "U", "non_diagnostic": "N", "previous": "Left",
             "next": "Right"}
VERDICT_COLOURS = {"agree": "#1e7b34", "disagree": "#b3261e"}  # green and red, told apart by label and icon too
SESSION_KEY, POSITION_KEY, MESSAGE_KEY = "review-session", "review-position", "review-message"
IDENTITY_KEY, CSV_KEY, MISSING_KEY = "review-identity", "review-csv", "review-missing"
REVIEWER_WIDGET = "review-reviewer"
ADMINS_SETTING, ADMIN_TOKEN_SETTING = "COVID_REVIEW_ADMINS", "COVID_REVIEW_ADMIN_TOKEN"
logger = logging.getLogger(__name__)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~<>$:&])")  # inline syntax; text stays on one line


def plain(text: object) -> str:
    """User text (names, notes, file names) made literal inside Markdown: no links, images or formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def setting(name: str) -> str:
    """A deployment setting: the environment variable, else the same key (lower case) in st.secrets."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    try:
        return str(st.secrets.get(name.lower(), "")).strip()
    except (FileNotFoundError, KeyError, AttributeError, ValueError):  # no secrets file: not configured
        return ""


# ------------------------------------------------------------------ server-side state


class UploadCache:
    """Uploaded files by (reviewer, content hash) for the life of the server process.

    A reviewer's uploads are never served to another reviewer, whatever hash they ask for. Each reviewer keeps
    at most REVIEWER_CACHE_BYTES (least recently used dropped); beyond SERVER_CACHE_BYTES in all, the least
    recently active reviewer's files are dropped first, so one reviewer's batch never evicts another's
    working set while there is room.
    """

    def __init__(self, per_reviewer: int, total: int) -> None:
        self.per_reviewer, self.total = per_reviewer, total
        self._files: OrderedDict[str, OrderedDict[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, owner: str, digest: str, data: bytes) -> None:
        with self._lock:
            files = self._files.setdefault(owner, OrderedDict())
            self._files.move_to_end(owner)
            files[digest] = data
            files.move_to_end(digest)
            while len(files) > 1 and sum(map(len, files.values())) > self.per_reviewer:
                files.popitem(last=False)
            while len(self._files) > 1 and sum(len(v) for f in self._files.values() for v in f.values()) > self.total:
                self._files.popitem(last=False)

    def get(self, owner: str, digest: str) -> bytes | None:
        with self._lock:
            files = self._files.get(owner)
            if files is None or digest not in files:
                return None
            self._files.move_to_end(owner)
            files.move_to_end(digest)
            return files[digest]


@st.cache_resource(show_spinner=False)
def upload_cache() -> UploadCache:
    return UploadCache(REVIEWER_CACHE_BYTES, SERVER_CACHE_BYTES)


@st.cache_resource(show_spinner=False)
def review_scans() -> LruCache:
    """Analysed scans by `scan_key`, bounded in bytes: what a scan item shows, without the scan's bytes."""
    return LruCache(SCAN_CACHE_BYTES, size=lambda analysis: analysis.nbytes)


def scan_key(reviewer: Reviewer, digest: str, directory: str | None) -> tuple:
    """A reviewer's scan is never shown to another reviewer (as with uploads); the model is part of its reading."""
    return reviewer.key, digest, directory


@st.cache_data(show_spinner=False)
def test_split(root: str, modality: str, mtime: float) -> list[str]:
    """Image paths of the data folder's held-out split (official, else the seeded patient-level one)."""
    return held_out_images(Path(root), modality)["image"].tolist()


@st.cache_data(show_spinner=False)
def files_by_name(root: str, modality: str, mtime: float) -> dict[str, str]:
    """Bare file name -> path over a data folder's manifest, to find a session's images again."""
    return {Path(path).name: path for path in load_dataset(root, modality)["image"]}


def _manifest_mtime(root: Path, modality: str) -> float:
    manifest = root / modality / "manifest.csv"
    return manifest.stat().st_mtime if manifest.is_file() else 0.0


def display_pixels(data: bytes, name: str) -> np.ndarray:
    """The image as [0, 1] greyscale at display size (aspect kept): all a blinded reader sees before reading."""
    pixels = read_image(data, name=name).pixels
    return for_display(pixels, display_size(pixels.shape, DISPLAY_SIDE))


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


def scan_label(analysis: ScanAnalysis, classes: list[str]) -> str:
    """The label the reviewer agrees or disagrees with: the positive class when the quantitative reading finds a
    pattern suggestive of it, else the card's other class (a CT card has two)."""
    return analysis.positive_class if analysis.positive else next(c for c in classes if c != analysis.positive_class)


def review_label(prediction: Prediction) -> str:
    """The label the reviewer agrees or disagrees with: the positive class at or above the operating point,
    else the most probable of the other classes."""
    if prediction.positive_class is None or prediction.positive:
        return prediction.positive_class or prediction.label
    others = {c: p for c, p in prediction.probabilities.items() if c != prediction.positive_class}
    return max(others, key=others.get)


# ------------------------------------------------------------------ who is reviewing


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, KeyError, AttributeError, ValueError):
        return False


def identity(store: ReviewStore) -> Reviewer | None:
    """The signed-in reviewer of this browser tab, or None after showing how to sign in."""
    admins = {a.strip().lower() for a in setting(ADMINS_SETTING).split(",") if a.strip()}
    if _oidc_configured():
        if not st.user.is_logged_in:
            st.info("Sign in to start a review session or open one of yours.")
            st.button("Log in", key="review-login", on_click=st.login, type="primary", icon=":material/login:")
            return None
        account = str(st.user.get("email") or st.user.get("sub") or "")
        reviewer = Reviewer.from_oidc(account, str(st.user.get("name") or account), admin=account.lower() in admins)
        st.session_state[IDENTITY_KEY] = reviewer
        return reviewer
    reviewer = st.session_state.get(IDENTITY_KEY)
    if isinstance(reviewer, Reviewer):
        return reviewer
    sign_in_form(store, admin_token=admin_token())
    return None


def admin_token() -> str:
    """The configured administrator token, or "" when none is set or the one set is too weak to be used (then the
    page says so, and the server log once)."""
    token = setting(ADMIN_TOKEN_SETTING)
    problem = admin_token_problem(token) if token else None
    if problem is None:
        return token
    _log_refused_token(problem)
    st.error(f"Administrator sign-in is off: the token set in {ADMIN_TOKEN_SETTING} is refused ({problem}). Set one "
             "of at least 16 random characters, e.g. the output of `python -c \"import secrets; "
             "print(secrets.token_urlsafe(24))\"`, and restart the app.", icon=":material/key_off:")
    return ""


@st.cache_resource(show_spinner=False)
def _log_refused_token(problem: str) -> None:
    logger.error("administrator token in %s refused: %s; administrator sign-in is off", ADMIN_TOKEN_SETTING, problem)


def client_address() -> str | None:
    """The browser's network address, for counting failed sign-ins per client (None on localhost and in tests)."""
    address = st.context.ip_address
    return address if isinstance(address, str) else None


def sign_in_form(store: ReviewStore, admin_token: str) -> None:
    """Name and passphrase: a new name is registered with its passphrase, a known one must match it."""
    st.info("Sign in with your name and passphrase. The first time, the passphrase you choose protects your "
            "sessions: nobody else can open or change them.", icon=":material/lock:")
    with st.form("review-sign-in-form", border=False):
        name = st.text_input("Your name", key=REVIEWER_WIDGET, max_chars=200,
                             placeholder="as it should appear in the export")
        passphrase = st.text_input("Passphrase", key="review-passphrase", type="password", max_chars=1024,
                                   help="At least 8 characters besides spaces at its ends; only a salted hash of it "
                                        "is stored")
        typed_token = st.text_input("Administrator token (optional)", key="review-admin-token",
                                    type="password") if admin_token else ""
        submitted = st.form_submit_button("Sign in", key="review-sign-in", type="primary", icon=":material/login:")
    if not submitted:
        return
    try:
        reviewer = store.sign_in(name, passphrase, client=client_address())
        if typed_token:
            reviewer = store.sign_in_as_admin(reviewer, typed_token, admin_token, client=client_address())
    except (ReviewError, ReviewDatabaseError) as error:
        show_error(plain(error))
        return
    st.session_state[IDENTITY_KEY] = reviewer
    st.rerun()


def _sign_out() -> None:
    for key in (IDENTITY_KEY, SESSION_KEY, POSITION_KEY, CSV_KEY, MISSING_KEY):
        st.session_state.pop(key, None)
    st.query_params.clear()


# ------------------------------------------------------------------ starting a session


def _cards(modality: str) -> dict[str, tuple[str, ModelCard]]:
    return {card.name: (directory, card) for directory, card in model_cards("classification", modality)
            if card.positive_class is not None}


def _batch_from_data(root: Path, modality: str, n: int, seed: int) -> list[tuple[str, bytes]]:
    paths = pd.Series(test_split(str(root), modality, _manifest_mtime(root, modality)), dtype=object)
    picks = paths.sample(n=min(n, len(paths)), random_state=seed) if len(paths) else paths
    return [(Path(path).name, Path(path).read_bytes()) for path in picks]


def scans_of(files: list[tuple[str, bytes]]) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """(name, files) of each scan of an upload: each zip or NIfTI file is one, the other (DICOM) files one more."""
    singles = [(name, [(name, data)]) for name, data in files if name.lower().endswith(SCAN_SUFFIXES)]
    series = [(name, data) for name, data in files if not name.lower().endswith(SCAN_SUFFIXES)]
    more = f" and {len(series) - 1} more files" if len(series) > 1 else ""
    return singles + ([(series[0][0] + more, series)] if series else [])


def _start(store: ReviewStore, reviewer: Reviewer, modality: str, directory: str, card: ModelCard,
           batch: list[tuple[str, bytes]], *, keep_bytes: bool, blinded: bool,
           scans: list[tuple[str, list[tuple[str, bytes]]]]) -> None:
    """Predict every image and analyse every scan, keep uploaded image bytes in the reviewer's cache (scans: their
    analyses in the scan cache) and open the session in the database."""
    cache, items, skipped, seen = upload_cache(), [], [], set()
    bar = st.progress(0.0, text="Predicting...")
    for index, (name, data) in enumerate(batch):
        digest = content_hash(data)
        bar.progress((index + 1) / len(batch), text=f"Predicting {index + 1} of {len(batch)}: {plain(name)}")
        if digest in seen:
            skipped.append(f"{name}: the same image as another file of this batch")
            continue
        try:
            status, reason, predicted = screening(digest, directory, data, name)
        except ImageReadError as error:
            skipped.append(f"{name}: {error}")
            continue
        if status == REFUSED:
            skipped.append(f"{name}: {reason}")
            continue
        seen.add(digest)
        if keep_bytes:
            cache.put(reviewer.key, digest, data)
        items.append(NewItem(image_hash=digest, display_name=name, predicted_label=review_label(predicted),
                             covid_probability=float(predicted.positive_probability),
                             operating_threshold=float(predicted.threshold),
                             held_back=status == HELD_BACK))
    bar.empty()
    for name, files in scans:
        digest = files_hash([content_hash(data) for _, data in files])
        if digest in seen:
            skipped.append(f"{name}: the same scan as another upload of this batch")
            continue
        try:
            analysis = review_scan(reviewer, files, digest, directory)
        except VolumeReadError as error:
            skipped.append(f"{name}: {error}")
            continue
        seen.add(digest)
        # the label is the quantitative reading's (none to agree with when held back or without a pattern reading);
        # the stored probability is the secondary classifier's, never shown for a scan
        items.append(NewItem(image_hash=digest, display_name=name, predicted_label=scan_label(analysis, card.classes),
                             covid_probability=0.0 if analysis.secondary_held_back else analysis.scan_probability,
                             operating_threshold=analysis.threshold, held_back=analysis.positive is None,
                             kind="scan"))
    if skipped:
        st.session_state[MESSAGE_KEY] = ("warning", "Left out of the session: " + "; ".join(skipped))
    if not items:
        st.session_state[MESSAGE_KEY] = ("error", "None of the images could be read: " + "; ".join(skipped))
        return
    session_id = store.start_session(reviewer, card.name, modality, items, blinded=blinded)
    _open(store.session_info(session_id), 0)


def _too_large(batch: list[tuple[str, bytes]]) -> str | None:
    """Why an upload batch is refused: larger than the reviewer's share of the server's image cache."""
    total = sum(len(data) for _, data in batch)
    if total <= REVIEWER_CACHE_BYTES:
        return None
    parts = -(-total // REVIEWER_CACHE_BYTES)
    return (f"These {len(batch)} files are {total / 2**20:.0f} MB together; the server keeps at most "
            f"{REVIEWER_CACHE_BYTES / 2**20:.0f} MB of uploaded images per reviewer, so the first images would be "
            f"gone before you reached them. Start {parts} smaller sessions instead (about "
            f"{len(batch) // parts} files each).")


def new_session_form(store: ReviewStore, reviewer: Reviewer) -> None:
    st.subheader("Start a new session")
    modalities = [m for m in MODALITY_NAMES if _cards(m)]
    if not modalities:
        st.info("No classification model is installed, so there is nothing to review.")
        return
    columns = st.columns(2)
    modality = columns[0].radio("Modality", modalities, format_func=MODALITY_NAMES.get, horizontal=True,
                                key="review-modality")
    cards = _cards(modality)
    name = columns[1].selectbox("Model", list(cards), key=f"review-model-{modality}",
                                format_func=lambda n: display_name(cards[n][1]))
    directory, card = cards[name]
    root = data_dir()
    sources = [SOURCE_UPLOAD] + ([SOURCE_DATA] if root is not None else [])
    source = st.radio("Images", sources, horizontal=True, key="review-source", format_func={
        SOURCE_UPLOAD: "Upload files", SOURCE_DATA: "Sample from the data folder's test split"}.get)
    n, seed, uploads, scan_uploads = 0, 0, [], []
    if source == SOURCE_DATA and root is not None:
        columns = st.columns(2)
        n = int(columns[0].number_input("Number of images", 1, MAX_BATCH, 10, key="review-n"))
        seed = int(columns[1].number_input("Sample seed", 0, 10**6, 0, key="review-seed",
                                           help="The same seed gives the same images"))
        st.caption(f"A seeded sample of the {MODALITY_NAMES[modality]} test split of the data folder.")
    else:
        uploads = st.file_uploader("Images to review (PNG, JPEG, TIFF or DICOM)", accept_multiple_files=True,
                                   key="review-uploads") or []
        st.caption(f"Up to {REVIEWER_CACHE_BYTES / 2**20:.0f} MB per session: the server keeps the files only "
                   "while it runs, for you alone.")
        if modality == "ct":
            scan_uploads = st.file_uploader(
                "Whole CT scans, one item each: a zip of a DICOM series or a NIfTI volume per file (the DICOM files "
                "of one series selected together are one scan)", accept_multiple_files=True, key="review-scans") or []
            st.caption("A scan is read by its scan-level result, as on the CT scan page; its files are not kept, "
                       "only its analysis while the server runs.")
    blinded = st.checkbox("Blinded reading", key="review-blinded",
                          help="Record your own reading of each image before the model's reading is shown")
    if st.button("Start session", type="primary", key="review-start", icon=":material/play_arrow:"):
        try:
            if source == SOURCE_DATA and root is not None:
                batch = _batch_from_data(root, modality, n, seed)
            else:
                batch = [(upload.name, upload.getvalue()) for upload in uploads]
            scans = scans_of([(upload.name, upload.getvalue()) for upload in scan_uploads])
            if not batch and not scans:
                show_error("Choose at least one image for the session.")
                return
            refusal = None if source == SOURCE_DATA else _too_large(batch)
            if refusal:
                show_error(refusal)
                return
            _start(store, reviewer, modality, directory, card, batch, keep_bytes=source != SOURCE_DATA,
                   blinded=blinded, scans=scans)
        except (DataError, LeakageError, OSError):
            show_error("The data folder could not be read; check that it holds the manifest and images.")
            return
        except CheckpointError as error:
            show_error(f"The model could not be loaded: {error}")
            return
        except (ReviewError, ReviewDatabaseError) as error:
            show_error(plain(error))
            return
        st.rerun()


# ------------------------------------------------------------------ choosing and resuming


def _open(info: SessionInfo, position: int) -> None:
    st.session_state[SESSION_KEY] = info.id
    _move(position)
    st.session_state.pop(MISSING_KEY, None)
    st.session_state.pop(CSV_KEY, None)
    st.query_params["session"] = info.token


def _leave() -> None:
    for key in (SESSION_KEY, POSITION_KEY, CSV_KEY, MISSING_KEY):
        st.session_state.pop(key, None)
    st.query_params.clear()


def _resume(store: ReviewStore, info: SessionInfo) -> None:
    _open(info, store.next_unreviewed(info.id) or 0)


def session_list(store: ReviewStore, reviewer: Reviewer) -> None:
    sessions = store.sessions(reviewer)
    if not sessions:
        st.caption("You have no earlier session.")
        return
    st.subheader("All sessions (administrator)" if reviewer.admin else "Your sessions")
    st.dataframe(pd.DataFrame([{
        "reviewer": s.reviewer, "started (UTC)": f"{s.created_at:%Y-%m-%d %H:%M}",
        "last verdict (UTC)": f"{s.updated_at:%Y-%m-%d %H:%M}", "model": s.model_name,
        "modality": MODALITY_NAMES.get(s.modality, s.modality), "reviewed": f"{s.n_reviewed} / {s.n_items}",
        "blinded": s.blinded, "status": s.status} for s in sessions]), hide_index=True, width="stretch")
    by_token = {s.token: s for s in sessions}
    columns = st.columns([3, 1], vertical_alignment="bottom")
    chosen = columns[0].selectbox("Session to resume", list(by_token), key="review-resume-choice",
                                  format_func=lambda token: _session_title(by_token[token]))
    columns[1].button("Resume", key="review-resume", on_click=_resume, args=(store, by_token[chosen]),
                      type="primary", width="stretch", icon=":material/resume:")
    if reviewer.admin:
        assign_form(store, reviewer, [s for s in sessions if s.owner is None])


def assign_form(store: ReviewStore, admin: Reviewer, unowned: list[SessionInfo]) -> None:
    """Sessions stored without an owner (by an earlier version) wait here until an administrator gives each to its
    reviewer: a registered reviewer name, or the sign-in account when the app uses OpenID Connect."""
    if not unowned:
        return
    st.subheader("Sessions without an owner")
    st.caption("Stored by an earlier version of the app: only administrators see them until you give each to its "
               "reviewer. Registering the same name does not hand them over.")
    by_token = {s.token: s for s in unowned}
    with st.form("review-assign-form", border=False):
        token = st.selectbox("Session", list(by_token), key="review-assign-session",
                             format_func=lambda t: _session_title(by_token[t]))
        whom = st.text_input("Give it to (registered reviewer name" + (", or sign-in e-mail" if _oidc_configured()
                             else "") + ")", key="review-assign-owner", max_chars=320)
        submitted = st.form_submit_button("Assign", key="review-assign", icon=":material/person_add:")
    if not submitted:
        return
    try:
        oidc = _oidc_configured() and "@" in whom
        owner = Reviewer.from_oidc(whom, whom) if oidc else store.registered_reviewer(whom)
        info = store.assign_session(by_token[token].id, owner, by=admin)
    except (ReviewError, ReviewDatabaseError) as error:
        show_error(plain(error))
        return
    st.session_state[MESSAGE_KEY] = ("done", f"The session now belongs to {owner.name}: {_session_title(info)}.")
    st.rerun()


def _session_title(info: SessionInfo) -> str:
    return (f"{info.reviewer} · {info.model_name} · {info.n_reviewed}/{info.n_items} reviewed · "
            f"started {info.created_at:%Y-%m-%d %H:%M} UTC")


def _from_url(store: ReviewStore, reviewer: Reviewer) -> bool:
    """Open the session named in the URL, at the image named there (a reload keeps the URL, not the state).

    Returns False after showing why it cannot be opened (malformed link, unknown, someone else's)."""
    token = st.query_params.get("session")
    if token is None:
        return True
    try:
        info = store.open_session(session_token(token), reviewer)
    except NotYoursError as error:
        st.error(str(error), icon=":material/lock:")
        st.button("Back to my sessions", key="review-not-yours-back", on_click=_leave, icon=":material/arrow_back:")
        return False
    except ReviewError as error:
        show_error(str(error))
        st.button("Back to my sessions", key="review-bad-link-back", on_click=_leave, icon=":material/arrow_back:")
        return False
    if st.session_state.get(SESSION_KEY) != info.id:
        shown = str(st.query_params.get("item", ""))
        position = int(shown) - 1 if shown.isdigit() and 1 <= int(shown) <= info.n_items else None
        _open(info, position if position is not None else store.next_unreviewed(info.id) or 0)
    return True


# ------------------------------------------------------------------ images


def image_bytes(reviewer: Reviewer, info: SessionInfo, item: ItemView) -> bytes | None:
    """The item's image: from the reviewer's upload cache, else the data folder (checked against the hash); a PACS
    image from the PACS."""
    if item.pacs_ref:
        return pacs_image(reviewer, item)
    data = upload_cache().get(reviewer.key, item.image_hash)
    if data is not None:
        return data
    root = data_dir()
    if root is None:
        return None
    try:
        path = files_by_name(str(root), info.modality, _manifest_mtime(root, info.modality)).get(item.display_name)
        data = Path(path).read_bytes() if path and Path(path).is_file() else None
    except (DataError, LeakageError, OSError):
        return None
    return data if data is not None and content_hash(data) == item.image_hash else None


def missing_images(store: ReviewStore, reviewer: Reviewer, info: SessionInfo) -> list[tuple[int, str, str]]:
    """(position, hash, name) of the session's images not on the server; found once per opening and kept."""
    if MISSING_KEY not in st.session_state:
        cache, root = upload_cache(), data_dir()
        names: dict[str, str] = {}
        if root is not None:
            try:
                names = files_by_name(str(root), info.modality, _manifest_mtime(root, info.modality))
            except (DataError, LeakageError, OSError):
                names = {}
        st.session_state[MISSING_KEY] = [ref for ref in store.image_refs(info.id)
                                         if cache.get(reviewer.key, ref[1]) is None and ref[2] not in names]
    return st.session_state[MISSING_KEY]


def reupload(store: ReviewStore, reviewer: Reviewer, info: SessionInfo) -> None:
    """After a restart, uploaded images are gone from the server: ask for the same files, matched by hash."""
    missing = missing_images(store, reviewer, info)
    if not missing:
        return
    notice = st.empty()
    wanted = {digest for _, digest, _ in missing}
    files = st.file_uploader("Re-upload the missing images", accept_multiple_files=True,
                             key=f"review-reupload-{info.id}") or []
    unmatched = []
    for upload in files:
        data = upload.getvalue()
        digest = content_hash(data)
        if digest in wanted:
            upload_cache().put(reviewer.key, digest, data)
        else:
            unmatched.append(upload.name)
    if unmatched:
        st.info("Not part of this session (different content): " + plain(", ".join(unmatched)))
    still = [ref for ref in missing if upload_cache().get(reviewer.key, ref[1]) is None]
    st.session_state[MISSING_KEY] = still
    if still:
        names = ", ".join(name for _, _, name in still[:MAX_NAMES_LISTED])
        more = f" and {len(still) - MAX_NAMES_LISTED} more" if len(still) > MAX_NAMES_LISTED else ""
        notice.warning(f"{len(still)} image(s) of this session are no longer on the server (the app was restarted, "
                       "or they were uploaded in another sign-in of the server). Upload the same files again; they "
                       f"are matched by content, whatever their names: {plain(names)}{more}",
                       icon=":material/upload_file:")
    else:
        notice.success("Every image of this session is back.", icon=":material/task_alt:")


# ------------------------------------------------------------------ reviewing


def _note_key(session_id: int, position: int) -> str:
    return f"review-note-{session_id}-{position}"


def _draft_key(session_id: int, position: int) -> str:
    """A plain state key holding the typed note: kept even in a run that cannot draw the note box."""
    return f"review-draft-{session_id}-{position}"


def _label_key(session_id: int, position: int) -> str:
    return f"review-label-{session_id}-{position}"


def _keep_draft(session_id: int, position: int) -> None:
    st.session_state[_draft_key(session_id, position)] = st.session_state.get(_note_key(session_id, position), "")


def _record(store: ReviewStore, reviewer: Reviewer, item: ItemView, verdict: str, reading: str | None = None,
            stay: bool = False) -> None:
    """Commit one verdict (with the note and, for disagree, the reviewer's label), then go to the next image; with
    `stay` (a blinded reader's first verdict, which reveals the model's reading) remain on this one.

    The write carries the verdict version this tab showed: if another tab changed it since, nothing is
    overwritten and both are shown. If the database fails, the typed note stays in this tab."""
    session_id, position = item.session_id, item.position
    _keep_draft(session_id, position)
    note = st.session_state.get(_draft_key(session_id, position), "")
    label = st.session_state.get(_label_key(session_id, position)) if verdict == "disagree" else None
    try:
        if reading is not None:
            store.record_reading(session_id, position, reading, note, expected_version=item.version, by=reviewer.key)
        else:
            store.record_verdict(session_id, position, verdict, note=note, reviewer_label=label,
                                 expected_version=item.version, by=reviewer.key)
    except StaleVerdictError as error:
        st.session_state[MESSAGE_KEY] = ("stale", error)
        if note in ("", item.note):  # this tab typed nothing new: show the saved note, so re-saving keeps it
            st.session_state[_note_key(session_id, position)] = error.current.note
            st.session_state[_draft_key(session_id, position)] = error.current.note
        return
    except ReviewDatabaseError as error:
        st.session_state[MESSAGE_KEY] = ("error", f"Your verdict was NOT saved. {plain(error)}. Your note is kept "
                                                  "in this tab: record the verdict again when the database is back. "
                                                  "Verdicts saved earlier are not affected.")
        return
    except ReviewError as error:
        st.session_state[MESSAGE_KEY] = ("error", plain(error))
        return
    st.session_state.pop(_draft_key(session_id, position), None)
    send_verdict(store, reviewer, item, pacs_hooks())
    following = None if stay else store.next_unreviewed(session_id, after=position)
    if following is not None:
        _move(following)


def _move(position: int) -> None:
    st.session_state[POSITION_KEY] = position
    st.query_params["item"] = str(position + 1)


def _verdict_styles() -> None:
    """Agree and Disagree in distinct colours (Streamlit gives keyed elements the class st-key-<key>)."""
    st.html("<style>" + "".join(
        f".st-key-review-{verdict} button {{background-color: {colour} !important; border-color: {colour} "
        "!important; color: white !important;}"
        for verdict, colour in VERDICT_COLOURS.items()) + "</style>")


def item_view(store: ReviewStore, reviewer: Reviewer, info: SessionInfo, item: ItemView, data: bytes | None,
              scan: ScanAnalysis | None, classes: list[str] | None, directory: str | None) -> None:
    """One item (`data`: an image's bytes; `scan`: a scan's analysis; None when not on the server), its stored
    reading once the reader may see it, and the verdict controls."""
    position = item.position
    st.markdown(item_title(item, info))
    withheld = held_back(item, data, directory)
    revealed = withheld or not info.blinded or item.verdict is not None  # a held-back image reveals no reading
    missing = scan is None if item.kind == "scan" else data is None
    shown, right = st.columns([8, 3], gap="medium")
    with shown:
        if item.kind == "scan":
            scan_pictures(item, scan, directory, revealed=revealed, withheld=withheld)
        else:
            item_images(item, data, info, directory, revealed)
    with right:
        if withheld:
            st.markdown("Model reading: **held back**")
            st.caption("There is no reading to agree or disagree with: record Unsure, or Non-diagnostic if this is "
                       "not a gradable chest image.")
        elif revealed and item.kind == "scan":
            st.markdown(f"Model reading: **{plain(item.predicted_label)}** (quantitative CT reading in HU)")
            st.caption("The figure-crop classifier is a secondary reading (beside the scan, where not withheld); "
                       "it does not decide the model's reading.")
        elif revealed:
            side = "at or above" if item.covid_probability >= item.operating_threshold else "below"
            st.markdown(f"Model reading: **{plain(item.predicted_label)}**")
            st.metric("COVID-19 probability", f"{item.covid_probability:.1%}",
                      help=f"Calibrated; {side} the operating threshold {item.operating_threshold:.1%}")
        if info.blinded and item.version == 1 and not withheld:  # the reading just recorded, the model's now shown
            st.info(f"Your blinded reading: **{plain(blinded_reading(item))}**. The model's reading is now shown: "
                    "agree or disagree with it to go on, or press Next to keep your reading as the verdict.",
                    icon=":material/visibility:")
        elif item.verdict is not None:
            label = f" (your reading: {plain(item.reviewer_label)})" if item.verdict == "disagree" and \
                item.reviewer_label else ""
            when = f" at {item.decided_at:%Y-%m-%d %H:%M} UTC" if item.decided_at else ""
            st.success(f"Your verdict: **{VERDICT_TEXT[item.verdict]}**{label}{when}. Click another to change it.",
                       icon=":material/check_circle:")
        verdict_controls(store, reviewer, item, classes, blinded=not revealed, withheld=withheld,
                         image_missing=missing)
    navigation(position, info.n_items, store.next_unreviewed(info.id, after=position))
    st.caption(key_legend(revealed=revealed, withheld=withheld))


def blinded_reading(item: ItemView) -> str:
    """What a blinded reader recorded: their label (stored as agree with the model's, or disagree with their own), or
    unsure / non-diagnostic."""
    if item.verdict == "agree":
        return item.predicted_label
    if item.verdict == "disagree" and item.reviewer_label:
        return item.reviewer_label
    return VERDICT_TEXT[item.verdict or "unsure"]


def item_title(item: ItemView, info: SessionInfo) -> str:
    """The item's title, "Image 3 of 20", and its file name; in a blinded session the name is left out
    (`covid-17.png` would unblind the reader, and after the reveal bias the verdict on the model's reading); the CSV
    export keeps it."""
    title = f"#### {KIND_NAMES[item.kind]} {item.position + 1} of {info.n_items}"
    return title if info.blinded else f"{title}: {plain(item.display_name)}"


def key_legend(*, revealed: bool, withheld: bool) -> str:
    """The keyboard shortcuts that work in this state: the reader's own reading (1-9) while blinded, agree and
    disagree once the model's reading is shown, neither for a held-back reading."""
    verdicts = ("agree", "disagree") if revealed and not withheld else ()
    keys = [f"{SHORTCUTS[k]} {k.replace('_', '-')}" for k in (*verdicts, "unsure", "non_diagnostic")]
    keys = ([] if revealed else ["1-9 your reading"]) + keys
    keys += [f"{SHORTCUTS[k]} {k}" for k in ("previous", "next")]
    return "Keys: " + " · ".join(keys) + " (not while typing in the note)."


def item_images(item: ItemView, data: bytes | None, info: SessionInfo, directory: str | None,
                revealed: bool) -> None:
    """The image alone while the reader may not see the model's reading (blinded, not yet read), else its analysis
    laid out as on the Analyze page (for a held-back image: the reason and the image alone)."""
    if data is None:
        st.warning("This image is not on the server; re-upload it above. The verdict buttons wait for it.")
        return
    try:
        if not revealed or directory is None:
            st.image(display_pixels(data, item.display_name), caption="Image", clamp=True, width=DISPLAY_SIDE // 2)
            if not revealed:
                st.info("Blinded reading: the model's reading, heatmap and masks appear once you record yours.",
                        icon=":material/visibility_off:")
            else:
                st.info(f"Model {plain(info.model_name)} is no longer installed: no heatmap or mask.")
            return
        analysis = review_analysis(item.image_hash, item.display_name, data, directory, info.modality)
    except ImageReadError as error:
        st.error(plain(error))
        return
    except CheckpointError as error:
        st.error(f"The model could not be loaded: {plain(error)}")
        return
    if analysis.held_back:
        st.error(analysis.signals[0].text, icon=":material/block:")
    show_analysis(analysis)


def scan_pictures(item: ItemView, scan: ScanAnalysis | None, directory: str | None, *, revealed: bool,
                  withheld: bool) -> None:
    """The scan in the CT scan page's viewer (slice scrubber, window presets, masks): the slices alone while the reader
    may not see the model's reading (blinded, not yet read; or held back), else with the scan's reading laid out as on
    the CT scan page (result, masks, probability curve, burden)."""
    if scan is None:
        return  # `rescan` says why and asks for the scan
    if withheld:
        st.error(scan.reading.verdict, icon=":material/block:")
    shown = revealed and not withheld
    if shown:
        scan_result_block(scan)
    scan_viewer(scan, directory, key=f"review-scan-{item.session_id}-{item.position}", revealed=shown)
    if not revealed:
        st.info("Blinded reading: the model's reading, masks, probability curve and burden appear once you record "
                "yours.", icon=":material/visibility_off:")
    if shown:
        burden_block(scan)


def rescan(reviewer: Reviewer, info: SessionInfo, item: ItemView, directory: str | None) -> ScanAnalysis | None:
    """After a restart (or once evicted) a scan's analysis is gone: ask for the same scan, matched by content (a PACS
    scan is fetched again)."""
    if item.pacs_ref:
        return pacs_scan(reviewer, info, item, directory, pacs_hooks())
    notice = st.empty()
    uploads = st.file_uploader("Upload this scan again", accept_multiple_files=True,
                               key=f"review-rescan-{info.id}-{item.position}") or []
    files = [(upload.name, upload.getvalue()) for upload in uploads]
    if files and files_hash([content_hash(data) for _, data in files]) != item.image_hash:
        st.info("Not this scan (different content): " + plain(", ".join(name for name, _ in files)))
    elif files and directory is not None:
        try:
            return review_scan(reviewer, files, item.image_hash, directory)
        except (VolumeReadError, CheckpointError) as error:
            show_error(plain(error))
    if directory is None:
        notice.warning(f"Model {plain(info.model_name)} is no longer installed, so this scan cannot be shown again; "
                       "its stored reading stays.", icon=":material/block:")
    else:
        notice.warning("This scan's slices are no longer on the server (the app was restarted, or other scans took "
                       "its place). Its stored reading is kept; upload the same scan again (a zip, a NIfTI file, or "
                       "all the DICOM files of its series) to show its slices. The verdict buttons wait for it.",
                       icon=":material/upload_file:")
    return None


def verdict_controls(store: ReviewStore, reviewer: Reviewer, item: ItemView, classes: list[str] | None, *,
                     blinded: bool, withheld: bool, image_missing: bool) -> None:
    """The note and the verdict buttons; `withheld` (a held-back reading): unsure and non-diagnostic only. `blinded`
    (the model's reading not yet shown): the reader's own reading, unsure and non-diagnostic, each of which reveals
    the model's reading on this same item rather than moving on."""
    session_id, position = item.session_id, item.position
    note_key, label_key = _note_key(session_id, position), _label_key(session_id, position)
    if note_key not in st.session_state:
        st.session_state[note_key] = st.session_state.get(_draft_key(session_id, position), item.note)
    st.text_area("Note (optional, saved with your verdict)", key=note_key, height=80,
                 placeholder="e.g. motion artefact, lines, prior film", on_change=_keep_draft,
                 args=(session_id, position))
    _verdict_styles()
    if blinded:
        for index, label in enumerate(classes or []):
            st.button(f"My reading: {label}", key=f"review-reading-{label}", width="stretch",
                      type="primary", shortcut=str(index + 1) if index < 9 else None, disabled=image_missing,
                      on_click=_record, args=(store, reviewer, item, "reading", label, True))
    elif not withheld:
        verdict_button(store, reviewer, item, "agree", ":material/thumb_up:", image_missing)
        others = [c for c in (classes or []) if c != item.predicted_label]
        if label_key not in st.session_state:
            st.session_state[label_key] = item.reviewer_label if item.verdict == "disagree" else \
                (others[0] if len(others) == 1 else None)
        if others:
            st.segmented_control("If you disagree, your reading", others, key=label_key,
                                 help="Used for the agreement statistics (Cohen's kappa); leave empty if unsure")
        verdict_button(store, reviewer, item, "disagree", ":material/thumb_down:", image_missing)
    verdict_button(store, reviewer, item, "unsure", ":material/help:", image_missing, stay=blinded)
    verdict_button(store, reviewer, item, "non_diagnostic", ":material/block:", image_missing, stay=blinded,
                   help="Not gradable, or not a chest image: left out of agreement and kappa")


def verdict_button(store: ReviewStore, reviewer: Reviewer, item: ItemView, verdict: str, icon: str,
                   image_missing: bool, help: str | None = None, stay: bool = False) -> None:  # noqa: A002
    """A full-width button with its keyboard shortcut; disabled while the image is not on the server."""
    st.button(VERDICT_TEXT[verdict], key=f"review-{verdict}", icon=icon, width="stretch", help=help,
              type="primary" if verdict in VERDICT_COLOURS else "secondary", shortcut=SHORTCUTS[verdict],
              disabled=image_missing, on_click=_record, args=(store, reviewer, item, verdict, None, stay))


def navigation(position: int, n_items: int, next_unreviewed: int | None) -> None:
    columns = st.columns(3)
    columns[0].button("Previous", key="review-previous", on_click=_move, args=(position - 1,),
                      disabled=position == 0, width="stretch", icon=":material/arrow_back:",
                      shortcut=SHORTCUTS["previous"])
    columns[1].button("Next", key="review-next", on_click=_move, args=(position + 1,),
                      disabled=position >= n_items - 1, width="stretch", icon=":material/arrow_forward:",
                      shortcut=SHORTCUTS["next"])
    columns[2].button("Next unreviewed", key="review-next-unreviewed", on_click=_move,
                      args=(next_unreviewed if next_unreviewed is not None else position,),
                      disabled=next_unreviewed is None or next_unreviewed == position, width="stretch",
                      icon=":material/skip_next:")


def summary_view(store: ReviewStore, info: SessionInfo) -> None:
    summary = store.summary(info.id)
    columns = st.columns(5)
    columns[0].metric("Reviewed", f"{summary.n_reviewed} / {summary.n_items}")
    columns[1].metric("Agreement", "n/a" if summary.agreement_rate is None else f"{summary.agreement_rate:.1%}",
                      help="agree / (agree + disagree); unsure and non-diagnostic verdicts are left out")
    columns[2].metric("Cohen's kappa", "n/a" if summary.kappa is None else f"{summary.kappa:.3f}",
                      help="Agreement between model and reviewer labels beyond chance, over the images with a "
                           "reviewer label")
    columns[3].metric("Unsure", summary.verdict_counts["unsure"])
    columns[4].metric("Non-diagnostic", summary.verdict_counts["non_diagnostic"])
    if summary.kappa_explanation:
        st.caption(f"Kappa: {summary.kappa_explanation}.")
    if summary.n_labelled:
        st.plotly_chart(confusion_figure(summary.confusion, row_title="model", column_title="reviewer",
                                         title=f"Model against reviewer ({summary.n_labelled} labelled images)"),
                        key="review-confusion", width="content")
    if st.session_state.get(CSV_KEY) != info.id:
        st.button("Prepare the CSV export", key="review-prepare-csv", icon=":material/table:",
                  on_click=st.session_state.__setitem__, args=(CSV_KEY, info.id))
    else:
        csv_text = store.export_csv(info.id)
        st.download_button("Download the session as CSV", csv_text, file_name="review-session.csv",
                           mime="text/csv", key="review-export", icon=":material/download:")
        with st.expander("What the CSV holds"):
            st.dataframe(pd.read_csv(io.StringIO(csv_text), keep_default_na=False), hide_index=True,
                         width="stretch")
    completed = info.status == "completed"
    st.button("Reopen the session" if completed else "Mark the session completed", key="review-status",
              on_click=store.set_status, args=(info.id, "open" if completed else "completed"))


def session_view(store: ReviewStore, reviewer: Reviewer, session_id: int) -> None:
    info = store.session_info(session_id)
    header, leave = st.columns([4, 1], vertical_alignment="center")
    header.markdown(f"**{plain(info.reviewer)}** · model `{info.model_name.replace('`', '')}` · "
                    f"{MODALITY_NAMES.get(info.modality, info.modality)} · started {info.created_at:%Y-%m-%d %H:%M}"
                    f" UTC · {info.status}" + (" · blinded" if info.blinded else ""))
    leave.button("Leave session", key="review-leave", on_click=_leave, width="stretch", icon=":material/logout:")
    st.progress(info.n_reviewed / max(info.n_items, 1), text=f"{info.n_reviewed} of {info.n_items} reviewed")
    if info.n_reviewed == info.n_items:
        st.success("Every image of this session has a verdict. See the summary; verdicts can still be changed.",
                   icon=":material/task_alt:")
    cards = _cards(info.modality)
    directory, card = cards.get(info.model_name, (None, None))
    item = store.item(info.id, min(max(int(st.session_state.get(POSITION_KEY, 0)), 0), info.n_items - 1))
    data, scan = None, None
    if item.kind == "scan":
        scan = review_scans().get(scan_key(reviewer, item.image_hash, directory)) or \
            rescan(reviewer, info, item, directory)
    else:
        data = image_bytes(reviewer, info, item)
    uploaded_missing = item.kind == "image" and data is None and not item.pacs_ref  # a PACS image said why already
    if uploaded_missing or st.session_state.get(MISSING_KEY):  # only when images are missing
        reupload(store, reviewer, info)
        data = data or (image_bytes(reviewer, info, item) if item.kind == "image" else None)
    view = st.segmented_control("View", ["Review", "Summary and export"], default="Review", key="review-view",
                                label_visibility="collapsed")
    if view == "Summary and export":
        summary_view(store, info)
    else:
        item_view(store, reviewer, info, item, data, scan, card.classes if card else None, directory)


def pacs_hooks() -> PageHooks:
    """What the "From PACS" source (pages/review_pacs.py) uses of this page."""
    return PageHooks(review_scan, review_label, scan_label, _open, MESSAGE_KEY)


def _show_message() -> None:
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is None:
        return
    kind, body = message
    if kind == "stale":
        current, attempted = body.current, body.attempted
        st.warning("This verdict was changed in another tab or window, so yours was not saved over it (it is kept "
                   "in the verdict history). Now saved: "
                   f"**{VERDICT_TEXT[current.verdict or 'unsure']}**, note: {plain(current.note) or '(none)'}. "
                   f"Yours: **{VERDICT_TEXT[attempted.verdict]}**, note: {plain(attempted.note) or '(none)'}. "
                   "Record again to replace the saved one.", icon=":material/sync_problem:")
    elif kind == "error":
        show_error(body)
    elif kind == "done":
        st.success(plain(body), icon=":material/task_alt:")
    else:
        st.warning(plain(body))


def main() -> None:
    st.title("Review session")
    st.caption("Work through a batch of images, give your verdict on each model reading, and compare. Every "
               "verdict is saved at once; the session can be resumed at any time. Times are in UTC.")
    try:
        store = review_store()
    except ReviewDatabaseError as error:
        show_error(f"The review database is unavailable: {plain(error)}")
        return
    try:
        reviewer = identity(store)
        if reviewer is None:
            return
        who, out = st.columns([4, 1], vertical_alignment="center")
        who.caption(f"Signed in as **{plain(reviewer.name)}**" + (" (administrator)" if reviewer.admin else ""))
        if not _oidc_configured():
            out.button("Sign out", key="review-sign-out", on_click=_sign_out, width="stretch")
        if not _from_url(store, reviewer):
            return
        _show_message()
        if SESSION_KEY in st.session_state:
            session_view(store, reviewer, int(st.session_state[SESSION_KEY]))
            return
        session_list(store, reviewer)
        new_session_form(store, reviewer)
        pacs_session_form(store, reviewer, pacs_hooks())
    except ReviewDatabaseError as error:
        show_error(f"The review database is unavailable: {plain(error)}. Nothing saved is lost, and a note you "
                   "typed stays in this tab until the database is back.")


main()
