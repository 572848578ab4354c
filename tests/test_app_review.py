"""Review sessions through the page: verdicts land in the database, survive a restart, and export as stored; the
image is shown with its analysis as on the Analyze page (masks, the lung share), and nothing of a held-back one."""
from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from app_fixtures import (
    CT_CLASSES,
    chest_like_png,
    make_weights_dir,
    page_test,
    with_ct_reading,
    with_lung_window,
    write_classifier,
    write_segmenter,
)
from app_fixtures_b import clear_streamlit_caches, make_data_dir, point_app_at, register_on_review_page
from scan_phantoms import ADULT_SPACING, adult_phantom, dicom_series, phantom, zipped
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

import covid_models.analysis.image_analysis
from covid_models.analysis.image_analysis import Analysis, analyse
from covid_models.analysis.scan_analysis import ScanAnalysis, analyse_scan
from covid_models.formatting import class_name
from covid_models.imaging.io import content_hash, files_hash, read_image
from covid_models.imaging.volumes import read_volume
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter
from covid_models.reviews.records import ReviewDatabaseError, ReviewError
from covid_models.reviews.store import ReviewStore
from covid_models.training.splits import held_out_images
from pages.shared import READING_LABEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

PAGE = "pages/review.py"
REVIEWER = "Dr Ada Test"
PASSPHRASE = "ada's test passphrase"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("review")
    return make_weights_dir(root, segmentation=False), make_data_dir(root)


@pytest.fixture()
def database(tmp_path: Path) -> Path:
    return tmp_path / "reviews.sqlite3"


@pytest.fixture()
def store(database: Path):
    with ReviewStore(f"sqlite:///{database}") as opened:
        yield opened


def _page(folders, database: Path, monkeypatch, *, data: bool = True, token: str | None = None,
          item: int | None = None) -> AppTest:
    """A fresh page with empty Streamlit caches: what a browser sees after the server restarted."""
    weights, data_root = folders
    point_app_at(monkeypatch, database, data_root if data else None)
    at = page_test(PAGE, weights, monkeypatch)
    if token is not None:
        at.query_params["session"] = token
    if item is not None:
        at.query_params["item"] = str(item)
    return at


def _run(at: AppTest) -> AppTest:
    at.run(timeout=120)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _sign_in(at: AppTest, name: str = REVIEWER, passphrase: str = PASSPHRASE) -> AppTest:
    _run(at)
    at.text_input(key="review-reviewer").input(name)
    at.text_input(key="review-passphrase").input(passphrase)
    at.button(key="review-sign-in").click()
    return _run(at)


def _register(at: AppTest, name: str = REVIEWER, passphrase: str = PASSPHRASE, *, again: str | None = None) -> AppTest:
    """A first visit: the reviewer registers (and is signed in)."""
    _run(at)
    register_on_review_page(at, name, passphrase, again=again)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _start_from_data(at: AppTest, n: int = 3, modality: str = "xray", *, blinded: bool = False,
                     registered: bool = False) -> int:
    """The reviewer (registering on a first visit) starts a session of `n` images from the data folder."""
    (_sign_in if registered else _register)(at)
    at.radio(key="review-modality").set_value(modality)
    at.radio(key="review-source").set_value("data")
    _run(at)
    at.number_input(key="review-n").set_value(n)
    if blinded:
        at.checkbox(key="review-blinded").check()
    at.button(key="review-start").click()
    _run(at)
    return int(at.session_state["review-session"])


