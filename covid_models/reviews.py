"""Radiologist review sessions: each image's model prediction beside the reviewer's verdict.

A session is a batch of images a named reviewer works through; every verdict is committed in its own
transaction, so a page reload, an app restart or a killed process loses nothing already recorded and the
session resumes where it stopped. The store keeps a SHA-256 of each image's bytes and its bare file name,
never pixels, directories or patient identifiers.

Storage is SQLAlchemy: an SQLite file by default, PostgreSQL when a URL (or ``DATABASE_URL``) names one.
SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed verdict survives the process being killed
(the WAL is in the OS cache), though not a power loss of the machine; a writer that finds the file locked by
another process waits (``busy_timeout``) instead of failing.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Integer,
    Select,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from covid_models.metrics import cohen_kappa

if TYPE_CHECKING:
    import pandas as pd

VERDICTS = ("agree", "disagree", "unsure")
SESSION_STATUSES = ("open", "completed")
MAX_REVIEWER_CHARS = 200
MAX_NOTE_CHARS = 5000
MAX_NAME_CHARS = 255
MAX_LABEL_CHARS = 64
SQLITE_BUSY_TIMEOUT_MS = 15_000
DEFAULT_DB_PATH = Path("~/.local/share/covid-screening/reviews.sqlite3")
CSV_COLUMNS = (
    "session", "reviewer", "model", "position", "file", "image_sha256", "predicted_label",
    "covid_probability", "threshold", "verdict", "reviewer_label", "note", "decided_at",
)
# Serialises schema creation between app processes starting together on one PostgreSQL database.
_PG_SCHEMA_LOCK_KEY = 0x5EE_C0DE
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class ReviewError(ValueError):
    """Invalid review input or an unknown session/item; the message is fit to show the user."""


class ReviewDatabaseError(RuntimeError):
    """The review database cannot be opened (bad URL, server unreachable, file not writable)."""


# ---------------------------------------------------------------- values handed in and out


@dataclass(frozen=True)
class NewItem:
    """One image to review, as the app hands it over: hash and bare name, never the pixels."""

    image_hash: str
    display_name: str
    predicted_label: str
    covid_probability: float
    operating_threshold: float


@dataclass(frozen=True)
class SessionInfo:
    """A session in a list of sessions to resume."""

    id: int
    reviewer: str
    model_name: str
    modality: str
    status: str
    created_at: datetime
    updated_at: datetime
    n_items: int
    n_reviewed: int


@dataclass(frozen=True)
class ItemView:
    """One item of a session with its verdict (``verdict`` is None while unreviewed)."""

    session_id: int
    position: int
    display_name: str
    image_hash: str
    predicted_label: str
    covid_probability: float
    operating_threshold: float
    verdict: str | None
    reviewer_label: str | None
    note: str
    decided_at: datetime | None


@dataclass(frozen=True, eq=False)
class ReviewSummary:
    """How the reviewer's reading compares with the model's, over one session.

    ``agreement_rate`` is agree / (agree + disagree); ``kappa`` is Cohen's kappa between model label and
    reviewer label over the items with a reviewer label (agree, or disagree with a label given);
    ``kappa_explanation`` says why kappa is None when it is. ``confusion`` counts those same items:
    rows are the model's label, columns the reviewer's.
    """

    session_id: int
    n_items: int
    n_reviewed: int
    verdict_counts: dict[str, int]
    agreement_rate: float | None
    kappa: float | None
    kappa_explanation: str | None
    n_labelled: int
    confusion: pd.DataFrame


def image_sha256(data: bytes) -> str:
    """The content hash stored for an image: identifies the file without keeping any of it."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- database URL


