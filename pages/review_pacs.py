"""The Review page's "From PACS" source: a session made from a DICOMweb query, its images fetched when shown.

Shown only when the deployment configures a PACS (`COVID_DICOMWEB_URL`, in the environment or Streamlit secrets;
see docs/pacs.md). The reader searches studies (dates, modality, accession number, patient ID; paged), picks up
to `MAX_STUDIES` of them, and each X-ray image or CT series becomes an item read by the library's PACS screening
(`covid_models.pacs.screening`: the same checks and analysis call as an upload). The review database keeps, per
item, the content hash and the UIDs that fetch it again, never pixels or the PACS's identifiers; item names are
"DX series 1 image 1", "CT series 2". Fetched images live in a bounded per-reviewer cache for the life of the server
and are fetched again when gone. With `COVID_DICOMWEB_STORE=1` each reading, and each saved verdict, goes back into
its study as a DICOM SR. A PACS that is down, slow or refuses the credentials gets its reason on the page; the
session and its verdicts are in the review database, so nothing saved is lost.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import pandas as pd
import streamlit as st

from covid_models.analysis.scan_analysis import ScanAnalysis
from covid_models.imaging.ct_volume import VolumeReadError
from covid_models.imaging.io import content_hash, files_hash
from covid_models.imaging.scan import ImageReadError
from covid_models.models.checkpoint import CheckpointError
from covid_models.pacs import screening
from covid_models.pacs.client import (
    CT_MODALITIES,
    XRAY_MODALITIES,
    InstanceRef,
    Pacs,
    PacsError,
    PacsSettings,
    StudyQuery,
)
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import ItemView, NewItem, ReviewError, SessionInfo
from covid_models.reviews.store import ReviewStore
from pages.shared import LruCache, load_classifier, model_cards, show_error

MAX_STUDIES = 20  # studies per session: each is fetched and analysed when the session starts
PACS_CACHE_BYTES = 128 * 1024 * 1024  # fetched images of all reviewers together (least recently used dropped)
RESULTS_KEY, PAGES_KEY, QUERY_KEY = "review-pacs-results", "review-pacs-offsets", "review-pacs-query"


@dataclass(frozen=True)
class PageHooks:
    """What the Review page lends this source: its scan analysis (kept in its scan cache) and opening a
    session."""

    review_scan: Callable[[Reviewer, list[tuple[str, bytes]], str, str], ScanAnalysis]
    open_session: Callable[[SessionInfo, int], None]
    message_key: str  # where the page keeps the message it shows on its next run


def _setting(name: str) -> str:
    value = os.environ.get(name, "")
    if value.strip():
        return value
    try:
        return str(st.secrets.get(name.lower(), ""))
    except (FileNotFoundError, KeyError, AttributeError, ValueError):  # no secrets file
        return ""


def pacs_settings() -> PacsSettings | None:
    """The deployment's PACS, or None (nothing about a PACS is shown). A malformed setting raises PacsError."""
    return PacsSettings.from_lookup(_setting)


@st.cache_resource(show_spinner=False)
def pacs_connection(settings: PacsSettings) -> Pacs:
    return Pacs(settings)


@st.cache_resource(show_spinner=False)
def pacs_images() -> LruCache:
    """Fetched PACS images by (reviewer, hash): one reviewer's images are never served to another."""
    return LruCache(PACS_CACHE_BYTES, size=len)


# ------------------------------------------------------------------------------------------ showing an item
def pacs_image(reviewer: Reviewer, item: ItemView) -> bytes | None:
    """An image item's bytes: from the cache, else fetched again and checked against the stored hash."""
    data = pacs_images().get((reviewer.key, item.image_hash))
    if data is not None:
        return data
    try:
        settings = pacs_settings()
        if settings is None:
            st.warning("This image comes from a PACS that this server is no longer configured for; its stored "
                       "reading and verdict are kept.")
            return None
        with st.spinner("Fetching the image from the PACS..."):
            data = pacs_connection(settings).fetch_instance(InstanceRef.parse(item.pacs_ref or ""))
    except PacsError as error:
        st.warning(f"{error} The stored reading and verdict are kept.", icon=":material/cloud_off:")
        return None
    if content_hash(data) != item.image_hash:
        st.warning("The image in the PACS is no longer the one this session read (it was changed there); it is not "
                   "shown. The stored reading and verdict are kept.")
        return None
    pacs_images().put((reviewer.key, item.image_hash), data)
    return data


def pacs_scan(reviewer: Reviewer, info: SessionInfo, item: ItemView, directory: str | None,
              hooks: PageHooks) -> ScanAnalysis | None:
    """A scan item whose analysis left the scan cache: its series fetched again, checked and analysed."""
    settings = pacs_settings()
    if settings is None or directory is None:
        st.warning(f"This scan cannot be fetched again (no PACS configured, or model {info.model_name} is gone); "
                   "its stored reading and verdict are kept.")
        return None
    try:
        ref = InstanceRef.parse(item.pacs_ref or "")
        with st.spinner("Fetching the scan from the PACS..."):
            files = pacs_connection(settings).fetch_series(ref.study_uid, ref.series_uid)
        if files_hash([content_hash(data) for _, data in files]) != item.image_hash:
            st.warning("The series in the PACS is no longer the one this session read; it is not shown.")
            return None
        return hooks.review_scan(reviewer, files, item.image_hash, directory)
    except (PacsError, VolumeReadError) as error:
        st.warning(f"{error} The stored reading and verdict are kept.", icon=":material/cloud_off:")
        return None


