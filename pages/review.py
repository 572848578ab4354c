"""Review session: a radiologist works through a batch of images, agreeing or disagreeing with the model.

Verdicts are committed to the review database one by one (covid_models.reviews), so a reload, an app
restart or a closed laptop loses nothing: the session is listed under the reviewer's name (and kept in
the page URL) and resumes at the first image without a verdict. The database keeps each image's SHA-256
and bare file name, never its pixels, so the images themselves live in a server-side cache for the life
of the process; after a restart they are found again in the data folder (by file name, checked against
the hash) or re-uploaded by the reviewer (matched by hash).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from covid_models.checkpoint import CheckpointError, ModelCard
from covid_models.data import DataError, LeakageError, ensure_split, load_dataset
from covid_models.explain import heatmap
from covid_models.figures import confusion_figure
from covid_models.inference import Prediction
from covid_models.io import ImageReadError, content_hash, read_image
from covid_models.overlays import display_size, for_display, heatmap_overlay
from covid_models.reviews import ItemView, NewItem, ReviewDatabaseError, ReviewError, ReviewStore, SessionInfo
from pages.shared import (
    LruCache,
    data_dir,
    enter_through_app,
    load_classifier,
    model_cards,
    model_lock,
    review_store,
    show_error,
)

enter_through_app()

MODALITY_NAMES = {"xray": "Chest X-ray", "ct": "Chest CT"}
SOURCE_UPLOAD, SOURCE_DATA = "upload", "data"
DISPLAY_SIDE = 640  # images are shown and explained at this size at most
IMAGE_CACHE_BYTES = 128 * 1024 * 1024  # uploaded files kept for moving back and forth; a quarter of the app's 1 GB
HEATMAP_METHOD = "gradcam"
HEATMAP_ALPHA = 0.4
MAX_BATCH = 200
VERDICT_TEXT = {"agree": "Agree", "disagree": "Disagree", "unsure": "Unsure"}
SESSION_KEY, POSITION_KEY, MESSAGE_KEY = "review-session", "review-position", "review-message"
REVIEWER_WIDGET, REVIEWER_KEY = "review-reviewer", "review-reviewer-name"


# ------------------------------------------------------------------ server-side state


@st.cache_resource(show_spinner=False)
def image_cache() -> LruCache:
    """Uploaded files by content hash: the review database must not hold pixels, yet a reviewer moving back and
    forth needs the images; they stay here for the life of the server process."""
    return LruCache(IMAGE_CACHE_BYTES, size=len)


@st.cache_data(show_spinner=False)
def held_out_rows(root: str, modality: str, mtime: float) -> pd.DataFrame:
    """The test split of a data folder's manifest (official, else the seeded patient-level one)."""
    frame = load_dataset(root, modality)
    if "split" not in frame.columns or frame["split"].isna().any():
        frame = ensure_split(frame, seed=0, data_root=Path(root))
    return frame[frame["split"] == "test"].sort_values("image").reset_index(drop=True)


@st.cache_data(show_spinner=False)
def files_by_name(root: str, modality: str, mtime: float) -> dict[str, str]:
    """Bare file name -> path over a data folder's manifest, to find a resumed session's images again."""
    return {Path(path).name: path for path in load_dataset(root, modality)["image"]}


def _manifest_mtime(root: Path, modality: str) -> float:
    manifest = root / modality / "manifest.csv"
    return manifest.stat().st_mtime if manifest.is_file() else 0.0


def display_pixels(data: bytes, name: str) -> np.ndarray:
    """The image as [0, 1] greyscale, no larger than DISPLAY_SIDE (aspect kept)."""
    pixels = read_image(data, name=name).pixels
    return for_display(pixels, display_size(pixels.shape, DISPLAY_SIDE))


@st.cache_data(max_entries=512, show_spinner=False)
def predict(digest: str, directory: str, _data: bytes, _name: str) -> Prediction:
    """The model's calibrated prediction on the full-resolution image (as the analyze page makes it)."""
    pixels = read_image(_data, name=_name).pixels
    classifier = load_classifier(directory)
    with model_lock(directory):
        return classifier.predict(pixels)


@st.cache_data(max_entries=128, show_spinner=False)
def review_heatmap(digest: str, directory: str, _pixels: np.ndarray) -> np.ndarray:
    """The Grad-CAM of the positive class as uint8 (a quarter of float32 in the cache)."""
    classifier = load_classifier(directory)
    with model_lock(directory):
        cam = heatmap(classifier, _pixels, HEATMAP_METHOD)
    return np.round(cam * 255).astype(np.uint8)


