"""Model directories: `model.safetensors` (tensors only) + `card.json` (every fact about the model).

Loading never unpickles anything: tensors come from safetensors, metadata from JSON, and the file's
sha256 recorded in the card is checked before a byte of it is parsed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from covid_models.models.architectures import REGISTRY, SEGMENTATION_ARCHITECTURES
from covid_models.models.card_markdown import render_model_card
from covid_models.models.model_card import FORMAT_VERSION, CardError, ModelCard

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
MAX_CARD_BYTES = 1024 * 1024  # real cards hold a few tens of kB


class CheckpointError(RuntimeError):
    """A model directory that is missing, tampered with, or does not fit its card."""


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


def read_card(directory: str | Path, task: str | None = None) -> ModelCard:
    """The card of a model directory, checked against the schema (`model_card.check_card`).

    CheckpointError names the file; its cause, a CardError, says what is wrong without the path. With `task`, a
    card of another task is refused first (the wrong kind of model, whatever its architecture).
    """
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a model directory holds {WEIGHTS_FILE} and {CARD_FILE}")
    try:
        card = ModelCard.from_dict(_parse_card(path))
        if task is not None and card.task != task:  # before the architecture: the wrong kind of model is the news
            raise CardError(f"holds a {card.task} model, not a {task} model")
        _check_buildable(card)
    except CardError as error:
        raise CheckpointError(f"{path}: {error}") from error
    return card


def _check_buildable(card: ModelCard) -> None:
    """CardError unless the card's architecture is one this version registers for its task: a card never names
    something else to look up, and a model that cannot be built is not offered."""
    known = sorted(REGISTRY) if card.task == "classification" else list(SEGMENTATION_ARCHITECTURES)
    if card.architecture not in known:
        raise CardError(f"architecture {card.architecture!r} is not a registered {card.task} architecture "
                        f"(this version builds: {', '.join(known)})")


def _parse_card(path: Path) -> object:
    if path.stat().st_size > MAX_CARD_BYTES:
        raise CardError(f"larger than {MAX_CARD_BYTES // 1024} kB; a card holds a few kB of facts")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CardError(f"not valid JSON: {error}") from error
    except RecursionError:
        raise CardError("objects and lists nested too deeply to be a model card") from None


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
    card = read_card(directory, task)
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
    card.validate()
    directory = Path(directory)
    for name, text in ((CARD_FILE, json.dumps(card.to_dict(), indent=2) + "\n"),
                       (MODEL_CARD_FILE, render_model_card(card))):
        (directory / f".{name}.tmp").write_text(text)
        os.replace(directory / f".{name}.tmp", directory / name)
