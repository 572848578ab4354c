"""Is this a chest image at all, and of which modality? Cheap checks run before any result is shown.

The out-of-distribution guard of one classifier flags only part of the photographs (a photo of trees got
"COVID-19 82.9 %"), so several checks that a chest image passes and a photograph does not are combined:
- colour: radiographs and CT slices are grey; a photograph's pixels are saturated. A file with many saturated
  pixels is refused whatever else holds (a coloured arrow or label on a film covers far less);
- the X-ray lung segmenter: a frontal film has two lung fields of plausible size, one on each side (the X-ray
  guard alone accepts many grey photographs, so it stands in only where no lung segmenter is installed);
- the CT classifier's guard: a CT slice lies near its training features. It accepts a third of greyscale crops of
  photographs (scores just under its threshold), so a CT also needs lung fields: either the segmenter's pair, or
  dark regions enclosed by brighter tissue (`enclosed_dark_share`: the lungs inside the body, whose outside air
  reaches the image border; a photograph's dark areas reach its border or are small). Its threshold, a round 5 %
  of the image, was chosen on the CT training and validation slices: with the segmenter's pair it leaves 10 of
  those 543 (1.8 %) without lung fields, the same count for any threshold from 2 % to 10 %.
- a DICOM whose Modality tag says CT and whose HU values hold lungs or airways (air-density regions enclosed by the
  body, in HU: `ct_quantitative.enclosed_air_mm2`, at least 0.5 cm2) is a CT slice, whatever the guards say: the
  guards were trained on figure crops, and refused most real DICOM slices.
An image is refused when it is colourful, or when it shows no evidence of either modality.
The same guards say which modality the image looks like (`ImageCheck.modality`), for a PNG or JPEG whose file does
not say. `scripts/evaluate_image_checks.py` measures the false refusals on held-out chest images and the
refusals of photographs (README).
"""
from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from covid_models.analysis.ct_quantitative import MIN_ENCLOSED_AIR_MM2, enclosed_air_mm2
from covid_models.analysis.image_analysis import Hold, free, held_back_text
from covid_models.analysis.overlays import display_size
from covid_models.imaging.lung_box import enclosed, otsu_threshold
from covid_models.imaging.scan import Scan
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier, Prediction
from covid_models.models.model_card import modality_name
from covid_models.models.segmentation import Segmenter

SATURATED = 0.25  # HSV saturation above which a pixel is coloured ...
BRIGHT = 0.15  # ... when it is not near black (dark pixels have unstable hue and saturation)
MAX_COLOURED_SHARE = 0.05  # above this share of coloured pixels the image is a colour picture, not a chest image
COLOUR_SIDE = 256  # the colour check reads a thumbnail: a film's annotations and a photo's colours survive it
LUNG_AREA = (0.08, 0.65)  # share of the image the two lung fields of a frontal film cover
LUNG_BALANCE = 0.2  # the smaller lung field holds at least this share of the lung area
STRUCTURE_SIDE = 128  # the enclosed-dark check reads a square thumbnail: lungs are large, a photo's detail is lost
MIN_ENCLOSED_DARK = 0.05  # a CT slice's lungs: at least this share of the image dark and enclosed by brighter tissue
MODALITY_MARGIN = 0.8  # one guard's score ratio below this share of the other's names the modality
COLOUR_MODES = frozenset({"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"})


@dataclass(frozen=True)
class ImageCheck:
    """What the checks found; `refused` with `reasons` when this is not a chest image to analyse."""

    coloured_share: float  # share of coloured pixels (0 for greyscale files)
    guard_ratios: Mapping[str, float]  # modality -> the guard's score / its threshold (<= 1: accepted)
    predictions: Mapping[str, Prediction]  # modality -> that guard's prediction (its forward pass, not repeated)
    lung_area: float | None  # share of the image inside the lung fields the X-ray segmenter found (None: no segmenter)
    lungs_plausible: bool | None
    enclosed_dark: float  # share of the image in dark regions enclosed by brighter tissue (a CT slice's lungs)
    modality: str | None  # the modality the guards point to, None when they do not tell
    reasons: tuple[str, ...]  # why the image is refused; empty when it is accepted
    hu_lungs: bool | None = None  # a DICOM CT's HU hold lungs (None: not a DICOM CT with HU values)

    @property
    def refused(self) -> bool:
        return bool(self.reasons)


