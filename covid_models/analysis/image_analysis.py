"""The analysis of one image, written once: predict (or ensemble), heatmap, masks, heatmap share, trust signals.

The Analyze page, the memory test and benchmark, and scripts/evaluate.py all call `analyse`, so what is
measured and tested is the path users run. It works at display size (no more than `DISPLAY_SIDE` pixels on
the longest side): the networks see their own input size whatever the file's, so only the outputs drawn for
people are sized, and a 7000-pixel film never gets a full-size heatmap or mask. Models always get the
canonical input of their card (`Preprocessing.model_pixels` on the `Scan`): a display window is no input here.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

import numpy as np

from covid_models.analysis import report as reports
from covid_models.analysis.explain import CAMS, Progress, heatmap, predict_and_map
from covid_models.analysis.lung_plausibility import implausible as lung_implausible
from covid_models.analysis.overlays import colour_scale, display_size, for_display, heatmap_overlay, mask_overlay
from covid_models.formatting import class_name, percent
from covid_models.imaging.scan import Scan, ScanMetadata
from covid_models.models.inference import Classifier, Ensemble, Prediction
from covid_models.models.model_card import modality_name
from covid_models.models.segmentation import Segmenter, cam_mass_inside
from covid_models.models.trust import single_source, source_warning

if TYPE_CHECKING:
    from covid_models.models.model_card import ModelCard

LOW_LUNG_SHARE = 0.5  # below this share of the heatmap inside the lungs, the model looked elsewhere
INFECTION_FOUND = 0.01  # an infection mask over at least this share of the slice outlines lesions
MASK_KINDS = {"xray": "lung", "ct": "infection"}  # the segmentation each modality's page expects
REPORT_OPACITY = 0.45  # reports draw the heatmap at this fixed opacity, whatever the screen's slider says
OUTLINE_COLOR = (255, 255, 255)  # a mask outline on the heatmap: white reads on every colour of the jet map
REPORT_RENDERING = (f"heatmap at a fixed {REPORT_OPACITY:.0%} opacity in the jet colour scale (blue: low, red: high "
                    "contribution), mask outlined in white, over the image in the file's own window; the page's "
                    "display settings do not change reports")

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
    shares: Mapping[str, float]  # target -> share of the heatmap's mass inside its mask (NaN: empty heatmap); none
    # for an implausible X-ray lung mask (`lung_plausibility`), whose share would reassure wrongly
    signals: tuple[Signal, ...]

    @property
    def held_back(self) -> bool:
        """Out of distribution: no probability, heatmap, mask or share of it may be shown anywhere."""
        return self.prediction.out_of_distribution

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


def free(_model: Classifier | Segmenter) -> AbstractContextManager:
    """A `Hold` that holds nothing (a model used by one thread only)."""
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


def multiclass_note(card: ModelCard) -> str | None:
    """For more than two classes: the reading among the other classes is not what the model is validated for."""
    if len(card.classes) <= 2:
        return None
    others = [class_name(c) for c in card.classes if c != card.positive_class]
    accuracy = (card.metrics.get("test") or {}).get("multiclass_accuracy")
    measured = f" (its {len(card.classes)}-class accuracy on the test split is {accuracy:.3f})" \
        if isinstance(accuracy, float) else ""
    return (f"The {' vs '.join(others)} reading is unreliable{measured}: only the "
            f"{class_name(card.positive_class or card.classes[0])} probability against the operating point "
            "is validated.")


def held_back_text(modality: str) -> str:
    """Why a result is held back by the model's out-of-distribution guard: the same words at every door."""
    return (f"This does not look like a chest {modality_name(modality)} the model was trained on; the prediction is "
            "held back: no probability, heatmap or mask is shown.")


def source_signal(classifiers: Sequence[Classifier], prediction: Prediction) -> Signal | None:
    """The model's within-source figures beside its result (`trust.source_warning`, from its card): a warning
    where the pooled test AUC mixes sources, a note where all test images came from one source."""
    if len(classifiers) != 1:
        return None
    card = classifiers[0].card
    text = source_warning(card, prediction.positive)
    return None if text is None else Signal("note" if single_source(card) else "warning", text)


