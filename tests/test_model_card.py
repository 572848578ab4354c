"""Model folders from anywhere: a card that breaks the schema is skipped at discovery, named, with its reason.

Each case is a crafted copy of a valid model folder with one field changed, as a colleague's or an
attacker's folder could be; the valid folder beside it must still be found.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from model_fixtures import tiny_card, write_tiny_classifier

from covid_models.models.checkpoint import CARD_FILE, CheckpointError, read_card
from covid_models.models.discovery import discover_models, find_models
from covid_models.models.model_card import IMAGE_SIZE_RANGE, CardError, ModelCard

DEEP = "<100000 nested lists>"  # json.dumps cannot write them: put into the text


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def set_in(path: str, value):
    """An edit of card.json: set the field at a dotted path."""
    def edit(card: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            card = card[key]
        card[last] = value
    return edit


CASES = {
    "temperature-string": (set_in("temperature", "1.0"), "temperature must be a number, not a string '1.0'"),
    "deeply-nested": (set_in("extra", {"deep": DEEP}), "nested too deeply"),
    "nested-beyond-schema": (set_in("extra", {"deep": nested(40)}), "more than 32 levels deep"),
    "data-null": (set_in("data", None), "data must be an object, not null"),
    "threshold-high": (set_in("operating_points.youden.threshold", "high"),
                       "operating_points.youden.threshold must be a number, not a string 'high'"),
    "threshold-above-one": (set_in("operating_points.youden.threshold", 1.5), r"must lie in \[0, 1\]"),
    "image-size-20000": (set_in("preprocessing.image_size", 20000),
                         rf"preprocessing.image_size must lie in \[{IMAGE_SIZE_RANGE[0]}, {IMAGE_SIZE_RANGE[1]}\]"),
    "image-size-string": (set_in("preprocessing.image_size", "224"), "image_size must be an integer"),
    "mean-too-short": (set_in("preprocessing.mean", [0.5]), "preprocessing.mean must be a list of 3 numbers"),
    "std-zero": (set_in("preprocessing.std", [0.5, 0.0, 0.5]), r"std\[1\] must lie in \(0, 10\]"),
    "classes-text": (set_in("classes", "covid,normal"), "classes must be a list"),
    "temperature-true": (set_in("temperature", True), "temperature must be a number, not a boolean"),
    "ood-threshold-text": (set_in("extra", {"ood": {"threshold": "x"}}), "extra.ood.threshold must be a number"),
    "sha-not-hex": (set_in("sha256", "../../etc/passwd"), "sha256 must be 64 hexadecimal digits"),
    "a-list": (lambda card: [card], "card.json must be an object, not a list"),
    "architecture-path": (set_in("architecture", "../../os.system"),
                          "architecture '../../os.system' is not an architecture name"),
    "architecture-unknown": (set_in("architecture", "resnet1000"),
                             "architecture 'resnet1000' is not a registered classification architecture"),
    "segmenter-architecture-unknown": (lambda card: card.update(task="segmentation", architecture="resnet18"),
                                       "architecture 'resnet18' is not a registered segmentation architecture"),
    "name-path": (set_in("name", "../../etc/cron.d/model"), "name .* holds a path separator"),
    "name-backslash": (set_in("name", "C:\\models\\x"), "name .* holds a path separator"),
    "name-dots": (set_in("name", ".."), "name '..' holds a path separator, '..'"),
}


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    return write_tiny_classifier(tmp_path_factory.mktemp("valid") / "good-model")


def crafted(weights: Path, valid: Path, name: str) -> Path:
    """weights/ holding the valid model and a copy of it broken as CASES[name] says."""
    shutil.copytree(valid, weights / valid.name)
    folder = shutil.copytree(valid, weights / name)
    card = json.loads((folder / CARD_FILE).read_text())
    card = CASES[name][0](card) or card  # an edit changes the card in place or returns another
    (folder / CARD_FILE).write_text(json.dumps(card).replace(f'"{DEEP}"', "[" * 100_000 + "]" * 100_000))
    return folder


@pytest.mark.parametrize("name", CASES)
def test_a_card_that_breaks_the_schema_is_skipped_with_its_name_and_reason(tmp_path, valid, name, caplog):
    weights = tmp_path / "weights"
    crafted(weights, valid, name)
    with caplog.at_level(logging.WARNING, logger="covid_models.models.discovery"):
        folders = find_models(weights)
    assert [directory.name for directory, _ in folders.found] == ["good-model"]
    assert [folder for folder, _ in folders.skipped] == [name]
    reason = folders.skipped[0][1]
    assert re.search(CASES[name][1], reason), reason
    assert str(tmp_path) not in reason  # shown on the pages: no server path
    assert f"model folder {name} skipped" in caplog.text
    assert [d.name for d, _ in discover_models(weights)] == ["good-model"]
    with pytest.raises(CheckpointError, match=str(weights / name)):  # the command line names the file
        read_card(weights / name)


@pytest.mark.slow  # a script in a fresh process
def test_predict_refuses_a_card_naming_no_registered_architecture_with_a_message_not_a_traceback(tmp_path, valid):
    from test_scripts import _script

    folder = crafted(tmp_path / "weights", valid, "architecture-path")
    result = _script("predict.py", str(folder), str(tmp_path), "--out", str(tmp_path / "preds.csv"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr
    assert "architecture '../../os.system' is not an architecture name" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "train_segmentation.py"])
def test_the_training_scripts_refuse_a_model_name_holding_a_path_before_training(tmp_path, script):
    from test_scripts import _script

    result = _script(script, "--name", "../../etc/model", "--out", str(tmp_path / "model"))
    assert result.returncode == 2 and "argument --name: invalid model_name value: '../../etc/model'" in result.stderr
    assert not (tmp_path / "model").exists()


def test_a_card_file_larger_than_a_megabyte_is_not_parsed(tmp_path, valid):
    folder = shutil.copytree(valid, tmp_path / "huge")
    card = json.loads((folder / CARD_FILE).read_text())
    card["extra"] = {"padding": "x" * (1024 * 1024)}
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="larger than 1024 kB"):
        read_card(folder)


def test_the_shipped_and_fixture_cards_satisfy_the_schema(valid):
    weights = Path(__file__).resolve().parents[1] / "weights"
    assert find_models(weights).skipped == ()
    assert read_card(valid) == ModelCard.from_dict(json.loads((valid / CARD_FILE).read_text()))


def test_a_card_built_in_code_is_checked_by_the_same_schema():
    card = tiny_card()
    card.validate()
    card.temperature = "1.0"  # type: ignore[assignment]
    with pytest.raises(CardError, match="temperature must be a number"):
        card.validate()


def test_the_app_names_a_skipped_model_folder_in_the_sidebar_and_offers_the_others(tmp_path, valid, monkeypatch):
    from app_fixtures import page_test

    weights = tmp_path / "weights"
    crafted(weights, valid, "temperature-string")
    at = page_test("streamlit_app.py", weights, monkeypatch).run()
    assert not at.exception
    assert any("1 model folder(s) skipped" in w.value for w in at.sidebar.warning)
    assert "temperature-string: temperature must be a number, not a string '1.0'" in [t.value for t in at.sidebar.text]
    assert at.selectbox(key="model-xray").options == ["tiny"]
