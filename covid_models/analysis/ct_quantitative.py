"""The quantitative reading of chest CT in Hounsfield units: what leads the result of a DICOM or NIfTI scan.

Every figure is defined here once and carried in `QuantitativeReading` (a scan's, in ml; a single DICOM slice's, in
cm2), so the CT scan page, the Analyze page, the review session, the reports and `scripts/analyze_scan.py` show the same
numbers. All of it is measured inside the classical HU lung mask (`covid_models.imaging.lung_mask`, holes filled, so
vessels and dense lesions surrounded by lung count as lung):

- **lung volume** (area for a slice) per lung, the patient's right and left;
- **density bands**: the share of lung in each HU band of `DENSITY_BANDS` (limits and sources there);
- **lesion burden**: the infection segmenter's mask, kept only inside the lungs and without lesions smaller than a
  sphere (disk for a slice) of `MIN_LESION_DIAMETER_MM`; per lung, and for scans per zone with the severity score;
- **distribution**: bilateral or not, the share of lesion in the periphery (the outer third of each lung's depth on
  its axial slice) against the lung's own share there, and (scans) the share in the upper, middle and lower zones;
- **severity score** (scans): Pan et al.'s 0-5 grading of each lobe by percent involved (0 none, 1 < 5 %,
  2 5-25 %, 3 26-50 %, 4 51-75 %, 5 > 75 %; Pan F et al., Radiology 2020;295:715-721) applied to six zones, the
  upper, middle and lower third of each lung's height, which approximate the five lobes (total 0-30, not 0-25);
- **pattern suggestive of COVID-19**: a transparent rule (`COVID_PATTERN_RULE`) on burden, distribution and
  density. Its only fitted number, the lesion-burden threshold, lives in the infection segmenter's card
  (`extra.ct_reading`), fitted by `scripts/fit_ct_reading.py` on real non-COVID CT slices (never on the shared
  scans); without it there is no such reading.

A scan is held back (no verdict, probability or flag anywhere) when it shows too little lung or is too coarse to
read (`held_back_reason`). The figure-crop CT classifier is only a secondary reading on DICOM and NIfTI input
(`SECONDARY_LABEL`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from covid_models.imaging.lung_mask import AIR_HU, LEFT, RIGHT, LungMask, from_grid, segment_lungs, to_grid

SIDES = {RIGHT: "right", LEFT: "left"}
ZONES = ("upper", "middle", "lower")
MIN_LESION_DIAMETER_MM = 10.0  # lesions smaller than a 1 cm sphere (0.52 ml) or disk (0.79 cm2) are not counted
MIN_LESION_ML = math.pi / 6 * MIN_LESION_DIAMETER_MM ** 3 / 1000.0
MIN_LESION_MM2 = math.pi / 4 * MIN_LESION_DIAMETER_MM ** 2
MIN_LUNG_ML = 1000.0  # both lungs of an adult chest CT hold more: residual volume alone is about 1.2-1.8 litres
MAX_PIXEL_MM = 2.0  # a 512 matrix over the widest usual field of view (50 cm) gives 0.98 mm pixels
MIN_ENCLOSED_AIR_MM2 = 50.0  # a chest CT slice: enclosed air of at least this (a trachea's lumen alone is ~2-3 cm2)
SEVERITY_BOUNDS = (5.0, 25.0, 50.0, 75.0)  # percent involved: > 0 -> 1, >= 5 -> 2, >= 25 -> 3, >= 50 -> 4, >= 75 -> 5
SEVERITY_SOURCE = ("Pan F et al., Time course of lung changes on chest CT during recovery from 2019 novel "
                   "coronavirus (COVID-19) pneumonia, Radiology 2020;295:715-721: each lobe 0-5 by percent involved")
PERIPHERAL_DEPTH = 1 / 3  # the periphery: the outer third of a lung's depth on its axial slice
ACROSS_SLICES_MM = 1e6  # the slice step given to a volume's distance transform: slices never reach each other
LESION_DENSE_SHARE = 50.0  # percent of lesion voxels that must lie in the ground-glass or consolidation band
SECONDARY_LABEL = ("Secondary reading: a classifier trained on CT figures cut out of publications (UCSD COVID-CT), "
                   "not on hospital scans; on real DICOM slices it measured AUC 0.39 (20 RT-PCR-positive against 20 "
                   "non-COVID slices). It never decides the result of a DICOM or NIfTI scan.")
COVID_PATTERN_RULE = (
    "Pattern suggestive of COVID-19 when all four hold: (1) lesion burden at or above the threshold fitted on real "
    "non-COVID CT (the infection model's card); (2) bilateral: lesions of at least 1 cm in both lungs; (3) "
    "peripheral: the share of lesion in the outer third of the lungs exceeds the lungs' own share there; (4) the "
    f"lesions are ground glass or consolidation: at least {LESION_DENSE_SHARE:.0f} % of their voxels between -700 and "
    "+50 HU. Typical COVID-19 pneumonia on CT is bilateral, peripheral ground glass with or without consolidation "
    "(Simpson S et al., RSNA expert consensus, Radiol Cardiothorac Imaging 2020;2:e200152; Chung M et al., "
    "Radiology 2020;295:202-207).")


@dataclass(frozen=True)
class DensityBand:
    """A lung attenuation band in HU, [low, high); None is open."""

    name: str
    low: float | None
    high: float | None
    source: str

    @property
    def limits(self) -> str:
        if self.low is None:
            return f"< {self.high:g} HU"
        if self.high is None:
            return f">= {self.low:g} HU"
        return f"{self.low:g} to {self.high:g} HU"


FLEISCHNER = "Hansell DM et al., Fleischner Society glossary of terms for thoracic imaging, Radiology 2008;246:697-722"
DENSITY_BANDS = (
    DensityBand("low attenuation", None, -950.0,
                "emphysema index LAA-950: Gevenois PA et al., Am J Respir Crit Care Med 1996;154:187-192"),
    DensityBand("aerated", -950.0, -700.0,
                "well-aerated lung -950 to -700 HU: Colombi D et al., Radiology 2020;296:E86-E96"),
    DensityBand("ground glass", -700.0, -300.0,
                f"hazy increased attenuation that leaves vessels visible ({FLEISCHNER}); the HU limits are the "
                "usual convention of quantitative COVID-19 CT, not part of the glossary"),
    DensityBand("consolidation", -300.0, 50.0,
                f"attenuation that obscures vessels ({FLEISCHNER}); HU limits as for ground glass"),
    DensityBand("vessels and dense", 50.0, None, "above soft tissue: vessels filled into the mask, calcification"),
)
LESION_BANDS = ("ground glass", "consolidation")  # what a COVID-19 lesion's voxels are (rule criterion 4)


@dataclass(frozen=True)
class RuleFit:
    """The fitted lesion-burden threshold of the COVID-19 pattern rule, from the infection segmenter's card."""

    lesion_percent: float
    fit_on: str

    @classmethod
    def from_card(cls, extra: Mapping[str, Any]) -> RuleFit | None:
        """The card's fit; `fit_on` also says how often real non-COVID slices held out of the fit reach the
        threshold, so a reader can weigh the burden criterion (it is not a 5 % false-positive rate by fiat)."""
        block = extra.get("ct_reading") if isinstance(extra, Mapping) else None
        if not isinstance(block, Mapping) or not isinstance(block.get("lesion_percent_threshold"), int | float):
            return None
        fit_on = str(block.get("fit_on", "not recorded"))
        held = block.get("held_out")
        if isinstance(held, Mapping) and isinstance(held.get("false_positive_share"), int | float) \
                and isinstance(held.get("negatives"), int):
            fit_on += (f"; {held['false_positive_share']:.1%} of the {held['negatives']} non-COVID slices held out "
                       "of that fit reach it")
        return cls(float(block["lesion_percent_threshold"]), fit_on)


