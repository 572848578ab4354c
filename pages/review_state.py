"""What the Review page's parts share about one browser tab: its session-state keys, which session and item it is on
(opening, moving and leaving a session, the URL following), and how user text is written into Markdown.

Kept apart from the parts that draw the page (sign-in, sessions, items), so that each moves the tab the same way.
"""
from __future__ import annotations

import re

import streamlit as st

from covid_models.reviews.records import SessionInfo

MODALITY_NAMES = {"xray": "Chest X-ray", "ct": "Chest CT"}
SESSION_KEY, POSITION_KEY, MESSAGE_KEY = "review-session", "review-position", "review-message"
CSV_KEY, MISSING_KEY = "review-csv", "review-missing"
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~<>$:&])")  # inline syntax; text stays on one line


def plain(text: object) -> str:
    """User text (names, notes, file names) made literal inside Markdown: no links, images or formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def open_session(info: SessionInfo, position: int) -> None:
    st.session_state[SESSION_KEY] = info.id
    move(position)
    st.session_state.pop(MISSING_KEY, None)
    st.session_state.pop(CSV_KEY, None)
    st.query_params["session"] = info.token


def move(position: int) -> None:
    st.session_state[POSITION_KEY] = position
    st.query_params["item"] = str(position + 1)


def leave_session() -> None:
    for key in (SESSION_KEY, POSITION_KEY, CSV_KEY, MISSING_KEY):
        st.session_state.pop(key, None)
    st.query_params.clear()