def _unescape(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def _shown_position(at: AppTest) -> str:
    return next(_unescape(m.value) for m in at.markdown if m.value.startswith(("#### Image ", "#### CT scan ")))


def _verdict(at: AppTest, verdict: str) -> AppTest:
    at.button(key=f"review-{verdict}").click()
    return _run(at)


def _choose_other_label(at: AppTest, session: int, item) -> str:
    """Pick, for `item`, a label other than the model's (what a reviewer does before 'Disagree')."""
    other = next(c for c in ("covid", "normal", "pneumonia") if c != item.predicted_label)
    at.segmented_control(key=f"review-label-{session}-{item.position}").set_value(other)
    return other


def _test_split_names(data_root: Path, modality: str) -> set[str]:
    return {Path(p).name for p in held_out_images(data_root, modality)["image"]}


def _summary(at: AppTest) -> AppTest:
    at.segmented_control(key="review-view").set_value("Summary and export")
    return _run(at)


def _everything_shown(at: AppTest) -> str:
    """Every text the page sent, for checking that nothing of a session leaked."""
    return repr(at._tree)


def test_without_signing_in_the_page_asks_for_name_and_passphrase(folders, database, monkeypatch) -> None:
    at = _run(_page(folders, database, monkeypatch))
    assert any("Sign in with your name and passphrase" in info.value and "Register as a new reviewer" in info.value
               for info in at.info)
    assert at.radio(key="review-sign-in-mode").value == "sign-in"
    assert at.radio(key="review-sign-in-mode").options == ["Sign in", "Register as a new reviewer"]
    assert [b.key for b in at.button] == ["review-sign-in"]
    assert "review-passphrase-again" not in [t.key for t in at.text_input]


def test_a_first_visit_registers_with_the_passphrase_typed_twice(folders, database, store, monkeypatch) -> None:
    mismatched = _register(_page(folders, database, monkeypatch), again="ada's test passphrasf")
    assert any("The two passphrases differ; nothing was registered" in e.value for e in mismatched.error)
    assert "review-identity" not in mismatched.session_state
    with pytest.raises(ReviewError, match="no reviewer is registered"):
        store.registered_reviewer(REVIEWER)

    registered = _register(_page(folders, database, monkeypatch))
    assert registered.session_state["review-identity"] == store.registered_reviewer(REVIEWER)
    assert not registered.error and "review-sign-in" not in [b.key for b in registered.button]

    again = _register(_page(folders, database, monkeypatch), REVIEWER.upper(), "someone else's passphrase")
    assert any("is taken" in e.value and "sign in instead" in e.value for e in again.error), [e.value for e in
                                                                                             again.error]
    assert "review-identity" not in again.session_state


def test_a_mistyped_name_at_sign_in_is_refused_with_a_hint_and_registers_nobody(folders, database, store,
                                                                                 monkeypatch) -> None:
    store.register(REVIEWER, PASSPHRASE)
    mistyped = _sign_in(_page(folders, database, monkeypatch), "Dr Ada Tset", PASSPHRASE)
    assert any("No reviewer is registered as" in _unescape(e.value) and "register as a new reviewer" in e.value
               for e in mistyped.error), [e.value for e in mistyped.error]
    assert "review-identity" not in mistyped.session_state
    with pytest.raises(ReviewError):
        store.registered_reviewer("Dr Ada Tset")
    assert _sign_in(_page(folders, database, monkeypatch)).session_state["review-identity"].name == REVIEWER


def test_a_data_folder_session_stores_hashes_and_names_of_held_out_images(folders, database, store,
                                                                            monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=3)
    items = store.items(session)
    assert len(items) == 3
    assert {item.display_name for item in items} <= _test_split_names(folders[1], "xray")
    for item in items:
        assert item.image_hash == content_hash((folders[1] / "xray" / "images" / item.display_name).read_bytes())
    info = store.session_info(session)
    assert (info.reviewer, info.model_name, info.modality) == (REVIEWER, "xray-fixture-a", "xray")
    assert _shown_position(at) == f"#### Image 1 of 3: {items[0].display_name}"
    assert at.query_params["session"] == store.session_info(session).token


def test_the_same_seed_samples_the_same_images(folders, database, store, monkeypatch) -> None:
    first = _start_from_data(_page(folders, database, monkeypatch), n=4)
    second = _start_from_data(_page(folders, database, monkeypatch), n=4, registered=True)
    assert [i.image_hash for i in store.items(first)] == [i.image_hash for i in store.items(second)]


def test_each_verdict_is_in_the_database_at_once(folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=3)
    items = store.items(session)

    _verdict(at, "agree")
    first = store.items(session)[0]
    assert (first.verdict, first.reviewer_label) == ("agree", items[0].predicted_label)
    assert _shown_position(at).startswith("#### Image 2 of 3")

    other = _choose_other_label(at, session, items[1])
    at.text_area(key=f"review-note-{session}-1").input("consolidation right lower zone")
    _verdict(at, "disagree")
    second = store.items(session)[1]
    assert (second.verdict, second.reviewer_label, second.note) == ("disagree", other,
                                                                   "consolidation right lower zone")

    at.text_area(key=f"review-note-{session}-2").input("motion blur")
    _verdict(at, "unsure")
    third = store.items(session)[2]
    assert (third.verdict, third.reviewer_label, third.note) == ("unsure", None, "motion blur")
    assert store.next_unreviewed(session) is None
    assert any(p.proto.text == "3 of 3 reviewed" for p in at.get("progress"))


def test_a_verdict_can_be_changed_after_going_back(folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=2)
    _verdict(at, "agree")
    at.button(key="review-previous").click()
    _run(at)
    assert _shown_position(at).startswith("#### Image 1 of 2")
    _verdict(at, "unsure")
    assert store.items(session)[0].verdict == "unsure"


def test_after_an_app_restart_the_session_is_listed_and_resumes_at_the_first_unreviewed_image(
        folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=3)
    _verdict(at, "agree")
    _verdict(at, "agree")
    clear_streamlit_caches()

    restarted = _sign_in(_page(folders, database, monkeypatch), REVIEWER.upper())
    listed = restarted.dataframe[0].value
    assert listed["reviewed"].tolist() == ["2 / 3"]
    restarted.selectbox(key="review-resume-choice").set_value(store.session_info(session).token)
    restarted.button(key="review-resume").click()
    _run(restarted)
    third = store.items(session)[2]
    assert _shown_position(restarted) == f"#### Image 3 of 3: {third.display_name}"
    assert restarted.image, "the image is found again in the data folder"
    assert [w.value for w in restarted.warning if "within-source" not in w.value] == [], \
        "nothing is missing (the model's within-source figures go with every result)"


def test_a_page_reload_reopens_the_session_in_the_url_at_the_image_the_reader_was_on(
        folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=3)
    _verdict(at, "unsure")
    at.button(key="review-next").click()
    _run(at)
    assert (at.query_params["session"], at.query_params["item"]) == (store.session_info(session).token, "3")
    reloaded = _sign_in(_page(folders, database, monkeypatch, token=at.query_params["session"],
                              item=int(at.query_params["item"])))
    assert reloaded.session_state["review-session"] == session
    assert _shown_position(reloaded).startswith("#### Image 3 of 3")


def test_uploaded_images_are_asked_for_again_after_a_restart_and_matched_by_content(
        folders, database, store, monkeypatch) -> None:
    files = [(f"chest-{seed}.png", chest_like_png(80, seed=seed)) for seed in (11, 12, 13)]
    at = _register(_page(folders, database, monkeypatch, data=False))
    at.file_uploader(key="review-uploads").set_value([(name, data, "image/png") for name, data in files])
    _run(at)
    assert any(c.value == "3 images received, ready for the session." for c in at.caption)  # before Start is pressed
    at.button(key="review-start").click()
    _run(at)
    session = int(at.session_state["review-session"])
    assert [item.display_name for item in store.items(session)] == [name for name, _ in files]
    clear_streamlit_caches()

    restarted = _sign_in(_page(folders, database, monkeypatch, data=False, token=store.session_info(session).token))
    warning = _unescape(next(w.value for w in restarted.warning if "no longer on the server" in w.value))
    assert all(name in warning for name, _ in files)
    assert at.button(key="review-agree").disabled is False
    assert restarted.button(key="review-agree").disabled, "no verdict on an image that is not shown"
    renamed = ("scan-from-pacs.png", files[0][1])
    restarted.file_uploader(key=f"review-reupload-{session}").set_value([(*renamed, "image/png")])
    _run(restarted)
    warning = _unescape(next(w.value for w in restarted.warning if "no longer on the server" in w.value))
    assert warning.startswith("2 image(s)")
    assert files[0][0] not in warning.split("whatever their names:", 1)[1]
    assert restarted.image, "the re-uploaded first image is shown"


def test_an_unreadable_upload_is_left_out_with_its_reason(folders, database, store, monkeypatch) -> None:
    at = _register(_page(folders, database, monkeypatch, data=False))
    at.file_uploader(key="review-uploads").set_value([("good.png", chest_like_png(80, seed=3), "image/png"),
                                                      ("notes.txt", b"just some text", "text/plain")])
    _run(at)
    at.button(key="review-start").click()
    _run(at)
    session = int(at.session_state["review-session"])
    assert [item.display_name for item in store.items(session)] == ["good.png"]
    assert any("notes.txt" in _unescape(w.value) and "Left out" in w.value for w in at.warning)


def test_summary_shows_the_stores_numbers_and_the_csv_download_is_its_export(folders, database, store,
                                                                              monkeypatch) -> None:
    downloads: list[bytes] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def capture(self, path_or_data, mimetype, kind, filename=None):
        if filename and filename.startswith("review-session"):
            downloads.append(path_or_data)
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", capture)
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=4)
    items = store.items(session)
    _verdict(at, "agree")
    _choose_other_label(at, session, items[1])
    _verdict(at, "disagree")
    _verdict(at, "unsure")
    _summary(at)
    assert not any(b.label == "Download the session as CSV" for b in at.get("download_button")), "on request only"
    at.button(key="review-prepare-csv").click()
    _run(at)

    summary = store.summary(session)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Reviewed"] == f"{summary.n_reviewed} / {summary.n_items}" == "3 / 4"
    assert shown["Agreement"] == f"{summary.agreement_rate:.1%}" == "50.0%"
    assert shown["Cohen's kappa"] == ("n/a" if summary.kappa is None else f"{summary.kappa:.3f}")
    assert shown["Unsure"] == "1"
    export = store.export_csv(session)
    assert downloads[-1].decode() == export
    preview = next(t.value for t in at.dataframe if "image_sha256" in t.value.columns)
    assert list(preview["verdict"]) == ["agree", "disagree", "unsure", ""]
    assert preview["image_sha256"].tolist() == [item.image_hash for item in items]
    assert at.download_button(key="review-export").label == "Download the session as CSV"


