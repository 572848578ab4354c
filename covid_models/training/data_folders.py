"""Which data folder a run reads: $COVID_DATA_DIR, and a folder a visitor types, confined to $COVID_DATA_ROOTS.

Separate from reading what is in a folder (`manifests`): this is the server's boundary, which answers a visitor the
same whether a path outside it exists or not.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from covid_models.training.manifests import DataError

DATA_DIR_ENV = "COVID_DATA_DIR"
DATA_ROOTS_ENV = "COVID_DATA_ROOTS"  # folders (os.pathsep-separated) inside which visitors may type a data folder
MAX_TYPED_LENGTH = 1024


def default_data_dir() -> Path | None:
    """$COVID_DATA_DIR when set and present."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value and Path(value).is_dir() else None


def typed_folders_allowed() -> bool:
    """Whether visitors may type a data folder at all: only when $COVID_DATA_ROOTS names the folders they may use
    (on a shared deployment, leave it unset: the configured $COVID_DATA_DIR is then the only data folder)."""
    return bool(os.environ.get(DATA_ROOTS_ENV, "").strip())


def allowed_data_roots() -> list[Path]:
    """The folders a typed data folder must lie in: $COVID_DATA_ROOTS, else $COVID_DATA_DIR alone (resolved)."""
    value = os.environ.get(DATA_ROOTS_ENV, "").strip()
    entries = value.split(os.pathsep) if value else [os.environ.get(DATA_DIR_ENV, "")]
    return [Path(entry).resolve() for entry in entries if entry.strip() and Path(entry).is_dir()]


def confined_folder(text: str, roots: Sequence[Path]) -> Path:
    """The folder a visitor typed, resolved, when it lies inside one of `roots` and is a folder.

    A relative path is taken inside the first root. DataError otherwise, with a message that names no server path
    and gives no OS error, and that is the same whether an outside path exists or not: the page must not tell a
    visitor which paths exist on the server.
    """
    text = text.strip()
    if not text:
        raise DataError("Type the path of a data folder.")
    if not roots:
        raise DataError("This server does not let visitors choose a data folder; its administrator sets it "
                        f"(${DATA_DIR_ENV}, or ${DATA_ROOTS_ENV} to allow typing one).")
    outside = DataError(f"That folder is not one this server allows. Type a folder inside the data folders it "
                        f"offers (${DATA_ROOTS_ENV}).")
    if len(text) > MAX_TYPED_LENGTH or "\0" in text or text.startswith("~"):
        raise outside
    try:
        candidate = (Path(text) if os.path.isabs(text) else roots[0] / text).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a link loop, an unreadable component
        raise outside from error
    if not any(candidate == root or candidate.is_relative_to(root) for root in roots):
        raise outside
    if not candidate.is_dir():
        raise DataError("There is no folder at that path inside the allowed data folders. Check the spelling.")
    return candidate
