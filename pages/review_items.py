"""One item of a Review session: its title, the image or scan (alone while a blinded reader has not yet read it, else
laid out as on the Analyze or CT scan page), the model's stored reading, the verdict form (note, buttons and their
keyboard shortcuts) with the verdict already given, and moving between items.

A verdict is committed at once with the version the tab showed, so a change made in another tab is never
overwritten (both are shown), and a note typed while the database is down stays in the tab.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from covid_models.analysis.overlays import DISPLAY_SIDE, display_size, for_display
from covid_models.analysis.scan_analysis import ScanAnalysis
from covid_models.formatting import class_name
from covid_models.imaging.io import read_image
from covid_models.imaging.scan import ImageReadError
from covid_models.models.checkpoint import CheckpointError
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import (
    VERDICT_TEXT,
    ItemView,
    ReviewDatabaseError,
    ReviewError,
    SessionInfo,
    StaleVerdictError,
)
from covid_models.reviews.store import ReviewStore
from pages.review_pacs import send_verdict
from pages.review_readings import held_back, pacs_hooks, review_analysis
from pages.review_state import MESSAGE_KEY, move, plain
from pages.scan_viewer import scan_viewer
from pages.shared import burden_block, scan_result_block, show_analysis

KIND_NAMES = {"image": "Image", "scan": "CT scan"}
SHORTCUTS = {"agree": "A", "disagree": "D", "unsure": "U", "non_diagnostic": "N", "previous": "Left",
             "next": "Right"}
VERDICT_COLOURS = {"agree": "#1e7b34", "disagree": "#b3261e"}  # green and red, told apart by label and icon too
# The verdict column is narrow: the long "Non-diagnostic / not a chest image" was cut to an ellipsis on its button,
# whose help says the rest.
BUTTON_TEXT = {**VERDICT_TEXT, "non_diagnostic": "Non-diagnostic"}


def display_pixels(data: bytes, name: str) -> np.ndarray:
    """The image as [0, 1] greyscale at display size (aspect kept): all a blinded reader sees before reading."""
    pixels = read_image(data, name=name).pixels
    return for_display(pixels, display_size(pixels.shape, DISPLAY_SIDE))


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
        move(following)


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
            st.markdown(f"Model reading: **{plain(class_name(item.predicted_label))}** (quantitative CT reading in HU)")
            st.caption("The figure-crop classifier is a secondary reading (beside the scan, where not withheld); "
                       "it does not decide the model's reading.")
        elif revealed:
            side = "at or above" if item.covid_probability >= item.operating_threshold else "below"
            st.markdown(f"Model reading: **{plain(class_name(item.predicted_label))}**")
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
        return class_name(item.predicted_label)
    if item.verdict == "disagree" and item.reviewer_label:
        return class_name(item.reviewer_label)
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
            st.button(f"My reading: {class_name(label)}", key=f"review-reading-{label}", width="stretch",
                      type="primary", shortcut=str(index + 1) if index < 9 else None, disabled=image_missing,
                      on_click=_record, args=(store, reviewer, item, "reading", label, True))
    elif not withheld:
        verdict_button(store, reviewer, item, "agree", ":material/thumb_up:", image_missing)
        others = [c for c in (classes or []) if c != item.predicted_label]
        if label_key not in st.session_state:
            st.session_state[label_key] = item.reviewer_label if item.verdict == "disagree" else \
                (others[0] if len(others) == 1 else None)
        if others:
            st.segmented_control("If you disagree, your reading", others, key=label_key, format_func=class_name,
                                 help="Used for the agreement statistics (Cohen's kappa); leave empty if unsure")
        verdict_button(store, reviewer, item, "disagree", ":material/thumb_down:", image_missing)
    verdict_button(store, reviewer, item, "unsure", ":material/help:", image_missing, stay=blinded)
    verdict_button(store, reviewer, item, "non_diagnostic", ":material/block:", image_missing, stay=blinded,
                   help="Not gradable, or not a chest image: left out of agreement and kappa")


def verdict_button(store: ReviewStore, reviewer: Reviewer, item: ItemView, verdict: str, icon: str,
                   image_missing: bool, help: str | None = None, stay: bool = False) -> None:  # noqa: A002
    """A full-width button with its keyboard shortcut; disabled while the image is not on the server."""
    st.button(BUTTON_TEXT[verdict], key=f"review-{verdict}", icon=icon, width="stretch", help=help,
              type="primary" if verdict in VERDICT_COLOURS else "secondary", shortcut=SHORTCUTS[verdict],
              disabled=image_missing, on_click=_record, args=(store, reviewer, item, verdict, None, stay))


def navigation(position: int, n_items: int, next_unreviewed: int | None) -> None:
    columns = st.columns(3)
    columns[0].button("Previous", key="review-previous", on_click=move, args=(position - 1,),
                      disabled=position == 0, width="stretch", icon=":material/arrow_back:",
                      shortcut=SHORTCUTS["previous"])
    columns[1].button("Next", key="review-next", on_click=move, args=(position + 1,),
                      disabled=position >= n_items - 1, width="stretch", icon=":material/arrow_forward:",
                      shortcut=SHORTCUTS["next"])
    columns[2].button("Next unreviewed", key="review-next-unreviewed", on_click=move,
                      args=(next_unreviewed if next_unreviewed is not None else position,),
                      disabled=next_unreviewed is None or next_unreviewed == position, width="stretch",
                      icon=":material/skip_next:")