def test_confusion_table_of_model_against_reviewer_is_drawn(folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=2)
    items = store.items(session)
    _verdict(at, "agree")
    _choose_other_label(at, session, items[1])
    _verdict(at, "disagree")
    _summary(at)
    import plotly.io

    figure = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec)
    confusion = store.summary(session).confusion
    assert [list(row) for row in figure.data[0].z] == confusion.to_numpy().tolist()
    assert list(figure.data[0].x) == [class_name(c) for c in confusion.columns]  # "COVID-19", not "covid"


def test_on_ct_disagree_means_the_other_class(folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=2, modality="ct")
    predicted = store.items(session)[0].predicted_label
    _verdict(at, "disagree")
    first = store.items(session)[0]
    assert first.verdict == "disagree"
    assert first.reviewer_label == ({"covid", "non_covid"} - {predicted}).pop()


def test_leaving_a_session_returns_to_the_session_list(folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=2)
    at.button(key="review-leave").click()
    _run(at)
    assert "review-session" not in at.session_state
    assert "session" not in at.query_params
    assert isinstance(at.dataframe[0].value, pd.DataFrame)
    assert at.selectbox(key="review-resume-choice").value == store.session_info(session).token


# ---------------------------------------------------------------- access control


def _upload_session(folders, database, monkeypatch, files) -> tuple[AppTest, int]:
    at = _register(_page(folders, database, monkeypatch, data=False))
    at.file_uploader(key="review-uploads").set_value([(name, data, "image/png") for name, data in files])
    _run(at)
    at.button(key="review-start").click()
    _run(at)
    return at, int(at.session_state["review-session"])


