"""Who is asking the review store: the ``Reviewer`` value, and the proofs of identity the store checks (a
passphrase, hashed with salted scrypt and matched in constant time; the administrator token; a name's key and
skeleton, which say when two spellings are one reviewer).

Separate from the store so that the rules for secrets sit in one short file a security review can read whole;
`names` holds the name rules themselves and `sign_in_guard` the lockout after failures.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from covid_models.reviews.checks import clean_text, required_text
from covid_models.reviews.names import admin_token_problem, name_key, skeleton
from covid_models.reviews.records import MAX_OWNER_CHARS, MAX_REVIEWER_CHARS, MAX_SKELETON_CHARS, ReviewError

MIN_PASSPHRASE_CHARS = 8
MAX_PASSPHRASE_CHARS = 1024
# scrypt at n=2**14, r=8: about 16 MB and tens of milliseconds per check, the interactive-login setting.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


@dataclass(frozen=True)
class Reviewer:
    """Who is asking: ``key`` identifies the owner of sessions ("oidc:<account>" or "name:<name key>", see
    `names.name_key`), ``name`` is shown and exported, ``admin`` may open, export and assign every session."""

    key: str
    name: str
    admin: bool = False

    @classmethod
    def from_oidc(cls, account: str, name: str, *, admin: bool = False) -> Reviewer:
        """An identity proven by the app's OpenID Connect login (``st.user``): no passphrase involved."""
        account = required_text(account, "account", MAX_OWNER_CHARS - 5).lower()
        return cls(key=f"oidc:{account}", name=clean_text(name, "name", MAX_REVIEWER_CHARS) or account, admin=admin)


def hash_passphrase(passphrase: str, salt: bytes | None = None) -> str:
    """The stored form of a passphrase: "scrypt$n$r$p$salt$digest", with a fresh random salt unless one is given."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(passphrase.encode(), salt=salt, maxmem=64 * 1024 * 1024, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


# What a passphrase typed for an unknown name is checked against: the parameters of a real hash, so the answer costs
# the same one scrypt as a wrong passphrase for a registered name, and a digest drawn at random, which nothing matches.
DECOY_HASH = (f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${secrets.token_hex(16)}$"
              f"{secrets.token_hex(_SCRYPT['dklen'])}")


def passphrase_matches(passphrase: str, stored: str) -> bool:
    """Whether `passphrase` is the one `stored` was hashed from (constant-time; False for a malformed hash)."""
    try:
        _, n, r, p, salt, digest = stored.split("$")
        computed = hashlib.scrypt(passphrase.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                  dklen=len(digest) // 2, maxmem=64 * 1024 * 1024)
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


def admin_token_matches(typed: str, configured: str | None) -> bool:
    """Whether `typed` is the configured admin token (constant-time; never True when none is configured or the
    configured one is too weak to be used, see `names.admin_token_problem`)."""
    return (bool(configured) and admin_token_problem(str(configured)) is None
            and hmac.compare_digest(typed.encode(), str(configured).encode()))


def name_identity(name: str) -> tuple[str, str]:
    """(key, skeleton) of a cleaned reviewer name; ReviewError when normalising makes either too long to store
    (a few characters expand to many under NFKC or case folding)."""
    key, shape = f"name:{name_key(name)}", skeleton(name)
    if len(key) > MAX_OWNER_CHARS or len(shape) > MAX_SKELETON_CHARS:
        raise ReviewError("this reviewer name is too long once normalised; choose a shorter one")
    return key, shape


def checked_passphrase(passphrase: object) -> str:
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
