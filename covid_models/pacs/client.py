"""A DICOMweb PACS (QIDO-RS, WADO-RS, STOW-RS through `dicomweb-client`), configured by the deployment.

Every failure of the network or the server becomes a `PacsError` whose message a reader can act on (down, slow,
credentials refused, study gone), so that a page or a batch shows it and goes on with the next study. Retrieval is
bounded like an upload: the sizes a series' metadata declares are checked against the readers' limits
(`covid_models.imaging.scan`, `covid_models.imaging.ct_volume.VolumeLimits`) before a pixel is fetched, and the
readers check the fetched files again before decoding.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.errors import InvalidDicomError

from covid_models.imaging.ct_volume import VolumeLimits
from covid_models.imaging.scan import MAX_FILE_BYTES, MAX_PIXELS

URL_SETTING = "COVID_DICOMWEB_URL"
USER_SETTING, PASSWORD_SETTING, TOKEN_SETTING = "COVID_DICOMWEB_USER", "COVID_DICOMWEB_PASSWORD", "COVID_DICOMWEB_TOKEN"
VERIFY_SETTING, TIMEOUT_SETTING = "COVID_DICOMWEB_VERIFY", "COVID_DICOMWEB_TIMEOUT"
STORE_SETTING = "COVID_DICOMWEB_STORE"
XRAY_MODALITIES = ("CR", "DX")
CT_MODALITIES = ("CT",)
MODALITIES = XRAY_MODALITIES + CT_MODALITIES
PAGE_SIZE = 50
SEARCH_BATCH = 100  # studies asked of the server at once while a page is filled
DEFAULT_LIMITS = VolumeLimits()
DEFAULT_TIMEOUT = 30.0
RETRIES = 2  # attempts per request on 429/503/504; each waits the library's exponential back-off
_FALSE = ("0", "false", "no", "off")
_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
         "StudyDate": "00080020", "AccessionNumber": "00080050", "PatientID": "00100020", "Modality": "00080060",
         "ModalitiesInStudy": "00080061", "StudyDescription": "00081030", "SeriesDescription": "0008103E",
         "NumberOfStudyRelatedSeries": "00201206", "NumberOfStudyRelatedInstances": "00201208",
         "NumberOfSeriesRelatedInstances": "00201209", "SeriesNumber": "00200011", "InstanceNumber": "00200013",
         "Rows": "00280010", "Columns": "00280011", "BitsAllocated": "00280100", "SamplesPerPixel": "00280002",
         "NumberOfFrames": "00280008", "SOPClassUID": "00080016"}


class PacsError(RuntimeError):
    """The PACS could not do what was asked; the message says why and what to do (no traceback for the reader)."""


class StudyGoneError(PacsError):
    """The study, series or image is no longer in the PACS (deleted or moved since the query)."""


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is and how to sign in; secrets never appear in repr or messages."""

    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    verify: bool | str = True  # TLS verification: on, off (test servers only), or a CA bundle path
    timeout: float = DEFAULT_TIMEOUT
    store_results: bool = False  # results go back into the PACS (opt-in per deployment)

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc.rsplit("@", 1)[-1] or self.url

    @classmethod
    def from_lookup(cls, get: Callable[[str], str]) -> PacsSettings | None:
        """Settings from a lookup (the environment, Streamlit secrets); None when no URL is configured."""
        url = get(URL_SETTING).strip().rstrip("/")
        if not url:
            return None
        if urlsplit(url).scheme not in ("http", "https"):
            raise PacsError(f"{URL_SETTING} must be an http(s) URL of a DICOMweb service.")
        verify_text = get(VERIFY_SETTING).strip()
        verify: bool | str = True if not verify_text or verify_text.lower() in ("1", "true", "yes", "on") else \
            False if verify_text.lower() in _FALSE else verify_text
        try:
            timeout = float(get(TIMEOUT_SETTING) or DEFAULT_TIMEOUT)
        except ValueError as exc:
            raise PacsError(f"{TIMEOUT_SETTING} must be a number of seconds.") from exc
        store = get(STORE_SETTING).strip().lower()
        return cls(url=url, username=get(USER_SETTING).strip(), password=get(PASSWORD_SETTING),
                   token=get(TOKEN_SETTING).strip(), verify=verify, timeout=timeout,
                   store_results=bool(store) and store not in _FALSE)


