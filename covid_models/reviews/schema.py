"""Where review data lives: the database URL, the tables, the engine's set-up, and in-place upgrades of databases
made by earlier versions.

Storage is SQLAlchemy: an SQLite file by default, PostgreSQL when a URL (or ``DATABASE_URL``) names one.
SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed verdict survives the process being killed
(the WAL is in the OS cache), though not a power loss of the machine; a writer that finds the file locked by
another process waits (``busy_timeout``) instead of failing. A database made by an earlier version is
migrated in place when the store opens it (``migrate``). Separate from the store so that a new column, its
upgrade step and the engine's settings sit in one file, apart from what the store does with the rows.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    false,
    inspect,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from covid_models.reviews.names import skeleton
from covid_models.reviews.records import (
    MAX_LABEL_CHARS,
    MAX_NAME_CHARS,
    MAX_OWNER_CHARS,
    MAX_PACS_REF_CHARS,
    MAX_REVIEWER_CHARS,
    MAX_SKELETON_CHARS,
    SESSION_STATUSES,
    VERDICTS,
    ItemView,
    ReviewDatabaseError,
    SessionInfo,
)

SQLITE_BUSY_TIMEOUT_MS = 15_000
DEFAULT_DB_PATH = Path("~/.local/share/covid-screening/reviews.sqlite3")
# Serialises schema creation between app processes starting together on one PostgreSQL database.
_PG_SCHEMA_LOCK_KEY = 0x5EE_C0DE


# ---------------------------------------------------------------- database URL and engine


def database_url(explicit: str | None = None) -> str:
    """The database to use: ``explicit``, else $DATABASE_URL, else an SQLite file.

    The SQLite file is $COVID_REVIEW_DB or ``~/.local/share/covid-screening/reviews.sqlite3``; its folder is
    created (ReviewDatabaseError when it cannot be). ``postgres://`` and ``postgresql://`` URLs (as hosting
    services print them) are pointed at the psycopg 3 driver, the one installed.
    """
    url = (explicit or "").strip() or os.environ.get("DATABASE_URL", "").strip()
    if not url:
        path = Path(os.environ.get("COVID_REVIEW_DB", "").strip() or DEFAULT_DB_PATH).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReviewDatabaseError(
                f"cannot create the folder of the review database {str(path.parent)!r}: {exc.strerror or exc}. "
                "Set COVID_REVIEW_DB to a file in a writable folder, or DATABASE_URL to a database server."
            ) from None
        return f"sqlite:///{path}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def open_engine(url: str | None) -> tuple[Engine, str]:
    """An engine on the database `url` names (see `database_url`), its schema created or upgraded, and the URL with
    any password hidden (fit to show in the app); ReviewDatabaseError saying why when it cannot be used."""
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
            migrate(connection)
    except (OperationalError, InterfaceError) as exc:
        engine.dispose()
        raise ReviewDatabaseError(f"cannot open review database {shown!r}: {fault_reason(exc)}") from None
    return engine, shown


def fault_reason(exc: OperationalError | InterfaceError) -> str:
    """The first line of the driver's message (no SQL, no parameters, no password)."""
    origin = str(exc.orig).strip() if exc.orig is not None else ""
    return origin.splitlines()[0].strip() if origin else type(exc).__name__


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


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


# ---------------------------------------------------------------- tables


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


def utc_now() -> datetime:
    """The time every row records (one clock for the tables and the store)."""
    return datetime.now(UTC)


def new_token() -> str:
    """A session's unguessable link token: 192 random bits, URL-safe."""
    return secrets.token_urlsafe(24)


class _Base(DeclarativeBase):
    pass


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ReviewerRow(_Base):
    """A reviewer who signs in by name and passphrase (OIDC accounts need no row)."""

    __tablename__ = "reviewers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_OWNER_CHARS), unique=True)
    name: Mapped[str] = mapped_column(String(MAX_REVIEWER_CHARS))
    # names.skeleton(name): a new name with a taken skeleton is a look-alike and refused. Not unique: a
    # database from before skeletons may hold two look-alikes already (each keeps signing in by its exact key).
    skeleton: Mapped[str | None] = mapped_column(String(MAX_SKELETON_CHARS), index=True, nullable=True)
    passphrase_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=utc_now)


