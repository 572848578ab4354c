"""Radiologist review sessions: each image's model prediction beside the reviewer's verdict.

A session is a batch of images a reviewer works through; every verdict is committed in its own transaction,
so a page reload, an app restart or a killed process loses nothing already recorded and the session resumes
where it stopped. The store keeps a SHA-256 of each image's bytes and its bare file name, never pixels,
directories or patient identifiers.

Access: a session belongs to the identity that started it (``Reviewer.key``: an OIDC account, or a reviewer
name protected by a passphrase whose salted scrypt hash is stored) and is reached through an unguessable
token, never through its row id; opening someone else's session raises ``NotYoursError`` unless the
reviewer is an admin. Verdicts carry a version: a write based on an older version (a stale second tab) is
refused with ``StaleVerdictError``, and every write, refused ones included, is kept in ``verdict_history``.

This module is what the store does (transactions, registering and signing in, sessions, items, verdicts); the
tables, the engine and upgrades of old databases are in `schema`, the values and errors callers use in `records`,
identities and secrets in `identity`, the lockout after failed sign-ins in `sign_in_guard`, input checks in
`checks`, the CSV and summary in `export`. Database faults
(disk full, server gone) raise ``ReviewDatabaseError`` saying what was not saved and why; nothing committed
before is touched.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import ParamSpec, TypeVar

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from covid_models.reviews.checks import checked_item, checked_reviewer_label, clean_text, required_text, session_token
from covid_models.reviews.export import session_csv, summarise, summary_counts
from covid_models.reviews.identity import (
    DECOY_HASH,
    Reviewer,
    admin_token_matches,
    checked_passphrase,
    hash_passphrase,
    name_identity,
    passphrase_matches,
)
from covid_models.reviews.names import admin_token_problem
from covid_models.reviews.records import (
    MAX_LABEL_CHARS,
    MAX_NAME_CHARS,
    MAX_NOTE_CHARS,
    MAX_OWNER_CHARS,
    MAX_REVIEWER_CHARS,
    SESSION_STATUSES,
    VERDICTS,
    ItemView,
    NewItem,
    NotYoursError,
    ReviewDatabaseError,
    ReviewError,
    ReviewSummary,
    SessionInfo,
    StaleVerdictError,
    VerdictEntry,
)
from covid_models.reviews.schema import (
    HistoryRow,
    ItemRow,
    ReviewerRow,
    SessionRow,
    VerdictRow,
    fault_reason,
    new_token,
    open_engine,
    utc_now,
)
from covid_models.reviews.sign_in_guard import count_failure, forget_failures, refuse_while_locked, subject

_P = ParamSpec("_P")
_R = TypeVar("_R")
# One answer for a wrong passphrase, whether the name is registered as typed or only as a look-alike spelling.
WRONG_PASSPHRASE = ("Not signed in: this name, or one that looks the same, belongs to a reviewer with another "
                    "passphrase. Check both; a new reviewer chooses a name of their own.")
UNKNOWN_NAME = "No reviewer is registered as {name!r}. Check the spelling, or register as a new reviewer."
NAME_TAKEN = ("The name {name!r} is taken, as typed or in a spelling that looks the same. If it is yours, sign in "
              "instead; a new reviewer chooses another name.")
WRONG_ADMIN_TOKEN = "The administrator token is wrong; not signed in."
logger = logging.getLogger(__name__)


def _database_errors(action: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Turns a database fault inside a store call into ReviewDatabaseError("<action>: <reason>")."""

    def wrap(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(*args, **kwargs)
            except (OperationalError, InterfaceError) as exc:
                raise ReviewDatabaseError(f"{action}: {fault_reason(exc)}") from None

        return call

    return wrap


class ReviewStore:
    """Review sessions in one database; each public call is one transaction, rolled back if it fails.

    ``display_url`` is the database URL with any password hidden, fit to show in the app.
    """

    def __init__(self, url: str | None = None) -> None:
        self._engine, self.display_url = open_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    # -- lifecycle

    def close(self) -> None:
        """Release the connections (the data is already committed)."""
        self._engine.dispose()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- who

    @_database_errors("registering failed")
    def register(self, name: str, passphrase: str, *, client: str | None = None) -> Reviewer:
        """A new reviewer `name` whose sessions `passphrase` protects; signing in never registers, so a mistyped name
        is refused rather than given an empty account.

        A name taken as typed or by a look-alike spelling (see `names`) is refused with NAME_TAKEN, which says no
        more about the other reviewer, and counted against `client` like a failed sign-in (guessing which names
        exist is throttled per address). The passphrase is checked as at sign-in and hashed with one scrypt. The new
        reviewer gets no session: sessions without an owner wait for an administrator (``assign_session``).
        """
        name = required_text(name, "reviewer name", MAX_REVIEWER_CHARS)
        passphrase = checked_passphrase(passphrase)
        key, shape = name_identity(name)
        counts = [subject("client", client)] if client else []
        with self._transaction() as session:
            refuse_while_locked(session, counts)
        passphrase_hash = hash_passphrase(passphrase)
        try:
            with self._transaction() as session:
                taken = bool(session.scalar(select(func.count()).where(
                    or_(ReviewerRow.key == key, ReviewerRow.skeleton == shape))))
                if not taken:
                    session.add(ReviewerRow(key=key, name=name, skeleton=shape, passphrase_hash=passphrase_hash))
        except IntegrityError:  # the same key inserted by a concurrent registration
            taken = True
        if taken:
            self._failed(counts, f"registration refused: reviewer name {name!r} or a look-alike is taken", client)
            raise ReviewError(NAME_TAKEN.format(name=name))
        logger.info("reviewer %r registered from client %s", key, client or "unknown")
        return Reviewer(key=key, name=name)

    @_database_errors("signing in failed")
    def sign_in(self, name: str, passphrase: str, *, client: str | None = None) -> Reviewer:
        """The reviewer `name` if `passphrase` is theirs (see `register`).

        A blank or short passphrase is refused before the name is looked up; a wrong one, for the name or for a
        look-alike of it, gets WRONG_PASSPHRASE, and a name nobody registered UNKNOWN_NAME; each answer costs one
        scrypt either way (an unknown name's is checked against `identity.DECOY_HASH`). Failures, unknown names
        included, are counted per name and per `client` (its network address, when known) and, past a few,
        refused with SignInThrottled until the lockout ends (`sign_in_guard`); each is logged, without the
        passphrase.
        """
        name = required_text(name, "reviewer name", MAX_REVIEWER_CHARS)
        passphrase = checked_passphrase(passphrase)
        key, shape = name_identity(name)
        counts = [subject("name", shape)] + ([subject("client", client)] if client else [])
        with self._transaction() as session:
            refuse_while_locked(session, counts)
            candidates = session.scalars(select(ReviewerRow).where(
                or_(ReviewerRow.key == key, ReviewerRow.skeleton == shape)).order_by(ReviewerRow.id)).all()
        known = next((row for row in candidates if row.key == key), candidates[0] if candidates else None)
        matches = passphrase_matches(passphrase, DECOY_HASH if known is None else known.passphrase_hash)
        if known is not None and matches:
            with self._transaction() as session:
                forget_failures(session, counts[0])
            return Reviewer(key=known.key, name=known.name)
        if known is None:
            self._failed(counts, f"sign-in refused: no reviewer is registered as {name!r}", client)
            raise ReviewError(UNKNOWN_NAME.format(name=name))
        self._failed(counts, f"sign-in refused: wrong passphrase for reviewer name {name!r}", client)
        raise ReviewError(WRONG_PASSPHRASE)

    @_database_errors("signing in as administrator failed")
    def sign_in_as_admin(self, reviewer: Reviewer, typed: str, configured: str | None, *,
                         client: str | None = None) -> Reviewer:
        """`reviewer` with administrator rights when `typed` is the configured administrator token.

        A configured token too weak to be used (see `names.admin_token_problem`) turns administrator
        sign-in off (ReviewError saying why, never the token). Wrong tokens are counted per reviewer and per
        `client` like passphrases (SignInThrottled past a few) and logged, without what was typed.
        """
        if not configured:
            raise ReviewError("Administrator sign-in is off: no administrator token is configured.")
        problem = admin_token_problem(configured)
        if problem is not None:
            raise ReviewError(f"Administrator sign-in is off: the configured token is refused ({problem}).")
        counts = [subject("admin", reviewer.key)] + ([subject("admin-client", client)] if client else [])
        with self._transaction() as session:
            refuse_while_locked(session, counts)
        if not isinstance(typed, str) or not admin_token_matches(typed, configured):
            self._failed(counts, f"administrator sign-in refused: wrong token typed by reviewer {reviewer.key!r}",
                         client)
            raise ReviewError(WRONG_ADMIN_TOKEN)
        with self._transaction() as session:
            forget_failures(session, counts[0])
        return dataclasses.replace(reviewer, admin=True)

    def _failed(self, counts: list[str], what: str, client: str | None) -> None:
        """Count one failure against each subject (committed before the caller refuses) and log it."""
        with self._transaction() as session:
            counted = count_failure(session, counts)
        logger.warning("%s from client %s (%s)", what, client or "unknown", counted or "no address to count")

    @_database_errors("the reviewer could not be looked up")
    def registered_reviewer(self, name: str) -> Reviewer:
        """The reviewer registered under `name` (as typed, else its only look-alike): for an administrator assigning
        a session, or a script naming its owner. ReviewError when no such reviewer is registered."""
        key, shape = name_identity(required_text(name, "reviewer name", MAX_REVIEWER_CHARS))
        with self._transaction() as session:
            rows = session.scalars(select(ReviewerRow).where(
                or_(ReviewerRow.key == key, ReviewerRow.skeleton == shape)).order_by(ReviewerRow.id)).all()
        exact = [row for row in rows if row.key == key] or rows
        if len(exact) != 1:
            raise ReviewError(f"no reviewer is registered under the name {name!r}" if not exact else
                              f"several reviewers have names that look like {name!r}: type the name exactly")
        return Reviewer(key=exact[0].key, name=exact[0].name)

    @_database_errors("the session was NOT assigned")
    def assign_session(self, session_id: int, owner: Reviewer, by: Reviewer) -> SessionInfo:
        """Give a session without an owner (from an earlier version) to `owner`; only an administrator may.

        NotYoursError for anyone else; ReviewError when the session already has an owner (it is never moved)."""
        if not by.admin:
            raise NotYoursError("Only an administrator can give a session without an owner to a reviewer.")
        owner_key = required_text(owner.key, "owner", MAX_OWNER_CHARS)
        with self._transaction() as session:
            row = self._session_row(session, session_id)
            if row.owner is not None:
                raise ReviewError("This session already belongs to a reviewer; it is not moved.")
            row.owner = owner_key
            logger.info("session %d assigned to %r by administrator %r", row.id, owner_key, by.key)
            return row.as_info()

    # -- writing

    @_database_errors("the session was NOT created")
    def start_session(self, reviewer: Reviewer, model_name: str, modality: str, items: Sequence[NewItem],
                      *, blinded: bool = False) -> int:
        """Create a session over `items` (positions 0..n-1 in the given order), owned by `reviewer`; returns its id.

        Every session has an owner: a script names one too (``registered_reviewer``, or ``Reviewer.from_oidc``).
        """
        if not isinstance(reviewer, Reviewer):
            raise ReviewError(f"a review session needs an owner (a Reviewer), not {type(reviewer).__name__}: a "
                              "session without one could be opened by nobody but an administrator")
        owner = required_text(reviewer.key, "owner", MAX_OWNER_CHARS)
        name = required_text(reviewer.name, "reviewer name", MAX_REVIEWER_CHARS)
        model_name = required_text(model_name, "model name", MAX_NAME_CHARS)
        modality = required_text(modality, "modality", MAX_LABEL_CHARS).lower()
        if not items:
            raise ReviewError("a review session needs at least one image")
        rows = [checked_item(item, position) for position, item in enumerate(items)]
        with self._transaction() as session:
            row = SessionRow(token=new_token(), owner=owner, reviewer=name, model_name=model_name,
                              modality=modality, blinded=bool(blinded), items=rows, n_items=len(rows), n_reviewed=0)
            session.add(row)
            session.flush()
            return row.id

    @_database_errors("the verdict was NOT saved")
    def record_verdict(
        self,
        session_id: int,
        position: int,
        verdict: str,
        note: str = "",
        reviewer_label: str | None = None,
        *,
        expected_version: int | None = None,
        by: str | None = None,
    ) -> ItemView:
        """Record (or replace) the verdict on one item, committed at once; returns the item as stored.

        `expected_version` is the item's ``version`` the caller showed; when the stored one differs, the write
        is refused with StaleVerdictError (and kept in the history). None skips the check (scripts).
        """
        if verdict not in VERDICTS:
            raise ReviewError(f"unknown verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ReviewError(f"a position is an integer, got {position!r}")
        note = clean_text(note, "note", MAX_NOTE_CHARS, multiline=True)
        with self._transaction() as session:
            parent = self._session_row(session, session_id)
            item = session.scalars(
                select(ItemRow)
                .where(ItemRow.session_id == session_id, ItemRow.position == position)
                .with_for_update()
            ).one_or_none()
            if item is None:
                n_items = session.scalar(select(func.count()).where(ItemRow.session_id == session_id))
                raise ReviewError(
                    f"session {session_id} has no image at position {position} (it has {n_items}: 0..{n_items - 1})"
                )
            label = checked_reviewer_label(verdict, item.predicted_label, reviewer_label)
            now = utc_now()
            current = item.verdict.version if item.verdict is not None else 0
            if expected_version is not None and expected_version != current:
                stale = StaleVerdictError(item.as_view(item.verdict),
                                          VerdictEntry(verdict, label, note, current, now, by, saved=False))
                session.add(HistoryRow(item_id=item.id, version=current, verdict=verdict, reviewer_label=label,
                                        note=note, decided_at=now, by=by, saved=False))
            else:
                stale = None
                if item.verdict is None:  # an atomic increment: concurrent writers never lose a count
                    parent.n_reviewed = SessionRow.n_reviewed + 1
                self._write_verdict(session, item, verdict, label, note, now, current, by)
                parent.updated_at = now
                session.flush()
                stored = item.as_view(item.verdict)
        if stale is not None:  # raised after the commit, which kept the refused write in the history
            raise stale
        return stored

    @staticmethod
    def _write_verdict(session: Session, item: ItemRow, verdict: str, label: str | None, note: str,
                       now: datetime, current: int, by: str | None) -> None:
        """The verdict row at version current + 1, and its copy in the history."""
        if item.verdict is None:
            item.verdict = VerdictRow(verdict=verdict, reviewer_label=label, note=note, decided_at=now, version=1)
        else:
            item.verdict.verdict = verdict
            item.verdict.reviewer_label = label
            item.verdict.note = note
            item.verdict.decided_at = now
            item.verdict.version = current + 1
        session.add(HistoryRow(item_id=item.id, version=current + 1, verdict=verdict, reviewer_label=label,
                                note=note, decided_at=now, by=by, saved=True))

    def record_reading(self, session_id: int, position: int, label: str, note: str = "", *,
                       expected_version: int | None = None, by: str | None = None) -> ItemView:
        """A blinded reader's own label: stored as 'agree' when it is the model's, else 'disagree' with it."""
        model_label = self.item(session_id, position).predicted_label
        verdict = "agree" if label == model_label else "disagree"
        return self.record_verdict(session_id, position, verdict, note, label, expected_version=expected_version,
                                   by=by)

    @_database_errors("the session status was NOT changed")
    def set_status(self, session_id: int, status: str) -> None:
        """Mark a session 'completed' (or 'open' again); verdicts can still be amended either way."""
        if status not in SESSION_STATUSES:
            raise ReviewError(f"unknown session status {status!r}: expected one of {', '.join(SESSION_STATUSES)}")
        with self._transaction() as session:
            row = self._session_row(session, session_id)
            row.status = status
            row.updated_at = utc_now()

    # -- reading

    @_database_errors("the sessions could not be read")
    def sessions(self, reviewer: Reviewer | None = None) -> list[SessionInfo]:
        """Sessions, most recently active first: only those `reviewer` owns (every one for an admin or for
        None, which only scripts pass)."""
        query = select(SessionRow).order_by(SessionRow.updated_at.desc(), SessionRow.id.desc())
        if reviewer is not None and not reviewer.admin:
            query = query.where(SessionRow.owner == reviewer.key)
        with self._transaction() as session:
            return [row.as_info() for row in session.scalars(query)]

    @_database_errors("the session could not be read")
    def open_session(self, token: str, reviewer: Reviewer) -> SessionInfo:
        """The session behind a link, if `reviewer` may open it: NotYoursError when another reviewer owns it
        (or nobody yet) and `reviewer` is no admin; ReviewError for a malformed or unknown token."""
        token = session_token(token)
        with self._transaction() as session:
            row = session.scalars(select(SessionRow).where(SessionRow.token == token)).one_or_none()
            if row is None:
                raise ReviewError("No review session has this link: it may have been deleted, or the link is wrong.")
            info = row.as_info()
        if not reviewer.admin and info.owner != reviewer.key:
            raise NotYoursError("This review session belongs to another reviewer. Sign in as its reviewer to open "
                                "it, or ask an administrator for an export.")
        return info

    @_database_errors("the session could not be read")
    def session_info(self, session_id: int) -> SessionInfo:
        """One session's header and progress (counting that session's items only)."""
        with self._transaction() as session:
            return self._session_row(session, session_id).as_info()

    @_database_errors("the image could not be read")
    def item(self, session_id: int, position: int) -> ItemView:
        """One item with its verdict: what the page shows, read alone."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            row = session.execute(
                select(ItemRow, VerdictRow)
                .outerjoin(VerdictRow, VerdictRow.item_id == ItemRow.id)
                .where(ItemRow.session_id == session_id, ItemRow.position == position)
            ).one_or_none()
            if row is None:
                raise ReviewError(f"session {session_id} has no image at position {position}")
            item, verdict = row
            return item.as_view(verdict)

    @_database_errors("the session could not be read")
    def items(self, session_id: int) -> list[ItemView]:
        """The session's items in order, each with its verdict if it has one."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            rows = session.execute(
                select(ItemRow, VerdictRow)
                .outerjoin(VerdictRow, VerdictRow.item_id == ItemRow.id)
                .where(ItemRow.session_id == session_id)
                .order_by(ItemRow.position)
            )
            return [item.as_view(verdict) for item, verdict in rows]

    @_database_errors("the session could not be read")
    def image_refs(self, session_id: int) -> list[tuple[int, str, str]]:
        """(position, image hash, file name) of every uploaded image item (scans and PACS images are fetched
        otherwise): to find or ask for the images, without verdicts."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            return [tuple(row) for row in session.execute(  # type: ignore[misc]
                select(ItemRow.position, ItemRow.image_hash, ItemRow.display_name)
                .where(ItemRow.session_id == session_id, ItemRow.kind == "image", ItemRow.pacs_ref.is_(None))
                .order_by(ItemRow.position))]

    @_database_errors("the verdict history could not be read")
    def history(self, session_id: int, position: int) -> list[VerdictEntry]:
        """Every write on one item, oldest first, refused stale writes included."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            rows = session.scalars(
                select(HistoryRow).join(ItemRow, ItemRow.id == HistoryRow.item_id)
                .where(ItemRow.session_id == session_id, ItemRow.position == position)
                .order_by(HistoryRow.id))
            return [VerdictEntry(r.verdict, r.reviewer_label, r.note, r.version, r.decided_at, r.by, r.saved)
                    for r in rows]

    @_database_errors("the session could not be read")
    def next_unreviewed(self, session_id: int, after: int = -1) -> int | None:
        """The first position after `after` without a verdict (where to resume), else the first one anywhere;
        None when all are reviewed."""
        def first(session: Session, start: int) -> int | None:  # walks the (session, position) index, stops early
            return session.scalar(
                select(ItemRow.position)
                .outerjoin(VerdictRow, VerdictRow.item_id == ItemRow.id)
                .where(ItemRow.session_id == session_id, VerdictRow.id.is_(None), ItemRow.position > start)
                .order_by(ItemRow.position).limit(1)
            )

        with self._transaction() as session:
            self._session_row(session, session_id)
            found = first(session, after)
            return found if found is not None or after < 0 else first(session, -1)

    @_database_errors("the export could not be read")
    def export_csv(self, session_id: int) -> str:
        """The session as CSV, one row per item (verdict columns empty while unreviewed); see `export.session_csv`."""
        with self._transaction() as session:
            return session_csv(session, self._session_row(session, session_id))

    @_database_errors("the summary could not be read")
    def summary(self, session_id: int) -> ReviewSummary:
        """Agreement, Cohen's kappa and the confusion table between model and reviewer, from SQL counts."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            counts = summary_counts(session, session_id)
        return summarise(session_id, *counts)

    # -- helpers

    @staticmethod
    def _session_row(session: Session, session_id: int) -> SessionRow:
        if isinstance(session_id, bool) or not isinstance(session_id, int):
            raise ReviewError(f"a session id is an integer, got {session_id!r}")
        row = session.get(SessionRow, session_id)
        if row is None:
            raise ReviewError(f"no review session {session_id}")
        return row