def coloured_share(data: bytes | Path, mode: str | None) -> float:
    """Share of clearly coloured pixels in a thumbnail of the file (its bytes, or its path once `read_image` has
    checked it); 0 for greyscale modes (DICOM, L, I;16)."""
    if mode not in COLOUR_MODES:
        return 0.0
    with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as image:
        image.draft("RGB", (COLOUR_SIDE, COLOUR_SIDE))
        image.thumbnail((COLOUR_SIDE, COLOUR_SIDE))
        hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float32) / 255
    return float(np.mean((hsv[..., 1] > SATURATED) & (hsv[..., 2] > BRIGHT)))


def lung_fields(mask: np.ndarray) -> tuple[float, bool]:
    """(share of the image in the mask, whether it is two lung fields of plausible size on either side)."""
    mask = np.asarray(mask, dtype=bool)
    area = float(mask.mean())
    labels, count = ndimage.label(mask)
    if count < 2 or not LUNG_AREA[0] <= area <= LUNG_AREA[1]:
        return area, False
    sizes = np.bincount(labels.ravel())[1:]
    first, second = np.argsort(sizes)[::-1][:2] + 1
    balance = sizes[second - 1] / (sizes[first - 1] + sizes[second - 1])
    centres = [ndimage.center_of_mass(labels == label)[1] for label in (first, second)]
    middle = mask.shape[1] / 2
    return area, bool(balance >= LUNG_BALANCE and min(centres) < middle < max(centres))


def enclosed_dark_share(pixels: np.ndarray) -> float:
    """Share of the image in dark regions that do not reach its border: a CT slice's lungs inside the body.

    Air outside the body reaches the border; a photograph's dark areas mostly do too, or are small. Dark is below
    the image's Otsu threshold (lungs and air against tissue), or below the Otsu threshold of its brighter part
    where that encloses more (aerated or diseased lung inside a white body wall, as a lung window shows it).
    """
    grey = Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8))
    thumb = np.asarray(grey.resize((STRUCTURE_SIDE, STRUCTURE_SIDE), Image.Resampling.BILINEAR), np.float32) / 255
    thumb = ndimage.gaussian_filter(thumb, 1.0)
    low = otsu_threshold(thumb)
    bright = thumb[thumb >= low]
    levels = (low, otsu_threshold(bright)) if bright.size else (low,)
    return max(float((enclosed(thumb < level)[0] > 0).mean()) for level in levels)


def guard_ratio(classifier: Classifier, prediction: Prediction) -> float | None:
    """The classifier's out-of-distribution score over its threshold (<= 1: accepted); None without a guard."""
    score = prediction.ood_score
    if classifier.ood is None or score is None:
        return None
    return score / classifier.ood.threshold if classifier.ood.threshold > 0 else score


def guard_prediction(classifier: Classifier, scan: Scan, hold: Hold = free) -> Prediction:
    """The guard classifier's prediction of the image: its OOD score for the check, its reading for the page."""
    with hold(classifier):
        return classifier.predict(scan)


def lung_mask(lungs: Segmenter, scan: Scan, hold: Hold = free) -> np.ndarray:
    """The X-ray lung segmenter's mask at display size: what the check reads and what the analysis shows, so one
    computation serves both (`analysis.analyse(masks=...)`)."""
    with hold(lungs):
        return np.asarray(lungs.mask(scan, size=display_size(scan.pixels.shape)), dtype=bool)


def detected_modality(ratios: Mapping[str, float]) -> str | None:
    """The modality whose guard accepts the image clearly better than the other's; None when they do not tell."""
    accepted = {modality: ratio for modality, ratio in ratios.items() if ratio <= 1}
    if len(ratios) < 2 or not accepted:
        return None
    best = min(accepted, key=accepted.get)
    others = [ratio for modality, ratio in ratios.items() if modality != best]
    return best if all(accepted[best] < MODALITY_MARGIN * ratio for ratio in others) else None


