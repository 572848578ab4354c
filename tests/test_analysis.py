"""The one analysis of an image (`covid_models.analysis.analyse`), which the page, the scripts and the tests share."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from covid_models.analysis import LOW_LUNG_SHARE, Signal, analyse, trust_signals
from covid_models.benchmarking import chest_like_png, make_weights_dir
from covid_models.explain import heatmap
from covid_models.inference import Classifier, Ensemble, Prediction
from covid_models.io import read_image
from covid_models.overlays import DISPLAY_SIDE
from covid_models.segmentation import Segmenter, cam_mass_inside

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("analysis"))


@pytest.fixture(scope="module")
def xray(weights) -> tuple[Classifier, Classifier, Segmenter]:
    return (Classifier.load(weights / "xray-fixture-a"), Classifier.load(weights / "xray-fixture-b"),
            Segmenter.load(weights / "xray-lungs-fixture"))


def test_a_small_image_is_analysed_at_its_own_size_with_the_library_results(xray):
    classifier, _, segmenter = xray
    scan = read_image(chest_like_png(size=96, seed=1))
    result = analyse(scan, [classifier], [segmenter])
    assert result.prediction == classifier.predict(scan)
    cam = heatmap(classifier, scan)
    assert np.array_equal(result.heatmap, np.round(cam * 255).astype(np.uint8))
    assert np.array_equal(result.masks["lungs"], segmenter.mask(scan))
    assert result.shares["lungs"] == cam_mass_inside(cam, segmenter.mask(scan))
    assert result.image.shape == result.heatmap.shape == (96, 96)


def test_a_large_image_gets_display_size_outputs_and_the_full_size_prediction(xray):
    classifier, _, segmenter = xray
    scan = read_image(chest_like_png(size=1200, seed=2))
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
    assert held == [classifier.name, "/" + classifier.name] * 2 + [segmenter.name, "/" + segmenter.name]


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
    assert trust_signals("xray", _prediction(True), {"lungs": 0.9})[0] == Signal(
        "error", "This does not look like a chest X-ray the model was trained on; the prediction is held back.")
    assert trust_signals("xray", _prediction(), {"lungs": 0.9}) == (
        Signal("success", "90% of the heatmap lies inside the lungs."),)
    low = trust_signals("xray", _prediction(), {"lungs": LOW_LUNG_SHARE - 0.01})
    assert low[0].level == "warning" and "mostly outside the lungs" in low[0].text
    assert trust_signals("ct", _prediction(), {}) == (Signal(
        "note", "No infection segmentation model for CT is installed, so no mask and no share of the heatmap "
                "inside it can be shown."),)
    assert trust_signals("xray", _prediction(), {"lungs": float("nan")})[0].text.startswith("The heatmap is empty")
