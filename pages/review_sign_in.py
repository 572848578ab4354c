"""Who is reading the Review page: the app's OpenID Connect login where the deployment configures one, else a name and
passphrase checked by the review store (registered once, in its own step), with an optional administrator token.
Administrators are the accounts named in `COVID_REVIEW_ADMINS` (OpenID Connect) or reviewers who give the
`COVID_REVIEW_ADMIN_TOKEN`.

The page's one door: nothing else of the page is drawn until it returns a reviewer.
"""
from __future__ import annotations

import logging
import os

import streamlit as st

from covid_models.reviews.identity import Reviewer
from covid_models.reviews.names import admin_token_problem
from covid_models.reviews.records import ReviewDatabaseError, ReviewError
from covid_models.reviews.store import ReviewStore
from pages.review_state import leave_session, plain
from pages.shared import show_error

IDENTITY_KEY, REVIEWER_WIDGET = "review-identity", "review-reviewer"
ADMINS_SETTING, ADMIN_TOKEN_SETTING = "COVID_REVIEW_ADMINS", "COVID_REVIEW_ADMIN_TOKEN"
MODE_WIDGET, MODES = "review-sign-in-mode", {"sign-in": "Sign in", "register": "Register as a new reviewer"}
logger = logging.getLogger(__name__)


def setting(name: str) -> str:
    """A deployment setting: the environment variable, else the same key (lower case) in st.secrets."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    try:
        return str(st.secrets.get(name.lower(), "")).strip()
    except (FileNotFoundError, KeyError, AttributeError, ValueError):  # no secrets file: not configured
        return ""


def oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, KeyError, AttributeError, ValueError):
        return False


def identity(store: ReviewStore) -> Reviewer | None:
    """The signed-in reviewer of this browser tab, or None after showing how to sign in."""
    admins = {a.strip().lower() for a in setting(ADMINS_SETTING).split(",") if a.strip()}
    if oidc_configured():
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
    token, problem = check_admin_token()
    if problem is None:
        return token
    st.error(f"Administrator sign-in is off: the token set in {ADMIN_TOKEN_SETTING} is refused ({problem}). Set one "
             "of at least 16 random characters, e.g. the output of `python -c \"import secrets; "
             "print(secrets.token_urlsafe(24))\"`, and restart the app.", icon=":material/key_off:")
    return ""


_LOGGED_PROBLEMS: set[str] = set()


def check_admin_token() -> tuple[str, str | None]:
    """The configured administrator token and why it is refused (None: usable or not set); a refusal goes to the
    server log once per process. Called at server start too, so the operator learns of a weak token then, rather than
    when someone first opens a page that needs it."""
    token = setting(ADMIN_TOKEN_SETTING)
    problem = admin_token_problem(token) if token else None
    if problem is not None and problem not in _LOGGED_PROBLEMS:
        _LOGGED_PROBLEMS.add(problem)
        logger.error("administrator token in %s refused: %s; administrator sign-in is off", ADMIN_TOKEN_SETTING,
                     problem)
    return token, problem


def client_address() -> str | None:
    """The browser's network address, for counting failed sign-ins per client (None on localhost and in tests)."""
    address = st.context.ip_address
    return address if isinstance(address, str) else None


def sign_in_form(store: ReviewStore, admin_token: str) -> None:
    """Sign in under a registered name, or register a new one: signing in never registers, so a mistyped name is
    refused with a hint rather than given an empty account."""
    st.info("Sign in with your name and passphrase. The first time, choose **Register as a new reviewer**: the "
            "passphrase you choose protects your sessions, and nobody else can open or change them.",
            icon=":material/lock:")
    registering = st.radio("Sign in or register", list(MODES), format_func=MODES.get, horizontal=True,
                           key=MODE_WIDGET, label_visibility="collapsed") == "register"
    with st.form("review-sign-in-form", border=False):
        name = st.text_input("Your name", key=REVIEWER_WIDGET, max_chars=200,
                             placeholder="as it should appear in the export")
        passphrase = st.text_input("Passphrase", key="review-passphrase", type="password", max_chars=1024,
                                   help="At least 8 characters besides spaces at its ends; only a salted hash of it "
                                        "is stored")
        repeated = st.text_input("Passphrase again", key="review-passphrase-again", type="password",
                                 max_chars=1024) if registering else ""
        typed_token = st.text_input("Administrator token (optional)", key="review-admin-token",
                                    type="password") if admin_token and not registering else ""
        submitted = st.form_submit_button("Register" if registering else "Sign in",
                                          key="review-register" if registering else "review-sign-in", type="primary",
                                          icon=":material/person_add:" if registering else ":material/login:")
    if not submitted:
        return
    if registering and passphrase != repeated:
        show_error("The two passphrases differ; nothing was registered. Type the same passphrase twice.")
        return
    try:
        if registering:
            reviewer = store.register(name, passphrase, client=client_address())
        else:
            reviewer = store.sign_in(name, passphrase, client=client_address())
            if typed_token:
                reviewer = store.sign_in_as_admin(reviewer, typed_token, admin_token, client=client_address())
    except (ReviewError, ReviewDatabaseError) as error:
        show_error(plain(error))
        return
    st.session_state[IDENTITY_KEY] = reviewer
    st.rerun()


def sign_out() -> None:
    st.session_state.pop(IDENTITY_KEY, None)
    leave_session()