@dataclass(frozen=True)
class ZoneBurden:
    """Lesion in one zone (a third of one lung's height) and its 0-5 score."""

    lung: str
    zone: str
    lung_ml: float
    lesion_ml: float
    percent: float
    score: int


@dataclass(frozen=True)
class Criterion:
    """One condition of the COVID-19 pattern rule, its measured value and whether it holds."""

    name: str
    value: str
    needed: str
    met: bool


@dataclass(frozen=True)
class QuantitativeReading:
    """A scan's (unit "ml") or a single slice's (unit "cm2") quantitative reading; see the module docstring."""

    unit: str
    lung: dict[str, float]  # side -> lung volume (ml) or area (cm2)
    bands: dict[str, float]  # band name -> percent of both lungs
    lesion: dict[str, float] | None  # side -> lesion volume or area (None: no infection model)
    lesion_bands: dict[str, float] | None  # band name -> percent of the lesion's voxels
    peripheral: float | None  # percent of the lesion in the periphery (None: no lesion)
    lung_peripheral: float  # percent of the lung in the periphery
    zones: tuple[ZoneBurden, ...] = ()  # scans only
    held_back: str | None = None  # why no verdict is given; None when it is read
    criteria: tuple[Criterion, ...] = ()
    suggestive: bool | None = None  # None: held back, or no infection model or fitted threshold
    not_read: str | None = None  # why `suggestive` is None when the reading is not held back
    fit_on: str | None = None
    infection_model: str | None = None

    @property
    def lung_total(self) -> float:
        return sum(self.lung.values())

    @property
    def lesion_total(self) -> float | None:
        return None if self.lesion is None else sum(self.lesion.values())

    def lesion_percent(self, side: str | None = None) -> float | None:
        """Lesion as a percent of one lung, or of both."""
        if self.lesion is None:
            return None
        lung = self.lung_total if side is None else self.lung[side]
        lesion = self.lesion_total if side is None else self.lesion[side]
        return 100.0 * lesion / lung if lung > 0 else 0.0

    @property
    def bilateral(self) -> bool | None:
        return None if self.lesion is None else all(value > 0 for value in self.lesion.values())

    @property
    def severity_score(self) -> int | None:
        return sum(zone.score for zone in self.zones) if self.zones else None

    @property
    def zone_shares(self) -> dict[str, float]:
        """Percent of the lesion in the upper, middle and lower zones (both lungs)."""
        total = sum(zone.lesion_ml for zone in self.zones)
        return {name: 100.0 * sum(z.lesion_ml for z in self.zones if z.zone == name) / total if total > 0 else 0.0
                for name in ZONES}

    @property
    def verdict(self) -> str:
        """The headline in words."""
        if self.held_back:
            return f"Held back: {self.held_back}. No result is given."
        if self.suggestive is None:
            return f"No pattern reading: {self.not_read}."
        return ("Pattern suggestive of COVID-19" if self.suggestive else "Pattern not suggestive of COVID-19") + \
            " (quantitative reading in HU; all criteria below)."

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record; a held-back reading carries no verdict."""
        record: dict[str, Any] = {
            "unit": self.unit, "held_back": self.held_back,
            "lung": {side: round(value, 1) for side, value in self.lung.items()},
            "lung_total": round(self.lung_total, 1),
            "density_bands": [{"band": band.name, "hu": band.limits, "percent_of_lung": round(self.bands[band.name], 2),
                               "source": band.source} for band in DENSITY_BANDS],
            "min_lesion": f"{MIN_LESION_DIAMETER_MM:g} mm across ({MIN_LESION_ML:.2f} ml or "
                          f"{MIN_LESION_MM2 / 100:.2f} cm2)",
            "infection_model": self.infection_model}
        if self.held_back is not None:
            return record  # lungs and density only: they say why; no lesion, severity or pattern
        if self.lesion is not None:
            record["lesion"] = {side: round(value, 2) for side, value in self.lesion.items()}
            record["lesion_total"] = round(self.lesion_total or 0.0, 2)
            record["lesion_percent"] = {side: round(self.lesion_percent(side) or 0.0, 3) for side in self.lesion}
            record["lesion_percent_total"] = round(self.lesion_percent() or 0.0, 3)
            record["lesion_bands"] = {k: round(v, 1) for k, v in (self.lesion_bands or {}).items()}
            record["distribution"] = {
                "bilateral": self.bilateral,
                "peripheral_percent_of_lesion": None if self.peripheral is None else round(self.peripheral, 1),
                "peripheral_percent_of_lung": round(self.lung_peripheral, 1)}
            if self.zones:
                record["distribution"]["zones_percent_of_lesion"] = {k: round(v, 1)
                                                                     for k, v in self.zone_shares.items()}
        if self.zones:
            record["severity"] = {
                "score": self.severity_score, "out_of": 5 * len(self.zones), "source": SEVERITY_SOURCE,
                "zones": [{"lung": z.lung, "zone": z.zone, "lung_ml": round(z.lung_ml, 1),
                           "lesion_ml": round(z.lesion_ml, 2), "percent": round(z.percent, 3), "score": z.score}
                          for z in self.zones],
                "note": "zones are thirds of each lung's height and approximate the lobes"}
        record["pattern"] = {"suggestive_of_covid19": self.suggestive, "not_read": self.not_read,
                                 "rule": COVID_PATTERN_RULE, "threshold_fit_on": self.fit_on,
                                 "criteria": [{"name": c.name, "value": c.value, "needed": c.needed, "met": c.met}
                                              for c in self.criteria]}
        return record


def band_percents(values: np.ndarray) -> dict[str, float]:
    """Percent of the HU values in each density band."""
    values = np.asarray(values).ravel()
    counts = {}
    for band in DENSITY_BANDS:
        inside = np.ones(values.shape, dtype=bool)
        if band.low is not None:
            inside &= values >= band.low
        if band.high is not None:
            inside &= values < band.high
        counts[band.name] = int(np.count_nonzero(inside))
    total = values.size
    return {name: 100.0 * count / total if total else 0.0 for name, count in counts.items()}


def severity(percent: float) -> int:
    """A zone's 0-5 score from its percent involved (Pan et al. 2020)."""
    if percent <= 0:
        return 0
    return 1 + sum(percent >= bound for bound in SEVERITY_BOUNDS)