def check_image(scan: Scan, data: bytes | Path, guards: Mapping[str, Classifier], lungs: np.ndarray | None = None,
                hold: Hold = free) -> ImageCheck:
    """Run the checks on one read image (`data`: its file's bytes or path, for the colour check).

    `guards`: one classifier per modality (its OOD guard is used); `lungs`: the X-ray lung segmenter's mask
    (`lung_mask`), if one is installed;
    `hold(model)` is entered while a model runs (see `analysis.analyse`). A modality is ruled out only by a check
    that is installed, so one guard alone refuses nothing; the CT guard's acceptance counts only with lung fields
    (the segmenter's pair, or enclosed dark regions). A DICOM file's modality tag is not consulted here:
    `choose_modality` trusts the tag over the guards.
    """
    # Pillow reads the file again for its colours; a DICOM's colour is gone from the Scan (the guards still apply)
    share = 0.0 if scan.metadata.source_format == "dicom" else coloured_share(data, scan.metadata.photometric)
    predictions = {modality: guard_prediction(classifier, scan, hold) for modality, classifier in guards.items()}
    ratios = {modality: ratio for modality, classifier in guards.items()
              if (ratio := guard_ratio(classifier, predictions[modality])) is not None}
    area, plausible = (None, None) if lungs is None else lung_fields(lungs)
    enclosed_share = enclosed_dark_share(scan.pixels)
    # Evidence of each modality: lung fields for an X-ray (the X-ray guard where no segmenter is installed: it
    # accepts many grey photographs), the guard and lung fields for a CT (the guard alone accepts grey photographs
    # too); None where no check is installed (nothing ruled out).
    xray = plausible if plausible is not None else None if "xray" not in ratios else ratios["xray"] <= 1
    ct_guard = None if "ct" not in ratios else ratios["ct"] <= 1
    ct = ct_guard and (bool(plausible) or enclosed_share >= MIN_ENCLOSED_DARK)
    hu_lungs = None
    if scan.metadata.dicom_modality == "CT" and scan.modality_values is not None:
        hu_lungs = enclosed_air_mm2(scan.modality_values, scan.metadata.pixel_spacing) >= MIN_ENCLOSED_AIR_MM2
        if hu_lungs:
            ct, xray = True, False
    reasons = []
    if share > MAX_COLOURED_SHARE:
        reasons.append(f"{share:.0%} of its pixels are coloured; chest X-rays and CT slices are greyscale")
    if xray is False and ct is False:
        lungs_found = "" if area is None else (" (no pair of lung fields was found in it)" if area < LUNG_AREA[0]
                                               else " (what the lung segmenter found does not look like two lungs)")
        ct_found = ("a chest CT slice (no dark lung fields inside a body were found in it)" if ct_guard
                    else "a chest CT the models were trained on")
        reasons.append(f"it looks neither like a chest X-ray{lungs_found} nor like {ct_found}")
    modality = ("xray" if xray and ct is False else "ct" if ct and xray is False
                else detected_modality(ratios) if xray and ct else None)
    return ImageCheck(coloured_share=share, guard_ratios=ratios, predictions=predictions, lung_area=area,
                      lungs_plausible=plausible,
                      enclosed_dark=enclosed_share, modality=modality, reasons=tuple(reasons), hu_lungs=hu_lungs)


@dataclass(frozen=True)
class ModalityChoice:
    """The modality to analyse an image as, where it comes from, and whether the user must be asked first."""

    modality: str
    origin: str  # in words, for the page's caption
    ask: tuple[str, str] | None = None  # (detected, chosen) when the image looks unlike the chosen modality


def choose_modality(tag: str | None, dataset: str | None, detected: str | None, chosen: str) -> ModalityChoice:
    """The DICOM tag wins, then the dataset's modality (examples), then the user's choice, which must be confirmed
    when the guards say the image looks like the other modality; a PNG or JPEG is never given a modality silently."""
    if tag is not None:
        return ModalityChoice(tag, "from the DICOM Modality tag")
    if dataset is not None:
        return ModalityChoice(dataset, "from the dataset")
    if detected is None:
        return ModalityChoice(chosen, "as chosen in the settings (the file does not say, and the models' guards "
                                      "could not tell)")
    if detected == chosen:
        return ModalityChoice(chosen, "as chosen in the settings, and the models' guards agree")
    return ModalityChoice(chosen, "as chosen in the settings", ask=(detected, chosen))


