"""Model directories: `model.safetensors` (tensors only) + `card.json` (every fact about the model).

Loading never unpickles anything: tensors come from safetensors, metadata from JSON, and the file's
sha256 recorded in the card is checked before a byte of it is parsed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from covid_models.preprocessing import Preprocessing

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
TASKS = ("classification", "segmentation")
MODALITIES = ("ct", "xray")


class CheckpointError(RuntimeError):
    """A model directory that is missing, tampered with, or does not fit its card."""


@dataclass
class ModelCard:
    """Everything needed to use and judge a model; serialised as card.json."""

    name: str
    task: str
    modality: str
    architecture: str
    classes: list[str]
    preprocessing: Preprocessing
    positive_class: str | None = None
    temperature: float = 1.0
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_operating_point: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def threshold(self) -> float:
        """Probability of the positive class at or above which a case is called positive."""
        if self.default_operating_point is None:
            return 0.5
        return float(self.operating_points[self.default_operating_point]["threshold"])

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"card format version {version!r} is not supported (this version of the tool reads {FORMAT_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"name", "task", "modality", "architecture", "classes", "preprocessing"} - data.keys()
        if missing:
            raise CheckpointError(f"card.json lacks the fields: {', '.join(sorted(missing))}")
        try:
            card = cls(**{k: v for k, v in data.items() if k in known and k != "preprocessing"},
                       preprocessing=Preprocessing.from_dict(data["preprocessing"]))
        except (TypeError, KeyError, ValueError) as error:
            raise CheckpointError(f"card.json is malformed: {error}") from error
        card.validate()
        return card

    def validate(self) -> None:
        if self.task not in TASKS:
            raise CheckpointError(f"card task {self.task!r} is not one of {TASKS}")
        if self.modality not in MODALITIES:
            raise CheckpointError(f"card modality {self.modality!r} is not one of {MODALITIES}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise CheckpointError("card classes must be a non-empty list of distinct names")
        if self.positive_class is not None and self.positive_class not in self.classes:
            raise CheckpointError(f"positive class {self.positive_class!r} is not among {self.classes}")
        if self.default_operating_point is not None and self.default_operating_point not in self.operating_points:
            raise CheckpointError(f"default operating point {self.default_operating_point!r} is not defined")
        if not self.temperature > 0:
            raise CheckpointError("calibration temperature must be positive")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model_dir(
    directory: str | Path,
    model: nn.Module,
    card: ModelCard,
    *,
    half: bool = False,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write weights, card.json and MODEL_CARD.md.

    `half` stores the network's floating tensors as fp16 (to stay under the size cap);
    `extra_tensors` (e.g. the out-of-distribution statistics, keys prefixed "ood.") are stored beside
    the network's in the same safetensors file, in fp32.
    """
    from covid_models.model_card import render_model_card

    card.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        key: (value.half() if half and value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    state.update({key: value.detach().float().cpu().contiguous() for key, value in (extra_tensors or {}).items()})
    # Write beside, then rename: a crash mid-write never leaves a half-written model where a good one was.
    weights = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(weights), metadata={"format_version": str(FORMAT_VERSION), "name": card.name})
    card.sha256 = sha256_file(weights)
    for name, text in ((CARD_FILE, json.dumps(card.to_dict(), indent=2) + "\n"),
                       (MODEL_CARD_FILE, render_model_card(card))):
        (directory / f".{name}.tmp").write_text(text)
    for name in (WEIGHTS_FILE, CARD_FILE, MODEL_CARD_FILE):
        os.replace(directory / f".{name}.tmp", directory / name)
    return directory


def read_card(directory: str | Path) -> ModelCard:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a model directory holds {WEIGHTS_FILE} and {CARD_FILE}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return ModelCard.from_dict(data)


def load_state(directory: str | Path, card: ModelCard) -> dict[str, torch.Tensor]:
    """The tensors of a model directory, after checking their sha256 against the card."""
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    actual = sha256_file(weights)
    if card.sha256 and actual != card.sha256:
        raise CheckpointError(
            f"{weights} does not match the sha256 recorded in its card (expected {card.sha256[:12]}..., "
            f"found {actual[:12]}...): the file was modified or corrupted; refusing to load it"
        )
    if not card.sha256:
        raise CheckpointError(f"{Path(directory) / CARD_FILE} records no sha256 for {WEIGHTS_FILE}; refusing to load")
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights} is not a valid safetensors file: {error}") from error


def load_model_dir(directory: str | Path, task: str) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The card and the checked tensors of a model directory that must hold a `task` model."""
    card = read_card(directory)
    if card.task != task:
        raise CheckpointError(f"{directory} holds a {card.task} model, not a {task} model")
    return card, load_state(directory, card)


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "checkpoint") -> nn.Module:
    """Copy `state` into `model`, refusing any missing, unexpected or mis-shaped tensor with a clear list."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & state.keys())
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            problems.append(f"{len(mismatched)} of the wrong shape (e.g. {mismatched[0]})")
        raise CheckpointError(f"the tensors of {source} do not fit its architecture: " + "; ".join(problems))
    converted = {key: value.to(expected[key].dtype) for key, value in state.items()}
    model.load_state_dict(converted)
    return model


def save_card(directory: str | Path, card: ModelCard) -> None:
    """Rewrite a model directory's card.json and MODEL_CARD.md (e.g. after an evaluation adds figures); the
    weights and their sha256 are untouched."""
    from covid_models.model_card import render_model_card

    card.validate()
    directory = Path(directory)
    for name, text in ((CARD_FILE, json.dumps(card.to_dict(), indent=2) + "\n"),
                       (MODEL_CARD_FILE, render_model_card(card))):
        (directory / f".{name}.tmp").write_text(text)
        os.replace(directory / f".{name}.tmp", directory / name)