def send_verdict(store: ReviewStore, reviewer: Reviewer, item: ItemView, hooks: PageHooks) -> None:
    """After a saved verdict on a PACS item, its SR goes back to the study when the deployment stores results; a
    failure is said, and the verdict stays saved in the review database."""
    try:
        settings = pacs_settings()
    except PacsError:
        return
    if not item.pacs_ref or settings is None or not settings.store_results:
        return
    from covid_models.pacs.structured_report import store_report, verdict_report  # highdicom: only when storing

    saved = store.item(item.session_id, item.position)
    info = store.session_info(item.session_id)
    if saved.verdict is None:
        return
    cards = {card.name: (directory, card) for directory, card in model_cards("classification", info.modality)}
    if info.model_name not in cards:
        return
    try:
        pacs = pacs_connection(settings)
        ref = InstanceRef.parse(saved.pacs_ref or "")
        first = ref if ref.sop_uid else pacs.instances(ref.study_uid, ref.series_uid)[0]
        data = pacs_images().get((reviewer.key, saved.image_hash)) if ref.sop_uid else None
        data = data or pacs.fetch_instance(first)
        classifier = load_classifier(cards[info.model_name][0])
        reading = screening.Reading(item=ref, kind=saved.kind, model_name=classifier.name,
                                    weights_sha256=screening.weights_sha256(classifier),
                                    probability=None if saved.held_back else saved.covid_probability,
                                    threshold=saved.operating_threshold, operating_point="as stored with the session")
        store_report(pacs, verdict_report(reading, screening.headers([data]), saved.verdict, saved.reviewer_label,
                                          saved.version))
    except (PacsError, IndexError) as error:
        st.session_state[hooks.message_key] = ("warning", f"Your verdict is saved here, but it could not be sent "
                                                          f"to the PACS: {error}")


# ------------------------------------------------------------------------------------------ a new session
def _modalities(modality: str) -> tuple[str, ...]:
    return CT_MODALITIES if modality == "ct" else XRAY_MODALITIES


def _study_label(study) -> str:
    return " · ".join(part for part in (study.date, "/".join(study.modalities), study.accession, study.patient_id,
                                        study.description) if part) or "study"


def _search(pacs: Pacs, query: StudyQuery, offsets: list[int]) -> None:
    """Show the page that begins at the last of `offsets` (the pages seen so far, for "Previous")."""
    try:
        page = pacs.search_studies(query, offset=offsets[-1])
    except PacsError as error:
        show_error(str(error))
        return
    st.session_state[RESULTS_KEY], st.session_state[PAGES_KEY], st.session_state[QUERY_KEY] = page, offsets, query


def _items_of(pacs: Pacs, reviewer: Reviewer, study_uid: str, modality: str, directory: str, card, hooks: PageHooks,
              store_results: bool) -> list[NewItem]:
    """A study's items, each fetched, checked and analysed; its readings stored back when enabled."""
    from covid_models.pacs.structured_report import reading_report, store_report  # highdicom: only when storing

    classifier = load_classifier(directory)
    items = []
    for item in screening.study_items(pacs, study_uid, modality):
        if item.kind == "scan":
            files = screening.fetch_scan(pacs, item)
            digest = files_hash([content_hash(data) for _, data in files])
            analysis = hooks.review_scan(reviewer, files, digest, directory)
            if analysis.scan_probability is None:
                raise VolumeReadError("no lung was found in this scan, so it was not scored")
            reading = screening.scan_reading(item, classifier, analysis)
            items.append(NewItem(image_hash=digest, display_name=item.label, kind="scan", pacs_ref=item.ref.text,
                                 predicted_label=analysis.reading_label(card.classes),
                                 covid_probability=analysis.scan_probability, operating_threshold=analysis.threshold,
                                 held_back=analysis.held_back))
            evidence = [data for _, data in files]
        else:
            data = screening.fetch_image(pacs, item)
            _, prediction = screening.read_xray(data, classifier)
            pacs_images().put((reviewer.key, content_hash(data)), data)
            reading = screening.image_reading(item, classifier, prediction)
            items.append(NewItem(image_hash=content_hash(data), display_name=item.label, pacs_ref=item.ref.text,
                                 predicted_label=prediction.reading_label,
                                 covid_probability=float(prediction.positive_probability),
                                 operating_threshold=float(prediction.threshold),
                                 held_back=prediction.out_of_distribution))
            evidence = [data]
        if store_results:
            store_report(pacs, reading_report(reading, screening.headers(evidence)))
    return items