def test_another_reviewer_with_the_link_gets_a_not_yours_page_and_nothing_of_the_session(
        folders, database, store, monkeypatch) -> None:
    secret_name = "confidential-patient-scan.png"
    at, session = _upload_session(folders, database, monkeypatch, [(secret_name, chest_like_png(80, seed=21))])
    at.text_area(key=f"review-note-{session}-0").input("confidential note")
    _verdict(at, "unsure")
    token = store.session_info(session).token

    visitor = _run(_page(folders, database, monkeypatch, data=False, token=token))
    assert [b.key for b in visitor.button] == ["review-sign-in"], "a visitor with the link only gets the sign-in"
    bob = _register(visitor, "Dr Bob", "bob's own passphrase")
    assert any("belongs to another reviewer" in e.value for e in bob.error)
    shown = _everything_shown(bob)
    for leaked in (secret_name, "confidential note", REVIEWER):
        assert leaked not in shown
    assert not bob.image and "review-agree" not in [b.key for b in bob.button]
    assert store.item(session, 0).verdict == "unsure"
    bob.button(key="review-not-yours-back").click()
    _run(bob)
    assert "session" not in bob.query_params and not bob.dataframe, "Bob has no sessions listed, Ada's neither"


def test_an_admin_opens_any_session_but_is_never_served_another_reviewers_uploads(
        folders, database, store, monkeypatch) -> None:
    _, session = _upload_session(folders, database, monkeypatch, [("ada-upload.png", chest_like_png(80, seed=22))])
    monkeypatch.setenv("COVID_REVIEW_ADMIN_TOKEN", "admin-token-for-tests")
    store.register("Chief Radiologist", "chief's passphrase")
    admin = _run(_page(folders, database, monkeypatch, data=False, token=store.session_info(session).token))
    admin.text_input(key="review-reviewer").input("Chief Radiologist")
    admin.text_input(key="review-passphrase").input("chief's passphrase")
    admin.text_input(key="review-admin-token").input("admin-token-for-tests")
    admin.button(key="review-sign-in").click()
    _run(admin)
    assert admin.session_state["review-identity"].admin, [e.value for e in admin.error]
    assert _shown_position(admin) == "#### Image 1 of 1: ada-upload.png"
    assert not admin.image, "the upload lives in Ada's cache only"
    assert admin.button(key="review-agree").disabled


