"""Model directories: round trips, and refuses tampered, pickled or mismatched checkpoints without running code."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from model_fixtures import tiny_card, write_tiny_classifier

from covid_models.models.architectures import build_model
from covid_models.models.checkpoint import CARD_FILE, WEIGHTS_FILE, CheckpointError, read_card, save_model_dir
from covid_models.models.inference import Classifier


@pytest.fixture()
def model_dir(tmp_path):
    return write_tiny_classifier(tmp_path / "tiny")


def test_round_trip_gives_identical_outputs(tmp_path):
    card = tiny_card()
    model = build_model(card.architecture, len(card.classes)).eval()
    save_model_dir(tmp_path / "m", model, card)
    loaded = Classifier.load(tmp_path / "m")
    image = np.random.default_rng(1).random((80, 70), dtype=np.float32)
    inputs = card.preprocessing(image)[None]
    with torch.no_grad():
        expected = torch.softmax(model(inputs) / card.temperature, 1)
    probabilities, _ = loaded.forward(inputs)
    assert torch.equal(probabilities, expected)
    assert loaded.card.to_dict() == read_card(tmp_path / "m").to_dict()


def test_directory_holds_safetensors_card_and_human_model_card(model_dir):
    assert {p.name for p in model_dir.iterdir()} == {WEIGHTS_FILE, CARD_FILE, "MODEL_CARD.md"}
    card = json.loads((model_dir / CARD_FILE).read_text())
    assert len(card["sha256"]) == 64 and card["format_version"] == 1
    assert "Research use only" in (model_dir / "MODEL_CARD.md").read_text()


def test_half_precision_storage_halves_the_file_and_still_loads(tmp_path):
    card = tiny_card()
    model = build_model(card.architecture, len(card.classes))
    full = save_model_dir(tmp_path / "full", model, card) / WEIGHTS_FILE
    half = save_model_dir(tmp_path / "half", model, tiny_card(), half=True) / WEIGHTS_FILE
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert Classifier.load(tmp_path / "half").forward(torch.zeros(1, 3, 64, 64))[0].dtype == torch.float32


def test_modified_weights_are_refused_by_their_sha256(model_dir):
    weights = model_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        Classifier.load(model_dir)


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_pickle_is_refused_without_running_it(model_dir, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state": _WritesAFile(str(marker))})
    weights = model_dir / WEIGHTS_FILE
    weights.write_bytes(payload)
    card = json.loads((model_dir / CARD_FILE).read_text())
    from covid_models.models.checkpoint import sha256_file

    card["sha256"] = sha256_file(weights)  # an attacker who also edits the card
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        Classifier.load(model_dir)
    assert not marker.exists()


def test_torch_pickle_checkpoint_is_refused(model_dir, tmp_path):
    torch.save(build_model("efficientnet_lite0", 2).state_dict(), model_dir / WEIGHTS_FILE)
    card = json.loads((model_dir / CARD_FILE).read_text())
    from covid_models.models.checkpoint import sha256_file

    card["sha256"] = sha256_file(model_dir / WEIGHTS_FILE)
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError):
        Classifier.load(model_dir)


def test_tensors_that_do_not_fit_the_architecture_are_named(model_dir):
    card = json.loads((model_dir / CARD_FILE).read_text())
    card["classes"] = ["covid", "normal", "pneumonia"]  # the head has 2 outputs
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"classifier\.bias: checkpoint \(2,\) vs model \(3,\)"):
        Classifier.load(model_dir)


def test_wrong_architecture_in_card_is_a_clear_error(model_dir):
    card = json.loads((model_dir / CARD_FILE).read_text())
    card["architecture"] = "resnet18"
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="do not fit its architecture"):
        Classifier.load(model_dir)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(format_version=99), "format version"),
    (lambda c: c.pop("classes"), "lacks the fields"),
    (lambda c: c.update(task="detection"), "task"),
    (lambda c: c.update(positive_class="flu"), "positive class"),
    (lambda c: c.update(temperature=-1), "temperature"),
])
def test_invalid_cards_are_refused(model_dir, edit, message):
    card = json.loads((model_dir / CARD_FILE).read_text())
    edit(card)
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=message):
        Classifier.load(model_dir)


def test_card_that_is_not_json_is_refused(model_dir):
    (model_dir / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_card(model_dir)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Classifier.load(tmp_path / "nothing")
    assert not os.path.exists(tmp_path / "nothing")
