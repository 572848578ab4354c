"""What to read in a PACS study and how: X-ray instances are image items, CT series whole-scan items, each read by
the same library calls as an upload (`io.read_image` + the chest-image check + `analysis.predict`, or
`volumes.read_volume` + `scan_analysis.analyse_scan`), and turned into a `Reading` for the CSV and the report.

Shared by the Review page's "From PACS" source and scripts/pacs_screen.py, so both give the answer every other
door gives.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pydicom

from covid_models.analysis.image_analysis import operating_point_text, predict
from covid_models.analysis.image_checks import check_image
from covid_models.imaging.ct_volume import Volume, VolumeLimits
from covid_models.imaging.io import read_image
from covid_models.imaging.scan import ImageReadError, Scan
from covid_models.imaging.volumes import read_volume
from covid_models.pacs.client import CT_MODALITIES, DEFAULT_LIMITS, XRAY_MODALITIES, InstanceRef, Pacs

if TYPE_CHECKING:
    from covid_models.analysis.scan_analysis import ScanAnalysis
    from covid_models.models.inference import Classifier, Prediction
    from covid_models.models.segmentation import Segmenter

KINDS = {"xray": "image", "ct": "scan"}


@dataclass(frozen=True)
class PacsItem:
    """One thing to read in a study: an X-ray image (instance) or a CT scan (series). `label` names it without
    identifiers, for the review item's display name."""

    ref: InstanceRef
    kind: str
    label: str


@dataclass(frozen=True)
class Reading:
    """What the analysis of one image or scan says, as the CSV and a report carry it (probability None: held back)."""

    item: InstanceRef  # the image (or, for a scan, the series) read
    kind: str  # "image" or "scan"
    model_name: str
    weights_sha256: str
    probability: float | None
    threshold: float
    operating_point: str  # the card's operating point in words
    lesion_burden_percent: float | None = None
    severity_score: int | None = None

    @property
    def held_back(self) -> bool:
        return self.probability is None

    @property
    def positive(self) -> bool | None:
        return None if self.probability is None else self.probability >= self.threshold


def study_items(pacs: Pacs, study_uid: str, modality: str) -> list[PacsItem]:
    """The items of a study for a model of `modality` ("xray": every CR/DX image; "ct": every CT series)."""
    items = []
    for number, series in enumerate(pacs.series(study_uid), start=1):
        if modality == "ct" and series.modality in CT_MODALITIES:
            items.append(PacsItem(InstanceRef(study_uid, series.series_uid), "scan",
                                  f"CT series {number}" + (f" ({series.n_instances} images)"
                                                           if series.n_instances else "")))
        elif modality == "xray" and series.modality in XRAY_MODALITIES:
            for index, ref in enumerate(pacs.instances(study_uid, series.series_uid), start=1):
                items.append(PacsItem(ref, "image", f"{series.modality} series {number} image {index}"))
    return items


def headers(files: Sequence[bytes]) -> list[pydicom.Dataset]:
    """The DICOM headers of fetched files (no pixel data), for a report's evidence."""
    return [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for data in files]


def fetch_image(pacs: Pacs, item: PacsItem) -> bytes:
    return pacs.fetch_instance(item.ref)


def fetch_scan(pacs: Pacs, item: PacsItem, limits: VolumeLimits = DEFAULT_LIMITS) -> list[tuple[str, bytes]]:
    return pacs.fetch_series(item.ref.study_uid, item.ref.series_uid, limits)


def read_xray(data: bytes, classifier: Classifier, lungs: Segmenter | None = None) -> tuple[Scan, Prediction]:
    """The image read and checked as the Analyze page checks it, then predicted; an image the checks refuse raises
    ImageReadError with their reasons."""
    from covid_models.analysis.image_checks import lung_mask

    scan = read_image(data, name="image.dcm")
    mask = None if lungs is None else lung_mask(lungs, scan)
    check = check_image(scan, data, {classifier.card.modality: classifier}, mask)
    if check.reasons:
        raise ImageReadError("This does not look like a chest image: " + "; ".join(check.reasons) + ".")
    return scan, predict(scan, [classifier])


def read_ct(files: list[tuple[str, bytes]], classifier: Classifier, segmenter: Segmenter | None = None
            ) -> tuple[Volume, ScanAnalysis]:
    """The series read as the CT scan page reads an upload (the largest axial series), then analysed."""
    from covid_models.analysis.scan_analysis import analyse_scan

    volume = read_volume(files)
    return volume, analyse_scan(volume, classifier, segmenter)


def weights_sha256(classifier: Classifier) -> str:
    return classifier.card.sha256 or ""


def image_reading(item: PacsItem, classifier: Classifier, prediction: Prediction) -> Reading:
    held_back = prediction.out_of_distribution or prediction.positive_probability is None
    return Reading(item=item.ref, kind="image", model_name=classifier.name, weights_sha256=weights_sha256(classifier),
                   probability=None if held_back else float(prediction.positive_probability),
                   threshold=float(prediction.threshold),
                   operating_point=operating_point_text([classifier], prediction))


def scan_reading(item: PacsItem, classifier: Classifier, analysis: ScanAnalysis,
                 burden_percent: float | None = None, severity_score: int | None = None) -> Reading:
    """A scan's reading; the lesion burden and severity score come from the analysis' infection burden unless given
    (a quantitative CT reading's own figures)."""
    burden = analysis.burden
    if burden is not None:
        burden_percent = burden.percent if burden_percent is None else burden_percent
        severity_score = burden.severity_score if severity_score is None else severity_score
    return Reading(item=item.ref, kind="scan", model_name=classifier.name, weights_sha256=weights_sha256(classifier),
                   probability=None if analysis.held_back or analysis.scan_probability is None
                   else float(analysis.scan_probability), threshold=float(analysis.threshold),
                   operating_point=analysis.operating_point, lesion_burden_percent=burden_percent,
                   severity_score=severity_score)
