"""The analysis of one image, written once: predict (or ensemble), heatmap, masks, heatmap share, trust signals.

The Analyze page, the memory test and benchmark, and scripts/evaluate.py all call `analyse`, so what is
measured and tested is the path users run. It works at display size (no more than `DISPLAY_SIDE` pixels on
the longest side): the networks see their own input size whatever the file's, so only the outputs drawn for
people are sized, and a 7000-pixel film never gets a full-size heatmap or mask. Models always get the
canonical input of their card (`Preprocessing.model_pixels` on the `Scan`): a display window is no input here.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np

from covid_models.explain import Progress, heatmap
from covid_models.formatting import percent
from covid_models.inference import Classifier, Ensemble, Prediction
from covid_models.io import Scan
from covid_models.model_card import modality_name
from covid_models.overlays import display_size, for_display
from covid_models.segmentation import Segmenter, cam_mass_inside

LOW_LUNG_SHARE = 0.5  # below this share of the heatmap inside the lungs, the model looked elsewhere
MASK_KINDS = {"xray": "lung", "ct": "infection"}  # the segmentation each modality's page expects

Level = Literal["error", "warning", "success", "note"]
Hold = Callable[[Classifier | Segmenter], AbstractContextManager]  # held while a model runs (a lock, or nothing)


@dataclass(frozen=True)
class Signal:
    """One sentence for the reader about how far to trust the result; `level` says how loudly to show it."""

    level: Level
    text: str


@dataclass(frozen=True, eq=False)
class Analysis:
    """One image's result at display size; its arrays are read-only, so a cached result can be shared."""

    modality: str
    prediction: Prediction
    method: str
    operating_point: str  # which threshold and how it was chosen, in words
    image: np.ndarray  # (h, w) uint8: the image as read (the file's own window)
    heatmap: np.ndarray  # (h, w) uint8: the CAM for the positive class, 0-255 (for an ensemble, the members' mean)
    masks: Mapping[str, np.ndarray]  # target ("lungs", "infection") -> (h, w) bool
    shares: Mapping[str, float]  # target -> share of the heatmap's mass inside its mask (NaN: empty heatmap)
    signals: tuple[Signal, ...]

    @property
    def grey(self) -> np.ndarray:
        """The image as float32 in [0, 1], as the overlay functions take it."""
        return self.image.astype(np.float32) / 255

    @property
    def heat(self) -> np.ndarray:
        """The heatmap as float32 in [0, 1]."""
        return self.heatmap.astype(np.float32) / 255

    @property
    def lung_share(self) -> float | None:
        """The share of the heatmap inside the lungs, when a lung mask and a non-empty heatmap exist."""
        share = self.shares.get("lungs")
        return None if share is None or np.isnan(share) else share

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (for bounded caches)."""
        return self.image.nbytes + self.heatmap.nbytes + sum(mask.nbytes for mask in self.masks.values())


def _free(_model: Classifier | Segmenter) -> AbstractContextManager:
    return nullcontext()


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def operating_point_text(classifiers: Sequence[Classifier], prediction: Prediction) -> str:
    """Which operating point the threshold is and how it was chosen, from the card."""
    if len(classifiers) > 1:
        return (f"threshold {percent(prediction.threshold)}: the mean of the members' operating points, a "
                "convenience that was not validated for the ensemble")
    card = classifiers[0].card
    name = card.default_operating_point
    if name is None:
        return f"threshold {percent(prediction.threshold)} (the card defines no operating point; 0.5 by default)"
    rule = card.operating_points[name].get("rule", "rule not recorded")
    return f"'{name}', threshold {percent(prediction.threshold)}, chosen by: {rule}"


def trust_signals(modality: str, prediction: Prediction, shares: Mapping[str, float]) -> tuple[Signal, ...]:
    """What the reader must know before reading the result: held back, where the heatmap lies, what is missing."""
    signals = []
    if prediction.out_of_distribution:
        signals.append(Signal("error", f"This does not look like a chest {modality_name(modality)} the model was "
                                       "trained on; the prediction is held back."))
    if not shares:
        signals.append(Signal("note", f"No {MASK_KINDS[modality]} segmentation model for {modality_name(modality)} is "
                                      "installed, so no mask and no share of the heatmap inside it can be shown."))
    for target, share in shares.items():
        if np.isnan(share):
            signals.append(Signal("note", "The heatmap is empty, so its share inside the mask is undefined."))
        elif target != "lungs":
            signals.append(Signal("note", f"{percent(share, 0)} of the heatmap lies inside the {target} mask."))
        elif share < LOW_LUNG_SHARE:
            signals.append(Signal("warning", f"{percent(share, 0)} of the heatmap lies inside the lungs. The model "
                                             "looked mostly outside the lungs (labels, borders, devices): treat "
                                             "this prediction with suspicion."))
        else:
            signals.append(Signal("success", f"{percent(share, 0)} of the heatmap lies inside the lungs."))
    return tuple(signals)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def analyse(scan: Scan, classifiers: Sequence[Classifier], segmenters: Sequence[Segmenter] = (), *,
            method: str = "gradcam", progress: Progress | None = None, hold: Hold = _free) -> Analysis:
    """One image through one classifier (or the ensemble of several of one modality) and the segmenters.

    `progress` hears the heatmap's fraction done (slow methods only); `hold(model)` is entered while that model
    runs (a lock on a network shared between sessions, whose CAM hooks must not see another's forward pass).
    The first segmenter of each target gives that target's mask.
    """
    if not classifiers:
        raise ValueError("an analysis needs at least one classifier")
    modality = classifiers[0].card.modality
    shape = display_size(scan.pixels.shape)
    predictions = []
    for classifier in classifiers:
        with hold(classifier):
            predictions.append(classifier.predict(scan))
    prediction = predictions[0] if len(classifiers) == 1 else Ensemble(classifiers).combine(predictions)
    maps = []
    for number, classifier in enumerate(classifiers):
        member_progress = None if progress is None else \
            (lambda done, n=number: progress((n + done) / len(classifiers)))
        with hold(classifier):
            maps.append(heatmap(classifier, scan, method, progress=member_progress, size=shape))
    cam = maps[0] if len(maps) == 1 else np.mean(maps, axis=0, dtype=np.float32)
    if len(maps) > 1:
        low, high = float(cam.min()), float(cam.max())
        cam = (cam - low) / (high - low) if high > low else np.zeros_like(cam)
    masks: dict[str, np.ndarray] = {}
    for segmenter in segmenters:
        if segmenter.target not in masks:
            with hold(segmenter):
                masks[segmenter.target] = _read_only(np.asarray(segmenter.mask(scan, size=shape), dtype=bool))
    shares = {target: cam_mass_inside(cam, mask) for target, mask in masks.items()}
    return Analysis(
        modality=modality, prediction=prediction, method=method,
        operating_point=operating_point_text(classifiers, prediction),
        image=_read_only(_to_uint8(for_display(scan.pixels, shape))), heatmap=_read_only(_to_uint8(cam)),
        masks=MappingProxyType(masks), shares=MappingProxyType(shares),
        signals=trust_signals(modality, prediction, shares))