def settings_from_environment() -> PacsSettings | None:
    return PacsSettings.from_lookup(lambda name: os.environ.get(name, ""))


# ------------------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class StudyQuery:
    """A QIDO-RS study search: a date range, modalities, an accession number or a patient ID (all optional)."""

    date_from: date | None = None
    date_to: date | None = None
    modalities: tuple[str, ...] = MODALITIES
    accession: str = ""
    patient_id: str = ""

    def filters(self) -> dict[str, str]:
        """The QIDO-RS filters but the modality: ModalitiesInStudy is derived from the series by many servers and
        filtered after their limit and offset (Orthanc 1.10 returns short or empty pages with it), so `matches`
        applies it to the studies returned."""
        filters: dict[str, str] = {}
        if self.date_from or self.date_to:
            low = self.date_from.strftime("%Y%m%d") if self.date_from else ""
            high = self.date_to.strftime("%Y%m%d") if self.date_to else ""
            filters["StudyDate"] = low if low == high else f"{low}-{high}"
        if self.accession.strip():
            filters["AccessionNumber"] = self.accession.strip()
        if self.patient_id.strip():
            filters["PatientID"] = self.patient_id.strip()
        return filters

    def matches(self, modalities: Sequence[str]) -> bool:
        return not self.modalities or bool(set(modalities) & set(self.modalities))


@dataclass(frozen=True)
class Study:
    """One study as a query lists it (shown to the reader, who may see the PACS; never stored by this tool)."""

    uid: str
    date: str
    modalities: tuple[str, ...]
    accession: str
    patient_id: str
    description: str
    n_series: int | None
    n_instances: int | None


@dataclass(frozen=True)
class StudyPage:
    studies: list[Study]
    offset: int  # where this page began among the server's studies matching all but the modality
    next_offset: int | None  # where the next page begins; None: this is the last

    @property
    def more(self) -> bool:
        return self.next_offset is not None


@dataclass(frozen=True)
class SeriesEntry:
    study_uid: str
    series_uid: str
    modality: str
    number: int | None
    n_instances: int | None
    description: str


@dataclass(frozen=True)
class InstanceRef:
    """The UIDs that fetch one image again; `text` is how a review item stores it (series-level for a scan)."""

    study_uid: str
    series_uid: str
    sop_uid: str = ""

    @property
    def text(self) -> str:
        return "/".join(uid for uid in (self.study_uid, self.series_uid, self.sop_uid) if uid)

    @classmethod
    def parse(cls, text: str) -> InstanceRef:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"not a PACS reference: {text!r}")
        return cls(*parts)


def _value(entry: dict[str, Any], keyword: str, default: Any = "") -> Any:
    values = entry.get(_TAGS[keyword], {}).get("Value") or [default]
    return default if values[0] is None else values[0]


def _int_or_none(entry: dict[str, Any], keyword: str) -> int | None:
    value = _value(entry, keyword, None)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _study(entry: dict[str, Any]) -> Study:
    return Study(uid=str(_value(entry, "StudyInstanceUID")), date=str(_value(entry, "StudyDate")),
                 modalities=_values(entry, "ModalitiesInStudy"), accession=str(_value(entry, "AccessionNumber")),
                 patient_id=str(_value(entry, "PatientID")), description=str(_value(entry, "StudyDescription")),
                 n_series=_int_or_none(entry, "NumberOfStudyRelatedSeries"),
                 n_instances=_int_or_none(entry, "NumberOfStudyRelatedInstances"))


def _values(entry: dict[str, Any], keyword: str) -> tuple[str, ...]:
    return tuple(str(v) for v in entry.get(_TAGS[keyword], {}).get("Value") or ())