def review_label(prediction: Prediction) -> str:
    """The label the reviewer agrees or disagrees with: the positive class at or above the operating point,
    else the most probable of the other classes."""
    if prediction.positive_class is None or prediction.positive:
        return prediction.positive_class or prediction.label
    others = {c: p for c, p in prediction.probabilities.items() if c != prediction.positive_class}
    return max(others, key=others.get)


# ------------------------------------------------------------------ starting a session


def _cards(modality: str) -> dict[str, tuple[str, ModelCard]]:
    return {card.name: (directory, card) for directory, card in model_cards("classification", modality)
            if card.positive_class is not None}


def _batch_from_data(root: Path, modality: str, n: int, seed: int) -> list[tuple[str, bytes]]:
    test = held_out_rows(str(root), modality, _manifest_mtime(root, modality))
    picks = test.sample(n=min(n, len(test)), random_state=seed) if len(test) else test
    return [(Path(path).name, Path(path).read_bytes()) for path in picks["image"]]


def _start(store: ReviewStore, reviewer: str, modality: str, directory: str, card: ModelCard,
           batch: list[tuple[str, bytes]]) -> None:
    """Predict every image, keep the bytes in the cache and open the session in the database."""
    cache, items, skipped, seen = image_cache(), [], [], set()
    bar = st.progress(0.0, text="Predicting...")
    for index, (name, data) in enumerate(batch):
        digest = content_hash(data)
        bar.progress((index + 1) / len(batch), text=f"Predicting {index + 1} of {len(batch)}: {name}")
        if digest in seen:
            skipped.append(f"{name}: the same image as another file of this batch")
            continue
        try:
            prediction = predict(digest, directory, data, name)
        except ImageReadError as error:
            skipped.append(f"{name}: {error}")
            continue
        seen.add(digest)
        cache.put(digest, data)
        items.append(NewItem(image_hash=digest, display_name=name, predicted_label=review_label(prediction),
                             covid_probability=float(prediction.positive_probability),
                             operating_threshold=float(prediction.threshold)))
    bar.empty()
    if skipped:
        st.session_state[MESSAGE_KEY] = ("warning", "Left out of the session: " + "; ".join(skipped))
    if not items:
        st.session_state[MESSAGE_KEY] = ("error", "None of the images could be read: " + "; ".join(skipped))
        return
    session_id = store.start_session(reviewer, card.name, modality, items)
    _open(session_id, 0)


def new_session_form(store: ReviewStore, reviewer: str) -> None:
    st.subheader("Start a new session")
    modalities = [m for m in MODALITY_NAMES if _cards(m)]
    if not modalities:
        st.info("No classification model is installed, so there is nothing to review.")
        return
    columns = st.columns(2)
    modality = columns[0].radio("Modality", modalities, format_func=MODALITY_NAMES.get, horizontal=True,
                                key="review-modality")
    cards = _cards(modality)
    name = columns[1].selectbox("Model", list(cards), key=f"review-model-{modality}")
    directory, card = cards[name]
    root = data_dir()
    sources = [SOURCE_UPLOAD] + ([SOURCE_DATA] if root is not None else [])
    source = st.radio("Images", sources, horizontal=True, key="review-source", format_func={
        SOURCE_UPLOAD: "Upload files", SOURCE_DATA: "Sample from the data folder's test split"}.get)
    n, seed, uploads = 0, 0, []
    if source == SOURCE_DATA and root is not None:
        columns = st.columns(2)
        n = int(columns[0].number_input("Number of images", 1, MAX_BATCH, 10, key="review-n"))
        seed = int(columns[1].number_input("Sample seed", 0, 10**6, 0, key="review-seed",
                                           help="The same seed gives the same images"))
        st.caption(f"A seeded sample of the {MODALITY_NAMES[modality]} test split in {root}.")
    else:
        uploads = st.file_uploader("Images to review (PNG, JPEG, TIFF or DICOM)", accept_multiple_files=True,
                                   key="review-uploads") or []
    if st.button("Start session", type="primary", key="review-start", icon=":material/play_arrow:"):
        try:
            if source == SOURCE_DATA and root is not None:
                batch = _batch_from_data(root, modality, n, seed)
            else:
                batch = [(upload.name, upload.getvalue()) for upload in uploads]
            if not batch:
                show_error("Choose at least one image for the session.")
                return
            _start(store, reviewer, modality, directory, card, batch)
        except (DataError, LeakageError, OSError) as error:
            show_error(f"The data folder could not be read: {error}")
            return
        except CheckpointError as error:
            show_error(f"The model could not be loaded: {error}")
            return
        except ReviewError as error:
            show_error(str(error))
            return
        st.rerun()


