"""The radiologist review store, on SQLite and on PostgreSQL (when TEST_POSTGRES_URL names a server)."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import make_url

from covid_models.imaging.io import content_hash
from covid_models.reviews.export import CSV_COLUMNS, HELD_BACK_LABEL
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import NewItem, NotYoursError, ReviewDatabaseError, ReviewError, StaleVerdictError
from covid_models.reviews.schema import database_url
from covid_models.reviews.store import ReviewStore

KIM = Reviewer(key="name:dr kim", name="Dr Kim")  # a reviewer as a script names one (no passphrase involved)
NO_POSTGRES = "no PostgreSQL server: set TEST_POSTGRES_URL (CI starts one)"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh, empty database per test: a temporary SQLite file, or a new schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reviews.sqlite3'}"
        return
    base = os.environ.get("TEST_POSTGRES_URL", "").strip()
    if not base:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {NO_POSTGRES}")
        pytest.skip(NO_POSTGRES)
    schema = f"test_reviews_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url(base))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(database_url(base)).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def open_store(db_url: str) -> Iterator[Callable[[], ReviewStore]]:
    """Opens a store on the test database; each call is like an app (re)start. All are closed afterwards."""
    opened: list[ReviewStore] = []

    def _open() -> ReviewStore:
        store = ReviewStore(db_url)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], ReviewStore]) -> ReviewStore:
    return open_store()


def make_item(index: int, label: str = "covid", probability: float = 0.9, name: str | None = None) -> NewItem:
    return NewItem(
        image_hash=content_hash(f"image bytes {index}".encode()),
        display_name=name or f"scan_{index:03d}.png",
        predicted_label=label,
        covid_probability=probability,
        operating_threshold=0.42,
    )


def all_stored_values(db_url: str) -> dict[str, list[tuple]]:
    """Every row of every table the store created, read directly from the database."""
    engine = create_engine(database_url(db_url))
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
            return {
                table: [tuple(row) for row in connection.execute(text(f'SELECT * FROM "{table}"'))] for table in tables
            }
    finally:
        engine.dispose()


# ---------------------------------------------------------------- round trip and resume


def test_a_session_round_trips_its_items_in_order_with_predictions_and_verdicts(store: ReviewStore) -> None:
    items = [make_item(0, "covid", 0.91), make_item(1, "non_covid", 0.08), make_item(2, "covid", 0.55)]
    ada = Reviewer("name:dr ada lovelace", "  Dr  Ada Lovelace ")
    session_id = store.start_session(ada, "densenet121-xray", "XRay", items)

    store.record_verdict(session_id, 1, "disagree", note="GGO in the\nleft lower lobe", reviewer_label="covid")
    views = store.items(session_id)

    assert [view.position for view in views] == [0, 1, 2]
    assert [view.image_hash for view in views] == [item.image_hash for item in items]
    assert [view.display_name for view in views] == ["scan_000.png", "scan_001.png", "scan_002.png"]
    assert [view.covid_probability for view in views] == [0.91, 0.08, 0.55]
    assert all(view.operating_threshold == 0.42 for view in views)
    assert (views[1].verdict, views[1].reviewer_label) == ("disagree", "covid")
    assert views[1].note == "GGO in the\nleft lower lobe"
    assert views[1].decided_at is not None and views[1].decided_at.tzinfo is not None
    assert views[0].verdict is None and views[0].decided_at is None and views[0].note == ""

    (info,) = store.sessions()
    assert (info.id, info.reviewer, info.model_name, info.modality, info.status) == (
        session_id, "Dr Ada Lovelace", "densenet121-xray", "xray", "open",
    )
    assert (info.n_items, info.n_reviewed) == (3, 1)
    assert info.updated_at >= info.created_at


def test_a_new_store_on_the_same_database_resumes_where_the_reviewer_stopped(
    open_store: Callable[[], ReviewStore],
) -> None:
    first = open_store()
    lee = first.register("Dr Lee", "correct horse battery")
    session_id = first.start_session(lee, "model-a", "ct", [make_item(i) for i in range(4)])
    first.record_verdict(session_id, 0, "agree")
    first.record_verdict(session_id, 1, "unsure", note="motion artefact")
    first.close()

    restarted = open_store()
    (info,) = restarted.sessions(restarted.sign_in("dr lee", "correct horse battery"))
    assert (info.id, info.n_items, info.n_reviewed) == (session_id, 4, 2)
    assert restarted.next_unreviewed(session_id) == 2
    assert [view.verdict for view in restarted.items(session_id)] == ["agree", "unsure", None, None]

    restarted.record_verdict(session_id, 3, "agree")
    assert restarted.next_unreviewed(session_id) == 2  # the first gap, not the last position
    restarted.record_verdict(session_id, 2, "agree")
    assert restarted.next_unreviewed(session_id) is None


def test_sessions_are_listed_per_owner_most_recent_first(store: ReviewStore) -> None:
    kim, diaz = store.register("Dr Kim", "kim passphrase"), store.register("Dr Diaz", "diaz passphrase")
    older = store.start_session(kim, "m", "ct", [make_item(0)])
    other = store.start_session(diaz, "m", "ct", [make_item(1)])
    newer = store.start_session(kim, "m", "ct", [make_item(2)])
    store.record_verdict(older, 0, "agree")  # activity moves the older session to the top

    assert [info.id for info in store.sessions(store.sign_in("DR KIM", "kim passphrase"))] == [older, newer]
    assert {info.id for info in store.sessions()} == {older, other, newer}
    assert store.sessions(store.register("Dr Nobody", "nobody's passphrase")) == []


def test_a_session_can_be_marked_completed_and_still_amended(store: ReviewStore) -> None:
    session_id = store.start_session(KIM, "m", "ct", [make_item(0)])
    store.record_verdict(session_id, 0, "agree")
    store.set_status(session_id, "completed")
    store.record_verdict(session_id, 0, "unsure")

    assert store.session_info(session_id).status == "completed"
    assert store.items(session_id)[0].verdict == "unsure"
    with pytest.raises(ReviewError, match="unknown session status"):
        store.set_status(session_id, "archived")


# ---------------------------------------------------------------- verdicts


def test_recording_an_item_again_replaces_its_verdict(store: ReviewStore, db_url: str) -> None:
    session_id = store.start_session(KIM, "m", "xray", [make_item(0, "covid"), make_item(1, "non_covid")])
    first = store.record_verdict(session_id, 0, "disagree", note="first look", reviewer_label="normal")
    second = store.record_verdict(session_id, 0, "agree", note="on second look, agree")

    view = store.items(session_id)[0]
    assert (view.verdict, view.reviewer_label, view.note) == ("agree", "covid", "on second look, agree")
    assert second.decided_at is not None and first.decided_at is not None
    assert second.decided_at >= first.decided_at
    assert len(all_stored_values(db_url)["verdicts"]) == 1
    assert [(e.verdict, e.note, e.version) for e in store.history(session_id, 0)] == [
        ("disagree", "first look", 1), ("agree", "on second look, agree", 2)]
    assert store.session_info(session_id).n_reviewed == 1


def test_reviewer_label_follows_the_verdict(store: ReviewStore) -> None:
    session_id = store.start_session(KIM, "m", "xray", [make_item(i, "covid") for i in range(4)])

    assert store.record_verdict(session_id, 0, "agree").reviewer_label == "covid"
    assert store.record_verdict(session_id, 1, "disagree", reviewer_label="pneumonia").reviewer_label == "pneumonia"
    assert store.record_verdict(session_id, 2, "disagree").reviewer_label is None
    assert store.record_verdict(session_id, 3, "unsure").reviewer_label is None
    with pytest.raises(ReviewError, match="'agree' verdict means the label is 'covid'"):
        store.record_verdict(session_id, 0, "agree", reviewer_label="normal")
    with pytest.raises(ReviewError, match="needs a label other than the model's"):
        store.record_verdict(session_id, 1, "disagree", reviewer_label="covid")
    with pytest.raises(ReviewError, match="'unsure' verdict carries no reviewer label"):
        store.record_verdict(session_id, 3, "unsure", reviewer_label="normal")


def test_notes_keep_line_breaks_but_lose_control_characters(store: ReviewStore) -> None:
    session_id = store.start_session(KIM, "m", "ct", [make_item(0)])
    store.record_verdict(session_id, 0, "unsure", note="  line one\n\tline two\x00\x07 é ✓ ")

    assert store.items(session_id)[0].note == "line one\n\tline two é ✓"


def test_invalid_input_is_rejected_without_altering_saved_data(store: ReviewStore, db_url: str) -> None:
    session_id = store.start_session(KIM, "m", "ct", [make_item(0), make_item(1)])
    store.record_verdict(session_id, 0, "agree", note="clear consolidation")
    before = all_stored_values(db_url)

    with pytest.raises(ReviewError, match="unknown verdict 'maybe'"):
        store.record_verdict(session_id, 0, "maybe", note="overwritten?")
    with pytest.raises(ReviewError, match="note is 5001 characters long; the limit is 5000"):
        store.record_verdict(session_id, 0, "disagree", note="x" * 5001)
    with pytest.raises(ReviewError, match="no image at position 7"):
        store.record_verdict(session_id, 7, "agree")
    with pytest.raises(ReviewError, match="no review session 999"):
        store.record_verdict(999, 0, "agree")
    with pytest.raises(ReviewError, match="no review session 999"):
        store.items(999)
    with pytest.raises(ReviewError, match="'agree' verdict means the label"):
        store.record_verdict(session_id, 0, "agree", note="overwritten?", reviewer_label="normal")

    assert all_stored_values(db_url) == before
    assert store.items(session_id)[0].note == "clear consolidation"


def test_a_session_with_one_bad_item_is_not_created_at_all(store: ReviewStore, db_url: str) -> None:
    bad = NewItem(content_hash(b"x"), "x.png", "covid", covid_probability=1.5, operating_threshold=0.5)

    with pytest.raises(ReviewError, match="item 1: COVID probability must lie in \\[0, 1\\], got 1.5"):
        store.start_session(KIM, "m", "ct", [make_item(0), bad])

    assert store.sessions() == []
    assert all(rows == [] for rows in all_stored_values(db_url).values())


@pytest.mark.parametrize(
    ("reviewer", "message"),
    [(Reviewer("name:x", "   "), "reviewer name must not be empty"),
     (Reviewer("name:x", "x" * 201), "reviewer name is 201 characters long; the limit is 200"),
     (Reviewer(" ", "Dr Kim"), "owner must not be empty"),
     ("Dr Kim", "a review session needs an owner")],
)
def test_a_session_names_its_owner_and_a_short_reviewer_name(store: ReviewStore, reviewer: Reviewer | str,
                                                             message: str, db_url: str) -> None:
    with pytest.raises(ReviewError, match=message):
        store.start_session(reviewer, "m", "ct", [make_item(0)])  # type: ignore[arg-type]
    assert all_stored_values(db_url)["review_sessions"] == []


def test_items_must_carry_a_sha256_and_sessions_at_least_one_item(store: ReviewStore) -> None:
    with pytest.raises(ReviewError, match="at least one image"):
        store.start_session(KIM, "m", "ct", [])
    not_a_hash = NewItem("patient-1234", "x.png", "covid", 0.5, 0.5)
    with pytest.raises(ReviewError, match="item 0: image_hash must be a SHA-256 hex digest"):
        store.start_session(KIM, "m", "ct", [not_a_hash])


# ---------------------------------------------------------------- privacy


def test_no_pixels_directories_or_identifiers_are_stored(store: ReviewStore, db_url: str) -> None:
    pixels = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    item = NewItem(
        image_hash=content_hash(pixels),
        display_name="/data/patients/DOE^JOHN_MRN-889977/2020-03-01/chest.png",
        predicted_label="covid",
        covid_probability=0.8,
        operating_threshold=0.5,
    )
    windows_item = NewItem(content_hash(b"w"), r"C:\Users\radiology\DOE^JOHN\lateral.dcm", "covid", 0.7, 0.5)
    session_id = store.start_session(KIM, "m", "xray", [item, windows_item])
    store.record_verdict(session_id, 0, "agree")

    assert [view.display_name for view in store.items(session_id)] == ["chest.png", "lateral.dcm"]
    engine = create_engine(database_url(db_url))
    try:
        columns = {
            table: {column["name"]: column["type"] for column in inspect(engine).get_columns(table)}
            for table in inspect(engine).get_table_names()
        }
    finally:
        engine.dispose()
    assert set(columns) == {"review_sessions", "review_items", "verdicts", "verdict_history", "reviewers",
                            "sign_in_failures"}
    assert set(columns["review_items"]) == {
        "id", "session_id", "position", "image_hash", "display_name", "predicted_label",
        "covid_probability", "operating_threshold", "held_back", "kind", "pacs_ref",
    }
    assert not any(isinstance(kind, LargeBinary) for table in columns.values() for kind in table.values())
    stored = repr(all_stored_values(db_url))
    for secret in ("DOE", "JOHN", "889977", "patients", "radiology", "2020-03-01", repr(pixels[8:40])[2:-1]):
        assert secret not in stored
    assert content_hash(pixels) in stored


# ---------------------------------------------------------------- export and summary


def test_csv_export_has_one_row_per_item_with_its_verdict(store: ReviewStore) -> None:
    items = [make_item(0, "covid", 0.875), make_item(1, "non_covid", 0.125, name="=HYPERLINK(evil).png")]
    session_id = store.start_session(KIM, "resnet50-ct", "ct", items)
    store.record_verdict(session_id, 0, "disagree", note='says "normal",\nsee prior', reviewer_label="normal")

    rows = list(csv.DictReader(io.StringIO(store.export_csv(session_id))))

    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2
    first, second = rows
    assert {key: first[key] for key in CSV_COLUMNS if key != "decided_at"} == {
        "session": str(session_id), "reviewer": "Dr Kim", "model": "resnet50-ct", "position": "0",
        "file": "scan_000.png", "image_sha256": items[0].image_hash, "predicted_label": "covid",
        "covid_probability": "0.875", "threshold": "0.42", "verdict": "disagree", "reviewer_label": "normal",
        "note": 'says "normal",\nsee prior', "kind": "image",
    }
    assert first["decided_at"].endswith("+00:00")
    assert (second["verdict"], second["reviewer_label"], second["note"], second["decided_at"]) == ("", "", "", "")
    assert second["file"] == "'=HYPERLINK(evil).png"  # a spreadsheet must not run it as a formula


def test_a_held_back_item_keeps_its_status_and_exports_no_probability(store: ReviewStore) -> None:
    """A held-back image shows no probability anywhere, the CSV included."""
    held = dataclasses.replace(make_item(0, "covid", 0.414), held_back=True)
    session_id = store.start_session(KIM, "resnet50-ct", "ct", [held, make_item(1, "non_covid", 0.125)])
    store.record_verdict(session_id, 0, "non_diagnostic")

    assert store.item(session_id, 0).held_back and not store.item(session_id, 1).held_back
    first, second = csv.DictReader(io.StringIO(store.export_csv(session_id)))
    assert (first["predicted_label"], first["covid_probability"]) == (HELD_BACK_LABEL, "")
    assert "0.414" not in store.export_csv(session_id)
    assert (second["predicted_label"], second["covid_probability"]) == ("non_covid", "0.125")


def test_a_scan_item_is_stored_as_one_scan_and_left_out_of_the_images_to_find(store: ReviewStore) -> None:
    """A whole CT scan is one item of kind 'scan'; its pixels are found again by the scan page's way, not
    among the images the page looks for in the data folder or asks to be re-uploaded."""
    scan = dataclasses.replace(make_item(1, "covid", 0.61, name="chest-ct.zip"), kind="scan")
    session_id = store.start_session(KIM, "ct-model", "ct", [make_item(0), scan])
    store.record_verdict(session_id, 1, "agree")

    assert [view.kind for view in store.items(session_id)] == ["image", "scan"]
    assert [position for position, _, _ in store.image_refs(session_id)] == [0]
    _, exported = csv.DictReader(io.StringIO(store.export_csv(session_id)))
    assert (exported["file"], exported["kind"], exported["covid_probability"], exported["verdict"]) == (
        "chest-ct.zip", "scan", "0.61", "agree")
    with pytest.raises(ReviewError, match="kind must be one of image, scan"):
        store.start_session(KIM, "ct-model", "ct", [dataclasses.replace(make_item(0), kind="series")])


def test_summary_reports_agreement_kappa_and_confusion(store: ReviewStore) -> None:
    # model: 6 covid, 4 non_covid (+1 unsure, +1 unreviewed). Reviewer:
    #   covid     -> 5 agree, 1 disagree (non_covid)
    #   non_covid -> 2 agree, 2 disagree (covid)
    labels = ["covid"] * 6 + ["non_covid"] * 4 + ["covid", "non_covid"]
    session_id = store.start_session(KIM, "m", "xray", [make_item(i, label) for i, label in enumerate(labels)])
    for position in range(5):
        store.record_verdict(session_id, position, "agree")
    store.record_verdict(session_id, 5, "disagree", reviewer_label="non_covid")
    store.record_verdict(session_id, 6, "agree")
    store.record_verdict(session_id, 7, "agree")
    store.record_verdict(session_id, 8, "disagree", reviewer_label="covid")
    store.record_verdict(session_id, 9, "disagree", reviewer_label="covid")
    store.record_verdict(session_id, 10, "unsure")

    summary = store.summary(session_id)

    observed = (5 + 2) / 10
    chance = (6 / 10) * (7 / 10) + (4 / 10) * (3 / 10)  # model covid x reviewer covid + model non x reviewer non
    assert summary.kappa == pytest.approx((observed - chance) / (1 - chance))  # 0.3478...
    assert summary.kappa_explanation is None
    assert (summary.n_items, summary.n_reviewed, summary.n_labelled) == (12, 11, 10)
    assert summary.verdict_counts == {"agree": 7, "disagree": 3, "unsure": 1, "non_diagnostic": 0}
    assert summary.agreement_rate == pytest.approx(0.7)
    assert summary.confusion.index.name == "model" and summary.confusion.columns.name == "reviewer"
    assert summary.confusion.to_dict(orient="index") == {
        "covid": {"covid": 5, "non_covid": 1},
        "non_covid": {"covid": 2, "non_covid": 2},
    }


def test_summary_explains_why_kappa_is_undefined(store: ReviewStore) -> None:
    session_id = store.start_session(KIM, "m", "xray", [make_item(i, "covid") for i in range(3)])

    empty = store.summary(session_id)
    assert empty.kappa is None and "no reviewed image has a reviewer label" in (empty.kappa_explanation or "")
    assert empty.agreement_rate is None and empty.confusion.empty

    store.record_verdict(session_id, 0, "agree")
    store.record_verdict(session_id, 1, "agree")
    one_class = store.summary(session_id)
    assert one_class.kappa is None
    assert "single class" in (one_class.kappa_explanation or "")
    assert one_class.agreement_rate == 1.0
    assert one_class.confusion.to_dict(orient="index") == {"covid": {"covid": 2}}


# ---------------------------------------------------------------- opening the database


def test_database_url_prefers_explicit_then_environment_then_a_local_sqlite_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("COVID_REVIEW_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = database_url()
    assert default == f"sqlite:///{tmp_path}/home/.local/share/covid-screening/reviews.sqlite3"
    assert (tmp_path / "home/.local/share/covid-screening").is_dir()

    monkeypatch.setenv("COVID_REVIEW_DB", str(tmp_path / "elsewhere" / "r.db"))
    assert database_url() == f"sqlite:///{tmp_path}/elsewhere/r.db"
    assert (tmp_path / "elsewhere").is_dir()

    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db.example:5432/reviews")
    assert database_url() == "postgresql+psycopg://u:p@db.example:5432/reviews"
    assert database_url("postgresql://h/x") == "postgresql+psycopg://h/x"
    assert database_url("postgresql+psycopg://h/x") == "postgresql+psycopg://h/x"
    assert database_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_an_unusable_database_url_gives_a_clear_error_without_the_password() -> None:
    with pytest.raises(ReviewDatabaseError, match="cannot open review database") as refused:
        ReviewStore("postgresql://reviewer:s3cret@127.0.0.1:1/reviews")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ReviewDatabaseError, match="cannot use review database URL"):
        ReviewStore("nosuchdb://somewhere/reviews")


def test_an_sqlite_file_in_a_missing_folder_gives_a_clear_error(tmp_path) -> None:
    with pytest.raises(ReviewDatabaseError, match="cannot open review database"):
        ReviewStore(f"sqlite:///{tmp_path}/missing/folder/reviews.sqlite3")


# ---------------------------------------------------------------- access control


def test_a_session_opens_only_for_its_owner_or_an_admin(store: ReviewStore) -> None:
    ada = store.register("Dr Ada", "ada's long passphrase")
    bob = store.register("Dr Bob", "bob's long passphrase")
    session_id = store.start_session(ada, "m", "xray", [make_item(0)])
    token = store.session_info(session_id).token

    assert store.open_session(token, ada).id == session_id
    with pytest.raises(NotYoursError, match="belongs to another reviewer"):
        store.open_session(token, bob)
    assert store.open_session(token, Reviewer(key="oidc:chief@example.org", name="Chief", admin=True)).id == session_id
    assert store.sessions(bob) == []
    assert [info.id for info in store.sessions(ada)] == [session_id]


def test_a_reviewer_name_is_protected_by_its_passphrase(store: ReviewStore, db_url: str) -> None:
    with pytest.raises(ReviewError, match="at least 8 characters"):
        store.register("Dr Ada", "short")
    ada = store.register("Dr Ada", "ada's long passphrase")
    with pytest.raises(ReviewError, match="belongs to a reviewer with another passphrase"):
        store.sign_in("dr ada", "a guess at it")
    assert store.sign_in("DR ADA", "ada's long passphrase") == ada
    (stored,) = all_stored_values(db_url)["reviewers"]
    assert "ada's long passphrase" not in repr(stored)
    assert any(isinstance(value, str) and value.startswith("scrypt$") for value in stored)


def test_session_links_are_unguessable_and_malformed_ones_never_reach_the_database(store: ReviewStore) -> None:
    ada = store.register("Dr Ada", "ada's long passphrase")
    tokens = [store.session_info(store.start_session(ada, "m", "ct", [make_item(i)])).token for i in range(3)]
    assert len(set(tokens)) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", token) for token in tokens)
    for bad in ("1", "2", "99999999999999999999", "2147483648", "-1", "' OR 1=1 --", "x" * 10_000, ""):
        with pytest.raises(ReviewError, match="does not name a review session"):
            store.open_session(bad, ada)
    with pytest.raises(ReviewError, match="No review session has this link"):
        store.open_session("A" * 32, ada)


def _create_version_1_schema(url: str) -> None:
    """The tables as the store made them before access control, versions and history, with one verdict."""
    metadata = MetaData()
    sessions = Table("review_sessions", metadata, Column("id", Integer, primary_key=True),
                     Column("reviewer", String(200)), Column("model_name", String(255)), Column("modality", String(64)),
                     Column("created_at", DateTime(timezone=True)), Column("updated_at", DateTime(timezone=True)),
                     Column("status", String(16)))
    items = Table("review_items", metadata, Column("id", Integer, primary_key=True),
                  Column("session_id", ForeignKey("review_sessions.id", ondelete="CASCADE")),
                  Column("position", Integer), Column("image_hash", String(64)), Column("display_name", String(255)),
                  Column("predicted_label", String(64)), Column("covid_probability", Float),
                  Column("operating_threshold", Float))
    verdicts = Table("verdicts", metadata, Column("id", Integer, primary_key=True),
                     Column("item_id", ForeignKey("review_items.id", ondelete="CASCADE"), unique=True),
                     Column("verdict", String(16)), Column("reviewer_label", String(64), nullable=True),
                     Column("note", Text), Column("decided_at", DateTime(timezone=True)),
                     CheckConstraint("verdict IN ('agree', 'disagree', 'unsure')", name="ck_verdicts_verdict"))
    engine = create_engine(database_url(url))
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        with engine.begin() as connection:
            metadata.create_all(connection)
            session_id = connection.execute(sessions.insert().returning(sessions.c.id), [{
                "reviewer": "Dr Old", "model_name": "m", "modality": "ct", "created_at": now, "updated_at": now,
                "status": "open"}]).scalar_one()
            item_ids = connection.execute(items.insert().returning(items.c.id, sort_by_parameter_order=True), [
                {"session_id": session_id, "position": i, "image_hash": make_item(i).image_hash,
                 "display_name": f"old_{i}.png", "predicted_label": "covid", "covid_probability": 0.8,
                 "operating_threshold": 0.5} for i in range(2)]).scalars().all()
            connection.execute(verdicts.insert(), [{"item_id": item_ids[0], "verdict": "unsure", "reviewer_label": None,
                                                    "note": "kept across the upgrade", "decided_at": now}])
    finally:
        engine.dispose()


def test_a_database_from_before_access_control_is_migrated_and_its_sessions_wait_for_an_administrator(
        db_url: str) -> None:
    _create_version_1_schema(db_url)
    with ReviewStore(db_url) as store:
        (info,) = store.sessions()
        assert (info.reviewer, info.owner, info.n_items, info.n_reviewed) == ("Dr Old", None, 2, 1)
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", info.token)
        first = store.item(info.id, 0)
        assert (first.verdict, first.note, first.version) == ("unsure", "kept across the upgrade", 1)
        assert not first.held_back and first.kind == "image" and first.pacs_ref is None  # added by the upgrade
        assert [e.note for e in store.history(info.id, 0)] == ["kept across the upgrade"]
        store.record_verdict(info.id, 1, "non_diagnostic", expected_version=0)  # the widened CHECK

        someone = store.register("Dr Else", "another passphrase")
        with pytest.raises(NotYoursError):
            store.open_session(info.token, someone)
        old = store.register("dr old", "the old reviewer's passphrase")  # whoever registers the name first
        with pytest.raises(NotYoursError):
            store.open_session(info.token, old)
        assert store.sessions(old) == []
        chief = Reviewer("oidc:chief@example.org", "Chief", admin=True)
        assert [s.id for s in store.sessions(chief)] == [info.id]
        with pytest.raises(NotYoursError, match="Only an administrator"):
            store.assign_session(info.id, old, by=old)
        assert store.assign_session(info.id, store.registered_reviewer("Dr Old"), by=chief).owner == old.key
        assert store.open_session(info.token, old).owner == old.key
        with pytest.raises(ReviewError, match="already belongs to a reviewer"):
            store.assign_session(info.id, someone, by=chief)
    with ReviewStore(db_url) as reopened:  # a second start migrates nothing twice
        assert reopened.item(info.id, 1).verdict == "non_diagnostic"


# ---------------------------------------------------------------- concurrent tabs


def test_a_stale_write_is_refused_and_kept_in_the_history(store: ReviewStore, db_url: str) -> None:
    session_id = store.start_session(KIM, "m", "xray", [make_item(0)])
    shown_in_both_tabs = store.item(session_id, 0).version
    saved = store.record_verdict(session_id, 0, "unsure", note="small effusion?", expected_version=shown_in_both_tabs)
    assert saved.version == 1

    with pytest.raises(StaleVerdictError, match="changed in another tab") as refused:
        store.record_verdict(session_id, 0, "agree", expected_version=shown_in_both_tabs)
    assert (refused.value.current.verdict, refused.value.current.note) == ("unsure", "small effusion?")
    assert refused.value.attempted.verdict == "agree"
    stored = store.item(session_id, 0)
    assert (stored.verdict, stored.note, stored.version) == ("unsure", "small effusion?", 1)
    assert [(e.verdict, e.saved) for e in store.history(session_id, 0)] == [("unsure", True), ("agree", False)]

    replaced = store.record_verdict(session_id, 0, "agree", expected_version=refused.value.current.version)
    assert (replaced.verdict, replaced.version) == ("agree", 2)


def test_non_diagnostic_verdicts_stay_out_of_kappa_and_blinded_readings_become_verdicts(store: ReviewStore) -> None:
    labels = ["covid", "covid", "normal", "normal", "covid"]
    session_id = store.start_session(KIM, "m", "xray", [make_item(i, label) for i, label in enumerate(labels)],
                                     blinded=True)
    assert store.session_info(session_id).blinded
    assert store.record_reading(session_id, 0, "covid").verdict == "agree"
    assert (store.record_reading(session_id, 1, "normal").verdict, store.item(session_id, 1).reviewer_label) == (
        "disagree", "normal")
    store.record_reading(session_id, 2, "normal")
    store.record_reading(session_id, 3, "covid")
    store.record_verdict(session_id, 4, "non_diagnostic", note="a photograph, not a film")

    summary = store.summary(session_id)
    assert summary.verdict_counts["non_diagnostic"] == 1
    assert (summary.n_reviewed, summary.n_labelled) == (5, 4)
    assert summary.kappa == pytest.approx(0.0)  # 2 of 4 agree, with chance agreement 1/2
    with pytest.raises(ReviewError, match="'non_diagnostic' verdict carries no reviewer label"):
        store.record_verdict(session_id, 4, "non_diagnostic", reviewer_label="covid")


def test_resuming_looks_for_the_next_gap_after_the_current_image_first(store: ReviewStore) -> None:
    session_id = store.start_session(KIM, "m", "ct", [make_item(i) for i in range(5)])
    for position in (0, 2, 3):
        store.record_verdict(session_id, position, "agree")
    assert store.next_unreviewed(session_id) == 1
    assert store.next_unreviewed(session_id, after=2) == 4
    store.record_verdict(session_id, 4, "agree")
    assert store.next_unreviewed(session_id, after=4) == 1


# ---------------------------------------------------------------- database faults


def test_a_full_sqlite_database_refuses_the_verdict_clearly_and_keeps_the_saved_ones(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'full.sqlite3'}"
    with ReviewStore(url) as store:
        session_id = store.start_session(KIM, "m", "ct", [make_item(i) for i in range(3)])
        store.record_verdict(session_id, 0, "agree", note="saved before the disk filled")

        @event.listens_for(store._engine, "connect")  # a page limit stands in for a full disk
        def _full(dbapi_connection, _record) -> None:
            pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

        store._engine.dispose()
        with pytest.raises(ReviewDatabaseError, match="the verdict was NOT saved: database or disk is full"):
            store.record_verdict(session_id, 1, "unsure", note="x" * 4000)
    with ReviewStore(url) as reopened:
        assert [(i.verdict, i.note) for i in reopened.items(session_id)] == [
            ("agree", "saved before the disk filled"), (None, ""), (None, "")]


class _Relay:
    """A TCP relay to the PostgreSQL server that can be cut, as if the server had stopped."""

    def __init__(self, host: str, port: int) -> None:
        self.target, self.server = (host, port), socket.create_server(("127.0.0.1", 0))
        self.port, self.open = self.server.getsockname()[1], []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; the port then refuses
        self.server.close()
        for end in self.open:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


def test_a_stopped_postgresql_server_refuses_the_verdict_clearly(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the PostgreSQL case of the database-fault tests")
    url = make_url(db_url)
    relay = _Relay(url.host or "127.0.0.1", url.port or 5432)
    with ReviewStore(url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)) as store:
        session_id = store.start_session(KIM, "m", "ct", [make_item(0), make_item(1)])
        store.record_verdict(session_id, 0, "agree", note="saved while the server ran")
        relay.cut()
        with pytest.raises(ReviewDatabaseError, match="the verdict was NOT saved: .*(refused|closed|terminat)"):
            store.record_verdict(session_id, 1, "unsure", note="typed while the server was down")
    with ReviewStore(db_url) as direct:
        assert [(i.verdict, i.note) for i in direct.items(session_id)] == [
            ("agree", "saved while the server ran"), (None, "")]


def test_a_database_folder_that_cannot_be_created_gives_a_clear_message(monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")  # fails for root too, unlike a chmod
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("COVID_REVIEW_DB", str(blocker / "missing" / "reviews.sqlite3"))
    with pytest.raises(ReviewDatabaseError, match="cannot create the folder of the review database .*COVID_REVIEW_DB"):
        ReviewStore()


def test_a_pacs_item_keeps_the_uids_that_fetch_it_again_and_is_not_asked_for_as_an_upload(store: ReviewStore) -> None:
    from_pacs = dataclasses.replace(make_item(1, "covid", 0.7, name="DX series 1 image 1"),
                                    pacs_ref="1.2.840.1/1.2.840.2/1.2.840.3")
    scan = dataclasses.replace(make_item(2, "covid", 0.6, name="CT series 2"), kind="scan", pacs_ref="1.2.840.1/1.2.9")
    session_id = store.start_session(KIM, "m", "xray", [make_item(0), from_pacs, scan])
    assert [view.pacs_ref for view in store.items(session_id)] == [None, from_pacs.pacs_ref, scan.pacs_ref]
    assert [position for position, _, _ in store.image_refs(session_id)] == [0]
    for bad in ("DOE^JOHN", "1.2/../3", "1.2.3", "1.2/3/4/5"):
        with pytest.raises(ReviewError, match="PACS reference"):
            store.start_session(KIM, "m", "xray", [dataclasses.replace(make_item(0), pacs_ref=bad)])
