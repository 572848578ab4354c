# ruff: noqa: F811 (the database fixtures are test_reviews.py's, imported by name)
"""Signing in to the review store cannot be guessed at speed, names cannot be impersonated by look-alikes, and
every session has an owner; on SQLite and on PostgreSQL (when TEST_POSTGRES_URL names a server)."""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine, inspect
from test_reviews import all_stored_values, db_url, make_item, open_store, store  # noqa: F401

import covid_models.reviews.sign_in_guard
from covid_models.reviews.identity import Reviewer, hash_passphrase
from covid_models.reviews.names import admin_token_problem, name_key, skeleton
from covid_models.reviews.records import ReviewError, SignInThrottled
from covid_models.reviews.schema import database_url
from covid_models.reviews.sign_in_guard import FREE_FAILURES, MAX_LOCK_S
from covid_models.reviews.store import NAME_TAKEN, UNKNOWN_NAME, WRONG_ADMIN_TOKEN, WRONG_PASSPHRASE, ReviewStore

ADMIN_TOKEN = "Zq7-ward-Fx2m-Lo9p-Ts4k"
ATTACKER, COLLEAGUE = "203.0.113.66", "198.51.100.7"


@pytest.fixture
def scrypt_runs(monkeypatch) -> list[int]:
    """How many times scrypt ran (the key derivation every answer about a known or unknown name must cost)."""
    runs: list[int] = []
    real = hashlib.scrypt

    def counted(*args, **kwargs):
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    return runs


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> Callable[[float], None]:
    """The lockout's clock stands still at the test's start, however slow the machine (lockouts are stored times,
    compared with it); `clock(seconds)` sets it to that many seconds after the start."""
    start = covid_models.reviews.sign_in_guard.utc_now()

    def at(seconds: float) -> None:
        monkeypatch.setattr(covid_models.reviews.sign_in_guard, "utc_now", lambda: start + timedelta(seconds=seconds))

    at(0)
    return at


def fail(store: ReviewStore, name: str, times: int, client: str | None = ATTACKER) -> None:
    for attempt in range(times):
        with pytest.raises(ReviewError) as refused:
            store.sign_in(name, f"guess number {attempt}", client=client)
        assert not isinstance(refused.value, SignInThrottled), f"locked after {attempt} failures"


# ---------------------------------------------------------------- backoff


def test_wrong_passphrases_for_a_name_lock_it_for_a_doubling_time_stated_in_the_refusal(
        store: ReviewStore, clock, scrypt_runs) -> None:
    ada = store.register("Dr Ada", "ada's long passphrase")
    fail(store, "Dr Ada", FREE_FAILURES["name"] + 1, client=None)
    scrypt_runs.clear()
    with pytest.raises(SignInThrottled, match=r"Too many failed sign-ins for this name: try again in 2 s") as locked:
        store.sign_in("Dr Ada", "ada's long passphrase")  # even the right passphrase waits: nothing is checked
    assert locked.value.retry_after == 2 and scrypt_runs == []
    clock(3)
    fail(store, "Dr Ada", 1, client=None)
    with pytest.raises(SignInThrottled, match="try again in 4 s"):
        store.sign_in("Dr Ada", "ada's long passphrase")
    clock(8)
    assert store.sign_in("Dr Ada", "ada's long passphrase") == ada  # the lockout is over, and the count cleared
    fail(store, "Dr Ada", FREE_FAILURES["name"], client=None)


def test_the_lockout_is_capped_and_forgotten_an_hour_after_the_last_failure(store: ReviewStore, clock) -> None:
    store.register("Dr Ada", "ada's long passphrase")
    last = 0
    for step in range(FREE_FAILURES["name"] + 12):  # each try after the previous lockout ended
        clock(last := step * (MAX_LOCK_S + 1))
        fail(store, "Dr Ada", 1, client=None)
    with pytest.raises(SignInThrottled) as locked:
        store.sign_in("Dr Ada", "ada's long passphrase")
    assert locked.value.retry_after == MAX_LOCK_S
    clock(last + 3601)
    fail(store, "Dr Ada", FREE_FAILURES["name"], client=None)  # counting starts again