OK, REFUSED, HELD_BACK = "ok", "refused", "held back"  # a screened image's status, as every door writes it


@dataclass(frozen=True)
class Screening:
    """Whether one image gets a result at a door that cannot ask its user (a CLI, a batch, a review upload).

    `status`: "ok" (the prediction may be shown), "refused" (not a chest image, or not of the model's modality:
    nothing is computed for it) or "held back" (the model's out-of-distribution guard: no probability is shown);
    `reason` says why in words, empty when ok. `prediction` is the classifier's own (its guard pass), to be shown
    only when ok; `lungs` the X-ray lung segmenter's display-size mask, when one ran (for `analysis.analyse`).
    """

    status: str
    reason: str
    check: ImageCheck
    prediction: Prediction
    lungs: np.ndarray | None = None

    @property
    def answered(self) -> bool:
        return self.status == OK


def refusal_text(check: ImageCheck) -> str:
    """Why an image was refused as a chest image, in words (the page's and every CLI's)."""
    return "This image was refused: it is not a chest X-ray or CT slice, because " + " and ".join(check.reasons) + \
        ". Nothing is computed or reported for it."


@dataclass(frozen=True)
class CheckModels:
    """The models that check an image for a classifier: one guard per modality and the X-ray lung segmenter."""

    guards: Mapping[str, Classifier]  # modality -> classifier whose out-of-distribution guard is used
    lungs: Segmenter | None
    directories: Mapping[str, Classifier | Segmenter]  # the models loaded from `weights`, by directory (for locks)

    @property
    def names(self) -> list[str]:
        """What checked the images, in words."""
        return sorted(self.guards) + (["X-ray lungs"] if self.lungs is not None else [])


def check_models(classifier: Classifier, weights: str | Path,
                 load_classifier: Callable[[str], Classifier] = Classifier.load,
                 load_segmenter: Callable[[str], Segmenter] = Segmenter.load) -> CheckModels:
    """The guards (`classifier` for its modality, the first installed classifier of each other modality) and the
    X-ray lung segmenter found in `weights`, as the Analyze page checks with them; a model that cannot be loaded
    is left out (a check that is not installed rules nothing out). The loaders may be a server's caches."""
    guards: dict[str, Classifier] = {classifier.card.modality: classifier}
    loaded: dict[str, Classifier | Segmenter] = {}
    for directory, card in discover_models(weights, "classification"):
        if card.modality not in guards:
            try:
                guards[card.modality] = loaded[str(directory)] = load_classifier(str(directory))
            except CheckpointError:
                continue
    lungs = None
    for directory, card in discover_models(weights, "segmentation", "xray"):
        if card.classes == ["lungs"]:
            try:
                lungs = loaded[str(directory)] = load_segmenter(str(directory))
                break
            except CheckpointError:
                continue
    return CheckModels(guards, lungs, loaded)


def screen(scan: Scan, data: bytes | Path, classifier: Classifier, models: CheckModels, hold: Hold = free
           ) -> Screening:
    """The Analyze page's checks in one call, for a door that cannot ask: the chest-image check, the modality
    (the DICOM tag, else what the guards say; the page asks the user where a batch refuses), then the model's
    out-of-distribution guard. `models`: see `check_models` (`classifier` stands for its own modality)."""
    modality = classifier.card.modality
    mask = None if models.lungs is None else lung_mask(models.lungs, scan, hold)
    check = check_image(scan, data, {**models.guards, modality: classifier}, mask, hold)
    prediction = check.predictions[modality]
    if check.refused:
        return Screening(REFUSED, refusal_text(check), check, prediction, mask)
    seen, origin = (scan.metadata.modality, "its DICOM Modality tag says") if scan.metadata.modality is not None \
        else (check.modality, "it looks like")
    if seen is not None and seen != modality:
        why = f"{origin} a chest {modality_name(seen)}, and this model reads chest {modality_name(modality)} images"
        return Screening(REFUSED, f"This image was refused: {why}. Nothing is computed or reported for it.",
                         check, prediction, mask)
    if prediction.out_of_distribution:
        return Screening(HELD_BACK, held_back_text(modality), check, prediction, mask)
    return Screening(OK, "", check, prediction, mask)