@pytest.mark.parametrize("link", ["99999999999999999999", "2147483648", "1", "A" * 32])
def test_a_malformed_or_unknown_session_link_gets_a_clear_message(folders, database, monkeypatch, link) -> None:
    at = _register(_page(folders, database, monkeypatch, token=link))
    assert any("link" in e.value for e in at.error), [e.value for e in at.error]


def test_a_wrong_passphrase_signs_nobody_in(folders, database, monkeypatch) -> None:
    _register(_page(folders, database, monkeypatch))
    again = _sign_in(_page(folders, database, monkeypatch), REVIEWER, "not the passphrase")
    assert any("belongs to a reviewer with another passphrase" in e.value for e in again.error)
    assert "review-identity" not in again.session_state


def test_user_text_is_shown_as_text_not_markdown(folders, database, monkeypatch) -> None:
    hostile = "Dr ![x](http://127.0.0.1:9/track.png) [log in again](http://127.0.0.1:9/)"
    at = _register(_page(folders, database, monkeypatch), hostile, "a hostile passphrase")
    markdown = [m.value for m in at.caption] + [m.value for m in at.markdown]
    signed_in = next(value for value in markdown if value.startswith("Signed in as"))
    assert "](" not in signed_in and "![" not in signed_in
    assert _unescape(signed_in) == f"Signed in as **{hostile}**"


# ---------------------------------------------------------------- two tabs, database faults, batch size


def test_a_stale_second_tab_cannot_erase_a_verdict_and_its_note(folders, database, store, monkeypatch) -> None:
    first = _page(folders, database, monkeypatch)
    session = _start_from_data(first, n=2)
    token = store.session_info(session).token
    second = _sign_in(_page(folders, database, monkeypatch, token=token, item=1))  # both tabs on image 1
    first_tab = _page(folders, database, monkeypatch, token=token, item=1)
    first_tab = _sign_in(first_tab)

    first_tab.text_area(key=f"review-note-{session}-0").input("effusion, see lateral")
    _verdict(first_tab, "unsure")
    _verdict(second, "agree")  # drawn before the first tab saved

    stored = store.item(session, 0)
    assert (stored.verdict, stored.note) == ("unsure", "effusion, see lateral")
    warning = _unescape(next(w.value for w in second.warning if "changed in another tab" in w.value))
    assert "Unsure" in warning and "effusion, see lateral" in warning and "Agree" in warning
    assert [(e.verdict, e.saved) for e in store.history(session, 0)] == [("unsure", True), ("agree", False)]
    assert second.text_area(key=f"review-note-{session}-0").value == "effusion, see lateral", "the saved note shown"
    _verdict(second, "agree")  # now it has seen the saved verdict, replacing it is a decision
    assert (store.item(session, 0).verdict, store.item(session, 0).note) == ("agree", "effusion, see lateral")


def test_a_database_fault_says_the_verdict_was_not_saved_and_keeps_the_note(folders, database, store,
                                                                           monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=2)
    note_key = f"review-note-{session}-0"
    at.text_area(key=note_key).input("GGO both lower lobes")

    def full(*_args, **_kwargs):
        raise ReviewDatabaseError("the verdict was NOT saved: database or disk is full")

    with monkeypatch.context() as patched:
        patched.setattr(ReviewStore, "record_verdict", full)
        _verdict(at, "agree")
    error = _unescape(next(e.value for e in at.error if "NOT saved" in e.value))
    assert "database or disk is full" in error and "note is kept" in error
    assert at.text_area(key=note_key).value == "GGO both lower lobes"
    assert store.item(session, 0).verdict is None
    _verdict(at, "agree")  # the database is back: the same note is saved
    assert (store.item(session, 0).verdict, store.item(session, 0).note) == ("agree", "GGO both lower lobes")


