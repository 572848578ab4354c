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

Storage is SQLAlchemy: an SQLite file by default, PostgreSQL when a URL (or ``DATABASE_URL``) names one.
SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed verdict survives the process being killed
(the WAL is in the OS cache), though not a power loss of the machine; a writer that finds the file locked by
another process waits (``busy_timeout``) instead of failing. A database made by an earlier version is
migrated in place when the store opens it (``_migrate``). Database faults (disk full, server gone) raise
``ReviewDatabaseError`` saying what was not saved and why; nothing committed before is touched.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import hmac
import io
import logging
import math
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

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
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from covid_models.imaging.filenames import bare_file_name
from covid_models.metrics import cohen_kappa
from covid_models.reviews.names import admin_token_problem, name_key, skeleton
from covid_models.reviews.sign_in_guard import FORGET_AFTER, SUBJECT_TEXT, lock_seconds, subject, wait_text

if TYPE_CHECKING:
    import pandas as pd

VERDICTS = ("agree", "disagree", "unsure", "non_diagnostic")
VERDICT_TEXT = {"agree": "Agree", "disagree": "Disagree", "unsure": "Unsure",
                "non_diagnostic": "Non-diagnostic / not a chest image"}
SESSION_STATUSES = ("open", "completed")
MAX_REVIEWER_CHARS = 200
MAX_OWNER_CHARS = 320
MAX_NOTE_CHARS = 5000
MAX_NAME_CHARS = 255
MAX_LABEL_CHARS = 64
MIN_PASSPHRASE_CHARS = 8
MAX_PASSPHRASE_CHARS = 1024
MAX_SKELETON_CHARS = 4 * MAX_REVIEWER_CHARS  # NFKC may expand a character into several
SQLITE_BUSY_TIMEOUT_MS = 15_000
DEFAULT_DB_PATH = Path("~/.local/share/covid-screening/reviews.sqlite3")
HELD_BACK_LABEL = "held back (out of distribution)"  # the CSV's model reading of a held-back image
ITEM_KINDS = ("image", "scan")  # one image (X-ray, CT slice), or a whole CT scan read by its scan-level rule
MAX_PACS_REF_CHARS = 200  # "study/series[/instance]" UIDs (64 characters each at most)
_UID = r"[0-9]+(?:\.[0-9]+)*"
_PACS_REF = re.compile(rf"{_UID}/{_UID}(?:/{_UID})?")

CSV_COLUMNS = (
    "session", "reviewer", "model", "position", "file", "image_sha256", "predicted_label",
    "covid_probability", "threshold", "verdict", "reviewer_label", "note", "decided_at", "kind",
)
# Serialises schema creation between app processes starting together on one PostgreSQL database.
_PG_SCHEMA_LOCK_KEY = 0x5EE_C0DE
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")  # secrets.token_urlsafe(24): 192 random bits
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# scrypt at n=2**14, r=8: about 16 MB and tens of milliseconds per check, the interactive-login setting.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_P = ParamSpec("_P")
_R = TypeVar("_R")
# One answer for a wrong passphrase, whether the name is registered as typed or only as a look-alike spelling.
WRONG_PASSPHRASE = ("Not signed in: this name, or one that looks the same, belongs to a reviewer with another "
                    "passphrase. Check both; a new reviewer chooses a name of their own.")
WRONG_ADMIN_TOKEN = "The administrator token is wrong; not signed in."
logger = logging.getLogger(__name__)


class ReviewError(ValueError):
    """Invalid review input or an unknown session/item; the message is fit to show the user."""


class NotYoursError(ReviewError):
    """The session exists but belongs to another reviewer (and the caller is no admin)."""


