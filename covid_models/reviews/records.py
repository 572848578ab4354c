"""What callers hand the review store and get back: the limits and vocabularies it enforces, its errors, and the
value types (items to review, session headers, items with their verdicts, verdict history, summaries).

Separate from the store so that pages and scripts name these without reaching into database code, and so that the
schema, the input checks and the export share one definition of each limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

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
MAX_SKELETON_CHARS = 4 * MAX_REVIEWER_CHARS  # NFKC may expand a character into several
ITEM_KINDS = ("image", "scan")  # one image (X-ray, CT slice), or a whole CT scan read by its scan-level rule
MAX_PACS_REF_CHARS = 200  # "study/series[/instance]" UIDs (64 characters each at most)


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