def test_a_review_database_that_cannot_be_created_gives_a_clear_message(folders, tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    at = _run(_page(folders, blocker / "missing" / "reviews.sqlite3", monkeypatch))
    assert any("cannot create the folder of the review database" in _unescape(e.value) for e in at.error)


def test_an_upload_batch_larger_than_the_reviewers_cache_is_refused(folders, database, store, monkeypatch) -> None:
    at = _register(_page(folders, database, monkeypatch, data=False))
    big = b"\0" * (33 * 1024 * 1024)
    at.file_uploader(key="review-uploads").set_value([("a.png", big, "image/png"), ("b.png", big, "image/png")])
    _run(at)
    at.button(key="review-start").click()
    _run(at)
    assert any("66 MB together" in e.value and "2 smaller sessions" in e.value for e in at.error)
    assert store.sessions() == []


# ---------------------------------------------------------------- reading


def test_blinded_reading_hides_the_model_until_the_reader_records_a_label(folders, database, store,
                                                                          monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=2, blinded=True)
    assert not any(m.label == "COVID-19 probability" for m in at.metric)
    assert not any("Model reading" in m.value for m in at.markdown)
    assert len(at.image) == 1, "the image only, no heatmap"
    at.button(key="review-reading-normal").click()
    _run(at)
    first = store.item(session, 0)
    assert first.reviewer_label == "normal"
    assert first.verdict == ("agree" if first.predicted_label == "normal" else "disagree")
    assert any(m.label == "COVID-19 probability" for m in at.metric), "revealed once read, on the same image"


def test_verdict_buttons_carry_shortcuts_and_a_non_diagnostic_verdict(folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=2)
    shortcuts = {key: at.button(key=f"review-{key}").proto.shortcut for key in
                 ("agree", "disagree", "unsure", "non_diagnostic", "previous", "next")}
    assert shortcuts == {"agree": "a", "disagree": "d", "unsure": "u", "non_diagnostic": "n", "previous": "left",
                         "next": "right"}
    _verdict(at, "non_diagnostic")
    assert store.item(session, 0).verdict == "non_diagnostic"
    _summary(at)
    assert {m.label: m.value for m in at.metric}["Non-diagnostic"] == "1"


# ---------------------------------------------------------------- the analysis, laid out as on the Analyze page


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Weights with the X-ray lung and CT infection segmenters, and the data folder."""
    root = tmp_path_factory.mktemp("review-masks")
    return make_weights_dir(root), make_data_dir(root)


@pytest.fixture(scope="module")
def held_back(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Weights whose X-ray guards hold back every image (segmenters installed, so a mask would be there to leak).
    The CT classifier has no guard: were both guards to reject an image without lung fields, the chest-image
    check would refuse it before any model reading (as the Analyze page does), and nothing would be held back."""
    root = tmp_path_factory.mktemp("review-held-back")
    weights = make_weights_dir(root, ood_threshold=-1.0)
    shutil.rmtree(weights / "ct-fixture")
    write_classifier(weights, "ct-fixture", "ct", CT_CLASSES, seed=3)
    return weights, make_data_dir(root)


def _library_analysis(folders: tuple[Path, Path], modality: str, name: str) -> Analysis:
    """What `analyse` makes of a data-folder image with the session's model (the first of the modality)."""
    weights, data_root = folders
    classifier, segmenter = {"xray": ("xray-fixture-a", "xray-lungs-fixture"),
                             "ct": ("ct-fixture", "ct-infection-fixture")}[modality]
    return analyse(read_image(data_root / modality / "images" / name), [Classifier.load(weights / classifier)],
                   [Segmenter.load(weights / segmenter)])


def _captions(at: AppTest) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def test_the_review_page_shows_the_lung_mask_and_the_lung_share_warning_of_the_analysis(
        segmented, database, store, monkeypatch) -> None:
    """The reviewer sees what Analyze shows: heatmap, lung mask, and the warning that the model looked
    outside the lungs (every share is made to warn here, so that the warning is what is checked)."""
    monkeypatch.setattr(covid_models.analysis.image_analysis, "LOW_LUNG_SHARE", 1.01)
    # the fixture segmenter is untrained: its mask (most of the film) is implausible, which would hide the share
    monkeypatch.setattr(covid_models.analysis.image_analysis, "lung_implausible", lambda mask: None)
    at = _page(segmented, database, monkeypatch)
    session = _start_from_data(at, n=1)
    expected = _library_analysis(segmented, "xray", store.item(session, 0).display_name)
    warning = next(s.text for s in expected.signals if s.level == "warning" and "heatmap" in s.text)
    assert "of the heatmap lies inside the lungs" in warning and "suspicion" in warning
    assert warning in [w.value for w in at.warning]
    assert "Lung mask" in _captions(at)
    assert any(c.startswith("Grad-CAM for") for c in _captions(at))
    assert any(m.label == "COVID-19 probability" for m in at.metric)


def test_a_ct_review_shows_the_infection_mask_and_the_share_inside_it(segmented, database, store,
                                                                     monkeypatch) -> None:
    at = _page(segmented, database, monkeypatch)
    session = _start_from_data(at, n=1, modality="ct")
    expected = _library_analysis(segmented, "ct", store.item(session, 0).display_name)
    assert any(c.startswith("Infection mask") for c in _captions(at))
    share = next(s.text for s in expected.signals if "inside the infection mask" in s.text)
    assert share in [c.value for c in at.caption]


def test_a_blinded_review_shows_the_masks_and_the_share_only_after_the_reading(segmented, database, store,
                                                                              monkeypatch) -> None:
    # the fixture segmenter is untrained: its mask (most of the film) is implausible, which would hide the share
    monkeypatch.setattr(covid_models.analysis.image_analysis, "lung_implausible", lambda mask: None)
    at = _page(segmented, database, monkeypatch)
    _start_from_data(at, n=2, blinded=True)
    assert _captions(at) == ["Image"], "the image only: no heatmap and no mask before the reader's own reading"
    assert "of the heatmap" not in _everything_shown(at)
    at.button(key="review-reading-normal").click()
    _run(at)
    assert "Lung mask" in _captions(at)
    assert any("of the heatmap lies inside the lungs" in s.value for s in (*at.success, *at.warning))


@pytest.mark.parametrize("blinded", [False, True])
def test_a_held_back_image_shows_no_probability_heatmap_mask_or_share_on_the_review_page(
        held_back, database, store, monkeypatch, blinded) -> None:
    """As on Analyze, a held-back image gets its reason and the image alone, and
    no verdict that would give its reading away (the labels left to disagree with, a blinded reading that agrees)."""
    at = _page(held_back, database, monkeypatch)
    session = _start_from_data(at, n=1, blinded=blinded)
    item = store.item(session, 0)
    assert _library_analysis(held_back, "xray", item.display_name).held_back
    assert any("does not look like a chest X-ray the model was trained on" in e.value and "held back" in e.value
               for e in at.error)
    assert _captions(at) == ["Image (held back: no heatmap or mask is shown)"]
    assert not at.metric and not at.success
    shown = _everything_shown(at)
    assert f"{item.covid_probability:.1%}" not in shown
    assert "of the heatmap" not in shown
    assert "Model reading: **held back**" in [m.value for m in at.markdown]
    keys = [b.key for b in at.button]
    assert {"review-unsure", "review-non_diagnostic"} <= set(keys)
    assert not [k for k in keys if k in ("review-agree", "review-disagree") or k.startswith("review-reading-")]
    assert [c.key for c in at.get("segmented_control")] == ["review-view"], "no 'if you disagree' labels"
    _verdict(at, "non_diagnostic")
    assert store.item(session, 0).verdict == "non_diagnostic"


# ---------------------------------------------------------------- a whole CT scan as one item


@pytest.fixture(scope="module")
def ct_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, None]:
    """Weights with a CT classifier and infection segmenter that take HU (the scan pipeline's), and no data folder."""
    weights = tmp_path_factory.mktemp("review-scans") / "weights"
    with_lung_window(write_classifier(weights, "ct-fixture", "ct", CT_CLASSES, seed=3))
    with_ct_reading(with_lung_window(write_segmenter(weights, "ct-infection-fixture", "ct", "infection", seed=5)))
    return weights, None


