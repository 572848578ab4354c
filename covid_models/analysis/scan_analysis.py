"""Analysis of a CT volume: lung mask, the quantitative reading in HU that leads, infection burden, and the CT
classifier's per-slice probabilities as a secondary reading.

`analyse_scan(volume, classifier, segmenter)` is the one call the scan page, `scripts/analyze_scan.py` and
`scripts/benchmark_scan.py` make. The models see each slice through their card's fixed HU window
(`Preprocessing.window_hu`), never a display window, in the canonical orientation of `covid_models.imaging.volumes`
(anterior up, the patient's left on the viewer's right): the usual axial display, which is what the CT classifier
was trained on and what the infection segmenter's card asks for (its MedSeg training slices were transposed to it).

The result of a scan is its quantitative reading (`covid_models.analysis.ct_quantitative`): lung volumes, density bands,
lesion burden and distribution, the severity score and the COVID-19 pattern rule, or held back with its reason. The
classifier was trained on figure crops from publications and is shown only as a secondary reading, never as the
result (`ct_quantitative.SECONDARY_LABEL`).

Secondary reading (`SCAN_RULE`): the mean of the top-k slice probabilities, k = 10 % of the scored slices (at least
one). Slices whose lung area is under 10 % of the largest slice's are skipped, not scored: apex and base slices
show little lung and the classifier was never trained on them. The card's operating point was chosen for single
slices, not for this mean; comparing the two is a convenience that was not validated on scans.

Infection burden: the 2-D infection segmenter on the scored slices, kept inside the lung mask and without lesions
under the minimum size (`ct_quantitative.lesion_in_lungs`); volume in ml, percent of each lung, and the zone severity
score (`ct_quantitative.severity`). It is an estimate from a 2-D model, not a measurement.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from covid_models.analysis.ct_quantitative import (
    SECONDARY_LABEL,
    SIDES,
    QuantitativeReading,
    RuleFit,
    ZoneBurden,
    lesion_in_lungs,
    read_volume_quantities,
    zone_burdens,
)
from covid_models.analysis.explain import heatmap
from covid_models.imaging.ct_volume import Volume, VolumeMetadata
from covid_models.imaging.lung_mask import LungMask, segment_lungs, to_grid
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter

TOP_SHARE = 0.10
MIN_LUNG_SHARE = 0.10  # a slice is scored when its lung area is at least this share of the largest slice's
BATCH = 8  # slices per classifier pass (128 px inputs)
SEGMENT_BATCH = 4  # slices per segmenter pass: its 224 px decoder held 300 MB more at 8 than 170 MB at 4
SCAN_RULE = ("mean of the top-k slice probabilities, k = 10 % of the slices that contain lung (at least 1); slices "
             "with less than 10 % of the largest slice's lung area are not scored")
BURDEN_LABEL = "Estimate from a 2-D infection model trained on 48 CT slices (MedSeg); not a measurement."
HELD_BACK_SHARE = 0.5  # out-of-distribution share of the scored slices from which the classifier's reading is withheld

Progress = Callable[[float, str], None]  # fraction done in [0, 1], and what is being done


@dataclass(frozen=True)
class Burden:
    """Infection volume and share of each lung, and the zone severity score (0-30)."""

    infection_ml: float
    lung_ml: dict[str, float]
    infection_ml_by_lung: dict[str, float]
    percent_by_lung: dict[str, float]
    zones: tuple[ZoneBurden, ...]
    model: str | None
    label: str = BURDEN_LABEL

    @property
    def severity_score(self) -> int:
        return sum(zone.score for zone in self.zones)

    @property
    def percent(self) -> float:
        total = sum(self.lung_ml.values())
        return 100.0 * self.infection_ml / total if total > 0 else 0.0


@dataclass(frozen=True, eq=False)
class ScanAnalysis:
    """Everything the page, the report and the script show about one scan; no patient identifier in it.

    Masks and `display_hu` lie on the lung mask's grid (see `covid_models.imaging.lung_mask`), enough to show and
    measure; the full-resolution HU volume is not kept.
    """

    metadata: VolumeMetadata
    classifier: str
    positive_class: str
    threshold: float
    operating_point: str  # the card's rule for the threshold
    slice_probabilities: np.ndarray  # float32 (slices,), NaN where not scored
    slice_out_of_distribution: np.ndarray  # bool (slices,)
    scan_probability: float | None  # None when no slice contains lung
    top_k: int
    lungs: LungMask
    infection: np.ndarray | None  # bool, the grid's shape; None without a segmenter
    burden: Burden | None
    display_hu: np.ndarray  # int16, the grid's shape: what the page windows for display
    reading: QuantitativeReading  # the result of the scan
    seconds: dict[str, float] = field(default_factory=dict)
    rule: str = SCAN_RULE

    @property
    def scored(self) -> np.ndarray:
        return ~np.isnan(self.slice_probabilities)

    @property
    def positive(self) -> bool | None:
        """The scan's result: a pattern suggestive of COVID-19 (None: held back, or no pattern reading)."""
        return None if self.held_back else self.reading.suggestive

    def reading_label(self, classes: Sequence[str]) -> str:
        """The class the scan's reading stands for, what a reviewer agrees or disagrees with and what a CSV calls its
        label: the positive class when the quantitative reading finds a pattern suggestive of it, else the card's
        other class (a CT card has two)."""
        return self.positive_class if self.positive else next(c for c in classes if c != self.positive_class)

    @property
    def classifier_positive(self) -> bool | None:
        """The secondary reading's call (None when it is withheld)."""
        if self.secondary_held_back:
            return None
        return self.scan_probability >= self.threshold

    @property
    def out_of_distribution_share(self) -> float:
        scored = self.scored
        return float(self.slice_out_of_distribution[scored].mean()) if scored.any() else 0.0

    @property
    def held_back(self) -> bool:
        """No result to interpret: no or too little lung, or too coarse (`reading.held_back` says why)."""
        return self.reading.held_back is not None

    @property
    def secondary_held_back(self) -> bool:
        """No classifier reading to show: the scan is held back, no slice has lung, or most scored slices are unlike
        the classifier's training slices (its out-of-distribution guard)."""
        return self.held_back or self.scan_probability is None or self.out_of_distribution_share >= HELD_BACK_SHARE

    @property
    def nbytes(self) -> int:
        """The arrays kept (display HU and masks on the grid): what a cache of analyses is bounded by."""
        arrays = (self.display_hu, self.lungs.labels, self.infection, self.slice_probabilities)
        return sum(array.nbytes for array in arrays if array is not None)

    @property
    def key_slices(self) -> dict[str, int]:
        """Slice indices worth a look: highest probability, and largest infection area (when any)."""
        keys = {}
        if self.scored.any():
            keys["highest probability"] = int(np.nanargmax(self.slice_probabilities))
        if self.infection is not None and self.infection.any():
            keys["largest infection"] = int(np.argmax(np.count_nonzero(self.infection, axis=(1, 2))))
        return keys

    def summary(self) -> dict:
        """A JSON-ready record (the script's output). A held-back scan carries no verdict, probability or flag; the
        classifier's reading is under "secondary", without its probabilities when it is withheld."""
        burden = None if self.held_back else self.burden
        shown = not self.secondary_held_back
        return {
            "volume": {"format": self.metadata.source_format, "shape": list(self.metadata.shape),
                       "spacing_mm": list(self.metadata.spacing), "sorted_by": self.metadata.sorted_by,
                       "series": [info.label for info in self.metadata.series], "notes": list(self.metadata.notes)},
            "result": self.reading.verdict, "held_back": self.reading.held_back, "positive": self.positive,
            "quantitative": self.reading.summary(),
            "secondary": {
                "label": SECONDARY_LABEL, "classifier": self.classifier, "positive_class": self.positive_class,
                "withheld": not shown, "scan_probability": self.scan_probability if shown else None,
                "positive": self.classifier_positive, "rule": self.rule, "top_k": self.top_k,
                "threshold": self.threshold, "operating_point": self.operating_point,
                "out_of_distribution_share": self.out_of_distribution_share,
                "slice_probabilities": [None if math.isnan(p) else round(float(p), 5)
                                        for p in self.slice_probabilities] if shown else None},
            "classifier": self.classifier,
            "slices_scored": int(self.scored.sum()), "slices": int(len(self.slice_probabilities)),
            "key_slices": {} if self.held_back else self.key_slices,
            "lung_ml": {side: round(self.lungs.volume_ml(label), 1) for label, side in SIDES.items()},
            "burden": None if burden is None else {
                "model": burden.model, "label": burden.label, "infection_ml": round(burden.infection_ml, 2),
                "percent": round(burden.percent, 3),
                "percent_by_lung": {k: round(v, 3) for k, v in burden.percent_by_lung.items()},
                "severity_score": burden.severity_score,
                "zones": [{"lung": z.lung, "zone": z.zone, "lung_ml": round(z.lung_ml, 1),
                           "infection_ml": round(z.lesion_ml, 2), "percent": round(z.percent, 3),
                           "score": z.score} for z in burden.zones]},
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def scan_probability(probabilities: np.ndarray, share: float = TOP_SHARE) -> tuple[float | None, int]:
    """The scan-level rule: mean of the top-k scored slice probabilities (NaN = not scored), and k."""
    scored = np.sort(probabilities[~np.isnan(probabilities)])[::-1]
    if scored.size == 0:
        return None, 0
    k = max(1, round(share * scored.size))
    return float(scored[:k].mean()), k


def scored_slices(lungs: LungMask) -> np.ndarray:
    """The slices that contain enough lung to be scored."""
    area = np.count_nonzero(lungs.labels, axis=(1, 2))
    return (area > 0) & (area >= MIN_LUNG_SHARE * area.max()) if area.size and area.max() > 0 else area > 0


def burden(lungs: LungMask, infection: np.ndarray, model: str | None) -> Burden:
    """Infection volume, percent of each lung and zone scores (thirds of each lung's height)."""
    voxel = lungs.voxel_ml
    lung_ml = {side: float(lungs.volume_ml(label)) for label, side in SIDES.items()}
    infection_ml = {side: float(np.count_nonzero(infection & (lungs.labels == label))) * voxel
                    for label, side in SIDES.items()}
    percent = {side: 100.0 * infection_ml[side] / lung_ml[side] if lung_ml[side] > 0 else 0.0
               for side in SIDES.values()}
    return Burden(infection_ml=sum(infection_ml.values()), lung_ml=lung_ml, infection_ml_by_lung=infection_ml,
                  percent_by_lung=percent, zones=zone_burdens(lungs, infection), model=model)


def analyse_scan(volume: Volume, classifier: Classifier, segmenter: Segmenter | None = None,
                 progress: Progress | None = None, batch_size: int = BATCH) -> ScanAnalysis:
    """Lung mask, per-slice and scan-level COVID-19 probability and (with a segmenter) infection burden."""
    report = progress or (lambda _fraction, _what: None)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    report(0.0, "Finding the lungs")
    lungs = segment_lungs(volume.hu, volume.spacing, progress=lambda f: report(0.2 * f, "Finding the lungs"))
    seconds["lung mask"] = time.perf_counter() - start
    scored = np.nonzero(scored_slices(lungs))[0]
    probabilities = np.full(volume.hu.shape[0], np.nan, dtype=np.float32)
    out_of_distribution = np.zeros(volume.hu.shape[0], dtype=bool)
    start = time.perf_counter()
    preprocessing = classifier.card.preprocessing
    for first in range(0, len(scored), batch_size):
        indices = scored[first:first + batch_size]
        batch = torch.stack([classifier.to_input(preprocessing.window_hu(volume.hu[k])) for k in indices])
        for k, prediction in zip(indices, classifier.predict_inputs(batch), strict=True):
            probabilities[k] = prediction.positive_probability
            out_of_distribution[k] = prediction.out_of_distribution
        report(0.2 + 0.3 * (first + len(indices)) / len(scored), "Scoring the slices")
    seconds["classification"] = time.perf_counter() - start
    probability, top_k = scan_probability(probabilities)
    infection, scan_burden = None, None
    if segmenter is not None:
        start = time.perf_counter()
        infection = _infection(volume, lungs, segmenter, scored, min(batch_size, SEGMENT_BATCH),
                               lambda f: report(0.5 + 0.5 * f, "Segmenting infection"))
        scan_burden = burden(lungs, infection, segmenter.name)
        seconds["infection"] = time.perf_counter() - start
    display_hu = to_grid(volume.hu, lungs.factor)
    start = time.perf_counter()
    reading = read_volume_quantities(
        display_hu, lungs, infection, min(volume.spacing[1:]),
        fit=None if segmenter is None else RuleFit.from_card(segmenter.card.extra),
        infection_model=None if segmenter is None else segmenter.name)
    seconds["quantitative reading"] = time.perf_counter() - start
    report(1.0, "Done")
    card = classifier.card
    point = card.operating_points.get(card.default_operating_point or "", {})
    return ScanAnalysis(
        metadata=volume.metadata, classifier=classifier.name, positive_class=card.positive_class or card.classes[0],
        threshold=card.threshold, operating_point=str(point.get("rule", "no rule recorded in the card")),
        slice_probabilities=probabilities, slice_out_of_distribution=out_of_distribution,
        scan_probability=probability, top_k=top_k, lungs=lungs, infection=infection, burden=scan_burden,
        display_hu=display_hu, reading=reading, seconds=seconds)


@torch.inference_mode()
def _infection(volume: Volume, lungs: LungMask, segmenter: Segmenter, with_lung: np.ndarray, batch_size: int,
               progress: Callable[[float], None]) -> np.ndarray:
    """The segmenter's mask of the scored slices on the grid, kept inside the lungs and without lesions under the
    minimum size (other slices stay empty): what is counted, and what the pages outline.

    Apex and base slices (under 10 % of the largest lung area) hold a few percent of the lung volume and would cost
    a fifth of the time; their infection is not counted.
    """
    infection = np.zeros(lungs.labels.shape, dtype=bool)
    preprocessing = segmenter.card.preprocessing
    parameter = next(segmenter.model.parameters())
    for first in range(0, len(with_lung), batch_size):
        indices = with_lung[first:first + batch_size]
        batch = torch.stack([preprocessing(preprocessing.window_hu(volume.hu[k])) for k in indices])
        logits = segmenter.model(batch.to(parameter.device, parameter.dtype)).float()
        logits = F.interpolate(logits, size=lungs.labels.shape[1:], mode="bilinear", align_corners=False)
        masks = (torch.sigmoid(logits)[:, 0] >= segmenter.threshold).cpu().numpy()
        infection[indices] = masks
        progress((first + len(indices)) / len(with_lung))
    return lesion_in_lungs(infection, lungs)


def slice_heatmap(classifier: Classifier, analysis_hu: np.ndarray, method: str = "gradcam") -> np.ndarray:
    """The classifier's CAM of one slice (HU at any size), through its card's HU window, in [0, 1] at that size."""
    return heatmap(classifier, classifier.card.preprocessing.window_hu(analysis_hu), method)


def scan_models(weights_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """The CT classifiers and the CT infection segmenters found in `weights_dir`, by their cards (sorted by folder).

    The first of each is the default; a new CT classifier dropped into the folder is picked up without code changes.
    """
    classifiers = [directory for directory, _ in discover_models(weights_dir, "classification", "ct")]
    segmenters = [directory for directory, card in discover_models(weights_dir, "segmentation", "ct")
                  if card.classes == ["infection"]]
    return classifiers, segmenters
