"""Finding model folders: the models of a weights folder, and the folder of each model a card pins.

A card pins other models by name and weights sha256: a classifier cropped to the lungs pins its lung segmenter
(`preprocessing.lung_segmenter`), a head adapted to a local site pins its base model (`extra.base_model`). Both are
looked up here, the same way, so that loading a model, a page and a script find the same folder or refuse with the
same reason. Separate from `checkpoint` (one folder's files) and `inference` (what a loaded model does).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from covid_models.models.checkpoint import CheckpointError, read_card
from covid_models.models.model_card import CardError, ModelCard, is_adapted

logger = logging.getLogger(__name__)
PROJECT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
LUNG_SEGMENTER = "lung_segmenter"  # the segmenter whose lung mask gives a classifier's crop
BASE_MODEL = "base_model"  # the network an adapted head sits on
_PINNED_TASKS = {LUNG_SEGMENTER: "segmentation", BASE_MODEL: "classification"}


@dataclass(frozen=True)
class ModelFolders:
    """The model folders of a weights directory: the usable ones with their cards, the others with why not."""

    found: tuple[tuple[Path, ModelCard], ...]
    skipped: tuple[tuple[str, str], ...]  # (folder name, reason): shown to users, so no server path


def find_models(weights_dir: str | Path) -> ModelFolders:
    """Every folder of `weights_dir` holding a card.json; a card that fails the schema is skipped and logged."""
    found, skipped = [], []
    for card_path in sorted(Path(weights_dir).glob("*/card.json")):
        try:
            found.append((card_path.parent, read_card(card_path.parent)))
        except CheckpointError as error:
            reason = str(error.__cause__) if isinstance(error.__cause__, CardError) else str(error)
            logger.warning("model folder %s skipped: %s", card_path.parent.name, reason)
            skipped.append((card_path.parent.name, reason))
    return ModelFolders(tuple(found), tuple(skipped))


def discover_models(weights_dir: str | Path, task: str | None = None, modality: str | None = None
                    ) -> list[tuple[Path, ModelCard]]:
    """Model directories under `weights_dir` whose cards are valid and match task and modality."""
    return [(directory, card) for directory, card in find_models(weights_dir).found
            if (task is None or card.task == task) and (modality is None or card.modality == modality)]


def ensemble_members(cards: dict[str, ModelCard]) -> dict[str, ModelCard]:
    """The models an ensemble of these may average: the shipped ones (a head adapted to one site is not averaged with
    models of every site) that share the first one's classes, so their probabilities mean the same thing."""
    shipped = {d: c for d, c in cards.items() if not is_adapted(c)}
    classes = next((c.classes for c in shipped.values()), None)
    return {d: c for d, c in shipped.items() if c.classes == classes}


def card_pin(card: ModelCard, kind: str) -> tuple[str, str] | None:
    """(name, weights sha256) of the model of `kind` (LUNG_SEGMENTER or BASE_MODEL) that `card` pins, or None."""
    if kind == LUNG_SEGMENTER:
        return card.preprocessing.lung_segmenter
    if kind == BASE_MODEL:
        pin = card.extra.get(BASE_MODEL)
        return (str(pin.get("name")), str(pin.get("sha256"))) if isinstance(pin, dict) else None
    raise ValueError(f"unknown kind of pinned model {kind!r}; choose one of {sorted(_PINNED_TASKS)}")


def pinned_folder(card: ModelCard, kind: str, *folders: Path) -> Path | None:
    """The folder of the model of `kind` that `card` pins (None when it pins none): the first model of that kind's
    task with the pinned name and hash in `folders` (give the card's own folder's parent), $COVID_WEIGHTS_DIR or the
    project's `weights/`. CheckpointError if none has it, saying when a model of that name is there with other
    weights (retrained or modified since it was pinned)."""
    pin = card_pin(card, kind)
    if pin is None:
        return None
    try:
        return _model_folder(_PINNED_TASKS[kind], pin, folders)
    except CheckpointError as error:
        if kind == LUNG_SEGMENTER:
            raise CheckpointError(f"this classifier crops its input to the lungs found by {error}") from None
        raise


def _model_folder(task: str, pinned: tuple[str, str], folders: tuple[Path, ...]) -> Path:
    name, sha256 = pinned
    environment = [Path(os.environ["COVID_WEIGHTS_DIR"])] if os.environ.get("COVID_WEIGHTS_DIR") else []
    others = []
    for folder in (*folders, *environment, PROJECT_WEIGHTS):
        for directory, card in find_models(folder).found:
            if card.task == task and card.name == name:
                if card.sha256 == sha256:
                    return directory
                others.append(card.sha256)
    what = "segmenter" if task == "segmentation" else f"{task} model"
    if others:
        raise CheckpointError(f"{what} {name!r} pinned with weights sha256 {sha256[:12]}..., but the installed "
                              f"{name!r} has weights sha256 {others[0][:12]}...: it is not the model this one was "
                              "built on; refusing to load (install the pinned version, or refit on the installed one)")
    raise CheckpointError(f"{what} {name!r} (weights sha256 {sha256[:12]}...), which is not in its folder nor in "
                          "weights/: copy that model's folder beside it")
