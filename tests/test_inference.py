"""Classifiers and ensembles read every fact from the card."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import WEIGHTS_DIR
from model_fixtures import write_tiny_classifier

from covid_models.models.discovery import discover_models, ensemble_members
from covid_models.models.inference import Classifier, Ensemble, Prediction
from covid_models.models.model_card import is_adapted


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    write_tiny_classifier(root / "xray-a", name="xray-a", modality="xray", classes=("covid", "normal", "pneumonia"))
    write_tiny_classifier(root / "xray-b", name="xray-b", modality="xray", classes=("covid", "normal", "pneumonia"))
    write_tiny_classifier(root / "ct-a", name="ct-a", modality="ct", classes=("covid", "non_covid"))
    (root / "broken").mkdir()
    (root / "broken" / "card.json").write_text("{}")
    return root


def test_discover_models_filters_by_modality_and_skips_broken_cards(weights):
    assert [card.name for _, card in discover_models(weights)] == ["ct-a", "xray-a", "xray-b"]
    assert [card.name for _, card in discover_models(weights, modality="ct")] == ["ct-a"]


def test_prediction_applies_the_cards_temperature_and_threshold(weights):
    classifier = Classifier.load(weights / "xray-a")
    image = np.random.default_rng(0).random((90, 90), dtype=np.float32)
    prediction = classifier.predict(image)
    assert classifier.card.temperature == pytest.approx(1.3)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.positive_probability == prediction.probabilities["covid"]
    assert prediction.threshold == classifier.card.threshold
    assert prediction.positive == (prediction.positive_probability >= prediction.threshold)


def test_batch_prediction_equals_one_by_one(weights):
    classifier = Classifier.load(weights / "ct-a")
    images = [np.random.default_rng(i).random((70 + i, 60), dtype=np.float32) for i in range(3)]
    batch = classifier.predict_batch(images, batch_size=2)
    for image, result in zip(images, batch, strict=True):
        assert result.probabilities["covid"] == pytest.approx(classifier.predict(image).probabilities["covid"],
                                                              abs=1e-5)


def test_ensemble_averages_its_members(weights):
    members = [Classifier.load(weights / name) for name in ("xray-a", "xray-b")]
    image = np.random.default_rng(3).random((64, 64), dtype=np.float32)
    mean = np.mean([m.predict(image).probabilities["covid"] for m in members])
    assert Ensemble(members).predict(image).probabilities["covid"] == pytest.approx(mean, abs=1e-6)


def test_ensemble_refuses_members_of_different_modalities(weights):
    with pytest.raises(ValueError, match="modality"):
        Ensemble([Classifier.load(weights / "xray-a"), Classifier.load(weights / "ct-a")])


@pytest.mark.parametrize(("probabilities", "threshold", "most_probable", "reading"), [
    ({"covid": 0.52, "non_covid": 0.48}, 0.532, "covid", "non_covid"),  # argmax covid, but below the operating point
    ({"covid": 0.35, "normal": 0.45, "pneumonia": 0.20}, 0.30, "normal", "covid"),  # at or above it: covid
    ({"covid": 0.10, "normal": 0.30, "pneumonia": 0.60}, 0.30, "pneumonia", "pneumonia"),  # below: the likelier other
])
def test_the_reading_label_follows_the_operating_point_not_the_most_probable_class(probabilities, threshold,
                                                                                   most_probable, reading):
    prediction = Prediction(model="m", probabilities=probabilities, label=most_probable, positive_class="covid",
                            positive_probability=probabilities["covid"], threshold=threshold,
                            positive=probabilities["covid"] >= threshold)
    assert prediction.reading_label == reading


def test_an_ensemble_averages_shipped_models_of_one_class_set_never_a_site_adapted_head():
    cards = {str(d): c for d, c in discover_models(WEIGHTS_DIR, "classification", "xray")}
    adapted = [d for d, c in cards.items() if is_adapted(c)]
    assert adapted  # the shipped weights hold a head adapted to one site
    members = ensemble_members(cards)
    assert members and not set(adapted) & set(members)
    assert len({tuple(c.classes) for c in members.values()}) == 1