# ------------------------------------------------------------------ choosing and resuming


def _open(session_id: int, position: int) -> None:
    st.session_state[SESSION_KEY] = session_id
    st.session_state[POSITION_KEY] = position
    st.query_params["session"] = str(session_id)


def _leave() -> None:
    for key in (SESSION_KEY, POSITION_KEY):
        st.session_state.pop(key, None)
    st.query_params.pop("session", None)


def _resume(store: ReviewStore, session_id: int) -> None:
    _open(session_id, store.next_unreviewed(session_id) or 0)


def session_list(store: ReviewStore, reviewer: str) -> None:
    sessions = store.sessions(reviewer)
    if not sessions:
        st.caption(f"No earlier session under the name {reviewer!r}.")
        return
    st.subheader("Your sessions")
    st.dataframe(pd.DataFrame([{
        "session": s.id, "started": s.created_at.strftime("%Y-%m-%d %H:%M"),
        "last verdict": s.updated_at.strftime("%Y-%m-%d %H:%M"), "model": s.model_name,
        "modality": MODALITY_NAMES.get(s.modality, s.modality), "reviewed": f"{s.n_reviewed} / {s.n_items}",
        "status": s.status} for s in sessions]), hide_index=True, width="stretch")
    by_id = {s.id: s for s in sessions}
    columns = st.columns([3, 1], vertical_alignment="bottom")
    chosen = columns[0].selectbox("Session to resume", list(by_id), key="review-resume-choice",
                                  format_func=lambda i: _session_title(by_id[i]))
    columns[1].button("Resume", key="review-resume", on_click=_resume, args=(store, chosen), type="primary",
                      width="stretch", icon=":material/resume:")


def _session_title(info: SessionInfo) -> str:
    return (f"#{info.id} · {info.model_name} · {info.n_reviewed}/{info.n_items} reviewed · "
            f"started {info.created_at:%Y-%m-%d %H:%M} UTC")


def _from_url(store: ReviewStore) -> None:
    """Reopen the session named in the URL (a page reload keeps the URL, not the session state)."""
    if SESSION_KEY in st.session_state or "session" not in st.query_params:
        return
    try:
        session_id = int(st.query_params["session"])
        store.session_info(session_id)
    except (ValueError, ReviewError):
        st.query_params.pop("session", None)
        return
    _resume(store, session_id)


# ------------------------------------------------------------------ images after a restart


def find_images(items: list[ItemView], modality: str) -> list[ItemView]:
    """Put the session's images back in the cache from the data folder; returns the items still missing."""
    cache = image_cache()
    missing = [item for item in items if cache.get(item.image_hash) is None]
    root = data_dir()
    if not missing or root is None:
        return missing
    try:
        index = files_by_name(str(root), modality, _manifest_mtime(root, modality))
    except (DataError, LeakageError, OSError):
        return missing
    still = []
    for item in missing:
        path = index.get(item.display_name)
        data = Path(path).read_bytes() if path and Path(path).is_file() else None
        if data is not None and content_hash(data) == item.image_hash:
            cache.put(item.image_hash, data)
        else:
            still.append(item)
    return still


def reupload(session_id: int, missing: list[ItemView]) -> None:
    """After a restart, uploaded images are gone from the server: ask for the same files, matched by hash."""
    notice = st.empty()
    wanted = {item.image_hash for item in missing}
    files = st.file_uploader("Re-upload the missing images", accept_multiple_files=True,
                             key=f"review-reupload-{session_id}") or []
    unmatched = []
    for upload in files:
        data = upload.getvalue()
        if content_hash(data) in wanted:
            image_cache().put(content_hash(data), data)
        else:
            unmatched.append(upload.name)
    if unmatched:
        st.info("Not part of this session (different content): " + ", ".join(unmatched))
    still = [item for item in missing if image_cache().get(item.image_hash) is None]
    if still:
        notice.warning(f"{len(still)} image(s) of this session are no longer on the server (the app was restarted). "
                       "Upload the same files again; they are matched by content, whatever their names: "
                       + ", ".join(item.display_name for item in still), icon=":material/upload_file:")
    else:
        notice.success("Every image of this session is back.", icon=":material/task_alt:")


# ------------------------------------------------------------------ reviewing


def _note_key(session_id: int, position: int) -> str:
    return f"review-note-{session_id}-{position}"


def _label_key(session_id: int, position: int) -> str:
    return f"review-label-{session_id}-{position}"