def trust_signals(modality: str, prediction: Prediction, shares: Mapping[str, float],
                  areas: Mapping[str, float] | None = None, multiclass: str | None = None,
                  source: Signal | None = None, implausible: Mapping[str, str] | None = None) -> tuple[Signal, ...]:
    """What the reader must know before reading the result: held back, where the heatmap lies, what is missing.

    `areas`: target -> share of the image its mask covers (the infection finding); `multiclass`: the note on a
    reading among more than two classes; `source`: the model's within-source figures (`source_signal`);
    `implausible`: target -> why its mask is implausible (no share is given for it). A held-back result gets its
    error only: nothing about it is to be read.
    """
    if prediction.out_of_distribution:
        return (Signal("error", held_back_text(modality)),)
    signals = [source] if source else []
    signals += [Signal("note", multiclass)] if multiclass else []
    infection = (areas or {}).get("infection")
    if infection is not None:
        signals.append(Signal("note", f"Infection finding: the infection mask covers {percent(infection)} of the "
                                      "slice."))
        if prediction.positive is False and infection >= INFECTION_FOUND:
            signals.append(Signal("warning", "The classifier and the infection segmenter disagree: the COVID-19 "
                                             "probability is below the operating point, yet the segmenter outlines "
                                             f"{percent(infection)} of the slice as ground glass or consolidation. "
                                             "Read the image yourself."))
        elif prediction.positive and infection < INFECTION_FOUND:
            signals.append(Signal("warning", "The classifier and the infection segmenter disagree: the COVID-19 "
                                             "probability is at or above the operating point, yet the segmenter "
                                             "outlines no infection. Read the image yourself."))
    for target, reason in (implausible or {}).items():
        signals.append(Signal("warning", f"The {target} mask does not look like a pair of lungs: {reason}. No share "
                                         "of the heatmap inside the lungs is given; read the image yourself."))
    if not shares and not implausible:
        signals.append(Signal("note", f"No {MASK_KINDS[modality]} segmentation model for {modality_name(modality)} is "
                                      "installed, so no mask and no share of the heatmap inside it can be shown."))
    signals.extend(mask_share_signal(target, share) for target, share in shares.items())
    return tuple(signals)


def mask_share_signal(target: str, share: float) -> Signal:
    """What the heatmap's share inside a mask says: a warning when less than half of it lies inside the lungs (the
    X-ray and CT pages, for a film or a scan's slice)."""
    if np.isnan(share):
        return Signal("note", "The heatmap is empty, so its share inside the mask is undefined.")
    if target != "lungs":
        return Signal("note", f"{percent(share, 0)} of the heatmap lies inside the {target} mask.")
    if share < LOW_LUNG_SHARE:
        return Signal("warning", f"{percent(share, 0)} of the heatmap lies inside the lungs. The model looked mostly "
                                 "outside the lungs (labels, borders, devices): treat this prediction with suspicion.")
    return Signal("success", f"{percent(share, 0)} of the heatmap lies inside the lungs.")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def predict(scan: Scan, classifiers: Sequence[Classifier], hold: Hold = free) -> Prediction:
    """The prediction alone (one fast forward pass per classifier), to show before any heatmap."""
    if not classifiers:
        raise ValueError("an analysis needs at least one classifier")
    predictions = []
    for classifier in classifiers:
        with hold(classifier):
            predictions.append(classifier.predict(scan))
    return predictions[0] if len(classifiers) == 1 else Ensemble(classifiers).combine(predictions)


def private_copy(classifier: Classifier, hold: Hold = free) -> Classifier:
    """A copy of the network for one slow heatmap, so that no lock on the shared one is held for minutes.

    Copied under `hold`: a CAM hook another session has on the shared network must not be copied with it.
    """
    with hold(classifier):
        model = copy.deepcopy(classifier.model)
    return Classifier(model, classifier.card, classifier.ood)


