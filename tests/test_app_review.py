"""Review sessions through the page: verdicts land in the database, survive a restart, and export as stored."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from app_fixtures import chest_like_png, make_weights_dir, page_test
from app_fixtures_b import clear_streamlit_caches, make_data_dir, point_app_at
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from covid_models.data import held_out_images
from covid_models.io import content_hash
from covid_models.reviews import ReviewStore

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


def _start_from_data(at: AppTest, n: int = 3, modality: str = "xray", *, blinded: bool = False) -> int:
    _sign_in(at)
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
    return next(_unescape(m.value) for m in at.markdown if m.value.startswith("#### Image "))


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
    assert any("Sign in with your name and passphrase" in info.value for info in at.info)
    assert [b.key for b in at.button] == ["review-sign-in"]


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
    second = _start_from_data(_page(folders, database, monkeypatch), n=4)
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
    assert not restarted.warning


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
    at = _sign_in(_page(folders, database, monkeypatch, data=False))
    at.file_uploader(key="review-uploads").set_value([(name, data, "image/png") for name, data in files])
    _run(at)
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
    at = _sign_in(_page(folders, database, monkeypatch, data=False))
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
    assert list(figure.data[0].x) == list(confusion.columns)


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
