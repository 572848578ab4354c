"""Classifiers loaded from model directories: calibrated predictions, ensembles, batch prediction."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from covid_models.imaging.lung_box import Box
from covid_models.imaging.scan import Scan
from covid_models.models.architectures import build_model, cam_target_layer
from covid_models.models.checkpoint import CheckpointError, load_model_dir, load_weights_into
from covid_models.models.discovery import BASE_MODEL, LUNG_SEGMENTER, pinned_folder
from covid_models.models.model_card import ModelCard, is_adapted
from covid_models.models.ood import OOD_PREFIX, OodGuard

if TYPE_CHECKING:
    from covid_models.models.segmentation import Segmenter


@dataclass(frozen=True)
class Prediction:
    """One image's calibrated result."""

    model: str
    probabilities: dict[str, float]
    label: str  # the most probable class
    positive_class: str | None
    positive_probability: float | None
    threshold: float
    positive: bool | None  # positive_probability >= threshold
    ood_score: float | None = None
    out_of_distribution: bool = False

    @property
    def reading_label(self) -> str:
        """The class this result stands for at the card's operating point, what a reviewer agrees or disagrees with
        and what every CSV calls its label: the positive class at or above the threshold, else the most probable of
        the other classes (`label`, the most probable class, can differ from it between 0.5 and the threshold)."""
        if self.positive_class is None or self.positive:
            return self.positive_class or self.label
        others = {c: p for c, p in self.probabilities.items() if c != self.positive_class}
        return max(others, key=others.get)


def penultimate_layer(model: nn.Module) -> nn.Linear:
    """The final Linear layer (the class head); its input is the image's feature vector."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


class Classifier:
    """A network with its card: preprocessing, classes, temperature and operating point come from the card."""

    def __init__(self, model: nn.Module, card: ModelCard, ood: OodGuard | None = None,
                 lung_segmenter: Segmenter | None = None):
        """`lung_segmenter` (a `Segmenter`) is required when the card's input is cropped to its lung mask."""
        if card.task != "classification":
            raise CheckpointError(f"{card.name} is a {card.task} model, not a classifier")
        pinned = card.preprocessing.lung_segmenter
        if pinned is not None and not _is_pinned(lung_segmenter, pinned):
            raise CheckpointError(f"{card.name} crops its input to the lungs found by segmenter {pinned[0]!r} "
                                  f"(weights sha256 {pinned[1][:12]}...); give that segmenter")
        self.model = model.eval().requires_grad_(False)  # inference only: heatmaps take gradients of activations
        self.card = card
        self.ood = ood
        self.lung_segmenter = lung_segmenter if pinned is not None else None

    @classmethod
    def load(cls, directory: str | Path, lung_segmenter: Segmenter | None = None) -> Classifier:
        """The classifier of a model directory. A card whose input is cropped to a segmenter's lung mask gets
        `lung_segmenter` when it is that one, else the pinned segmenter is looked up (see `discovery.pinned_folder`)."""
        card, state = load_model_dir(directory, "classification")
        if is_adapted(card):
            return cls._load_adapted(directory, card, state, lung_segmenter)
        pinned = card.preprocessing.lung_segmenter
        if pinned is not None and not _is_pinned(lung_segmenter, pinned):
            from covid_models.models.segmentation import Segmenter

            lung_segmenter = Segmenter.load(pinned_folder(card, LUNG_SEGMENTER, Path(directory).parent))
        ood_state = {k: v for k, v in state.items() if k.startswith(OOD_PREFIX)}
        model_state = {k: v for k, v in state.items() if not k.startswith(OOD_PREFIX)}
        model = build_model(card.architecture, len(card.classes))
        load_weights_into(model, model_state, source=str(directory))
        try:
            ood = OodGuard.from_state(ood_state, card.extra.get("ood")) if ood_state else None
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{directory}: {error}") from error
        return cls(model, card, ood, lung_segmenter)

    @classmethod
    def _load_adapted(cls, directory: str | Path, card: ModelCard, state: dict[str, torch.Tensor],
                      lung_segmenter: Segmenter | None) -> Classifier:
        """A head adapted to a local site (`covid_models.local.adaptation`) on its pinned base model: the base network
        with its class head replaced; the base's out-of-distribution guard and lung segmenter serve it unchanged."""
        base = cls.load(pinned_folder(card, BASE_MODEL, Path(directory).parent), lung_segmenter)
        if base.card.preprocessing.to_dict() != card.preprocessing.to_dict() or \
                base.card.architecture != card.architecture:
            raise CheckpointError(f"{card.name}: its card's preprocessing or architecture differs from its base model "
                                  f"{base.name}'s; the head reads that model's features and needs its input")
        old = penultimate_layer(base.model)
        head = load_weights_into(nn.Linear(old.in_features, len(card.classes)), state, source=str(directory))
        parent_name, _, attribute = next(n for n, m in base.model.named_modules() if m is old).rpartition(".")
        setattr(base.model.get_submodule(parent_name), attribute, head)
        return cls(base.model, card, base.ood, base.lung_segmenter)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def cam_layer(self) -> nn.Module:
        return cam_target_layer(self.model, self.card.architecture)

    def crop_box(self, pixels: np.ndarray) -> Box:
        """The part of the model image (H, W) that the network sees (see `Preprocessing.crop_box`); for a card
        cropped to the segmenter's lungs, the mask is computed here (`Segmenter.input_size_mask`, as at training)."""
        lungs = None if self.lung_segmenter is None else self.lung_segmenter.input_size_mask(pixels)
        return self.card.preprocessing.crop_box(pixels, lungs)

    def to_input(self, image: Scan | np.ndarray, box: Box | None = None) -> torch.Tensor:
        """Scan or (H, W) [0, 1] array -> the normalised input tensor the card prescribes (C, S, S).

        A CT DICOM scan goes through the card's fixed HU window (`Preprocessing.model_pixels`), never the
        window it is displayed with. `box` is `crop_box`'s result when the caller already has it.
        """
        preprocessing = self.card.preprocessing
        pixels = preprocessing.model_pixels(image)
        top, bottom, left, right = self.crop_box(pixels) if box is None else box
        return preprocessing.normalise(preprocessing.square(pixels[top:bottom, left:right]))

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated probabilities and feature vectors of a batch of inputs."""
        captured: list[torch.Tensor] = []
        hook = penultimate_layer(self.model).register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
        try:
            logits = self.model(batch)
        finally:
            hook.remove()
        return self.calibrate(logits), captured[0].float()

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities under the card's temperature."""
        return torch.softmax(logits.float() / self.card.temperature, dim=1)

    def predict_inputs(self, batch: torch.Tensor) -> list[Prediction]:
        return self.predictions(*self.forward(batch))

    def predictions(self, probabilities: torch.Tensor, features: torch.Tensor) -> list[Prediction]:
        """Calibrated probabilities and feature vectors of a batch -> its predictions, the OOD guard applied."""
        scores = self.ood.score(features) if self.ood is not None else None
        return [self._prediction(p, None if scores is None else float(scores[i]))
                for i, p in enumerate(probabilities.numpy())]

    def predict(self, image: Scan | np.ndarray) -> Prediction:
        return self.predict_inputs(self.to_input(image)[None])[0]

    def predict_batch(self, images: Sequence[Scan | np.ndarray], batch_size: int = 16) -> list[Prediction]:
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.to_input(image) for image in images[start:start + batch_size]])
            results.extend(self.predict_inputs(batch))
        return results

    def _prediction(self, probabilities: np.ndarray, ood_score: float | None) -> Prediction:
        classes = self.card.classes
        positive = self.card.positive_class
        p_positive = float(probabilities[classes.index(positive)]) if positive else None
        return Prediction(
            model=self.card.name,
            probabilities={c: float(p) for c, p in zip(classes, probabilities, strict=True)},
            label=classes[int(np.argmax(probabilities))],
            positive_class=positive,
            positive_probability=p_positive,
            threshold=self.card.threshold,
            positive=None if p_positive is None else p_positive >= self.card.threshold,
            ood_score=ood_score,
            out_of_distribution=bool(self.ood is not None and ood_score is not None and ood_score > self.ood.threshold),
        )