class SignInThrottled(ReviewError):
    """Too many failed sign-ins for this name or from this address: refused without checking, for `retry_after` s."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StaleVerdictError(ReviewError):
    """The verdict changed since the caller read it (another tab or device wrote it); nothing was overwritten.

    ``current`` is the item as stored now; ``attempted`` is what the refused write said, also kept in the
    verdict history.
    """

    def __init__(self, current: ItemView, attempted: VerdictEntry) -> None:
        super().__init__(
            f"This verdict was changed in another tab or window (now {VERDICT_TEXT[current.verdict or 'unsure']}"
            f"{', note: ' + repr(current.note) if current.note else ''}); yours "
            f"({VERDICT_TEXT[attempted.verdict]}{', note: ' + repr(attempted.note) if attempted.note else ''}) "
            "was not saved over it. Look at both and record again to replace it."
        )
        self.current, self.attempted = current, attempted


class ReviewDatabaseError(RuntimeError):
    """The review database cannot be used (bad URL, server unreachable, disk full, file not writable)."""


# ---------------------------------------------------------------- values handed in and out


@dataclass(frozen=True)
class Reviewer:
    """Who is asking: ``key`` identifies the owner of sessions ("oidc:<account>" or "name:<name key>", see
    `reviewer_names.name_key`), ``name`` is shown and exported, ``admin`` may open, export and assign every session."""

    key: str
    name: str
    admin: bool = False

    @classmethod
    def from_oidc(cls, account: str, name: str, *, admin: bool = False) -> Reviewer:
        """An identity proven by the app's OpenID Connect login (``st.user``): no passphrase involved."""
        account = _required_text(account, "account", MAX_OWNER_CHARS - 5).lower()
        return cls(key=f"oidc:{account}", name=_clean_text(name, "name", MAX_REVIEWER_CHARS) or account, admin=admin)


@dataclass(frozen=True)
class NewItem:
    """One image or scan to review, as the app hands it over: hash and bare name, never the pixels.

    A scan's hash is its upload's content hash and its probability the scan-level one."""

    image_hash: str
    display_name: str
    predicted_label: str
    covid_probability: float
    operating_threshold: float
    held_back: bool = False  # the model's guard held its reading back: no probability is shown or exported
    kind: str = "image"  # one of ITEM_KINDS
    pacs_ref: str | None = None  # the UIDs that fetch it from the PACS again ("study/series[/instance]"), if from one


@dataclass(frozen=True)
class SessionInfo:
    """A session's header and progress. ``token`` is the only way the app names a session (in its URL);
    ``id`` is the database row, never shown."""

    id: int
    token: str
    reviewer: str
    owner: str | None
    model_name: str
    modality: str
    status: str
    blinded: bool
    created_at: datetime
    updated_at: datetime
    n_items: int
    n_reviewed: int


@dataclass(frozen=True)
class ItemView:
    """One item of a session with its verdict (``verdict`` is None and ``version`` 0 while unreviewed)."""

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
    version: int = 0
    held_back: bool = False
    kind: str = "image"
    pacs_ref: str | None = None


@dataclass(frozen=True)
class VerdictEntry:
    """One write of a verdict as the history keeps it; ``saved`` is False for a refused stale write."""

    verdict: str
    reviewer_label: str | None
    note: str
    version: int
    decided_at: datetime
    by: str | None = None
    saved: bool = True


@dataclass(frozen=True, eq=False)
class ReviewSummary:
    """How the reviewer's reading compares with the model's, over one session.

    ``agreement_rate`` is agree / (agree + disagree); ``kappa`` is Cohen's kappa between model label and
    reviewer label over the items with a reviewer label (agree, or disagree with a label given; unsure and
    non-diagnostic verdicts carry none); ``kappa_explanation`` says why kappa is None when it is.
    ``confusion`` counts those same items: rows are the model's label, columns the reviewer's.
    """

    session_id: int
    n_items: int
    n_reviewed: int
    verdict_counts: dict[str, int]
    agreement_rate: float | None
    kappa: float | None
    kappa_explanation: str | None
    n_labelled: int
    confusion: pd.DataFrame = field(repr=False)