class FailureRow(_Base):
    """Failed sign-ins of one subject (a name's skeleton, a client address, ...), see `sign_in_guard`."""

    __tablename__ = "sign_in_failures"

    subject: Mapped[str] = mapped_column(String(MAX_SKELETON_CHARS + 32), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[datetime] = mapped_column(_UTCDateTime(), default=utc_now)
    locked_until: Mapped[datetime | None] = mapped_column(_UTCDateTime(), nullable=True)


class SessionRow(_Base):
    __tablename__ = "review_sessions"
    __table_args__ = (CheckConstraint(_in("status", SESSION_STATUSES), name="ck_review_sessions_status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True, index=True, default=new_token)
    owner: Mapped[str | None] = mapped_column(String(MAX_OWNER_CHARS), index=True, nullable=True)
    reviewer: Mapped[str] = mapped_column(String(MAX_REVIEWER_CHARS), index=True)
    model_name: Mapped[str] = mapped_column(String(MAX_NAME_CHARS))
    modality: Mapped[str] = mapped_column(String(MAX_LABEL_CHARS))
    blinded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Kept in step by start_session and record_verdict, so that a page rerun never counts 100,000 rows.
    n_items: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_reviewed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=utc_now)
    status: Mapped[str] = mapped_column(String(16), default="open")
    items: Mapped[list[ItemRow]] = relationship(back_populates="session", cascade="all, delete-orphan")

    def as_info(self) -> SessionInfo:
        """The session's header and progress as callers see it."""
        return SessionInfo(
            id=self.id, token=self.token, reviewer=self.reviewer, owner=self.owner, model_name=self.model_name,
            modality=self.modality, status=self.status, blinded=bool(self.blinded), created_at=self.created_at,
            updated_at=self.updated_at, n_items=self.n_items, n_reviewed=self.n_reviewed,
        )


class ItemRow(_Base):
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
    held_back: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    kind: Mapped[str] = mapped_column(String(8), default="image", server_default=text("'image'"))
    pacs_ref: Mapped[str | None] = mapped_column(String(MAX_PACS_REF_CHARS), nullable=True)
    session: Mapped[SessionRow] = relationship(back_populates="items")
    verdict: Mapped[VerdictRow | None] = relationship(back_populates="item", cascade="all, delete-orphan")

    def as_view(self, verdict: VerdictRow | None) -> ItemView:
        """The item with `verdict` (passed in, as a query joined it, so that reading it loads nothing more)."""
        return ItemView(
            session_id=self.session_id,
            position=self.position,
            display_name=self.display_name,
            image_hash=self.image_hash,
            predicted_label=self.predicted_label,
            covid_probability=self.covid_probability,
            operating_threshold=self.operating_threshold,
            verdict=verdict.verdict if verdict else None,
            reviewer_label=verdict.reviewer_label if verdict else None,
            note=verdict.note if verdict else "",
            decided_at=verdict.decided_at if verdict else None,
            version=verdict.version if verdict else 0,
            held_back=self.held_back,
            kind=self.kind,
            pacs_ref=self.pacs_ref,
        )


class VerdictRow(_Base):
    """The latest verdict on an item (one row per item); ``version`` counts its saved writes."""

    __tablename__ = "verdicts"
    __table_args__ = (CheckConstraint(_in("verdict", VERDICTS), name="ck_verdicts_verdict"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"), unique=True)
    verdict: Mapped[str] = mapped_column(String(16))
    reviewer_label: Mapped[str | None] = mapped_column(String(MAX_LABEL_CHARS), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=utc_now)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    item: Mapped[ItemRow] = relationship(back_populates="verdict")


class HistoryRow(_Base):
    """Every verdict write, saved or refused as stale: nothing a reviewer wrote is lost."""

    __tablename__ = "verdict_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(16))
    reviewer_label: Mapped[str | None] = mapped_column(String(MAX_LABEL_CHARS), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=utc_now)
    by: Mapped[str | None] = mapped_column(String(MAX_OWNER_CHARS), nullable=True)
    saved: Mapped[bool] = mapped_column(Boolean, default=True)


# ---------------------------------------------------------------- in-place upgrades


def migrate(connection: Connection) -> None:
    """Bring a database made by an earlier version up to this schema, in the caller's transaction.

    Earlier versions had no session tokens or owners, no blinded flag, no verdict versions, history or
    'non_diagnostic' verdict, no name skeletons or sign-in failure counts, and items were all images, none held back.
    Old sessions get a token and no owner: only administrators see them, and one gives each to its reviewer
    (``assign_session``); registering a name never claims them. Registered names get their skeleton.
    """
    existing = set(inspect(connection).get_table_names())
    if "reviewers" in existing and "skeleton" not in {c["name"] for c in inspect(connection).get_columns("reviewers")}:
        connection.execute(text(f"ALTER TABLE reviewers ADD COLUMN skeleton VARCHAR({MAX_SKELETON_CHARS})"))
        for row_id, name in connection.execute(text("SELECT id, name FROM reviewers")).all():
            connection.execute(text("UPDATE reviewers SET skeleton = :s WHERE id = :i"),
                               {"s": skeleton(name), "i": row_id})
        connection.execute(text("CREATE INDEX ix_reviewers_skeleton ON reviewers (skeleton)"))
    if "review_sessions" in existing:
        columns = {c["name"] for c in inspect(connection).get_columns("review_sessions")}
        added = {
            "token": "VARCHAR(64)", "owner": f"VARCHAR({MAX_OWNER_CHARS})", "blinded": "BOOLEAN NOT NULL DEFAULT false",
            "n_items": "INTEGER NOT NULL DEFAULT 0", "n_reviewed": "INTEGER NOT NULL DEFAULT 0",
        }
        for column, kind in added.items():
            if column not in columns:
                connection.execute(text(f"ALTER TABLE review_sessions ADD COLUMN {column} {kind}"))
        if "token" not in columns:
            for (row_id,) in connection.execute(text("SELECT id FROM review_sessions")).all():
                connection.execute(text("UPDATE review_sessions SET token = :t WHERE id = :i"),
                                   {"t": new_token(), "i": row_id})
            connection.execute(text("CREATE UNIQUE INDEX ix_review_sessions_token ON review_sessions (token)"))
            connection.execute(text("CREATE INDEX ix_review_sessions_owner ON review_sessions (owner)"))
        if "n_items" not in columns:
            connection.execute(text(
                "UPDATE review_sessions SET n_items = (SELECT count(*) FROM review_items i "
                "WHERE i.session_id = review_sessions.id), n_reviewed = (SELECT count(*) FROM review_items i "
                "JOIN verdicts v ON v.item_id = i.id WHERE i.session_id = review_sessions.id)"))
    if "review_items" in existing:
        columns = {c["name"] for c in inspect(connection).get_columns("review_items")}
        added = {"held_back": "BOOLEAN NOT NULL DEFAULT false", "kind": "VARCHAR(8) NOT NULL DEFAULT 'image'",
                 "pacs_ref": f"VARCHAR({MAX_PACS_REF_CHARS})"}
        for column, kind in added.items():
            if column not in columns:
                connection.execute(text(f"ALTER TABLE review_items ADD COLUMN {column} {kind}"))
    old_verdicts = "verdicts" in existing and "version" not in {
        c["name"] for c in inspect(connection).get_columns("verdicts")}
    if old_verdicts and connection.dialect.name == "sqlite":  # SQLite cannot alter a CHECK: rebuild the table
        connection.execute(text("ALTER TABLE verdicts RENAME TO verdicts_before_v2"))
    elif old_verdicts:
        connection.execute(text("ALTER TABLE verdicts DROP CONSTRAINT IF EXISTS ck_verdicts_verdict"))
        connection.execute(text(f"ALTER TABLE verdicts ADD CONSTRAINT ck_verdicts_verdict CHECK "
                                f"({_in('verdict', VERDICTS)})"))
        connection.execute(text("ALTER TABLE verdicts ADD COLUMN version INTEGER NOT NULL DEFAULT 1"))
    _Base.metadata.create_all(connection)
    if old_verdicts and connection.dialect.name == "sqlite":
        connection.execute(text(
            "INSERT INTO verdicts (id, item_id, verdict, reviewer_label, note, decided_at, version) "
            "SELECT id, item_id, verdict, reviewer_label, note, decided_at, 1 FROM verdicts_before_v2"))
        connection.execute(text("DROP TABLE verdicts_before_v2"))
    if old_verdicts:  # the history starts with what was there
        connection.execute(text(
            "INSERT INTO verdict_history (item_id, version, verdict, reviewer_label, note, decided_at, saved) "
            "SELECT item_id, 1, verdict, reviewer_label, note, decided_at, true FROM verdicts"))