def analyse(scan: Scan, classifiers: Sequence[Classifier], segmenters: Sequence[Segmenter] = (), *,
            method: str = "gradcam", progress: Progress | None = None, hold: Hold = free,
            prediction: Prediction | None = None, on_prediction: Callable[[Prediction], None] | None = None,
            masks: Mapping[str, np.ndarray] | None = None) -> Analysis:
    """One image through one classifier (or the ensemble of several of one modality) and the segmenters.

    `progress` hears the heatmap's fraction done (slow methods only); `hold(model)` is entered while that model
    runs (a lock on a network shared between sessions, whose CAM hooks must not see another's forward pass).
    The first segmenter of each target gives that target's mask. `prediction`: already computed by `predict`
    (shown first while a slow heatmap runs, perhaps on `private_copy`s of the classifiers); otherwise a single
    classifier with a gradient method gives the prediction and the map from one forward pass (`predict_and_map`).
    `on_prediction` hears the prediction as soon as it exists, before the masks. `masks`: masks by target already
    made at display size (the chest-image check's lung mask, `image_checks.lung_mask`); their segmenters do not run.
    """
    if not classifiers:
        raise ValueError("an analysis needs at least one classifier")
    modality = classifiers[0].card.modality
    shape = display_size(scan.pixels.shape)
    maps = []
    if prediction is None and len(classifiers) == 1 and method in CAMS and CAMS[method].gradients:
        with hold(classifiers[0]):  # one forward pass gives the prediction and the map
            prediction, cam = predict_and_map(classifiers[0], scan, method, size=shape)
        maps.append(cam)
    prediction = prediction or predict(scan, classifiers, hold)
    if on_prediction is not None:
        on_prediction(prediction)
    for number, classifier in enumerate(classifiers[len(maps):]):
        member_progress = None if progress is None else \
            (lambda done, n=number: progress((n + done) / len(classifiers)))
        with hold(classifier):
            maps.append(heatmap(classifier, scan, method, progress=member_progress, size=shape))
    cam = maps[0] if len(maps) == 1 else np.mean(maps, axis=0, dtype=np.float32)
    if len(maps) > 1:
        low, high = float(cam.min()), float(cam.max())
        cam = (cam - low) / (high - low) if high > low else np.zeros_like(cam)
    masks = {target: _read_only(np.asarray(mask, dtype=bool)) for target, mask in (masks or {}).items()}
    if any(mask.shape != shape for mask in masks.values()):
        raise ValueError(f"masks given to analyse must be at the display size {shape}")
    for segmenter in segmenters:
        if segmenter.target not in masks:
            with hold(segmenter):
                masks[segmenter.target] = _read_only(np.asarray(segmenter.mask(scan, size=shape), dtype=bool))
    why = lung_implausible(masks["lungs"]) if modality == "xray" and "lungs" in masks else None
    implausible = {} if why is None else {"lungs": why}
    shares = {target: cam_mass_inside(cam, mask) for target, mask in masks.items() if target not in implausible}
    areas = {target: float(mask.mean()) for target, mask in masks.items()}
    return Analysis(
        modality=modality, prediction=prediction, method=method,
        operating_point=operating_point_text(classifiers, prediction),
        image=_read_only(_to_uint8(for_display(scan.pixels, shape))), heatmap=_read_only(_to_uint8(cam)),
        masks=MappingProxyType(masks), shares=MappingProxyType(shares),
        signals=trust_signals(modality, prediction, shares, areas, multiclass_note(classifiers[0].card),
                              source_signal(classifiers, prediction), implausible))


def report_content(analysis: Analysis, file_name: str, explanation: str) -> reports.ReportContent:
    """What a report of the analysis holds, drawn with fixed settings (`REPORT_RENDERING`), never the screen's.

    It carries every signal the page shows but the reassuring ones; a held-back analysis gets no heatmap.
    """
    overlay = None
    if not analysis.held_back:
        overlay = heatmap_overlay(analysis.grey, analysis.heat, REPORT_OPACITY)
        if analysis.masks:
            overlay = mask_overlay(overlay, next(iter(analysis.masks.values())), color=OUTLINE_COLOR, alpha=0.0)
    return reports.ReportContent(
        file_name=file_name, modality=analysis.modality, prediction=analysis.prediction,
        operating_point=analysis.operating_point, explanation=explanation, image=analysis.grey, overlay=overlay,
        lung_share=None if analysis.held_back else analysis.lung_share,
        warnings=() if analysis.held_back else tuple(s.text for s in analysis.signals
                                                     if s.level in ("warning", "note")),
        rendering=REPORT_RENDERING if overlay is not None else "", colour_scale=colour_scale(256, 12))


def window_label(metadata: ScanMetadata) -> str:
    """How the file's own rendering is named: its window only when the file has one (not a default put in)."""
    window = metadata.window
    if window is None:
        return "As read"
    default = next((note for note in metadata.notes if note.startswith("no window in the file")), None)
    if default is not None:
        return f"As read ({default.replace('no window in the file: ', 'the file has no window; ')})"
    return f"As in the file ({window[0]:g} / {window[1]:g})"
