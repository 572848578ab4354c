"""Cleaning what a caller gives the review store before it reaches the database: free text, probabilities, the
items of a new session, a verdict's reviewer label, and a session token from a URL.

Separate from the store so that every door (page, script, PACS path) meets the same rules, and each rule can be
read in one place; each refusal is a ReviewError whose message is fit to show the user.
"""
from __future__ import annotations

import math
import re
import unicodedata

from covid_models.imaging.filenames import bare_file_name
from covid_models.reviews.records import (
    ITEM_KINDS,
    MAX_LABEL_CHARS,
    MAX_NAME_CHARS,
    MAX_PACS_REF_CHARS,
    NewItem,
    ReviewError,
)
from covid_models.reviews.schema import ItemRow

_UID = r"[0-9]+(?:\.[0-9]+)*"
_PACS_REF = re.compile(rf"{_UID}/{_UID}(?:/{_UID})?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")  # secrets.token_urlsafe(24): 192 random bits


def clean_text(value: object, what: str, limit: int, *, multiline: bool = False) -> str:
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


def required_text(value: object, what: str, limit: int) -> str:
    """`clean_text`, refusing text that is empty once cleaned."""
    cleaned = clean_text(value, what, limit)
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


def checked_item(item: NewItem, position: int) -> ItemRow:
    """The row of `item` at `position` in a new session, every field checked and cleaned."""
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
    return ItemRow(
        position=position,
        image_hash=image_hash,
        display_name=bare_file_name(item.display_name, f"image-{image_hash[:12]}", MAX_NAME_CHARS),
        predicted_label=required_text(item.predicted_label, f"{where}: predicted label", MAX_LABEL_CHARS),
        covid_probability=_probability(item.covid_probability, f"{where}: COVID probability"),
        operating_threshold=_probability(item.operating_threshold, f"{where}: operating threshold"),
        held_back=bool(item.held_back),
        kind=item.kind,
        pacs_ref=item.pacs_ref,
    )


def checked_reviewer_label(verdict: str, model_label: str, given: str | None) -> str | None:
    """What the reviewer reads the image as: the model's label on agree, the given label on disagree."""
    label = clean_text(given, "reviewer label", MAX_LABEL_CHARS) if given is not None else ""
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


def session_token(value: object) -> str:
    """A session token from a URL parameter, checked for shape before any database sees it."""
    token = value.strip() if isinstance(value, str) else ""
    if not _TOKEN.fullmatch(token):
        raise ReviewError("This link does not name a review session (it may have been cut short or mistyped).")
    return token