@pytest.fixture(scope="module")
def scan_zip() -> bytes:
    return zipped(dicom_series(adult_phantom(), ADULT_SPACING))


def _library_scan(weights: Path, archive: bytes) -> ScanAnalysis:
    """What `analyse_scan` makes of the zip with the session's CT classifier and the infection model."""
    return analyse_scan(read_volume([("phantom.zip", archive)]), Classifier.load(weights / "ct-fixture"),
                        Segmenter.load(weights / "ct-infection-fixture"))


def _start_with_scan(at: AppTest, archive: bytes, *, blinded: bool = False) -> int:
    _register(at)
    at.radio(key="review-modality").set_value("ct")
    _run(at)
    at.file_uploader(key="review-scans").set_value([("phantom.zip", archive, "application/zip")])
    if blinded:
        at.checkbox(key="review-blinded").check()
    at.button(key="review-start").click()
    _run(at)
    return int(at.session_state["review-session"])


def test_a_scan_is_one_item_read_by_its_scan_level_result_and_its_verdict_is_exported(
        ct_only, database, store, scan_zip, monkeypatch) -> None:
    at = _page(ct_only, database, monkeypatch, data=False)
    session = _start_with_scan(at, scan_zip)
    expected = _library_scan(ct_only[0], scan_zip)
    (item,) = store.items(session)
    assert (item.kind, item.display_name) == ("scan", "phantom.zip")
    assert item.image_hash == files_hash([content_hash(scan_zip)]), "the scan page's hash of the upload"
    assert not expected.secondary_held_back and expected.positive is not None
    assert item.covid_probability == pytest.approx(expected.scan_probability, abs=1e-6)  # the secondary reading's
    assert item.predicted_label == ("covid" if expected.positive else "non_covid")  # the quantitative reading's
    assert item.operating_threshold == expected.threshold and not item.held_back
    assert _shown_position(at) == "#### CT scan 1 of 1: phantom.zip"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics[READING_LABEL] == ("Suggestive" if expected.positive else "Not suggestive")
    assert "largest infection" in expected.key_slices, "the phantom's lesion gives a key slice"
    largest = expected.key_slices["largest infection"]
    assert _captions(at)[0] == f"Axial slice {largest + 1} of 40: secondary classifier " \
        f"{expected.slice_probabilities[largest]:.1%}", "the scan page's viewer, on the largest infection"
    assert at.get("plotly_chart")
    assert any("Zone" in frame.value.columns for frame in at.dataframe), "the burden table"
    _verdict(at, "agree")
    assert store.item(session, 0).verdict == "agree"
    (row,) = pd.read_csv(io.StringIO(store.export_csv(session)), keep_default_na=False).to_dict("records")
    assert (row["file"], row["kind"], row["verdict"]) == ("phantom.zip", "scan", "agree")
    assert row["covid_probability"] == pytest.approx(expected.scan_probability, abs=1e-6)


