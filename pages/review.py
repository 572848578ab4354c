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

This script is the page's flow; its parts are the modules beside it: `pages.review_sign_in` (who is reading),
`pages.review_sessions` (starting, listing, opening and assigning sessions; the summary and export),
`pages.review_items` (one item: the image or scan, the reveal, the verdict form), `pages.review_readings` (the
model's reading of an item), `pages.review_uploads` (where an item's image or scan is on the server),
`pages.review_state` (what a tab keeps) and `pages.review_pacs` (the "From PACS" source).
"""
from __future__ import annotations

import streamlit as st

from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import VERDICT_TEXT, ReviewDatabaseError
from covid_models.reviews.store import ReviewStore
from pages.review_items import item_view
from pages.review_pacs import pacs_session_form
from pages.review_readings import pacs_hooks, review_scans, scan_key
from pages.review_sessions import new_session_form, open_from_url, review_cards, session_list, summary_view
from pages.review_sign_in import identity, oidc_configured, sign_out
from pages.review_state import MESSAGE_KEY, MISSING_KEY, MODALITY_NAMES, POSITION_KEY, SESSION_KEY, leave_session, plain
from pages.review_uploads import image_bytes, rescan, reupload
from pages.shared import enter_through_app, review_store, show_error

enter_through_app()


def session_view(store: ReviewStore, reviewer: Reviewer, session_id: int) -> None:
    info = store.session_info(session_id)
    header, leave = st.columns([4, 1], vertical_alignment="center")
    header.markdown(f"**{plain(info.reviewer)}** · model `{info.model_name.replace('`', '')}` · "
                    f"{MODALITY_NAMES.get(info.modality, info.modality)} · started {info.created_at:%Y-%m-%d %H:%M}"
                    f" UTC · {info.status}" + (" · blinded" if info.blinded else ""))
    leave.button("Leave session", key="review-leave", on_click=leave_session, width="stretch", icon=":material/logout:")
    st.progress(info.n_reviewed / max(info.n_items, 1), text=f"{info.n_reviewed} of {info.n_items} reviewed")
    if info.n_reviewed == info.n_items:
        st.success("Every image of this session has a verdict. See the summary; verdicts can still be changed.",
                   icon=":material/task_alt:")
    cards = review_cards(info.modality)
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
        if not oidc_configured():
            out.button("Sign out", key="review-sign-out", on_click=sign_out, width="stretch")
        if not open_from_url(store, reviewer):
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