def drop_small_lesions(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The mask without connected lesions smaller than the minimum (a 3-D mask in ml, a 2-D one in mm2)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    element = float(np.prod(spacing))  # mm3 or mm2
    minimum = MIN_LESION_ML * 1000.0 if mask.ndim == 3 else MIN_LESION_MM2
    sizes = np.bincount(labels.ravel())
    keep = sizes * element >= minimum
    keep[0] = False
    return keep[labels]


def peripheral_mask(labels: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """The periphery of each lung on each axial slice (a 2-D slice, or a volume slice by slice): the outer third of
    the lung's depth from its edge on that slice."""
    flat = labels.ndim == 2
    volume = labels[None] if flat else labels
    periphery = np.zeros(volume.shape, dtype=bool)
    for label in SIDES:
        lung = volume == label
        present = lung.any(axis=(1, 2))
        if not present.any():
            continue
        # one call for all slices: across slices the distance is far beyond any in-plane one, so it never counts
        depth = ndimage.distance_transform_edt(lung, sampling=(ACROSS_SLICES_MM, *spacing))
        deepest = depth.max(axis=(1, 2), keepdims=True)
        periphery |= lung & (depth <= PERIPHERAL_DEPTH * deepest)
    return periphery[0] if flat else periphery


def held_back_reason(lung_ml: float, pixel_mm: float, whole_scan: bool = True) -> str | None:
    """Why a scan gets no verdict: no or too little lung, or pixels too coarse to see lesions; None when readable."""
    if lung_ml <= 0:
        return "no lung was found (not a chest CT, or the lungs are outside the field of view)"
    if whole_scan and lung_ml < MIN_LUNG_ML:
        return (f"too little lung ({lung_ml:.0f} ml; an adult chest CT shows at least {MIN_LUNG_ML:.0f} ml): the "
                "field of view does not cover the lungs")
    if pixel_mm > MAX_PIXEL_MM:
        return (f"in-plane pixels of {pixel_mm:.1f} mm are too coarse to see lesions (diagnostic chest CT: about "
                f"1 mm; read up to {MAX_PIXEL_MM:g} mm)")
    return None


def covid_pattern(reading: QuantitativeReading, fit: RuleFit | None) -> QuantitativeReading:
    """The reading with the COVID-19 pattern rule applied (criteria, suggestive); held back stays held back."""
    if reading.held_back is not None:
        return reading
    if reading.lesion is None:
        return replace(reading, not_read="no infection model was used, so no lesion burden was measured")
    if fit is None:
        return replace(reading, not_read="the infection model's card has no fitted lesion-burden threshold "
                                          "(scripts/fit_ct_reading.py fits it on real non-COVID CT)")
    percent = reading.lesion_percent() or 0.0
    dense = sum((reading.lesion_bands or {}).get(name, 0.0) for name in LESION_BANDS)
    criteria = (
        Criterion("lesion burden", f"{percent:.2f} % of lung", f">= {fit.lesion_percent:.2f} %",
                  percent >= fit.lesion_percent),
        Criterion("bilateral", "both lungs" if reading.bilateral else "one lung or none",
                  "lesions in both lungs", bool(reading.bilateral)),
        Criterion("peripheral", "no lesion" if reading.peripheral is None else
                  f"{reading.peripheral:.0f} % of lesion in the outer third", f"> {reading.lung_peripheral:.0f} % "
                  "(the lungs' own share there)",
                  reading.peripheral is not None and reading.peripheral > reading.lung_peripheral),
        Criterion("ground glass or consolidation", f"{dense:.0f} % of lesion voxels -700 to +50 HU",
                  f">= {LESION_DENSE_SHARE:.0f} %", reading.lesion_total is not None and reading.lesion_total > 0
                  and dense >= LESION_DENSE_SHARE))
    criteria = tuple(replace(c, met=bool(c.met)) for c in criteria)
    return replace(reading, criteria=criteria, suggestive=all(c.met for c in criteria), fit_on=fit.fit_on)


def zone_burdens(lungs: LungMask, lesion: np.ndarray) -> tuple[ZoneBurden, ...]:
    """Lesion and score of each zone: the upper, middle and lower third of each lung's height."""
    voxel = lungs.voxel_ml
    zones = []
    for label, side in SIDES.items():
        lung = lungs.labels == label
        per_slice_lung = np.count_nonzero(lung, axis=(1, 2))
        per_slice_lesion = np.count_nonzero(lesion & lung, axis=(1, 2))
        present = np.nonzero(per_slice_lung)[0]
        if present.size == 0:
            continue
        edges = np.linspace(present[0], present[-1] + 1, len(ZONES) + 1)
        for zone, (start, stop) in zip(ZONES, zip(edges[:-1], edges[1:], strict=True), strict=True):
            part = slice(int(round(start)), int(round(stop)))
            zone_lung = float(per_slice_lung[part].sum()) * voxel
            zone_lesion = float(per_slice_lesion[part].sum()) * voxel
            zone_percent = 100.0 * zone_lesion / zone_lung if zone_lung > 0 else 0.0
            zones.append(ZoneBurden(side, zone, zone_lung, zone_lesion, zone_percent, severity(zone_percent)))
    return tuple(zones)


def read_volume_quantities(hu: np.ndarray, lungs: LungMask, lesion: np.ndarray | None, pixel_mm: float,
                           fit: RuleFit | None = None, infection_model: str | None = None) -> QuantitativeReading:
    """A scan's reading. `hu` and `lesion` lie on the lung mask's grid; `lesion` is already inside the lungs and
    without small lesions (`lesion_in_lungs`); `pixel_mm` is the scan's own in-plane pixel size."""
    inside = lungs.labels > 0
    lung = {side: float(lungs.volume_ml(label)) for label, side in SIDES.items()}
    bands = band_percents(hu[inside])
    periphery = peripheral_mask(lungs.labels, lungs.spacing[1:])
    lung_peripheral = 100.0 * int(np.count_nonzero(periphery)) / max(1, int(np.count_nonzero(inside)))
    lesion_ml, lesion_bands, peripheral, zones = None, None, None, ()
    if lesion is not None:
        lesion_ml = {side: float(np.count_nonzero(lesion & (lungs.labels == label))) * lungs.voxel_ml
                     for label, side in SIDES.items()}
        count = int(np.count_nonzero(lesion))
        lesion_bands = band_percents(hu[lesion]) if count else {band.name: 0.0 for band in DENSITY_BANDS}
        peripheral = 100.0 * int(np.count_nonzero(lesion & periphery)) / count if count else None
        zones = zone_burdens(lungs, lesion)
    reading = QuantitativeReading(
        unit="ml", lung=lung, bands=bands, lesion=lesion_ml, lesion_bands=lesion_bands, peripheral=peripheral,
        lung_peripheral=lung_peripheral, zones=zones, held_back=held_back_reason(sum(lung.values()), pixel_mm),
        infection_model=infection_model)
    return covid_pattern(reading, fit)


def lesion_in_lungs(lesion: np.ndarray, lungs: LungMask) -> np.ndarray:
    """What counts as lesion: the segmenter's mask inside the lungs, without lesions under the minimum size."""
    return drop_small_lesions(np.asarray(lesion, dtype=bool) & (lungs.labels > 0), lungs.spacing)


@dataclass(frozen=True, eq=False)
class SliceQuantities:
    """One DICOM CT slice's reading with the masks it was measured in (on the lung mask's grid)."""

    reading: QuantitativeReading
    lungs: np.ndarray  # uint8 labels (RIGHT, LEFT) on the grid
    lesion: np.ndarray | None  # bool on the grid
    factor: int  # grid = the slice's rows and columns // factor
    shape: tuple[int, int]  # the slice's rows and columns

    @property
    def has_lungs(self) -> bool:
        return bool(self.lungs.any())

    def lung_mask(self) -> np.ndarray:
        """Both lungs at the slice's own size: what a heatmap's share inside the lungs is measured against."""
        return from_grid(self.lungs > 0, self.factor, self.shape)


def slice_lungs(hu: np.ndarray, pixel_spacing: tuple[float, float] | None) -> LungMask:
    """The lungs of one axial CT slice in HU: air-density regions enclosed by the body (the scan's classical mask on a
    one-slice volume). Without a pixel spacing 0.7 mm is assumed, a usual chest CT's."""
    rows, columns = pixel_spacing or (0.7, 0.7)
    return segment_lungs(_int16(hu)[None], (1.0, float(rows), float(columns)))


def enclosed_air_mm2(hu: np.ndarray, pixel_spacing: tuple[float, float] | None) -> float:
    """Area of the air-density regions (below the lung mask's air threshold) that do not reach the image border: the
    lungs or airways inside a body, what makes a DICOM CT slice a chest slice to the chest-image check."""
    rows, columns = pixel_spacing or (0.7, 0.7)
    labels, count = ndimage.label(np.asarray(hu) < AIR_HU)
    if count == 0:
        return 0.0
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inside = np.ones(count + 1, dtype=bool)
    inside[border] = False
    inside[0] = False
    return float(np.count_nonzero(inside[labels])) * rows * columns


def _int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(hu, dtype=np.float32)), -32768, 32767).astype(np.int16)