def _record(store: ReviewStore, session_id: int, position: int, verdict: str) -> None:
    """Commit one verdict (with the note and, for disagree, the reviewer's label), then go to the next image."""
    note = st.session_state.get(_note_key(session_id, position), "")
    label = st.session_state.get(_label_key(session_id, position)) if verdict == "disagree" else None
    try:
        store.record_verdict(session_id, position, verdict, note=note, reviewer_label=label)
    except ReviewError as error:
        st.session_state[MESSAGE_KEY] = ("error", str(error))
        return
    following = store.next_unreviewed(session_id)
    if following is not None:
        st.session_state[POSITION_KEY] = following


def _move(position: int) -> None:
    st.session_state[POSITION_KEY] = position


def item_view(store: ReviewStore, info: SessionInfo, items: list[ItemView], classes: list[str] | None,
              directory: str | None) -> None:
    position = min(max(int(st.session_state.get(POSITION_KEY, 0)), 0), len(items) - 1)
    item = items[position]
    st.markdown(f"#### Image {position + 1} of {len(items)}: {item.display_name}")
    left, middle, right = st.columns([4, 4, 3], gap="medium")
    data = image_cache().get(item.image_hash)
    if data is None:
        left.warning("This image is not on the server; re-upload it above.")
    else:
        try:
            pixels = display_pixels(data, item.display_name)
        except ImageReadError as error:
            left.error(str(error))
        else:
            left.image(pixels, caption="Image", clamp=True, width="stretch")
            if directory is None:
                middle.info(f"Model {info.model_name} is no longer installed: no heatmap.")
            else:
                try:
                    cam = review_heatmap(item.image_hash, directory, pixels).astype(np.float32) / 255
                    middle.image(heatmap_overlay(pixels, cam, HEATMAP_ALPHA),
                                 caption="Grad-CAM: where the model looked for COVID-19", width="stretch")
                    unusual = predict(item.image_hash, directory, data, item.display_name).out_of_distribution
                except CheckpointError as error:
                    middle.error(f"The model could not be loaded: {error}")
                else:
                    if unusual:
                        left.warning("The model finds this image unlike the ones it was trained on: its reading "
                                     "is not to be relied on.", icon=":material/block:")
    with right:
        side = "at or above" if item.covid_probability >= item.operating_threshold else "below"
        st.markdown(f"Model reading: **{item.predicted_label}**")
        st.metric("COVID-19 probability", f"{item.covid_probability:.1%}",
                  help=f"Calibrated; {side} the operating threshold {item.operating_threshold:.1%}")
        if item.verdict is not None:
            label = f" (your reading: {item.reviewer_label})" if item.verdict == "disagree" and item.reviewer_label \
                else ""
            st.success(f"Your verdict: **{VERDICT_TEXT[item.verdict]}**{label}. Click another to change it.",
                       icon=":material/check_circle:")
        verdict_controls(store, info.id, item, classes)
    navigation(position, len(items), store.next_unreviewed(info.id))


def verdict_controls(store: ReviewStore, session_id: int, item: ItemView, classes: list[str] | None) -> None:
    note_key, label_key = _note_key(session_id, item.position), _label_key(session_id, item.position)
    if note_key not in st.session_state:
        st.session_state[note_key] = item.note
    others = [c for c in (classes or []) if c != item.predicted_label]
    if label_key not in st.session_state:
        st.session_state[label_key] = item.reviewer_label if item.verdict == "disagree" else \
            (others[0] if len(others) == 1 else None)
    st.text_area("Note (optional, saved with your verdict)", key=note_key, height=80,
                 placeholder="e.g. motion artefact, lines, prior film")
    verdict_button(store, session_id, item.position, "agree", "primary", ":material/thumb_up:")
    if others:
        st.segmented_control("If you disagree, your reading", others, key=label_key,
                             help="Used for the agreement statistics (Cohen's kappa); leave empty if unsure")
    verdict_button(store, session_id, item.position, "disagree", "primary", ":material/thumb_down:")
    verdict_button(store, session_id, item.position, "unsure", "secondary", ":material/help:")


def verdict_button(store: ReviewStore, session_id: int, position: int, verdict: str, kind: str, icon: str) -> None:
    """A full-width button: the reviewer works with a mouse or a touch screen, never the keyboard."""
    st.button(VERDICT_TEXT[verdict], key=f"review-{verdict}", type=kind, icon=icon, width="stretch",
              on_click=_record, args=(store, session_id, position, verdict))


