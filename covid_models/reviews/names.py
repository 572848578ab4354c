"""Reviewer names and secrets: one identity per name however it is typed, and secrets that are not trivially guessed.

A name is a sign-in identity, so two spellings that look the same on screen must not be two reviewers: the key of a
name is its NFKC form, case-folded (full-width letters, ligatures and mathematical letters become plain ones), and
its skeleton goes further, mapping letters of other scripts that look like Latin ones (Cyrillic "а", Greek "ο"),
dropping accents and mapping digits and pairs that read as letters ("0" as "o", "rn" as "m"), in the spirit of the
Unicode confusable skeleton (UTS #39). A new name whose skeleton is already taken is refused as a look-alike.
"""
from __future__ import annotations

import unicodedata

MIN_ADMIN_TOKEN_CHARS = 16
MIN_ADMIN_TOKEN_DISTINCT = 6  # "aaaaaaaaaaaaaaaa" and "abababababababab" are long but not secret
# Tokens people set by hand, lower-cased; anything shorter than MIN_ADMIN_TOKEN_CHARS is refused anyway.
COMMON_ADMIN_TOKENS = frozenset({
    "administrator123", "administrator1234", "adminadminadmin1", "adminadminadminadmin", "administrator2024",
    "administrator2025", "administrator2026", "changemechangeme", "changeme-changeme", "passwordpassword",
    "password12345678", "password123456789", "1234567890123456", "12345678901234567890", "0123456789abcdef",
    "qwertyuiopasdfgh", "qwertyuiop123456", "letmeinletmeinletmein", "supersecretpassword", "supersecrettoken",
    "covid-review-admin", "covid-review-admin-token", "covid_review_admin_token", "review-admin-token",
})

# Letters of other scripts (and Latin variants) that look like a Latin letter, lower case (names are case-folded
# first). Where the capital and the small letter look like different Latin letters, the capital wins: names are
# written capitalised ("Нill" with a Cyrillic capital En reads as "Hill").
_LOOK_ALIKES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "ԁ": "d", "е": "e", "ё": "e", "є": "e", "з": "3", "і": "i", "ї": "i", "ј": "j",
    "к": "k", "ҡ": "k", "м": "m", "н": "h", "һ": "h", "о": "o", "п": "n", "р": "p", "ԛ": "q", "с": "c", "ѕ": "s",
    "т": "t", "у": "y", "ү": "y", "ѵ": "v", "ԝ": "w", "ѡ": "w", "х": "x", "ӏ": "l", "ԍ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ζ": "z", "η": "h", "ι": "i", "κ": "k", "μ": "m", "ν": "n", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
    # Latin letters and signs that read as other Latin letters
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ɪ": "i", "ʏ": "y", "ᴅ": "d", "ᴇ": "e", "ʀ": "r", "ɴ": "n",
    "ᴏ": "o", "ᴛ": "t", "ᴜ": "u", "ʜ": "h", "ᴋ": "k", "ᴍ": "m", "ʟ": "l", "ᴄ": "c", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
    "ø": "o", "đ": "d", "ł": "l", "ħ": "h",
    # digits and signs that read as letters; dashes and quotes that read as the plain ones
    "0": "o", "1": "l", "|": "l", "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "−": "-", "’": "'", "‘": "'",
    "`": "'", "´": "'",
})
_LETTER_PAIRS = (("rn", "m"), ("vv", "w"))


def name_key(name: str) -> str:
    """The identity of a reviewer name: its NFKC form, case-folded (``Reviewer.key`` is "name:" and this)."""
    return unicodedata.normalize("NFKC", name).casefold()


def skeleton(name: str) -> str:
    """What a name looks like: two names with one skeleton are look-alikes, and only the first may be registered."""
    decomposed = unicodedata.normalize("NFD", name_key(name))
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    mapped = unicodedata.normalize("NFKC", bare).casefold().translate(_LOOK_ALIKES)
    for pair, letter in _LETTER_PAIRS:
        mapped = mapped.replace(pair, letter)
    return " ".join(mapped.split())


def admin_token_problem(token: str) -> str | None:
    """Why a configured administrator token is refused (too short, one of the usual ones, too few distinct
    characters), or None when it is acceptable. The token itself is never part of the answer."""
    token = token.strip()
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        return f"it is {len(token)} characters long; an administrator token has at least {MIN_ADMIN_TOKEN_CHARS}"
    if token.lower() in COMMON_ADMIN_TOKENS:
        return "it is one of the tokens people commonly choose"
    if len(set(token)) < MIN_ADMIN_TOKEN_DISTINCT:
        return f"it uses fewer than {MIN_ADMIN_TOKEN_DISTINCT} distinct characters"
    return None