def test_an_attacker_locking_one_name_never_blocks_other_names_or_other_addresses(store: ReviewStore) -> None:
    store.register("Dr Ada", "ada's long passphrase")
    bob = store.register("Dr Bob", "bob's long passphrase", client=COLLEAGUE)
    fail(store, "Dr Ada", FREE_FAILURES["name"] + 1)
    assert store.sign_in("Dr Bob", "bob's long passphrase", client=COLLEAGUE) == bob
    assert store.sign_in("Dr Bob", "bob's long passphrase", client=ATTACKER) == bob  # the address is not locked yet
    with pytest.raises(SignInThrottled, match="for this name"):
        store.sign_in("dr  ADA", "ada's long passphrase", client=COLLEAGUE)  # the name, however spelled, is


def test_an_address_guessing_many_names_is_locked_while_other_addresses_sign_in(store: ReviewStore) -> None:
    names = [f"Dr Number {index}" for index in range(FREE_FAILURES["client"] + 1)]
    for name in names:
        store.register(name, f"{name}'s passphrase", client=COLLEAGUE)
    for name in names:
        fail(store, name, 1)
    with pytest.raises(SignInThrottled, match="from this address: try again in 2 s"):
        store.sign_in("Dr Number 0", "Dr Number 0's passphrase", client=ATTACKER)
    with pytest.raises(SignInThrottled, match="from this address: try again in 2 s"):
        store.register("Dr Someone New", "a fresh long passphrase", client=ATTACKER)
    assert store.register("Dr Someone New", "a fresh long passphrase", client=COLLEAGUE).name == "Dr Someone New"
    assert store.sign_in("Dr Number 0", "Dr Number 0's passphrase", client=COLLEAGUE).name == "Dr Number 0"


def test_a_lockout_is_seen_by_every_server_process(open_store: Callable[[], ReviewStore]) -> None:
    first, second = open_store(), open_store()
    first.register("Dr Ada", "ada's long passphrase")
    fail(first, "Dr Ada", FREE_FAILURES["name"] + 1)
    with pytest.raises(SignInThrottled):
        second.sign_in("Dr Ada", "ada's long passphrase", client=COLLEAGUE)


def test_each_failed_sign_in_is_logged_with_name_and_address_but_never_the_secret(store: ReviewStore, caplog) -> None:
    chief = store.register("Dr Chief", "chief's long passphrase")
    with caplog.at_level(logging.WARNING, logger="covid_models.reviews.store"):
        fail(store, "Dr Chief", 2)
        with pytest.raises(ReviewError, match=WRONG_ADMIN_TOKEN):
            store.sign_in_as_admin(chief, "a-typed-token-guess-123", ADMIN_TOKEN, client=ATTACKER)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert all("'Dr Chief'" in line or "'name:dr chief'" in line for line in lines)
    assert all(ATTACKER in line for line in lines)
    assert "name failure 2" in lines[1]
    for secret in ("guess number", "a-typed-token-guess-123", ADMIN_TOKEN, "chief's long passphrase"):
        assert secret not in caplog.text


# ---------------------------------------------------------------- administrator tokens


@pytest.mark.parametrize(("token", "why"), [
    ("admin-2024", "10 characters long; an administrator token has at least 16"),
    ("   short   ", "5 characters long"),
    ("PasswordPassword", "one of the tokens people commonly choose"),
    ("administrator123", "one of the tokens people commonly choose"),
    ("abababababababababab", "fewer than 6 distinct characters"),
])
def test_a_weak_administrator_token_is_refused_and_turns_administrator_sign_in_off(
        store: ReviewStore, token: str, why: str) -> None:
    assert why in admin_token_problem(token)
    ada = store.register("Dr Ada", "ada's long passphrase")
    with pytest.raises(ReviewError, match="Administrator sign-in is off: the configured token is refused") as off:
        store.sign_in_as_admin(ada, token, token)
    assert token.strip() not in str(off.value)