def navigation(position: int, n_items: int, next_unreviewed: int | None) -> None:
    columns = st.columns(3)
    columns[0].button("Previous", key="review-previous", on_click=_move, args=(position - 1,),
                      disabled=position == 0, width="stretch", icon=":material/arrow_back:")
    columns[1].button("Next", key="review-next", on_click=_move, args=(position + 1,),
                      disabled=position >= n_items - 1, width="stretch", icon=":material/arrow_forward:")
    columns[2].button("Next unreviewed", key="review-next-unreviewed", on_click=_move,
                      args=(next_unreviewed if next_unreviewed is not None else position,),
                      disabled=next_unreviewed is None or next_unreviewed == position, width="stretch",
                      icon=":material/skip_next:")


def summary_view(store: ReviewStore, info: SessionInfo) -> None:
    summary = store.summary(info.id)
    columns = st.columns(4)
    columns[0].metric("Reviewed", f"{summary.n_reviewed} / {summary.n_items}")
    columns[1].metric("Agreement", "n/a" if summary.agreement_rate is None else f"{summary.agreement_rate:.1%}",
                      help="agree / (agree + disagree); unsure verdicts are left out")
    columns[2].metric("Cohen's kappa", "n/a" if summary.kappa is None else f"{summary.kappa:.3f}",
                      help="Agreement between model and reviewer labels beyond chance, over the images with a "
                           "reviewer label")
    columns[3].metric("Unsure", summary.verdict_counts["unsure"])
    if summary.kappa_explanation:
        st.caption(f"Kappa: {summary.kappa_explanation}.")
    if summary.n_labelled:
        st.plotly_chart(confusion_figure(summary.confusion, row_title="model", column_title="reviewer",
                                         title=f"Model against reviewer ({summary.n_labelled} labelled images)"),
                        key="review-confusion", width="content")
    csv_text = store.export_csv(info.id)
    st.download_button("Download the session as CSV", csv_text, file_name=f"review-session-{info.id}.csv",
                       mime="text/csv", key="review-export", icon=":material/download:")
    with st.expander("What the CSV holds"):
        st.dataframe(pd.read_csv(io.StringIO(csv_text), keep_default_na=False), hide_index=True, width="stretch")
    completed = info.status == "completed"
    st.button("Reopen the session" if completed else "Mark the session completed", key="review-status",
              on_click=store.set_status, args=(info.id, "open" if completed else "completed"))


def session_view(store: ReviewStore, session_id: int) -> None:
    try:
        info = store.session_info(session_id)
    except ReviewError as error:
        show_error(str(error))
        _leave()
        return
    items = store.items(session_id)
    st.session_state[REVIEWER_KEY] = info.reviewer
    header, leave = st.columns([4, 1], vertical_alignment="center")
    header.markdown(f"**Session #{info.id}** · {info.reviewer} · model `{info.model_name}` · "
                    f"{MODALITY_NAMES.get(info.modality, info.modality)} · {info.status}")
    leave.button("Leave session", key="review-leave", on_click=_leave, width="stretch", icon=":material/logout:")
    st.progress(info.n_reviewed / max(info.n_items, 1), text=f"{info.n_reviewed} of {info.n_items} reviewed")
    if info.n_reviewed == info.n_items:
        st.success("Every image of this session has a verdict. See the summary tab; verdicts can still be changed.",
                   icon=":material/task_alt:")
    cards = _cards(info.modality)
    directory, card = cards.get(info.model_name, (None, None))
    missing = find_images(items, info.modality)
    if missing:
        reupload(info.id, missing)
    review_tab, summary_tab = st.tabs(["Review", "Summary and export"])
    with review_tab:
        item_view(store, info, items, card.classes if card else None, directory)
    with summary_tab:
        summary_view(store, info)


def _show_message() -> None:
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is not None:
        kind, text = message
        (show_error if kind == "error" else st.warning)(text)


def main() -> None:
    st.title("Review session")
    st.caption("Work through a batch of images, give your verdict on each model reading, and compare. Every "
               "verdict is saved at once; the session can be resumed at any time.")
    try:
        store = review_store()
    except ReviewDatabaseError as error:
        show_error(f"The review database is unavailable: {error}")
        return
    _from_url(store)
    _show_message()
    if SESSION_KEY in st.session_state:
        session_view(store, int(st.session_state[SESSION_KEY]))
        return
    if REVIEWER_WIDGET not in st.session_state:  # widget state is dropped while a session is shown instead
        st.session_state[REVIEWER_WIDGET] = st.session_state.get(REVIEWER_KEY, "")
    reviewer = st.text_input("Your name", key=REVIEWER_WIDGET, max_chars=200,
                             placeholder="as it should appear in the export").strip()
    st.session_state[REVIEWER_KEY] = reviewer
    if not reviewer:
        st.info("Enter your name to start a session or resume one of yours.")
        return
    session_list(store, reviewer)
    new_session_form(store, reviewer)


main()