def _start(store: ReviewStore, reviewer: Reviewer, pacs: Pacs, chosen: list[str], modality: str, directory: str,
           card, hooks: PageHooks, blinded: bool, store_results: bool) -> None:
    items, problems = [], []
    bar = st.progress(0.0, text="Fetching and analysing...")
    for number, study_uid in enumerate(chosen, start=1):
        bar.progress(number / len(chosen), text=f"Fetching and analysing study {number} of {len(chosen)}...")
        try:
            found = _items_of(pacs, reviewer, study_uid, modality, directory, card, hooks, store_results)
        except (PacsError, ImageReadError) as error:
            problems.append(f"study {number}: {error}")
            continue
        except CheckpointError as error:
            bar.empty()
            show_error(f"The model could not be loaded: {error}")
            return
        if not found:
            problems.append(f"study {number}: no {'CT series' if modality == 'ct' else 'CR or DX image'} in it")
        items += found
    bar.empty()
    if problems:
        st.session_state[hooks.message_key] = ("warning", "Left out of the session: " + "; ".join(problems))
    if not items:
        show_error("Nothing could be read from the chosen studies: " + "; ".join(problems))
        return
    try:
        session_id = store.start_session(reviewer, card.name, modality, items, blinded=blinded)
    except ReviewError as error:  # the database's own failures are shown by the page
        show_error(str(error))
        return
    hooks.open_session(store.session_info(session_id), 0)
    st.rerun()


def pacs_session_form(store: ReviewStore, reviewer: Reviewer, hooks: PageHooks) -> None:
    """The "From PACS" source of a new session; nothing at all when no PACS is configured."""
    try:
        settings = pacs_settings()
    except PacsError as error:
        show_error(f"The PACS connection is misconfigured: {error}")
        return
    if settings is None:
        return
    st.subheader("Start a session from the PACS")
    pacs = pacs_connection(settings)
    cards = {card.name: (directory, card) for modality in ("xray", "ct")
             for directory, card in model_cards("classification", modality) if card.positive_class is not None}
    if not cards:
        return
    columns = st.columns(2)
    name = columns[0].selectbox("Model", list(cards), key="review-pacs-model")
    directory, card = cards[name]
    modality = card.modality
    chosen_modalities = columns[1].multiselect("Modality", _modalities(modality), default=list(_modalities(modality)),
                                               key=f"review-pacs-modalities-{modality}")
    columns = st.columns(4)
    date_from = columns[0].date_input("Studies from", value=None, key="review-pacs-from")
    date_to = columns[1].date_input("to", value=None, key="review-pacs-to")
    accession = columns[2].text_input("Accession number", key="review-pacs-accession")
    patient_id = columns[3].text_input("Patient ID", key="review-pacs-patient")
    query = StudyQuery(date_from=date_from if isinstance(date_from, date) else None,
                       date_to=date_to if isinstance(date_to, date) else None,
                       modalities=tuple(chosen_modalities) or _modalities(modality), accession=accession,
                       patient_id=patient_id)
    if st.button("Search the PACS", key="review-pacs-search", icon=":material/search:"):
        _search(pacs, query, [0])
    page = st.session_state.get(RESULTS_KEY)
    if page is None:
        return
    offsets = st.session_state.get(PAGES_KEY, [0])
    count = f"{len(page.studies)} {'study' if len(page.studies) == 1 else 'studies'}"
    shown = f"Page {len(offsets)}: {count}" + (" (more follow)" if page.more else "") + "." if page.studies \
        else "No study matches."
    st.caption(f"{shown} Pick up to {MAX_STUDIES} studies for one session.")
    by_uid = {study.uid: study for study in page.studies}
    if page.studies:
        st.dataframe(pd.DataFrame([{"date": s.date, "modalities": ", ".join(s.modalities), "accession": s.accession,
                                    "patient ID": s.patient_id, "description": s.description,
                                    "images": s.n_instances} for s in page.studies]), hide_index=True,
                     width="stretch")
    chosen = st.multiselect("Studies for the session", list(by_uid), key=f"review-pacs-chosen-{len(offsets) - 1}",
                            max_selections=MAX_STUDIES, format_func=lambda uid: _study_label(by_uid[uid]))
    columns = st.columns(3)
    if columns[0].button("Previous page", key="review-pacs-previous", disabled=len(offsets) == 1):
        _search(pacs, st.session_state[QUERY_KEY], offsets[:-1])
        st.rerun()
    if columns[1].button("Next page", key="review-pacs-next", disabled=not page.more):
        _search(pacs, st.session_state[QUERY_KEY], [*offsets, page.next_offset])
        st.rerun()
    blinded = st.checkbox("Blinded reading", key="review-pacs-blinded")
    if st.button("Start session from the PACS", type="primary", key="review-pacs-start",
                 icon=":material/play_arrow:", disabled=not chosen):
        _start(store, reviewer, pacs, chosen, modality, directory, card, hooks, blinded, settings.store_results)