def test_a_strong_administrator_token_grants_the_right_and_wrong_ones_are_throttled(store: ReviewStore) -> None:
    assert admin_token_problem(ADMIN_TOKEN) is None
    ada = store.register("Dr Ada", "ada's long passphrase")
    bob = store.register("Dr Bob", "bob's long passphrase")
    assert store.sign_in_as_admin(ada, ADMIN_TOKEN, ADMIN_TOKEN, client=COLLEAGUE).admin
    for attempt in range(FREE_FAILURES["admin"] + 1):
        with pytest.raises(ReviewError, match=WRONG_ADMIN_TOKEN):
            store.sign_in_as_admin(bob, f"guess-{attempt}", ADMIN_TOKEN, client=ATTACKER)
    with pytest.raises(SignInThrottled, match="administrator token by this reviewer: try again in"):
        store.sign_in_as_admin(bob, ADMIN_TOKEN, ADMIN_TOKEN, client=ATTACKER)
    assert store.sign_in_as_admin(ada, ADMIN_TOKEN, ADMIN_TOKEN, client=COLLEAGUE).admin  # Ada is not blocked


# ---------------------------------------------------------------- names and passphrases


def test_a_blank_or_short_passphrase_is_refused_alike_for_known_and_unknown_names(store: ReviewStore,
                                                                                  scrypt_runs) -> None:
    store.register("Dr Ada", "ada's long passphrase")
    scrypt_runs.clear()
    for passphrase, message in ((" " * 8, "enter your passphrase"), ("\t \n", "enter your passphrase"),
                                ("  short   ", "a passphrase has at least 8 characters")):
        answers = []
        for name in ("Dr Ada", "Dr Unknown"):
            with pytest.raises(ReviewError) as refused:
                store.sign_in(name, passphrase)
            answers.append(str(refused.value))
        assert answers[0] == answers[1] and message in answers[0]
    assert scrypt_runs == []
    with pytest.raises(ReviewError):
        store.registered_reviewer("Dr Unknown")


def test_a_wrong_passphrase_answers_alike_for_a_name_and_its_look_alike_at_the_same_cost(
        store: ReviewStore, scrypt_runs, db_url: str) -> None:
    store.register("Dr Ada", "ada's long passphrase")
    assert scrypt_runs == [1]  # registering costs one derivation...
    answers = []
    for name in ("Dr Ada", "Dr \u0410da", "dr \u0430d\u0430"):  # Latin; Cyrillic capital A; Cyrillic small a
        scrypt_runs.clear()
        with pytest.raises(ReviewError) as refused:
            store.sign_in(name, "an impostor's passphrase")
        answers.append(str(refused.value))
        assert scrypt_runs == [1]  # ...and so does every answer about a known name or its look-alike
    assert answers == [WRONG_PASSPHRASE] * 3
    assert [row[2] for row in all_stored_values(db_url)["reviewers"]] == ["Dr Ada"]


def test_a_mistyped_name_is_refused_with_a_hint_and_registers_nobody(store: ReviewStore, db_url: str) -> None:
    ada = store.register("John Smith", "john's long passphrase")
    session_id = store.start_session(ada, "m", "xray", [make_item(0)])
    with pytest.raises(ReviewError) as refused:
        store.sign_in("Jonh Smith", "john's long passphrase")
    assert str(refused.value) == UNKNOWN_NAME.format(name="Jonh Smith")
    assert "register as a new reviewer" in str(refused.value)
    assert [row[2] for row in all_stored_values(db_url)["reviewers"]] == ["John Smith"]
    assert [s.id for s in store.sessions(store.sign_in("john smith", "john's long passphrase"))] == [session_id]


