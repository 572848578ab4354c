"""How failed sign-ins slow the next ones down: a few free tries, then a lockout that doubles with each failure.

Failures are counted per subject: the name tried (by its skeleton, so look-alike spellings share one count), the
client address it came from, and for administrator tokens the reviewer and the address that typed them. A refusal
names the wait ("try again in N s") instead of sleeping, so a server thread is never held and one attacker never
slows the sign-ins of other names from other addresses. The counts live in the review database (table
``sign_in_failures``), so every server process and browser tab sees the same lockout.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

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


def wait_text(locked_until: datetime, now: datetime) -> str:
    """"try again in N s" (rounded up: a reviewer who waits that long is let in)."""
    return f"try again in {max(1, math.ceil((locked_until - now).total_seconds()))} s"
