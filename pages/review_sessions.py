"""A reviewer's sessions on the Review page: starting one (uploaded images, a seeded sample of the data folder's test
split, or whole CT scans; every image screened and predicted and every scan analysed before the session is stored),
listing and resuming theirs (every session, for an administrator), opening one from its link, giving a session
stored without an owner to its reviewer, and a session's summary and CSV export.
"""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import streamlit as st

from covid_models.analysis.figures import confusion_figure
from covid_models.analysis.image_checks import REFUSED
from covid_models.analysis.report import HELD_BACK
from covid_models.imaging.ct_volume import VolumeReadError
from covid_models.imaging.io import content_hash, files_hash
from covid_models.imaging.scan import ImageReadError
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.model_card import ModelCard, display_name
from covid_models.reviews.checks import session_token
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import NewItem, NotYoursError, ReviewDatabaseError, ReviewError, SessionInfo
from covid_models.reviews.store import ReviewStore
from covid_models.training.manifests import DataError
from covid_models.training.splits import LeakageError, held_out_images
from pages.review_readings import review_scan, screening
from pages.review_sign_in import oidc_configured
from pages.review_state import CSV_KEY, MESSAGE_KEY, MODALITY_NAMES, SESSION_KEY, leave_session, open_session, plain
from pages.review_uploads import REVIEWER_CACHE_BYTES, manifest_mtime, upload_cache
from pages.shared import data_dir, model_cards, show_error

SOURCE_UPLOAD, SOURCE_DATA = "upload", "data"
SCAN_SUFFIXES = (".zip", ".nii", ".nii.gz")  # one such file is one scan; DICOM files uploaded together are one more
MAX_BATCH = 200


@st.cache_data(show_spinner=False)
def test_split(root: str, modality: str, mtime: float) -> list[str]:
    """Image paths of the data folder's held-out split (official, else the seeded patient-level one)."""
    return held_out_images(Path(root), modality)["image"].tolist()


def review_cards(modality: str) -> dict[str, tuple[str, ModelCard]]:
    return {card.name: (directory, card) for directory, card in model_cards("classification", modality)
            if card.positive_class is not None}


def _batch_from_data(root: Path, modality: str, n: int, seed: int) -> list[tuple[str, bytes]]:
    paths = pd.Series(test_split(str(root), modality, manifest_mtime(root, modality)), dtype=object)
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
        items.append(NewItem(image_hash=digest, display_name=name, predicted_label=predicted.reading_label,
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
        items.append(NewItem(image_hash=digest, display_name=name, predicted_label=analysis.reading_label(card.classes),
                             covid_probability=0.0 if analysis.secondary_held_back else analysis.scan_probability,
                             operating_threshold=analysis.threshold, held_back=analysis.positive is None,
                             kind="scan"))
    if skipped:
        st.session_state[MESSAGE_KEY] = ("warning", "Left out of the session: " + "; ".join(skipped))
    if not items:
        st.session_state[MESSAGE_KEY] = ("error", "None of the images could be read: " + "; ".join(skipped))
        return
    session_id = store.start_session(reviewer, card.name, modality, items, blinded=blinded)
    open_session(store.session_info(session_id), 0)


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
    modalities = [m for m in MODALITY_NAMES if review_cards(m)]
    if not modalities:
        st.info("No classification model is installed, so there is nothing to review.")
        return
    columns = st.columns(2)
    modality = columns[0].radio("Modality", modalities, format_func=MODALITY_NAMES.get, horizontal=True,
                                key="review-modality")
    cards = review_cards(modality)
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
        ready_caption(len(uploads), "image")
        st.caption(f"Up to {REVIEWER_CACHE_BYTES / 2**20:.0f} MB per session: the server keeps the files only "
                   "while it runs, for you alone.")
        if modality == "ct":
            scan_uploads = st.file_uploader(
                "Whole CT scans, one item each: a zip of a DICOM series or a NIfTI volume per file (the DICOM files "
                "of one series selected together are one scan)", accept_multiple_files=True, key="review-scans") or []
            ready_caption(len(scan_uploads), "scan file")
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


def ready_caption(count: int, what: str) -> None:
    """Say that the uploads have reached the server: a file listed in the uploader may still be on its way, and a
    session started before it arrives would not hold it."""
    if count:
        st.caption(f"{count} {what}{'s' if count > 1 else ''} received, ready for the session.")


def _resume(store: ReviewStore, info: SessionInfo) -> None:
    open_session(info, store.next_unreviewed(info.id) or 0)


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
        whom = st.text_input("Give it to (registered reviewer name" + (", or sign-in e-mail" if oidc_configured()
                             else "") + ")", key="review-assign-owner", max_chars=320)
        submitted = st.form_submit_button("Assign", key="review-assign", icon=":material/person_add:")
    if not submitted:
        return
    try:
        oidc = oidc_configured() and "@" in whom
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


def open_from_url(store: ReviewStore, reviewer: Reviewer) -> bool:
    """Open the session named in the URL, at the image named there (a reload keeps the URL, not the state).

    Returns False after showing why it cannot be opened (malformed link, unknown, someone else's)."""
    token = st.query_params.get("session")
    if token is None:
        return True
    try:
        info = store.open_session(session_token(token), reviewer)
    except NotYoursError as error:
        st.error(str(error), icon=":material/lock:")
        st.button("Back to my sessions", key="review-not-yours-back", on_click=leave_session,
                  icon=":material/arrow_back:")
        return False
    except ReviewError as error:
        show_error(str(error))
        st.button("Back to my sessions", key="review-bad-link-back", on_click=leave_session,
                  icon=":material/arrow_back:")
        return False
    if st.session_state.get(SESSION_KEY) != info.id:
        shown = str(st.query_params.get("item", ""))
        position = int(shown) - 1 if shown.isdigit() and 1 <= int(shown) <= info.n_items else None
        open_session(info, position if position is not None else store.next_unreviewed(info.id) or 0)
    return True


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
