"""Review sessions in real Chromium: a second browser cannot open a reviewer's session, a stale second tab
cannot erase a verdict, and the keyboard records verdicts. Screenshots go to test-artifacts/.

Each browser context is a separate visitor (its own cookies); each page is its own Streamlit session.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from app_fixtures import chest_like_png, make_weights_dir, running_app
from browser_fixtures import SETTLED, TIMEOUT_MS, UPLOAD_INPUT, snapshot
from playwright.sync_api import expect

from covid_models.reviews.store import ReviewStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ADA, ADA_PASSPHRASE = "Dr Ada Browser", "ada's browser passphrase"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-review")
    database = root / "reviews.sqlite3"
    env = {"COVID_WEIGHTS_DIR": str(make_weights_dir(root, segmentation=False)), "COVID_REVIEW_DB": str(database)}
    with ReviewStore(f"sqlite:///{database}") as store:
        store.register(ADA, ADA_PASSPHRASE)  # Ada registered once, whichever test runs first
    with running_app(env) as (url, _process):
        yield url, database


def sign_in(page, url: str, name: str, passphrase: str, *, register: bool = False) -> None:
    """Open `url` and sign in; `register`: a first visit, which registers the name with the passphrase typed twice."""
    page.goto(url)
    if register:
        page.get_by_test_id("stRadio").get_by_text("Register as a new reviewer", exact=True).click()
        page.get_by_role("textbox", name="Passphrase again").fill(passphrase)
    page.get_by_label("Your name").fill(name)
    page.get_by_role("textbox", name="Passphrase", exact=True).fill(passphrase)
    page.get_by_role("button", name=re.compile("Register" if register else "Sign in")).click()
    page.get_by_text("Signed in as").wait_for()


def start_upload_session(page, url: str, files: list[tuple[str, bytes]]) -> str:
    """Signs Ada in, starts a session over `files` and returns the session's link."""
    sign_in(page, f"{url}/review", ADA, ADA_PASSPHRASE)
    page.set_input_files(UPLOAD_INPUT, files=[{"name": n, "mimeType": "image/png", "buffer": d} for n, d in files])
    page.get_by_text(f"{len(files)} image{'s' if len(files) > 1 else ''} received").wait_for()
    page.get_by_role("button", name=re.compile("Start session")).click()
    page.get_by_text(f"Image 1 of {len(files)}: {files[0][0]}").wait_for()
    return page.url


def stored(database: Path, token: str, position: int):
    with ReviewStore(f"sqlite:///{database}") as store:
        (info,) = [s for s in store.sessions() if s.token == token]
        return store.item(info.id, position)


def wait_for_verdict(database: Path, token: str, position: int, verdict: str) -> None:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while stored(database, token, position).verdict != verdict:
        assert time.monotonic() < deadline, f"no {verdict!r} verdict stored"
        time.sleep(0.3)


def test_a_second_browser_with_the_link_sees_nothing_of_the_session(browser, app):
    url, database = app
    ada = browser.new_context(viewport={"width": 1400, "height": 1600})
    visitor = browser.new_context(viewport={"width": 1400, "height": 1200})
    try:
        page = ada.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        link = start_upload_session(page, url, [("ada-confidential.png", chest_like_png(128, seed=41))])
        page.get_by_label("Note (optional, saved with your verdict)").fill("confidential note")
        page.get_by_role("button", name=re.compile(r"^Unsure")).click()
        page.get_by_text("1 of 1 reviewed").wait_for()
        assert re.search(r"session=[A-Za-z0-9_-]{32}", link), link

        other = visitor.new_page()
        other.set_default_timeout(TIMEOUT_MS)
        other.goto(link)
        other.get_by_role("textbox", name="Passphrase", exact=True).wait_for()
        assert "ada-confidential" not in other.content()
        sign_in(other, link, "Dr Bob Browser", "bob's browser passphrase", register=True)
        other.get_by_text("belongs to another reviewer").wait_for()
        snapshot(other, "review-not-yours")
        content = other.content()
        for leaked in ("ada-confidential", "confidential note", ADA):
            assert leaked not in content
        assert other.get_by_test_id("stImage").count() == 0
        token = re.search(r"session=([A-Za-z0-9_-]{32})", link).group(1)
        assert (stored(database, token, 0).verdict, stored(database, token, 0).note) == ("unsure",
                                                                                        "confidential note")
    finally:
        ada.close()
        visitor.close()


def test_a_stale_tab_is_refused_and_the_keyboard_records_verdicts(browser, app):
    url, database = app
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    try:
        first = context.new_page()
        first.set_default_timeout(TIMEOUT_MS)
        files = [(f"tab-{i}.png", chest_like_png(128, seed=50 + i)) for i in range(2)]
        link = start_upload_session(first, url, files)
        token = re.search(r"session=([A-Za-z0-9_-]{32})", link).group(1)
        agree = first.get_by_role("button", name=re.compile(r"^Agree"))
        disagree = first.get_by_role("button", name=re.compile(r"^Disagree"))
        expect(agree).to_have_css("background-color", "rgb(30, 123, 52)", timeout=TIMEOUT_MS)  # green
        expect(disagree).to_have_css("background-color", "rgb(179, 38, 30)", timeout=TIMEOUT_MS)  # red

        second = context.new_page()  # a second tab on the same image, drawn before the first tab saves
        second.set_default_timeout(TIMEOUT_MS)
        sign_in(second, link, ADA, ADA_PASSPHRASE)
        second.get_by_text(f"Image 1 of 2: {files[0][0]}").wait_for()

        first.get_by_label("Note (optional, saved with your verdict)").fill("effusion, see lateral")
        first.get_by_role("button", name=re.compile(r"^Unsure")).click()
        wait_for_verdict(database, token, 0, "unsure")

        second.get_by_role("heading", name=re.compile("Image 1 of 2")).click()  # focus the page, not a text box
        second.keyboard.press("a")
        second.get_by_text("changed in another tab").wait_for()
        snapshot(second, "review-stale-tab")
        item = stored(database, token, 0)
        assert (item.verdict, item.note) == ("unsure", "effusion, see lateral")

        second.get_by_role("heading", name=re.compile("Image 1 of 2")).click()
        second.keyboard.press("a")  # it has now seen the saved verdict: the key press replaces it
        wait_for_verdict(database, token, 0, "agree")
        second.get_by_text("Image 2 of 2").wait_for()
        note = second.get_by_label("Note (optional, saved with your verdict)")
        expect(note).to_have_count(1, timeout=TIMEOUT_MS)  # the previous image's box is gone once the run ends
        second.wait_for_function(SETTLED, polling=200)  # a box the run still redraws would drop what is typed
        note.click()
        second.keyboard.type("a nodule, and")  # keys typed into the note are text, not shortcuts
        second.wait_for_timeout(1500)
        assert stored(database, token, 1).verdict is None
        second.get_by_role("heading", name=re.compile("Image 2 of 2")).click()
        second.keyboard.press("n")
        wait_for_verdict(database, token, 1, "non_diagnostic")
        assert stored(database, token, 1).note == "a nodule, and"
        snapshot(second, "review-keyboard")
    finally:
        context.close()
