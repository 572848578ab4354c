"""The one analysis of an image (`covid_models.analysis.image_analysis.analyse`), which the page, the scripts and the
tests share."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import covid_models.analysis.image_analysis
from covid_models.analysis.explain import heatmap
from covid_models.analysis.image_analysis import LOW_LUNG_SHARE, Signal, analyse, trust_signals
from covid_models.analysis.overlays import DISPLAY_SIDE
from covid_models.benchmarking import chest_like_png, make_weights_dir
from covid_models.imaging.io import read_image
from covid_models.models.inference import Classifier, Ensemble, Prediction
from covid_models.models.segmentation import Segmenter, cam_mass_inside

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("analysis"))


@pytest.fixture(scope="module")
def xray(weights) -> tuple[Classifier, Classifier, Segmenter]:
    return (Classifier.load(weights / "xray-fixture-a"), Classifier.load(weights / "xray-fixture-b"),
            Segmenter.load(weights / "xray-lungs-fixture"))


def test_a_small_image_is_analysed_at_its_own_size_with_the_library_results(xray, monkeypatch):
    # the fixture segmenter is untrained: its mask (most of the film) is implausible, which would hide the share
    monkeypatch.setattr(covid_models.analysis.image_analysis, "lung_implausible", lambda mask: None)
    classifier, _, segmenter = xray
    scan = read_image(chest_like_png(size=96, seed=1))
    result = analyse(scan, [classifier], [segmenter])
    assert result.prediction.probabilities == pytest.approx(classifier.predict(scan).probabilities, abs=1e-6)
    cam = heatmap(classifier, scan)
    assert np.array_equal(result.heatmap, np.round(cam * 255).astype(np.uint8))
    assert np.array_equal(result.masks["lungs"], segmenter.mask(scan))
    assert result.shares["lungs"] == cam_mass_inside(cam, segmenter.mask(scan))
    assert result.image.shape == result.heatmap.shape == (96, 96)


def test_a_large_image_gets_display_size_outputs_and_the_full_size_prediction(xray):
    classifier, _, segmenter = xray
    scan = read_image(chest_like_png(size=900, seed=2))  # above the display side, below the reader's working size
    result = analyse(scan, [classifier], [segmenter])
    assert result.prediction == classifier.predict(scan)  # the model's input does not depend on the display
    assert result.image.shape == result.heatmap.shape == result.masks["lungs"].shape == (DISPLAY_SIDE, DISPLAY_SIDE)


def test_results_are_read_only_so_a_cached_one_can_be_shared(xray):
    classifier, _, segmenter = xray
    result = analyse(read_image(chest_like_png(seed=3)), [classifier], [segmenter])
    for array in (result.image, result.heatmap, result.masks["lungs"]):
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0] = 1
    with pytest.raises(TypeError):
        result.masks["infection"] = result.masks["lungs"]  # type: ignore[index]


def test_an_ensemble_is_the_mean_of_its_members_with_their_mean_heatmap(xray):
    first, second, _ = xray
    scan = read_image(chest_like_png(seed=4))
    result = analyse(scan, [first, second])
    assert result.prediction == Ensemble([first, second]).predict(scan)
    mean = (heatmap(first, scan) + heatmap(second, scan)) / 2
    expected = (mean - mean.min()) / (mean.max() - mean.min())
    assert np.abs(result.heat - expected).max() <= 1 / 255 + 1e-6
    assert "not validated for the ensemble" in result.operating_point


def test_each_model_is_held_while_it_runs(xray):
    classifier, _, segmenter = xray
    held: list[str] = []

    class Hold:
        def __init__(self, model):
            self.name = model.name

        def __enter__(self):
            held.append(self.name)

        def __exit__(self, *exc):
            held.append("/" + self.name)

    analyse(read_image(chest_like_png(seed=5)), [classifier], [segmenter], hold=Hold)
    assert held == [classifier.name, "/" + classifier.name, segmenter.name, "/" + segmenter.name]


def test_one_classifier_with_grad_cam_runs_its_network_once_and_reports_the_prediction_before_the_masks(xray):
    classifier, _, segmenter = xray
    scan = read_image(chest_like_png(seed=6))
    events: list[str] = []
    handles = [classifier.model.register_forward_hook(lambda *_: events.append("classifier")),
               segmenter.model.register_forward_hook(lambda *_: events.append("segmenter"))]
    try:
        result = analyse(scan, [classifier], [segmenter], on_prediction=lambda p: events.append(f"shown {p.label}"))
    finally:
        for handle in handles:
            handle.remove()
    assert events == ["classifier", f"shown {result.prediction.label}", "segmenter"]
    assert result.prediction.probabilities == pytest.approx(classifier.predict(scan).probabilities, abs=1e-6)


def test_a_ct_dicom_is_analysed_from_its_hounsfield_units_not_a_display_window(weights):
    ct = Classifier.load(weights / "ct-fixture")
    scan = read_image(CT_SMALL)
    result = analyse(scan, [ct], [Segmenter.load(weights / "ct-infection-fixture")])
    assert result.prediction == ct.predict(scan) and result.modality == "ct"
    assert any(s.text.endswith("of the heatmap lies inside the infection mask.") for s in result.signals)


def _prediction(out_of_distribution: bool = False) -> Prediction:
    return Prediction(model="m", probabilities={"covid": 0.7, "normal": 0.3}, label="covid", positive_class="covid",
                      positive_probability=0.7, threshold=0.5, positive=True, out_of_distribution=out_of_distribution)


def test_trust_signals_say_what_the_reader_must_know():
    assert trust_signals("xray", _prediction(True), {"lungs": 0.9}, {"lungs": 0.3}, "3-class note") == (Signal(
        "error", "This does not look like a chest X-ray the model was trained on; the prediction is held back: no "
                 "probability, heatmap or mask is shown."),)  # and nothing else to be read
    assert trust_signals("xray", _prediction(), {"lungs": 0.9}) == (
        Signal("success", "90% of the heatmap lies inside the lungs."),)
    low = trust_signals("xray", _prediction(), {"lungs": LOW_LUNG_SHARE - 0.01})
    assert low[0].level == "warning" and "mostly outside the lungs" in low[0].text
    assert trust_signals("ct", _prediction(), {}) == (Signal(
        "note", "No infection segmentation model for CT is installed, so no mask and no share of the heatmap "
                "inside it can be shown."),)
    assert trust_signals("xray", _prediction(), {"lungs": float("nan")})[0].text.startswith("The heatmap is empty")


def test_the_infection_finding_stands_on_its_own_and_a_disagreement_is_said_plainly():
    """A negative call with an outlined infection is a disagreement to read."""
    negative = Prediction(**{**_prediction().__dict__, "positive_probability": 0.088, "positive": False})
    signals = trust_signals("ct", negative, {"infection": float("nan")}, {"infection": 0.07})
    assert Signal("note", "Infection finding: the infection mask covers 7.0% of the slice.") in signals
    assert any(s.level == "warning" and "classifier and the infection segmenter disagree" in s.text
               and "below the operating point" in s.text for s in signals)
    assert not [s for s in trust_signals("ct", negative, {"infection": 0.5}, {"infection": 0.0})
                if s.level == "warning"]


def test_the_three_class_reading_is_labelled_unreliable_with_the_cards_accuracy(xray):
    from covid_models.analysis.image_analysis import multiclass_note

    classifier = xray[0]
    note = multiclass_note(classifier.card)
    accuracy = classifier.card.metrics["test"]["multiclass_accuracy"]
    assert note.startswith("The normal vs pneumonia reading is unreliable") and f"{accuracy:.3f}" in note


def test_a_held_back_reports_content_has_no_heatmap_and_reports_use_fixed_rendering(xray, weights):
    import dataclasses

    from covid_models.analysis.image_analysis import REPORT_RENDERING, report_content

    classifier, _, segmenter = xray
    result = analyse(read_image(chest_like_png(seed=8)), [classifier], [segmenter])
    content = report_content(result, "chest.png", "Grad-CAM")
    assert content.overlay is not None and content.rendering == REPORT_RENDERING
    held = dataclasses.replace(result, prediction=_prediction(out_of_distribution=True))
    held_content = report_content(held, "chest.png", "Grad-CAM")
    assert held_content.overlay is None and held_content.lung_share is None and held_content.warnings == ()


def test_the_file_window_is_named_only_when_the_file_has_one():
    from covid_models.analysis.image_analysis import window_label

    metadata = read_image(CT_SMALL).metadata
    label = window_label(metadata)
    if any(note.startswith("no window in the file") for note in metadata.notes):
        assert label.startswith("As read (the file has no window;")
    else:
        assert label == f"As in the file ({metadata.window[0]:g} / {metadata.window[1]:g})"
    without = dataclasses_replace(metadata, window=(-600.0, 1500.0),
                                  notes=("no window in the file: lung window (centre -600, width 1500) used",))
    assert window_label(without) == "As read (the file has no window; lung window (centre -600, width 1500) used)"
    assert "As in the file" not in window_label(without)


def dataclasses_replace(value, **changes):
    import dataclasses

    return dataclasses.replace(value, **changes)