class Ensemble:
    """Mean of the calibrated probabilities of classifiers that share modality and classes.

    Its threshold is the mean of the members' thresholds: a convenience, not an operating point
    validated for the ensemble (the app says so).
    """

    def __init__(self, members: Sequence[Classifier]):
        if not members:
            raise ValueError("an ensemble needs at least one classifier")
        first = members[0].card
        for member in members[1:]:
            if member.card.modality != first.modality or member.card.classes != first.classes:
                raise ValueError("ensemble members must share modality and classes")
        self.members = list(members)

    @property
    def name(self) -> str:
        return "ensemble(" + ", ".join(m.name for m in self.members) + ")"

    def predict(self, image: Scan | np.ndarray) -> Prediction:
        return self.combine([member.predict(image) for member in self.members])

    def combine(self, predictions: Sequence[Prediction]) -> Prediction:
        """The ensemble's prediction from its members' predictions of one image, in member order."""
        first = self.members[0].card
        mean = np.mean([[p.probabilities[c] for c in first.classes] for p in predictions], axis=0)
        threshold = float(np.mean([m.card.threshold for m in self.members]))
        positive = first.positive_class
        p_positive = float(mean[first.classes.index(positive)]) if positive else None
        return Prediction(
            model=self.name,
            probabilities={c: float(p) for c, p in zip(first.classes, mean, strict=True)},
            label=first.classes[int(np.argmax(mean))],
            positive_class=positive,
            positive_probability=p_positive,
            threshold=threshold,
            positive=None if p_positive is None else p_positive >= threshold,
            ood_score=None,
            out_of_distribution=any(p.out_of_distribution for p in predictions),
        )


def _is_pinned(segmenter: Segmenter | None, pinned: tuple[str, str]) -> bool:
    return segmenter is not None and (segmenter.name, segmenter.card.sha256) == tuple(pinned)