def read_slice_quantities(hu: np.ndarray, pixel_spacing: tuple[float, float] | None,
                          lesion_probability: np.ndarray | None = None, threshold: float = 0.5,
                          fit: RuleFit | None = None, infection_model: str | None = None) -> SliceQuantities:
    """A single DICOM CT slice's reading (areas in cm2; no zones or severity score: one slice has no height).

    `lesion_probability`: the infection segmenter's probability map of the slice (any size; resized to the grid).
    A slice is held back when it shows no lung or is too coarse; the minimum lung volume of a scan does not apply.
    """
    lungs = slice_lungs(hu, pixel_spacing)
    labels = lungs.labels[0]
    grid = to_grid(_int16(hu)[None], lungs.factor)[0]
    area_cm2 = lungs.spacing[1] * lungs.spacing[2] / 100.0
    inside = labels > 0
    lung = {side: float(np.count_nonzero(labels == label)) * area_cm2 for label, side in SIDES.items()}
    periphery = peripheral_mask(labels, lungs.spacing[1:])
    lung_peripheral = 100.0 * int(np.count_nonzero(periphery)) / max(1, int(np.count_nonzero(inside)))
    lesion, lesion_area, lesion_bands, peripheral = None, None, None, None
    if lesion_probability is not None:
        from covid_models.models.segmentation import resize_map

        raw = resize_map(lesion_probability, labels.shape) >= threshold
        lesion = drop_small_lesions(raw & inside, lungs.spacing[1:])
        lesion_area = {side: float(np.count_nonzero(lesion & (labels == label))) * area_cm2
                       for label, side in SIDES.items()}
        count = int(np.count_nonzero(lesion))
        lesion_bands = band_percents(grid[lesion]) if count else {band.name: 0.0 for band in DENSITY_BANDS}
        peripheral = 100.0 * int(np.count_nonzero(lesion & periphery)) / count if count else None
    reading = QuantitativeReading(
        unit="cm2", lung=lung, bands=band_percents(grid[inside]), lesion=lesion_area, lesion_bands=lesion_bands,
        peripheral=peripheral, lung_peripheral=lung_peripheral,
        held_back=held_back_reason(sum(lung.values()), max(lungs.spacing[1:]) / lungs.factor, whole_scan=False),
        infection_model=infection_model)
    return SliceQuantities(covid_pattern(reading, fit), labels, lesion, lungs.factor, tuple(np.shape(hu)))


def read_dicom_slice(scan: Any, segmenter: Any | None = None) -> SliceQuantities | None:
    """The reading of a DICOM CT slice (a `covid_models.imaging.scan.Scan` with HU values) with the first infection
    segmenter, if any; None for any other image (no HU to measure)."""
    if scan.metadata.dicom_modality != "CT" or scan.modality_values is None:
        return None
    probability, threshold, fit, name = None, 0.5, None, None
    if segmenter is not None:
        probability = segmenter.probability(scan)  # the card's HU window on the HU values
        threshold, fit, name = segmenter.threshold, RuleFit.from_card(segmenter.card.extra), segmenter.name
    return read_slice_quantities(scan.modality_values, scan.metadata.pixel_spacing, probability, threshold, fit, name)