def database_url(explicit: str | None = None) -> str:
    """The database to use: ``explicit``, else $DATABASE_URL, else an SQLite file.

    The SQLite file is $COVID_REVIEW_DB or ``~/.local/share/covid-screening/reviews.sqlite3``; its folder is
    created. ``postgres://`` and ``postgresql://`` URLs (as hosting services print them) are pointed at the
    psycopg 3 driver, the one installed.
    """
    url = (explicit or "").strip() or os.environ.get("DATABASE_URL", "").strip()
    if not url:
        path = Path(os.environ.get("COVID_REVIEW_DB", "").strip() or DEFAULT_DB_PATH).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


# ---------------------------------------------------------------- schema


class _UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite itself stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class _Base(DeclarativeBase):
    pass


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class _SessionRow(_Base):
    __tablename__ = "review_sessions"
    __table_args__ = (CheckConstraint(_in("status", SESSION_STATUSES), name="ck_review_sessions_status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(MAX_REVIEWER_CHARS), index=True)
    model_name: Mapped[str] = mapped_column(String(MAX_NAME_CHARS))
    modality: Mapped[str] = mapped_column(String(MAX_LABEL_CHARS))
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=_now)
    updated_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=_now)
    status: Mapped[str] = mapped_column(String(16), default="open")
    items: Mapped[list[_ItemRow]] = relationship(back_populates="session", cascade="all, delete-orphan")


