"""How failed sign-ins slow the next ones down: a few free tries, then a lockout that doubles with each failure.

Failures (a wrong passphrase, a name nobody registered, a registration of a taken name) are counted per subject:
the name tried (by its skeleton, so look-alike spellings share one count), the client address it came from, and for
administrator tokens the reviewer and the address that typed them. A refusal
names the wait ("try again in N s") instead of sleeping, so a server thread is never held and one attacker never
slows the sign-ins of other names from other addresses. The counts live in the review database (table
``sign_in_failures``), so every server process and browser tab sees the same lockout: `refuse_while_locked` and
`count_failure` read and write them inside the store's transactions.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from covid_models.reviews.records import SignInThrottled
from covid_models.reviews.schema import FailureRow, utc_now

# Failures allowed before any lockout, per kind of subject. An address may try more names than one name may be
# tried (a shared proxy carries several honest reviewers' typing mistakes).
FREE_FAILURES = {"name": 3, "client": 10, "admin": 3, "admin-client": 5}
SUBJECT_TEXT = {"name": "for this name", "client": "from this address",
                "admin": "of an administrator token by this reviewer", "admin-client": "of an administrator token from "
                "this address"}
MAX_LOCK_S = 15 * 60
FORGET_AFTER = timedelta(hours=1)  # a count with no failure for this long starts again from zero


def subject(kind: str, value: str) -> str:
    """The database key of one count: "name:<skeleton>", "client:<address>", "admin:<reviewer key>", ..."""
    if kind not in FREE_FAILURES:
        raise ValueError(f"unknown sign-in subject kind {kind!r}")
    return f"{kind}:{value}"


def lock_seconds(subject_key: str, failures: int) -> int:
    """How long `subject_key` is locked after its `failures`-th failure: 0 while free, then 2, 4, 8 ... s, capped."""
    over = failures - FREE_FAILURES[subject_key.split(":", 1)[0]]
    return 0 if over <= 0 else min(2 ** over, MAX_LOCK_S)


def wait_seconds(locked_until: datetime, now: datetime) -> int:
    """Whole seconds until the lock ends, rounded up: a reviewer who waits that long is let in."""
    return max(1, math.ceil((locked_until - now).total_seconds()))


def wait_text(locked_until: datetime, now: datetime) -> str:
    """"try again in N s"."""
    return f"try again in {wait_seconds(locked_until, now)} s"


def refuse_while_locked(session: Session, counts: list[str]) -> None:
    """SignInThrottled, saying how long to wait, while any of the subjects `counts` is locked."""
    if not counts:
        return
    now = utc_now()
    locked = session.execute(select(FailureRow.subject, FailureRow.locked_until).where(
        FailureRow.subject.in_(counts), FailureRow.locked_until > now)
        .order_by(FailureRow.locked_until.desc()).limit(1)).one_or_none()
    if locked is not None:
        key, until = locked
        raise SignInThrottled(f"Too many failed sign-ins {SUBJECT_TEXT[key.split(':', 1)[0]]}: "
                              f"{wait_text(until, now)}.", wait_seconds(until, now))


def count_failure(session: Session, counts: list[str]) -> str:
    """Count one failure against each subject of `counts` (locking those past their free failures), forget the
    counts long past, and say what was counted ("name failure 4, locked 2 s; client failure 4") for the log."""
    now = utc_now()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(FailureRow.__table__.delete().where(  # the addresses of failures long past go
        FailureRow.last_failure < now - FORGET_AFTER,
        or_(FailureRow.locked_until.is_(None), FailureRow.locked_until < now)))
    locks = []
    for key in counts:
        session.execute(insert(FailureRow).values(subject=key, failures=0, last_failure=now)
                        .on_conflict_do_nothing(index_elements=["subject"]))
        row = session.scalars(select(FailureRow).where(FailureRow.subject == key).with_for_update()).one()
        failures = 1 if now - row.last_failure > FORGET_AFTER else row.failures + 1
        lock = lock_seconds(key, failures)
        row.failures, row.last_failure = failures, now
        row.locked_until = now + timedelta(seconds=lock) if lock else None
        locks.append(f"{key.split(':', 1)[0]} failure {failures}" + (f", locked {lock} s" if lock else ""))
    return "; ".join(locks)


def forget_failures(session: Session, subject_key: str) -> None:
    """Clear one subject's count: a name's (or a reviewer's token count) after they sign in rightly."""
    session.execute(FailureRow.__table__.delete().where(FailureRow.subject == subject_key))