def test_after_a_restart_a_scan_shows_its_stored_reading_and_its_slices_once_uploaded_again(
        ct_only, database, store, scan_zip, monkeypatch) -> None:
    session = _start_with_scan(_page(ct_only, database, monkeypatch, data=False), scan_zip)
    assert store.item(session, 0).predicted_label in CT_CLASSES
    restarted = _page(ct_only, database, monkeypatch, data=False, token=store.session_info(session).token)
    _sign_in(restarted)
    assert not restarted.metric and any("quantitative CT reading" in m.value for m in restarted.markdown)
    assert any("upload the same scan again" in w.value for w in restarted.warning)
    assert not restarted.image and restarted.button(key="review-agree").disabled
    restarted.file_uploader(key=f"review-rescan-{session}-0").set_value([("renamed.zip", scan_zip, "application/zip")])
    _run(restarted)
    assert any(c.startswith("Axial slice") and "secondary classifier" in c for c in _captions(restarted))
    assert not restarted.button(key="review-agree").disabled


def test_a_blinded_scan_shows_its_slices_alone_until_the_reader_records_a_reading(
        ct_only, database, store, scan_zip, monkeypatch) -> None:
    at = _page(ct_only, database, monkeypatch, data=False)
    session = _start_with_scan(at, scan_zip, blinded=True)
    item = store.item(session, 0)
    assert _captions(at)[0] == "Axial slice 21 of 40"
    assert not at.metric and f"{item.covid_probability:.1%}" not in _everything_shown(at)
    assert at.button(key="review-reading-covid").label == "My reading: COVID-19", "classes as people write them"
    at.button(key="review-reading-covid").click()
    _run(at)
    assert store.item(session, 0).verdict == ("agree" if item.predicted_label == "covid" else "disagree")
    assert any("Your blinded reading: **COVID-19**" in i.value for i in at.info)
    reading = {"covid": "COVID-19", "non_covid": "non-COVID"}[item.predicted_label]
    assert any(m.value.startswith(f"Model reading: **{reading}**") for m in at.markdown)
    assert any(c.startswith("Axial slice") and "secondary classifier" in c for c in _captions(at))


def test_a_held_back_scan_is_an_item_with_no_reading_to_agree_with(ct_only, database, store, monkeypatch) -> None:
    at = _page(ct_only, database, monkeypatch, data=False)
    session = _start_with_scan(at, zipped(dicom_series(phantom())))  # 155 ml of lung: held back
    (item,) = store.items(session)
    assert item.held_back and item.kind == "scan"
    assert any(e.value.startswith("Held back: too little lung") for e in at.error)
    assert any("Model reading: **held back**" in m.value for m in at.markdown)
    assert not at.metric and not at.get("plotly_chart")
    assert not any("%" in c for c in _captions(at)), "no slice probability under any picture"