# ------------------------------------------------------------------------------------------------- the PACS
class Pacs:
    """One DICOMweb service; safe to share between threads only as far as requests' Session is (one per thread)."""

    def __init__(self, settings: PacsSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        session = session or requests.Session()
        session.verify = settings.verify
        if settings.token:
            session.headers["Authorization"] = f"Bearer {settings.token}"
        elif settings.username:
            session.auth = (settings.username, settings.password)
        self.client = DICOMwebClient(settings.url, session=session, timeout=settings.timeout)
        self.client.set_http_retry_params(retry=True, max_attempts=RETRIES, wait_exponential_multiplier=200)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        host, timeout = self.settings.host, self.settings.timeout
        try:
            yield
        except requests.exceptions.SSLError as exc:
            raise PacsError(f"The PACS at {host} presented a TLS certificate that could not be verified while "
                            f"{action}. Ask the administrator for its CA bundle ({VERIFY_SETTING}).") from exc
        except requests.exceptions.Timeout as exc:
            raise PacsError(f"The PACS at {host} did not answer within {timeout:g} s while {action}. It may be busy: "
                            "try again later, or narrow the query.") from exc
        except requests.exceptions.ConnectionError as exc:
            raise PacsError(f"The PACS at {host} could not be reached while {action}. Check that it is running and "
                            "that this server may connect to it.") from exc
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 401:
                raise PacsError(f"The PACS at {host} refused the credentials while {action}. Check the user and "
                                f"password or token ({USER_SETTING}, {PASSWORD_SETTING}, {TOKEN_SETTING}).") from exc
            if status == 403:
                raise PacsError(f"The PACS at {host} does not allow this account to do this ({action}).") from exc
            if status in (404, 410):
                raise StudyGoneError(f"This study is no longer in the PACS (deleted or moved since it was listed); "
                                     f"nothing was read while {action}.") from exc
            raise PacsError(f"The PACS at {host} answered HTTP {status} while {action}.") from exc
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"The request to the PACS at {host} failed while {action} ({type(exc).__name__}).") \
                from exc
        except (InvalidDicomError, ValueError, EOFError) as exc:  # the answer did not parse as DICOM(web)
            raise PacsError(f"The PACS at {host} sent an answer that is not valid DICOM while {action}; nothing was "
                            "read from it.") from exc

    # -- QIDO-RS
    def search_studies(self, query: StudyQuery, offset: int = 0, limit: int = PAGE_SIZE) -> StudyPage:
        """Up to `limit` studies matching `query`, in the PACS's order, from `offset` (a page's `next_offset`).

        The server is asked in batches of `SEARCH_BATCH` with every filter but the modality, which is applied here
        (see `StudyQuery.filters`), until one study more than the page holds is found or the server has no more."""
        fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances"]
        found: list[tuple[int, Study]] = []
        position = offset
        while len(found) <= limit:
            with self._errors("searching for studies"):
                batch = self.client.search_for_studies(offset=position or None, limit=SEARCH_BATCH, fields=fields,
                                                       search_filters=query.filters())
            for index, entry in enumerate(batch):
                study = _study(entry)
                if query.matches(study.modalities):
                    found.append((position + index, study))
            position += len(batch)
            if len(batch) < SEARCH_BATCH:
                break
        more = len(found) > limit
        return StudyPage(studies=[study for _, study in found[:limit]], offset=offset,
                         next_offset=found[limit][0] if more else None)

    def series(self, study_uid: str) -> list[SeriesEntry]:
        """The series of a study, in series-number order."""
        with self._errors("listing the series of a study"):
            found = self.client.search_for_series(study_uid, fields=["SeriesDescription",
                                                                     "NumberOfSeriesRelatedInstances"])
        entries = [SeriesEntry(study_uid=study_uid, series_uid=str(_value(e, "SeriesInstanceUID")),
                               modality=str(_value(e, "Modality")), number=_int_or_none(e, "SeriesNumber"),
                               n_instances=_int_or_none(e, "NumberOfSeriesRelatedInstances"),
                               description=str(_value(e, "SeriesDescription"))) for e in found]
        return sorted(entries, key=lambda s: (s.number is None, s.number or 0))

    def has_instance(self, study_uid: str, sop_uid: str) -> bool:
        """Whether an instance is in the study (to store a result once only)."""
        with self._errors("looking for a stored result"):
            return bool(self.client.search_for_instances(study_uid, search_filters={"SOPInstanceUID": sop_uid}))

    # -- WADO-RS, bounded
    def _metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        with self._errors("reading a series' description"):
            return self.client.retrieve_series_metadata(study_uid, series_uid)

    def instances(self, study_uid: str, series_uid: str) -> list[InstanceRef]:
        """The images of a series in instance-number order (from its metadata: no pixel is fetched)."""
        entries = sorted(self._metadata(study_uid, series_uid),
                         key=lambda e: (_int_or_none(e, "InstanceNumber") is None, _int_or_none(e, "InstanceNumber")
                                        or 0))
        return [InstanceRef(study_uid, series_uid, str(_value(e, "SOPInstanceUID"))) for e in entries]

    def fetch_instance(self, ref: InstanceRef) -> bytes:
        """One image's DICOM file, after its declared size passed the image reader's limits."""
        entries = [e for e in self._metadata(ref.study_uid, ref.series_uid)
                   if _value(e, "SOPInstanceUID") == ref.sop_uid]
        if not entries:
            raise StudyGoneError("This image is no longer in the PACS (deleted or moved since it was listed).")
        _check_instance(entries[0])
        with self._errors("retrieving an image"):
            dataset = self.client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid)
        return _file_bytes(dataset, MAX_FILE_BYTES)

    def fetch_series(self, study_uid: str, series_uid: str, limits: VolumeLimits = DEFAULT_LIMITS
                     ) -> list[tuple[str, bytes]]:
        """A series' DICOM files (named image-0001.dcm...), after the sizes its metadata declares passed the volume
        reader's limits (count, bytes, voxels)."""
        entries = self._metadata(study_uid, series_uid)
        if not entries:
            raise StudyGoneError("This series is no longer in the PACS (deleted or moved since it was listed).")
        _check_series(entries, limits)
        files, total = [], 0
        with self._errors("retrieving a series"):
            for number, dataset in enumerate(self.client.iter_series(study_uid, series_uid), start=1):
                data = _file_bytes(dataset, limits.max_file_bytes)
                total += len(data)
                if total > limits.max_total_bytes:
                    raise PacsError("This series is larger than the volume reader accepts; it was not read.")
                files.append((f"image-{number:04d}.dcm", data))
        return files

    # -- STOW-RS
    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Store instances (all of one study) by STOW-RS."""
        study_uid = datasets[0].StudyInstanceUID
        with self._errors("storing a result"):
            self.client.store_instances(list(datasets), study_instance_uid=study_uid)


def _declared_bytes(entry: dict[str, Any]) -> tuple[int, int]:
    """(pixels per frame, bytes of all frames) as the metadata declares them, 0 when a size is missing."""
    rows, columns = _int_or_none(entry, "Rows") or 0, _int_or_none(entry, "Columns") or 0
    frames = _int_or_none(entry, "NumberOfFrames") or 1
    samples = _int_or_none(entry, "SamplesPerPixel") or 1
    bits = _int_or_none(entry, "BitsAllocated") or 16
    return rows * columns, rows * columns * samples * frames * -(-bits // 8)


def _check_instance(entry: dict[str, Any]) -> None:
    pixels, size = _declared_bytes(entry)
    if pixels == 0:
        raise PacsError("This object declares no image size (it is not an image); it was not retrieved.")
    if pixels > MAX_PIXELS or size > MAX_FILE_BYTES:
        raise PacsError(f"This image declares {pixels / 1e6:.0f} megapixels ({size / 2**20:.0f} MB); the reader "
                        f"accepts at most {MAX_PIXELS / 1e6:.0f} megapixels and "
                        f"{MAX_FILE_BYTES / 2**20:.0f} MB. It was not retrieved.")


def _check_series(entries: list[dict[str, Any]], limits: VolumeLimits) -> None:
    if len(entries) > min(limits.max_files, limits.max_slices):
        raise PacsError(f"This series has {len(entries)} images; a scan is read with at most "
                        f"{min(limits.max_files, limits.max_slices)}. It was not retrieved.")
    sizes = [_declared_bytes(e) for e in entries]
    voxels, total = sum(p for p, _ in sizes), sum(b for _, b in sizes)
    if voxels > limits.max_voxels or total > limits.max_total_bytes or max(b for _, b in sizes) > \
            limits.max_file_bytes:
        raise PacsError(f"This series declares {voxels / 1e6:.0f} million voxels ({total / 2**20:.0f} MB); a scan "
                        f"is read with at most {limits.max_voxels / 1e6:.0f} million. It was not retrieved.")


def _file_bytes(dataset: pydicom.Dataset, limit: int) -> bytes:
    """The retrieved object as a DICOM file (its pixel data as sent: nothing is decoded here)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    if buffer.tell() > limit:
        raise PacsError(f"A retrieved file is larger than {limit / 2**20:.0f} MB; it was not read.")
    return buffer.getvalue()