class _ItemRow(_Base):
    __tablename__ = "review_items"
    __table_args__ = (
        UniqueConstraint("session_id", "position", name="uq_review_items_session_position"),
        CheckConstraint("covid_probability >= 0 AND covid_probability <= 1", name="ck_review_items_probability"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("review_sessions.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    image_hash: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(MAX_NAME_CHARS))
    predicted_label: Mapped[str] = mapped_column(String(MAX_LABEL_CHARS))
    covid_probability: Mapped[float] = mapped_column(Float)
    operating_threshold: Mapped[float] = mapped_column(Float)
    session: Mapped[_SessionRow] = relationship(back_populates="items")
    verdict: Mapped[_VerdictRow | None] = relationship(back_populates="item", cascade="all, delete-orphan")


class _VerdictRow(_Base):
    """The latest verdict on an item (one row per item: re-recording replaces it)."""

    __tablename__ = "verdicts"
    __table_args__ = (CheckConstraint(_in("verdict", VERDICTS), name="ck_verdicts_verdict"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"), unique=True)
    verdict: Mapped[str] = mapped_column(String(16))
    reviewer_label: Mapped[str | None] = mapped_column(String(MAX_LABEL_CHARS), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=_now)
    item: Mapped[_ItemRow] = relationship(back_populates="verdict")


# ---------------------------------------------------------------- input cleaning


def _clean_text(value: object, what: str, limit: int, *, multiline: bool = False) -> str:
    """Strip control characters (NUL breaks PostgreSQL) and surrounding space; reject over-long text."""
    if not isinstance(value, str):
        raise ReviewError(f"{what} must be text, got {type(value).__name__}")
    keep = "\n\t" if multiline else ""
    cleaned = "".join(
        ch for ch in value if ch in keep or unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
    )
    if not multiline:
        cleaned = " ".join(cleaned.split())
    cleaned = cleaned.strip()
    if len(cleaned) > limit:
        raise ReviewError(f"{what} is {len(cleaned)} characters long; the limit is {limit}")
    return cleaned


def _required_text(value: object, what: str, limit: int) -> str:
    cleaned = _clean_text(value, what, limit)
    if not cleaned:
        raise ReviewError(f"{what} must not be empty")
    return cleaned


def _bare_file_name(name: object, image_hash: str) -> str:
    """The file name without any directory (of either separator style), which may name a patient."""
    cleaned = _clean_text(name, "file name", 4096)
    bare = PureWindowsPath(cleaned).name.strip()
    bare = bare[-MAX_NAME_CHARS:]
    return bare or f"image-{image_hash[:12]}"


def _probability(value: object, what: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ReviewError(f"{what} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ReviewError(f"{what} must lie in [0, 1], got {number}")
    return number


def _checked_item(item: NewItem, position: int) -> _ItemRow:
    where = f"item {position}"
    image_hash = item.image_hash.strip().lower() if isinstance(item.image_hash, str) else ""
    if not _SHA256_HEX.fullmatch(image_hash):
        raise ReviewError(f"{where}: image_hash must be a SHA-256 hex digest (64 hex digits)")
    return _ItemRow(
        position=position,
        image_hash=image_hash,
        display_name=_bare_file_name(item.display_name, image_hash),
        predicted_label=_required_text(item.predicted_label, f"{where}: predicted label", MAX_LABEL_CHARS),
        covid_probability=_probability(item.covid_probability, f"{where}: COVID probability"),
        operating_threshold=_probability(item.operating_threshold, f"{where}: operating threshold"),
    )


def _reviewer_label(verdict: str, model_label: str, given: str | None) -> str | None:
    """What the reviewer reads the image as: the model's label on agree, the given label on disagree."""
    label = _clean_text(given, "reviewer label", MAX_LABEL_CHARS) if given is not None else ""
    if verdict == "agree":
        if label and label != model_label:
            raise ReviewError(f"an 'agree' verdict means the label is {model_label!r}, not {label!r}")
        return model_label
    if verdict == "disagree":
        if label == model_label:
            raise ReviewError(f"a 'disagree' verdict needs a label other than the model's ({model_label!r})")
        return label or None
    if label:
        raise ReviewError("an 'unsure' verdict carries no reviewer label")
    return None


def _csv_cell(value: str) -> str:
    """Neutralise text a spreadsheet would run as a formula (file names and notes are user input)."""
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


# ---------------------------------------------------------------- the store


def _configure_sqlite(engine: Engine) -> None:
    """WAL + synchronous=NORMAL, a busy timeout, foreign keys, and BEGIN IMMEDIATE transactions.

    pysqlite's own implicit BEGIN is switched off so that SQLAlchemy's transaction is SQLite's; IMMEDIATE
    takes the write lock at BEGIN, so concurrent writers queue on busy_timeout rather than failing on a
    read-to-write lock upgrade (which SQLite refuses without waiting).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class ReviewStore:
    """Review sessions in one database; each public call is one transaction, rolled back if it fails.

    ``display_url`` is the database URL with any password hidden, fit to show in the app.
    """

    def __init__(self, url: str | None = None) -> None:
        resolved = database_url(url)
        shown = _hide_password(resolved)
        try:
            engine = create_engine(resolved, pool_pre_ping=True)
        except (ArgumentError, NoSuchModuleError, ValueError) as exc:
            raise ReviewDatabaseError(f"cannot use review database URL {shown!r}: {exc}") from None
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine)
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK_KEY})
                _Base.metadata.create_all(connection)
        except OperationalError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ReviewDatabaseError(f"cannot open review database {shown!r}: {reason}") from None
        self.display_url = shown
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # -- lifecycle

    def close(self) -> None:
        """Release the connections (the data is already committed)."""
        self._engine.dispose()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writing

    def start_session(self, reviewer: str, model_name: str, modality: str, items: Sequence[NewItem]) -> int:
        """Create a session over `items` (positions 0..n-1 in the given order); returns its id."""
        reviewer = _required_text(reviewer, "reviewer name", MAX_REVIEWER_CHARS)
        model_name = _required_text(model_name, "model name", MAX_NAME_CHARS)
        modality = _required_text(modality, "modality", MAX_LABEL_CHARS).lower()
        if not items:
            raise ReviewError("a review session needs at least one image")
        rows = [_checked_item(item, position) for position, item in enumerate(items)]
        with self._sessions.begin() as session:
            row = _SessionRow(reviewer=reviewer, model_name=model_name, modality=modality, items=rows)
            session.add(row)
            session.flush()
            return row.id

    def record_verdict(
        self,
        session_id: int,
        position: int,
        verdict: str,
        note: str = "",
        reviewer_label: str | None = None,
    ) -> ItemView:
        """Record (or replace) the verdict on one item, committed at once; returns the item as stored."""
        if verdict not in VERDICTS:
            raise ReviewError(f"unknown verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ReviewError(f"a position is an integer, got {position!r}")
        note = _clean_text(note, "note", MAX_NOTE_CHARS, multiline=True)
        with self._sessions.begin() as session:
            parent = self._session_row(session, session_id)
            item = session.scalars(
                select(_ItemRow)
                .where(_ItemRow.session_id == session_id, _ItemRow.position == position)
                .with_for_update()
            ).one_or_none()
            if item is None:
                n_items = session.scalar(select(func.count()).where(_ItemRow.session_id == session_id))
                raise ReviewError(
                    f"session {session_id} has no image at position {position} (it has {n_items}: 0..{n_items - 1})"
                )
            label = _reviewer_label(verdict, item.predicted_label, reviewer_label)
            now = _now()
            if item.verdict is None:
                item.verdict = _VerdictRow(verdict=verdict, reviewer_label=label, note=note, decided_at=now)
            else:
                item.verdict.verdict = verdict
                item.verdict.reviewer_label = label
                item.verdict.note = note
                item.verdict.decided_at = now
            parent.updated_at = now
            session.flush()
            return _item_view(item, item.verdict)

    def set_status(self, session_id: int, status: str) -> None:
        """Mark a session 'completed' (or 'open' again); verdicts can still be amended either way."""
        if status not in SESSION_STATUSES:
            raise ReviewError(f"unknown session status {status!r}: expected one of {', '.join(SESSION_STATUSES)}")
        with self._sessions.begin() as session:
            row = self._session_row(session, session_id)
            row.status = status
            row.updated_at = _now()

    # -- reading

    def sessions(self, reviewer: str | None = None) -> list[SessionInfo]:
        """Sessions, most recently active first; only `reviewer`'s (case-insensitive) when given."""
        query = _session_info_query()
        if reviewer is not None:
            name = _clean_text(reviewer, "reviewer name", MAX_REVIEWER_CHARS)
            query = query.where(func.lower(_SessionRow.reviewer) == name.lower())
        with self._sessions.begin() as session:
            return [_session_info(*row) for row in session.execute(query)]

    def session_info(self, session_id: int) -> SessionInfo:
        """One session's header and progress."""
        with self._sessions.begin() as session:
            self._session_row(session, session_id)
            row = session.execute(_session_info_query().where(_SessionRow.id == session_id)).one()
            return _session_info(*row)

    def items(self, session_id: int) -> list[ItemView]:
        """The session's items in order, each with its verdict if it has one."""
        with self._sessions.begin() as session:
            self._session_row(session, session_id)
            rows = session.execute(
                select(_ItemRow, _VerdictRow)
                .outerjoin(_VerdictRow, _VerdictRow.item_id == _ItemRow.id)
                .where(_ItemRow.session_id == session_id)
                .order_by(_ItemRow.position)
            )
            return [_item_view(item, verdict) for item, verdict in rows]

    def next_unreviewed(self, session_id: int) -> int | None:
        """The first position without a verdict (where to resume), or None when all are reviewed."""
        with self._sessions.begin() as session:
            self._session_row(session, session_id)
            return session.scalar(
                select(func.min(_ItemRow.position))
                .outerjoin(_VerdictRow, _VerdictRow.item_id == _ItemRow.id)
                .where(_ItemRow.session_id == session_id, _VerdictRow.id.is_(None))
            )

    def export_csv(self, session_id: int) -> str:
        """The session as CSV, one row per item (verdict columns empty while unreviewed)."""
        info = self.session_info(session_id)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for item in self.items(session_id):
            writer.writerow([
                info.id, _csv_cell(info.reviewer), _csv_cell(info.model_name), item.position,
                _csv_cell(item.display_name), item.image_hash, _csv_cell(item.predicted_label),
                repr(item.covid_probability), repr(item.operating_threshold), item.verdict or "",
                _csv_cell(item.reviewer_label or ""), _csv_cell(item.note),
                item.decided_at.isoformat() if item.decided_at else "",
            ])
        return buffer.getvalue()

    def summary(self, session_id: int) -> ReviewSummary:
        """Agreement, Cohen's kappa and the confusion table between model and reviewer."""
        # Imported here: writer processes and the page that only records verdicts never need it.
        import pandas as pd

        items = self.items(session_id)
        counts = {verdict: sum(item.verdict == verdict for item in items) for verdict in VERDICTS}
        decided = counts["agree"] + counts["disagree"]
        labelled = [(item.predicted_label, item.reviewer_label) for item in items if item.reviewer_label]
        model_labels = [model for model, _ in labelled]
        reviewer_labels = [reviewer for _, reviewer in labelled]
        classes = sorted(set(model_labels) | set(reviewer_labels))

        kappa: float | None = None
        explanation: str | None = None
        if not labelled:
            explanation = "no reviewed image has a reviewer label yet (agree, or disagree with a label)"
        elif len(classes) < 2:
            explanation = (
                f"every labelled image is {classes[0]!r} for both model and reviewer: with a single class, "
                "chance agreement is 100% and kappa is undefined"
            )
        else:
            value = cohen_kappa(model_labels, reviewer_labels, classes)
            if math.isfinite(value):
                kappa = value
            else:
                explanation = "kappa is undefined for these labels (chance agreement is 100%)"

        confusion = pd.DataFrame(0, index=pd.Index(classes, name="model"), columns=pd.Index(classes, name="reviewer"))
        for model, reviewer in labelled:
            confusion.loc[model, reviewer] += 1
        return ReviewSummary(
            session_id=session_id,
            n_items=len(items),
            n_reviewed=sum(counts.values()),
            verdict_counts=counts,
            agreement_rate=counts["agree"] / decided if decided else None,
            kappa=kappa,
            kappa_explanation=explanation,
            n_labelled=len(labelled),
            confusion=confusion,
        )

    # -- helpers

    @staticmethod
    def _session_row(session: Session, session_id: int) -> _SessionRow:
        if isinstance(session_id, bool) or not isinstance(session_id, int):
            raise ReviewError(f"a session id is an integer, got {session_id!r}")
        row = session.get(_SessionRow, session_id)
        if row is None:
            raise ReviewError(f"no review session {session_id}")
        return row


def _session_info_query() -> Select[tuple[_SessionRow, int | None, int | None]]:
    """Sessions with their item and verdict counts (one verdict row at most per item)."""
    counts = (
        select(_ItemRow.session_id, func.count().label("n_items"), func.count(_VerdictRow.id).label("n_reviewed"))
        .outerjoin(_VerdictRow, _VerdictRow.item_id == _ItemRow.id)
        .group_by(_ItemRow.session_id)
        .subquery()
    )
    return (
        select(_SessionRow, counts.c.n_items, counts.c.n_reviewed)
        .outerjoin(counts, counts.c.session_id == _SessionRow.id)
        .order_by(_SessionRow.updated_at.desc(), _SessionRow.id.desc())
    )


def _session_info(row: _SessionRow, n_items: int | None, n_reviewed: int | None) -> SessionInfo:
    return SessionInfo(
        id=row.id, reviewer=row.reviewer, model_name=row.model_name, modality=row.modality, status=row.status,
        created_at=row.created_at, updated_at=row.updated_at, n_items=n_items or 0, n_reviewed=n_reviewed or 0,
    )


def _item_view(item: _ItemRow, verdict: _VerdictRow | None) -> ItemView:
    return ItemView(
        session_id=item.session_id,
        position=item.position,
        display_name=item.display_name,
        image_hash=item.image_hash,
        predicted_label=item.predicted_label,
        covid_probability=item.covid_probability,
        operating_threshold=item.operating_threshold,
        verdict=verdict.verdict if verdict else None,
        reviewer_label=verdict.reviewer_label if verdict else None,
        note=verdict.note if verdict else "",
        decided_at=verdict.decided_at if verdict else None,
    )


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