def test_an_unknown_name_costs_one_scrypt_like_a_wrong_passphrase(store: ReviewStore, scrypt_runs) -> None:
    store.register("Dr Ada", "ada's long passphrase")
    for name, message in (("Dr Ada", WRONG_PASSPHRASE), ("Dr Nobody", UNKNOWN_NAME.format(name="Dr Nobody"))):
        scrypt_runs.clear()
        with pytest.raises(ReviewError, match=re.escape(message)):
            store.sign_in(name, "an impostor's passphrase")
        assert scrypt_runs == [1], name


def test_unknown_names_count_towards_the_lockout_per_name_and_per_address(store: ReviewStore, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="covid_models.reviews.store"):
        fail(store, "Dr Nobody", FREE_FAILURES["name"])
    assert "no reviewer is registered as 'Dr Nobody'" in caplog.records[-1].getMessage()
    assert "name failure 3; client failure 3" in caplog.records[-1].getMessage()
    assert "guess number" not in caplog.text
    with pytest.raises(ReviewError):
        store.sign_in("Dr N0body", "guess number 4", client=COLLEAGUE)  # a look-alike spelling shares the count
    with pytest.raises(SignInThrottled, match="for this name"):
        store.sign_in("Dr Nobody", "guess number 5", client=COLLEAGUE)
    names = [f"Dr Unknown {index}" for index in range(FREE_FAILURES["client"] - FREE_FAILURES["name"] + 1)]
    for name in names:
        fail(store, name, 1)
    with pytest.raises(SignInThrottled, match="from this address"):
        store.sign_in("Dr Yet Another", "a guess at a name", client=ATTACKER)


def test_registering_a_name_then_signing_in_with_it_is_one_reviewer(store: ReviewStore, db_url: str) -> None:
    ada = store.register("Dr Ada", "ada's long passphrase", client=COLLEAGUE)
    assert ada == Reviewer("name:dr ada", "Dr Ada") and not ada.admin
    assert store.sign_in("DR ADA", "ada's long passphrase", client=COLLEAGUE) == ada
    assert store.registered_reviewer("Dr Ada") == ada
    assert store.sessions(ada) == []  # registering claims no session
    (stored,) = all_stored_values(db_url)["reviewers"]
    assert "ada's long passphrase" not in repr(stored)


@pytest.mark.parametrize("taken", ["Dr Ada", "DR ADA", "Dr \u0410da", "Dr Ad\u00e1"])
def test_registering_a_taken_name_or_a_look_alike_of_one_is_refused_and_counted_per_address(
        store: ReviewStore, db_url: str, taken: str, caplog) -> None:
    ada = store.register("Dr Ada", "ada's long passphrase")
    with caplog.at_level(logging.WARNING, logger="covid_models.reviews.store"), pytest.raises(ReviewError) as refused:
        store.register(taken, "an impostor's passphrase", client=ATTACKER)
    assert str(refused.value) == NAME_TAKEN.format(name=taken)
    assert "Dr Ada" not in str(refused.value).replace(taken, "")  # nothing about the other reviewer but the name
    assert "sign in instead" in str(refused.value)
    assert "client failure 1" in caplog.text and "impostor" not in caplog.text
    assert [row[2] for row in all_stored_values(db_url)["reviewers"]] == ["Dr Ada"]
    assert store.sign_in("Dr Ada", "ada's long passphrase") == ada  # the owner's passphrase is untouched
    with pytest.raises(ReviewError, match="belongs to a reviewer with another passphrase"):
        store.sign_in(taken, "an impostor's passphrase")


def test_registering_refuses_short_passphrases_before_looking_at_the_name(store: ReviewStore, scrypt_runs) -> None:
    store.register("Dr Ada", "ada's long passphrase")
    scrypt_runs.clear()
    for name in ("Dr Ada", "Dr Free"):
        with pytest.raises(ReviewError, match="a passphrase has at least 8 characters"):
            store.register(name, "short")
        with pytest.raises(ReviewError, match="enter your passphrase"):
            store.register(name, " " * 8)
    assert scrypt_runs == []


