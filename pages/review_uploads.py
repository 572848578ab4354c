"""Where a Review item's image or scan is on the server. The review database keeps hashes and file names, never pixels:
uploads live in a bounded cache per reviewer for the life of the process (never served to another reviewer), the
data folder's images are found again by file name and checked against the stored hash, PACS images are fetched
again, and after a restart the missing images, or a scan whose analysis is gone, are asked for again and matched by
content.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import streamlit as st

from covid_models.analysis.scan_analysis import ScanAnalysis
from covid_models.imaging.ct_volume import VolumeReadError
from covid_models.imaging.io import content_hash, files_hash
from covid_models.models.checkpoint import CheckpointError
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import ItemView, SessionInfo
from covid_models.reviews.store import ReviewStore
from covid_models.training.manifests import DataError, load_dataset
from covid_models.training.splits import LeakageError
from pages.review_pacs import pacs_image, pacs_scan
from pages.review_readings import pacs_hooks, review_scan
from pages.review_state import MISSING_KEY, plain
from pages.shared import data_dir, show_error

REVIEWER_CACHE_BYTES = 64 * 1024 * 1024  # uploads kept per reviewer; a batch larger than this is refused
SERVER_CACHE_BYTES = 128 * 1024 * 1024  # all reviewers together (the app's budget); least recently active go first
MAX_NAMES_LISTED = 20


class UploadCache:
    """Uploaded files by (reviewer, content hash) for the life of the server process.

    A reviewer's uploads are never served to another reviewer, whatever hash they ask for. Each reviewer keeps
    at most REVIEWER_CACHE_BYTES (least recently used dropped); beyond SERVER_CACHE_BYTES in all, the least
    recently active reviewer's files are dropped first, so one reviewer's batch never evicts another's
    working set while there is room.
    """

    def __init__(self, per_reviewer: int, total: int) -> None:
        self.per_reviewer, self.total = per_reviewer, total
        self._files: OrderedDict[str, OrderedDict[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, owner: str, digest: str, data: bytes) -> None:
        with self._lock:
            files = self._files.setdefault(owner, OrderedDict())
            self._files.move_to_end(owner)
            files[digest] = data
            files.move_to_end(digest)
            while len(files) > 1 and sum(map(len, files.values())) > self.per_reviewer:
                files.popitem(last=False)
            while len(self._files) > 1 and sum(len(v) for f in self._files.values() for v in f.values()) > self.total:
                self._files.popitem(last=False)

    def get(self, owner: str, digest: str) -> bytes | None:
        with self._lock:
            files = self._files.get(owner)
            if files is None or digest not in files:
                return None
            self._files.move_to_end(owner)
            files.move_to_end(digest)
            return files[digest]


@st.cache_resource(show_spinner=False)
def upload_cache() -> UploadCache:
    return UploadCache(REVIEWER_CACHE_BYTES, SERVER_CACHE_BYTES)


@st.cache_data(show_spinner=False)
def files_by_name(root: str, modality: str, mtime: float) -> dict[str, str]:
    """Bare file name -> path over a data folder's manifest, to find a session's images again."""
    return {Path(path).name: path for path in load_dataset(root, modality)["image"]}


def manifest_mtime(root: Path, modality: str) -> float:
    manifest = root / modality / "manifest.csv"
    return manifest.stat().st_mtime if manifest.is_file() else 0.0


def image_bytes(reviewer: Reviewer, info: SessionInfo, item: ItemView) -> bytes | None:
    """The item's image: from the reviewer's upload cache, else the data folder (checked against the hash); a PACS
    image from the PACS."""
    if item.pacs_ref:
        return pacs_image(reviewer, item)
    data = upload_cache().get(reviewer.key, item.image_hash)
    if data is not None:
        return data
    root = data_dir()
    if root is None:
        return None
    try:
        path = files_by_name(str(root), info.modality, manifest_mtime(root, info.modality)).get(item.display_name)
        data = Path(path).read_bytes() if path and Path(path).is_file() else None
    except (DataError, LeakageError, OSError):
        return None
    return data if data is not None and content_hash(data) == item.image_hash else None


def missing_images(store: ReviewStore, reviewer: Reviewer, info: SessionInfo) -> list[tuple[int, str, str]]:
    """(position, hash, name) of the session's images not on the server; found once per opening and kept."""
    if MISSING_KEY not in st.session_state:
        cache, root = upload_cache(), data_dir()
        names: dict[str, str] = {}
        if root is not None:
            try:
                names = files_by_name(str(root), info.modality, manifest_mtime(root, info.modality))
            except (DataError, LeakageError, OSError):
                names = {}
        st.session_state[MISSING_KEY] = [ref for ref in store.image_refs(info.id)
                                         if cache.get(reviewer.key, ref[1]) is None and ref[2] not in names]
    return st.session_state[MISSING_KEY]