def _hash_passphrase(passphrase: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(passphrase.encode(), salt=salt, maxmem=64 * 1024 * 1024, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def _passphrase_matches(passphrase: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        computed = hashlib.scrypt(passphrase.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                  dklen=len(digest) // 2, maxmem=64 * 1024 * 1024)
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


def admin_token_matches(typed: str, configured: str | None) -> bool:
    """Whether `typed` is the configured admin token (constant-time; never True when none is configured or the
    configured one is too weak to be used, see `reviewer_names.admin_token_problem`)."""
    return (bool(configured) and admin_token_problem(str(configured)) is None
            and hmac.compare_digest(typed.encode(), str(configured).encode()))


def _name_identity(name: str) -> tuple[str, str]:
    """(key, skeleton) of a cleaned reviewer name; ReviewError when normalising makes either too long to store
    (a few characters expand to many under NFKC or case folding)."""
    key, shape = f"name:{name_key(name)}", skeleton(name)
    if len(key) > MAX_OWNER_CHARS or len(shape) > MAX_SKELETON_CHARS:
        raise ReviewError("this reviewer name is too long once normalised; choose a shorter one")
    return key, shape


def _checked_passphrase(passphrase: object) -> str:
    """The passphrase as typed, once it is known to be usable: refused alike for every name, before any lookup, so
    the answer says nothing about the name. Spaces at its ends do not count towards its length."""
    if not isinstance(passphrase, str) or not passphrase.strip():
        raise ReviewError("enter your passphrase")
    if len(passphrase) > MAX_PASSPHRASE_CHARS:
        raise ReviewError(f"a passphrase is at most {MAX_PASSPHRASE_CHARS} characters")
    if len(passphrase.strip()) < MIN_PASSPHRASE_CHARS:
        raise ReviewError(f"a passphrase has at least {MIN_PASSPHRASE_CHARS} characters (spaces at its ends not "
                          "counted)")
    return passphrase


def _database_errors(action: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Turns a database fault inside a store call into ReviewDatabaseError("<action>: <reason>")."""

    def wrap(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(*args, **kwargs)
            except (OperationalError, InterfaceError) as exc:
                raise ReviewDatabaseError(f"{action}: {_reason(exc)}") from None

        return call

    return wrap


def _reason(exc: OperationalError | InterfaceError) -> str:
    """The first line of the driver's message (no SQL, no parameters, no password)."""
    origin = str(exc.orig).strip() if exc.orig is not None else ""
    return origin.splitlines()[0].strip() if origin else type(exc).__name__


# ---------------------------------------------------------------- database URL


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


def _new_token() -> str:
    return secrets.token_urlsafe(24)


class _Base(DeclarativeBase):
    pass


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class _ReviewerRow(_Base):
    """A reviewer who signs in by name and passphrase (OIDC accounts need no row)."""

    __tablename__ = "reviewers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_OWNER_CHARS), unique=True)
    name: Mapped[str] = mapped_column(String(MAX_REVIEWER_CHARS))
    # reviewer_names.skeleton(name): a new name with a taken skeleton is a look-alike and refused. Not unique: a
    # database from before skeletons may hold two look-alikes already (each keeps signing in by its exact key).
    skeleton: Mapped[str | None] = mapped_column(String(MAX_SKELETON_CHARS), index=True, nullable=True)
    passphrase_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=_now)


class _FailureRow(_Base):
    """Failed sign-ins of one subject (a name's skeleton, a client address, ...), see `sign_in_guard`."""

    __tablename__ = "sign_in_failures"

    subject: Mapped[str] = mapped_column(String(MAX_SKELETON_CHARS + 32), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[datetime] = mapped_column(_UTCDateTime(), default=_now)
    locked_until: Mapped[datetime | None] = mapped_column(_UTCDateTime(), nullable=True)


class _SessionRow(_Base):
    __tablename__ = "review_sessions"
    __table_args__ = (CheckConstraint(_in("status", SESSION_STATUSES), name="ck_review_sessions_status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True, index=True, default=_new_token)
    owner: Mapped[str | None] = mapped_column(String(MAX_OWNER_CHARS), index=True, nullable=True)
    reviewer: Mapped[str] = mapped_column(String(MAX_REVIEWER_CHARS), index=True)
    model_name: Mapped[str] = mapped_column(String(MAX_NAME_CHARS))
    modality: Mapped[str] = mapped_column(String(MAX_LABEL_CHARS))
    blinded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Kept in step by start_session and record_verdict, so that a page rerun never counts 100,000 rows.
    n_items: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_reviewed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
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
    held_back: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    kind: Mapped[str] = mapped_column(String(8), default="image", server_default=text("'image'"))
    pacs_ref: Mapped[str | None] = mapped_column(String(MAX_PACS_REF_CHARS), nullable=True)
    session: Mapped[_SessionRow] = relationship(back_populates="items")
    verdict: Mapped[_VerdictRow | None] = relationship(back_populates="item", cascade="all, delete-orphan")


class _VerdictRow(_Base):
    """The latest verdict on an item (one row per item); ``version`` counts its saved writes."""

    __tablename__ = "verdicts"
    __table_args__ = (CheckConstraint(_in("verdict", VERDICTS), name="ck_verdicts_verdict"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"), unique=True)
    verdict: Mapped[str] = mapped_column(String(16))
    reviewer_label: Mapped[str | None] = mapped_column(String(MAX_LABEL_CHARS), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=_now)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    item: Mapped[_ItemRow] = relationship(back_populates="verdict")


class _HistoryRow(_Base):
    """Every verdict write, saved or refused as stale: nothing a reviewer wrote is lost."""

    __tablename__ = "verdict_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(16))
    reviewer_label: Mapped[str | None] = mapped_column(String(MAX_LABEL_CHARS), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(_UTCDateTime(), default=_now)
    by: Mapped[str | None] = mapped_column(String(MAX_OWNER_CHARS), nullable=True)
    saved: Mapped[bool] = mapped_column(Boolean, default=True)


def _migrate(connection: Connection) -> None:
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
                                   {"t": _new_token(), "i": row_id})
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
    if not isinstance(item.display_name, str):
        raise ReviewError(f"{where}: file name must be text, got {type(item.display_name).__name__}")
    if item.kind not in ITEM_KINDS:
        raise ReviewError(f"{where}: kind must be one of {', '.join(ITEM_KINDS)}, got {item.kind!r}")
    if item.pacs_ref is not None and not (isinstance(item.pacs_ref, str) and len(item.pacs_ref) <= MAX_PACS_REF_CHARS
                                          and _PACS_REF.fullmatch(item.pacs_ref)):
        raise ReviewError(f"{where}: a PACS reference is the study, series and instance UIDs joined by '/'")
    return _ItemRow(
        position=position,
        image_hash=image_hash,
        display_name=bare_file_name(item.display_name, f"image-{image_hash[:12]}", MAX_NAME_CHARS),
        predicted_label=_required_text(item.predicted_label, f"{where}: predicted label", MAX_LABEL_CHARS),
        covid_probability=_probability(item.covid_probability, f"{where}: COVID probability"),
        operating_threshold=_probability(item.operating_threshold, f"{where}: operating threshold"),
        held_back=bool(item.held_back),
        kind=item.kind,
        pacs_ref=item.pacs_ref,
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
        raise ReviewError(f"an {verdict!r} verdict carries no reviewer label")
    return None


def _csv_cell(value: str) -> str:
    """Neutralise text a spreadsheet would run as a formula (file names and notes are user input)."""
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


def session_token(value: object) -> str:
    """A session token from a URL parameter, checked for shape before any database sees it."""
    token = value.strip() if isinstance(value, str) else ""
    if not _TOKEN.fullmatch(token):
        raise ReviewError("This link does not name a review session (it may have been cut short or mistyped).")
    return token


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
                _migrate(connection)
        except (OperationalError, InterfaceError) as exc:
            engine.dispose()
            raise ReviewDatabaseError(f"cannot open review database {shown!r}: {_reason(exc)}") from None
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

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- who

    @_database_errors("signing in failed")
    def sign_in(self, name: str, passphrase: str, *, client: str | None = None) -> Reviewer:
        """The reviewer `name` if `passphrase` is theirs; a name not taken, by itself or a look-alike spelling (see
        `reviewer_names`), is registered with it.

        A blank or short passphrase is refused before the name is looked up; a wrong one, for the name or for a
        look-alike of it, gets WRONG_PASSPHRASE; each answer costs one scrypt either way. Failures are counted per
        name and per `client` (its network address, when known) and, past a few, refused with SignInThrottled
        until the lockout ends; each is logged, without the passphrase. Registering never gives the new reviewer
        any session: sessions without an owner wait for an administrator (``assign_session``).
        """
        name = _required_text(name, "reviewer name", MAX_REVIEWER_CHARS)
        passphrase = _checked_passphrase(passphrase)
        key, shape = _name_identity(name)
        counts = [subject("name", shape)] + ([subject("client", client)] if client else [])
        with self._transaction() as session:
            self._refuse_while_locked(session, counts)
            candidates = session.scalars(select(_ReviewerRow).where(
                or_(_ReviewerRow.key == key, _ReviewerRow.skeleton == shape)).order_by(_ReviewerRow.id)).all()
        known = next((row for row in candidates if row.key == key), candidates[0] if candidates else None)
        if known is None:
            return self._register(key, name, shape, _hash_passphrase(passphrase))
        if _passphrase_matches(passphrase, known.passphrase_hash):
            with self._transaction() as session:
                session.execute(_FailureRow.__table__.delete().where(_FailureRow.subject == counts[0]))
            return Reviewer(key=known.key, name=known.name)
        self._failed(counts, f"sign-in refused: wrong passphrase for reviewer name {name!r}", client)
        raise ReviewError(WRONG_PASSPHRASE)

    def _register(self, key: str, name: str, shape: str, passphrase_hash: str) -> Reviewer:
        """A new reviewer row, unless the name or a look-alike was registered meanwhile (then WRONG_PASSPHRASE)."""
        try:
            with self._transaction() as session:
                if session.scalar(select(func.count()).where(
                        or_(_ReviewerRow.key == key, _ReviewerRow.skeleton == shape))):
                    raise ReviewError(WRONG_PASSPHRASE)
                session.add(_ReviewerRow(key=key, name=name, skeleton=shape, passphrase_hash=passphrase_hash))
        except IntegrityError:  # the same key inserted by a concurrent first sign-in
            raise ReviewError(WRONG_PASSPHRASE) from None
        return Reviewer(key=key, name=name)

    @_database_errors("signing in as administrator failed")
    def sign_in_as_admin(self, reviewer: Reviewer, typed: str, configured: str | None, *,
                         client: str | None = None) -> Reviewer:
        """`reviewer` with administrator rights when `typed` is the configured administrator token.

        A configured token too weak to be used (see `reviewer_names.admin_token_problem`) turns administrator
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
            self._refuse_while_locked(session, counts)
        if not isinstance(typed, str) or not admin_token_matches(typed, configured):
            self._failed(counts, f"administrator sign-in refused: wrong token typed by reviewer {reviewer.key!r}",
                         client)
            raise ReviewError(WRONG_ADMIN_TOKEN)
        with self._transaction() as session:
            session.execute(_FailureRow.__table__.delete().where(_FailureRow.subject == counts[0]))
        return dataclasses.replace(reviewer, admin=True)

    @staticmethod
    def _refuse_while_locked(session: Session, counts: list[str]) -> None:
        now = _now()
        locked = session.execute(select(_FailureRow.subject, _FailureRow.locked_until).where(
            _FailureRow.subject.in_(counts), _FailureRow.locked_until > now)
            .order_by(_FailureRow.locked_until.desc()).limit(1)).one_or_none()
        if locked is not None:
            key, until = locked
            raise SignInThrottled(f"Too many failed sign-ins {SUBJECT_TEXT[key.split(':', 1)[0]]}: "
                                  f"{wait_text(until, now)}.", max(1, math.ceil((until - now).total_seconds())))

    def _failed(self, counts: list[str], what: str, client: str | None) -> None:
        """Count one failure against each subject (committed before the caller refuses) and log it."""
        now = _now()
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        with self._transaction() as session:
            session.execute(_FailureRow.__table__.delete().where(  # the addresses of failures long past go
                _FailureRow.last_failure < now - FORGET_AFTER,
                or_(_FailureRow.locked_until.is_(None), _FailureRow.locked_until < now)))
            locks = []
            for key in counts:
                session.execute(insert(_FailureRow).values(subject=key, failures=0, last_failure=now)
                                .on_conflict_do_nothing(index_elements=["subject"]))
                row = session.scalars(select(_FailureRow).where(_FailureRow.subject == key).with_for_update()).one()
                failures = 1 if now - row.last_failure > FORGET_AFTER else row.failures + 1
                lock = lock_seconds(key, failures)
                row.failures, row.last_failure = failures, now
                row.locked_until = now + timedelta(seconds=lock) if lock else None
                locks.append(f"{key.split(':', 1)[0]} failure {failures}" + (f", locked {lock} s" if lock else ""))
        logger.warning("%s from client %s (%s)", what, client or "unknown", "; ".join(locks))

    @_database_errors("the reviewer could not be looked up")
    def registered_reviewer(self, name: str) -> Reviewer:
        """The reviewer registered under `name` (as typed, else its only look-alike): for an administrator assigning
        a session, or a script naming its owner. ReviewError when no such reviewer is registered."""
        key, shape = _name_identity(_required_text(name, "reviewer name", MAX_REVIEWER_CHARS))
        with self._transaction() as session:
            rows = session.scalars(select(_ReviewerRow).where(
                or_(_ReviewerRow.key == key, _ReviewerRow.skeleton == shape)).order_by(_ReviewerRow.id)).all()
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
        owner_key = _required_text(owner.key, "owner", MAX_OWNER_CHARS)
        with self._transaction() as session:
            row = self._session_row(session, session_id)
            if row.owner is not None:
                raise ReviewError("This session already belongs to a reviewer; it is not moved.")
            row.owner = owner_key
            logger.info("session %d assigned to %r by administrator %r", row.id, owner_key, by.key)
            return _session_info(row)

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
        owner = _required_text(reviewer.key, "owner", MAX_OWNER_CHARS)
        name = _required_text(reviewer.name, "reviewer name", MAX_REVIEWER_CHARS)
        model_name = _required_text(model_name, "model name", MAX_NAME_CHARS)
        modality = _required_text(modality, "modality", MAX_LABEL_CHARS).lower()
        if not items:
            raise ReviewError("a review session needs at least one image")
        rows = [_checked_item(item, position) for position, item in enumerate(items)]
        with self._transaction() as session:
            row = _SessionRow(token=_new_token(), owner=owner, reviewer=name, model_name=model_name,
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
        note = _clean_text(note, "note", MAX_NOTE_CHARS, multiline=True)
        with self._transaction() as session:
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
            current = item.verdict.version if item.verdict is not None else 0
            if expected_version is not None and expected_version != current:
                stale = StaleVerdictError(_item_view(item, item.verdict),
                                          VerdictEntry(verdict, label, note, current, now, by, saved=False))
                session.add(_HistoryRow(item_id=item.id, version=current, verdict=verdict, reviewer_label=label,
                                        note=note, decided_at=now, by=by, saved=False))
            else:
                stale = None
                if item.verdict is None:  # an atomic increment: concurrent writers never lose a count
                    parent.n_reviewed = _SessionRow.n_reviewed + 1
                self._write_verdict(session, item, verdict, label, note, now, current, by)
                parent.updated_at = now
                session.flush()
                stored = _item_view(item, item.verdict)
        if stale is not None:  # raised after the commit, which kept the refused write in the history
            raise stale
        return stored

    @staticmethod
    def _write_verdict(session: Session, item: _ItemRow, verdict: str, label: str | None, note: str,
                       now: datetime, current: int, by: str | None) -> None:
        """The verdict row at version current + 1, and its copy in the history."""
        if item.verdict is None:
            item.verdict = _VerdictRow(verdict=verdict, reviewer_label=label, note=note, decided_at=now, version=1)
        else:
            item.verdict.verdict = verdict
            item.verdict.reviewer_label = label
            item.verdict.note = note
            item.verdict.decided_at = now
            item.verdict.version = current + 1
        session.add(_HistoryRow(item_id=item.id, version=current + 1, verdict=verdict, reviewer_label=label,
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
            row.updated_at = _now()

    # -- reading

    @_database_errors("the sessions could not be read")
    def sessions(self, reviewer: Reviewer | None = None) -> list[SessionInfo]:
        """Sessions, most recently active first: only those `reviewer` owns (every one for an admin or for
        None, which only scripts pass)."""
        query = select(_SessionRow).order_by(_SessionRow.updated_at.desc(), _SessionRow.id.desc())
        if reviewer is not None and not reviewer.admin:
            query = query.where(_SessionRow.owner == reviewer.key)
        with self._transaction() as session:
            return [_session_info(row) for row in session.scalars(query)]

    @_database_errors("the session could not be read")
    def open_session(self, token: str, reviewer: Reviewer) -> SessionInfo:
        """The session behind a link, if `reviewer` may open it: NotYoursError when another reviewer owns it
        (or nobody yet) and `reviewer` is no admin; ReviewError for a malformed or unknown token."""
        token = session_token(token)
        with self._transaction() as session:
            row = session.scalars(select(_SessionRow).where(_SessionRow.token == token)).one_or_none()
            if row is None:
                raise ReviewError("No review session has this link: it may have been deleted, or the link is wrong.")
            info = _session_info(row)
        if not reviewer.admin and info.owner != reviewer.key:
            raise NotYoursError("This review session belongs to another reviewer. Sign in as its reviewer to open "
                                "it, or ask an administrator for an export.")
        return info

    @_database_errors("the session could not be read")
    def session_info(self, session_id: int) -> SessionInfo:
        """One session's header and progress (counting that session's items only)."""
        with self._transaction() as session:
            return _session_info(self._session_row(session, session_id))

    @_database_errors("the image could not be read")
    def item(self, session_id: int, position: int) -> ItemView:
        """One item with its verdict: what the page shows, read alone."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            row = session.execute(
                select(_ItemRow, _VerdictRow)
                .outerjoin(_VerdictRow, _VerdictRow.item_id == _ItemRow.id)
                .where(_ItemRow.session_id == session_id, _ItemRow.position == position)
            ).one_or_none()
            if row is None:
                raise ReviewError(f"session {session_id} has no image at position {position}")
            return _item_view(*row)

    @_database_errors("the session could not be read")
    def items(self, session_id: int) -> list[ItemView]:
        """The session's items in order, each with its verdict if it has one."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            rows = session.execute(
                select(_ItemRow, _VerdictRow)
                .outerjoin(_VerdictRow, _VerdictRow.item_id == _ItemRow.id)
                .where(_ItemRow.session_id == session_id)
                .order_by(_ItemRow.position)
            )
            return [_item_view(item, verdict) for item, verdict in rows]

    @_database_errors("the session could not be read")
    def image_refs(self, session_id: int) -> list[tuple[int, str, str]]:
        """(position, image hash, file name) of every uploaded image item (scans and PACS images are fetched
        otherwise): to find or ask for the images, without verdicts."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            return [tuple(row) for row in session.execute(  # type: ignore[misc]
                select(_ItemRow.position, _ItemRow.image_hash, _ItemRow.display_name)
                .where(_ItemRow.session_id == session_id, _ItemRow.kind == "image", _ItemRow.pacs_ref.is_(None))
                .order_by(_ItemRow.position))]

    @_database_errors("the verdict history could not be read")
    def history(self, session_id: int, position: int) -> list[VerdictEntry]:
        """Every write on one item, oldest first, refused stale writes included."""
        with self._transaction() as session:
            self._session_row(session, session_id)
            rows = session.scalars(
                select(_HistoryRow).join(_ItemRow, _ItemRow.id == _HistoryRow.item_id)
                .where(_ItemRow.session_id == session_id, _ItemRow.position == position)
                .order_by(_HistoryRow.id))
            return [VerdictEntry(r.verdict, r.reviewer_label, r.note, r.version, r.decided_at, r.by, r.saved)
                    for r in rows]

    @_database_errors("the session could not be read")
    def next_unreviewed(self, session_id: int, after: int = -1) -> int | None:
        """The first position after `after` without a verdict (where to resume), else the first one anywhere;
        None when all are reviewed."""
        def first(session: Session, start: int) -> int | None:  # walks the (session, position) index, stops early
            return session.scalar(
                select(_ItemRow.position)
                .outerjoin(_VerdictRow, _VerdictRow.item_id == _ItemRow.id)
                .where(_ItemRow.session_id == session_id, _VerdictRow.id.is_(None), _ItemRow.position > start)
                .order_by(_ItemRow.position).limit(1)
            )

        with self._transaction() as session:
            self._session_row(session, session_id)
            found = first(session, after)
            return found if found is not None or after < 0 else first(session, -1)

    @_database_errors("the export could not be read")
    def export_csv(self, session_id: int) -> str:
        """The session as CSV, one row per item (verdict columns empty while unreviewed); one column query."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        with self._transaction() as session:
            info = _session_info(self._session_row(session, session_id))
            rows = session.execute(
                select(_ItemRow.position, _ItemRow.display_name, _ItemRow.image_hash, _ItemRow.predicted_label,
                       _ItemRow.covid_probability, _ItemRow.operating_threshold, _VerdictRow.verdict,
                       _VerdictRow.reviewer_label, _VerdictRow.note, _VerdictRow.decided_at, _ItemRow.held_back,
                       _ItemRow.kind)
                .outerjoin(_VerdictRow, _VerdictRow.item_id == _ItemRow.id)
                .where(_ItemRow.session_id == session_id)
                .order_by(_ItemRow.position)
            )
            for (position, name, digest, predicted, probability, threshold, verdict, label, note, decided, held,
                 kind) in rows:
                writer.writerow([
                    info.id, _csv_cell(info.reviewer), _csv_cell(info.model_name), position, _csv_cell(name), digest,
                    HELD_BACK_LABEL if held else _csv_cell(predicted), "" if held else repr(probability),
                    repr(threshold), verdict or "",
                    _csv_cell(label or ""), _csv_cell(note or ""), decided.isoformat() if decided else "", kind,
                ])
        return buffer.getvalue()

    @_database_errors("the summary could not be read")
    def summary(self, session_id: int) -> ReviewSummary:
        """Agreement, Cohen's kappa and the confusion table between model and reviewer, from SQL counts."""
        # Imported here: writer processes and the page that only records verdicts never need it.
        import pandas as pd

        with self._transaction() as session:
            self._session_row(session, session_id)
            n_items = session.scalar(select(func.count()).where(_ItemRow.session_id == session_id)) or 0
            joined = select(_VerdictRow).join(_ItemRow, _ItemRow.id == _VerdictRow.item_id).where(
                _ItemRow.session_id == session_id).subquery()
            by_verdict = dict(session.execute(
                select(joined.c.verdict, func.count()).group_by(joined.c.verdict)).all())
            pairs = session.execute(
                select(_ItemRow.predicted_label, _VerdictRow.reviewer_label, func.count())
                .join(_VerdictRow, _VerdictRow.item_id == _ItemRow.id)
                .where(_ItemRow.session_id == session_id, _VerdictRow.reviewer_label.is_not(None))
                .group_by(_ItemRow.predicted_label, _VerdictRow.reviewer_label)
            ).all()
        counts = {verdict: int(by_verdict.get(verdict, 0)) for verdict in VERDICTS}
        decided = counts["agree"] + counts["disagree"]
        classes = sorted({model for model, _, _ in pairs} | {reviewer for _, reviewer, _ in pairs})
        n_labelled = sum(count for _, _, count in pairs)

        kappa: float | None = None
        explanation: str | None = None
        if not pairs:
            explanation = "no reviewed image has a reviewer label yet (agree, or disagree with a label)"
        elif len(classes) < 2:
            explanation = (
                f"every labelled image is {classes[0]!r} for both model and reviewer: with a single class, "
                "chance agreement is 100% and kappa is undefined"
            )
        else:
            model_labels = [model for model, _, count in pairs for _ in range(count)]
            reviewer_labels = [reviewer for _, reviewer, count in pairs for _ in range(count)]
            value = cohen_kappa(model_labels, reviewer_labels, classes)
            if math.isfinite(value):
                kappa = value
            else:
                explanation = "kappa is undefined for these labels (chance agreement is 100%)"

        confusion = pd.DataFrame(0, index=pd.Index(classes, name="model"), columns=pd.Index(classes, name="reviewer"))
        for model, reviewer, count in pairs:
            confusion.loc[model, reviewer] = count
        return ReviewSummary(
            session_id=session_id,
            n_items=n_items,
            n_reviewed=sum(counts.values()),
            verdict_counts=counts,
            agreement_rate=counts["agree"] / decided if decided else None,
            kappa=kappa,
            kappa_explanation=explanation,
            n_labelled=n_labelled,
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


def _session_info(row: _SessionRow) -> SessionInfo:
    return SessionInfo(
        id=row.id, token=row.token, reviewer=row.reviewer, owner=row.owner, model_name=row.model_name,
        modality=row.modality, status=row.status, blinded=bool(row.blinded), created_at=row.created_at,
        updated_at=row.updated_at, n_items=row.n_items, n_reviewed=row.n_reviewed,
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
        version=verdict.version if verdict else 0,
        held_back=item.held_back,
        kind=item.kind,
        pacs_ref=item.pacs_ref,
    )


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