@pytest.mark.parametrize("spelling", ["DR ADA", "Dr  Ada", "\uff24\uff52 \uff21\uff44\uff41", "Dr A\u200bda"])
def test_one_name_however_typed_is_one_reviewer(store: ReviewStore, spelling: str) -> None:
    ada = store.register("Dr Ada", "ada's long passphrase")
    assert store.sign_in(spelling, "ada's long passphrase") == ada


def test_a_name_that_normalising_makes_too_long_to_store_is_refused_clearly(store: ReviewStore, db_url: str) -> None:
    with pytest.raises(ReviewError, match="too long once normalised"):
        store.register("\ufdfa" * 200, "a long enough passphrase")  # one character, 18 letters under NFKC
    assert all_stored_values(db_url)["reviewers"] == []


def test_the_skeleton_maps_look_alikes_of_other_scripts_and_accents_to_one_shape() -> None:
    assert skeleton("Dr \u0410da") == skeleton("dr ada") == skeleton("Dr Ad\u00e1") == "dr ada"
    assert skeleton("\u041dill") == skeleton("Hill")  # Cyrillic capital En
    assert skeleton("Dr \u039fscar") == skeleton("Dr 0scar") == skeleton("Dr Oscar")  # Greek Omicron, zero
    assert skeleton("Dr Kern") == skeleton("Dr Kem")
    assert skeleton("Dr Ada") != skeleton("Dr Eda")
    assert name_key("\uff24\uff52 \uff21\uff44\uff41") == "dr ada"


def test_sessions_are_never_given_to_a_look_alike(store: ReviewStore) -> None:
    ada = store.register("Dr Ada", "ada's long passphrase")
    session_id = store.start_session(ada, "m", "xray", [make_item(0)])
    with pytest.raises(ReviewError):
        store.sign_in("Dr \u0410da", "the look-alike's passphrase")
    assert store.registered_reviewer("Dr \u0410da") == ada  # an administrator typing it finds Ada
    assert [s.id for s in store.sessions(ada)] == [session_id]


def test_a_database_from_before_name_skeletons_is_migrated_in_place(db_url: str) -> None:
    """Reviewers registered by the previous version (no skeleton column, no failure table) keep signing in, and a
    look-alike of them is refused from the first start."""
    metadata = MetaData()
    reviewers = Table("reviewers", metadata, Column("id", Integer, primary_key=True),
                      Column("key", String(320), unique=True), Column("name", String(200)),
                      Column("passphrase_hash", String(256)), Column("created_at", DateTime(timezone=True)))
    engine = create_engine(database_url(db_url))
    try:
        with engine.begin() as connection:
            metadata.create_all(connection)
            connection.execute(reviewers.insert(), [{"key": "name:dr ada", "name": "Dr Ada",
                                                     "passphrase_hash": hash_passphrase("ada's long passphrase")}])
    finally:
        engine.dispose()
    with ReviewStore(db_url) as migrated:
        assert migrated.sign_in("dr ada", "ada's long passphrase") == Reviewer("name:dr ada", "Dr Ada")
        with pytest.raises(ReviewError, match="belongs to a reviewer with another passphrase"):
            migrated.sign_in("Dr \u0410da", "the look-alike's passphrase")
        fail(migrated, "Dr Ada", FREE_FAILURES["name"])  # the look-alike's failure counted against the name too
        with pytest.raises(SignInThrottled):
            migrated.sign_in("Dr Ada", "ada's long passphrase")
    engine = create_engine(database_url(db_url))
    try:
        assert "skeleton" in {c["name"] for c in inspect(engine).get_columns("reviewers")}
        assert "ix_reviewers_skeleton" in {index["name"] for index in inspect(engine).get_indexes("reviewers")}
    finally:
        engine.dispose()
    with ReviewStore(db_url) as reopened:  # a second start migrates nothing twice
        assert reopened.registered_reviewer("DR ADA").key == "name:dr ada"