def reupload(store: ReviewStore, reviewer: Reviewer, info: SessionInfo) -> None:
    """After a restart, uploaded images are gone from the server: ask for the same files, matched by hash."""
    missing = missing_images(store, reviewer, info)
    if not missing:
        return
    notice = st.empty()
    wanted = {digest for _, digest, _ in missing}
    files = st.file_uploader("Re-upload the missing images", accept_multiple_files=True,
                             key=f"review-reupload-{info.id}") or []
    unmatched = []
    for upload in files:
        data = upload.getvalue()
        digest = content_hash(data)
        if digest in wanted:
            upload_cache().put(reviewer.key, digest, data)
        else:
            unmatched.append(upload.name)
    if unmatched:
        st.info("Not part of this session (different content): " + plain(", ".join(unmatched)))
    still = [ref for ref in missing if upload_cache().get(reviewer.key, ref[1]) is None]
    st.session_state[MISSING_KEY] = still
    if still:
        names = ", ".join(name for _, _, name in still[:MAX_NAMES_LISTED])
        more = f" and {len(still) - MAX_NAMES_LISTED} more" if len(still) > MAX_NAMES_LISTED else ""
        notice.warning(f"{len(still)} image(s) of this session are no longer on the server (the app was restarted, "
                       "or they were uploaded in another sign-in of the server). Upload the same files again; they "
                       f"are matched by content, whatever their names: {plain(names)}{more}",
                       icon=":material/upload_file:")
    else:
        notice.success("Every image of this session is back.", icon=":material/task_alt:")


def rescan(reviewer: Reviewer, info: SessionInfo, item: ItemView, directory: str | None) -> ScanAnalysis | None:
    """After a restart (or once evicted) a scan's analysis is gone: ask for the same scan, matched by content (a PACS
    scan is fetched again)."""
    if item.pacs_ref:
        return pacs_scan(reviewer, info, item, directory, pacs_hooks())
    notice = st.empty()
    uploads = st.file_uploader("Upload this scan again", accept_multiple_files=True,
                               key=f"review-rescan-{info.id}-{item.position}") or []
    files = [(upload.name, upload.getvalue()) for upload in uploads]
    if files and files_hash([content_hash(data) for _, data in files]) != item.image_hash:
        st.info("Not this scan (different content): " + plain(", ".join(name for name, _ in files)))
    elif files and directory is not None:
        try:
            return review_scan(reviewer, files, item.image_hash, directory)
        except (VolumeReadError, CheckpointError) as error:
            show_error(plain(error))
    if directory is None:
        notice.warning(f"Model {plain(info.model_name)} is no longer installed, so this scan cannot be shown again; "
                       "its stored reading stays.", icon=":material/block:")
    else:
        notice.warning("This scan's slices are no longer on the server (the app was restarted, or other scans took "
                       "its place). Its stored reading is kept; upload the same scan again (a zip, a NIfTI file, or "
                       "all the DICOM files of its series) to show its slices. The verdict buttons wait for it.",
                       icon=":material/upload_file:")
    return None
