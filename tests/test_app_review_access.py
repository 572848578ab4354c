# ruff: noqa: F811 (the page fixtures are test_app_review.py's, imported by name)
"""Who may sign in to the review page and what waits for an administrator: failed sign-ins are refused with the wait
(no server thread sleeps), a weak administrator token is refused with a clear message, and sessions without an
owner are given to their reviewer by an administrator, never to whoever registers the name first."""
from __future__ import annotations

import pytest
from test_app_review import PASSPHRASE, REVIEWER, _page, _register, _run, _sign_in, database, folders  # noqa: F401
from test_reviews import _create_version_1_schema

import covid_models.reviews.sign_in_guard
from covid_models.reviews.sign_in_guard import FREE_FAILURES

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

ADMIN_TOKEN = "admin-token-for-tests"


def _shown(at) -> str:
    return repr(at._tree)


def test_repeated_wrong_passphrases_are_refused_with_the_time_to_wait(folders, database, monkeypatch) -> None:
    frozen = covid_models.reviews.sign_in_guard.utc_now()  # the page runs take longer than the first lockout (2 s)
    monkeypatch.setattr(covid_models.reviews.sign_in_guard, "utc_now", lambda: frozen)
    _register(_page(folders, database, monkeypatch))
    for attempt in range(FREE_FAILURES["name"] + 1):
        _sign_in(_page(folders, database, monkeypatch), REVIEWER, f"guess number {attempt}")
    locked = _sign_in(_page(folders, database, monkeypatch), REVIEWER.lower(), PASSPHRASE)
    assert any("Too many failed sign-ins for this name" in e.value and "try again in 2 s" in e.value
               for e in locked.error), [e.value for e in locked.error]
    assert "review-identity" not in locked.session_state
    other = _register(_page(folders, database, monkeypatch), "Dr Someone Else", "someone else's passphrase")
    assert other.session_state["review-identity"].name == "Dr Someone Else"


def test_a_weak_administrator_token_turns_administrator_sign_in_off_with_a_clear_message(
        folders, database, monkeypatch) -> None:
    monkeypatch.setenv("COVID_REVIEW_ADMIN_TOKEN", "admin-2024")
    at = _run(_page(folders, database, monkeypatch))
    assert any("Administrator sign-in is off" in e.value and "at least 16" in e.value for e in at.error)
    assert "review-admin-token" not in [t.key for t in at.text_input]
    assert "admin-2024" not in _shown(at)


def test_a_weak_administrator_token_is_reported_in_the_log_at_server_start_once(monkeypatch, caplog) -> None:
    import pages.review_sign_in

    monkeypatch.setenv("COVID_REVIEW_ADMIN_TOKEN", "admin-2024")
    monkeypatch.setattr(pages.review_sign_in, "_LOGGED_PROBLEMS", set())
    with caplog.at_level("ERROR", logger="pages.review_sign_in"):
        pages.review_sign_in.check_admin_token()
        pages.review_sign_in.check_admin_token()  # a second start-up step or page view: no second line
    refused = [r.getMessage() for r in caplog.records if "administrator sign-in is off" in r.getMessage()]
    assert len(refused) == 1 and "COVID_REVIEW_ADMIN_TOKEN" in refused[0] and "admin-2024" not in refused[0]


def test_a_strong_administrator_token_logs_nothing_at_server_start(monkeypatch, caplog) -> None:
    import pages.review_sign_in

    monkeypatch.setenv("COVID_REVIEW_ADMIN_TOKEN", "k3Jx9-vQ2mR7tZp4_Lw8sN1c")
    with caplog.at_level("ERROR", logger="pages.review_sign_in"):
        pages.review_sign_in.check_admin_token()
    assert not caplog.records


def test_an_owner_less_session_waits_for_an_administrator_to_give_it_to_its_reviewer(
        folders, database, monkeypatch) -> None:
    _create_version_1_schema(f"sqlite:///{database}")  # a session "Dr Old" stored before sessions had owners
    old = _register(_page(folders, database, monkeypatch), "Dr Old", "the old reviewer's passphrase")
    assert "review-resume-choice" not in [s.key for s in old.selectbox], "registering the name claims nothing"

    monkeypatch.setenv("COVID_REVIEW_ADMIN_TOKEN", ADMIN_TOKEN)
    _register(_page(folders, database, monkeypatch), "Chief Radiologist", "chief's passphrase")
    admin = _run(_page(folders, database, monkeypatch))
    admin.text_input(key="review-reviewer").input("Chief Radiologist")
    admin.text_input(key="review-passphrase").input("chief's passphrase")
    admin.text_input(key="review-admin-token").input(ADMIN_TOKEN)
    admin.button(key="review-sign-in").click()
    _run(admin)
    assert admin.session_state["review-identity"].admin, [e.value for e in admin.error]
    assert "Sessions without an owner" in [h.value for h in admin.subheader]
    admin.text_input(key="review-assign-owner").input("DR OLD")
    admin.button(key="review-assign").click()
    _run(admin)
    assert any("now belongs to Dr Old" in s.value for s in admin.success), [e.value for e in admin.error]
    assert "Sessions without an owner" not in [h.value for h in admin.subheader]

    again = _sign_in(_page(folders, database, monkeypatch), "dr old", "the old reviewer's passphrase")
    assert len(again.selectbox(key="review-resume-choice").options) == 1
