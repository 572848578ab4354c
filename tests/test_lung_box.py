"""The lung-focused input: on CT the lungs' box on a windowed slice, on X-ray the box of the lung segmenter's mask;
the crop in the card, the segmenter pinned by its hash, the heatmap put back."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_fixtures import tiny_card

from covid_models.analysis.explain import place_map, predict_and_map
from covid_models.benchmarking import write_segmenter
from covid_models.imaging.lung_box import lung_box, mask_box, widen
from covid_models.imaging.preprocessing import LUNG_WINDOW, Preprocessing
from covid_models.models.architectures import build_model
from covid_models.models.checkpoint import CheckpointError, save_model_dir
from covid_models.models.inference import Classifier
from covid_models.models.model_card import CardError

CROPPED = Preprocessing(image_size=64, hu_window=LUNG_WINDOW, lung_crop=0.1)


def full_field_slice(size: int = 512) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A lung-window slice of a whole scan field: dark air, a bright body, two dark lungs; and the lungs' box."""
    rows, columns = np.mgrid[:size, :size] / size
    image = np.full((size, size), 0.05, dtype=np.float32)  # air around the body
    image[((rows - 0.55) / 0.33) ** 2 + ((columns - 0.5) / 0.42) ** 2 < 1] = 0.9  # soft tissue
    lungs = [((rows - 0.5) / 0.18) ** 2 + ((columns - centre) / 0.12) ** 2 < 1 for centre in (0.32, 0.68)]
    for lung in lungs:
        image[lung] = 0.3
    image[int(0.90 * size):int(0.93 * size), int(0.1 * size):int(0.9 * size)] = 0.8  # the table, below the body
    ys, xs = np.nonzero(lungs[0] | lungs[1])
    return image, (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)


def test_the_box_of_two_lungs_inside_a_body_is_found_to_within_a_thumbnail_pixel():
    image, truth = full_field_slice()
    box = lung_box(image)
    assert box is not None
    step = 512 / 128
    assert np.all(np.abs(np.array(box) - np.array(truth)) <= 2 * step), (box, truth)


def test_a_slice_without_enclosed_dark_regions_has_no_box_and_is_kept_whole():
    body = np.full((200, 300), 0.9, dtype=np.float32)
    body[:, :40] = 0.05  # air at the edge only
    assert lung_box(body) is None
    assert CROPPED.crop_box(body) == (0, 200, 0, 300)


def test_the_margin_widens_the_box_and_stays_inside_the_image():
    assert widen((100, 200, 50, 250), 0.1, (512, 512)) == (90, 210, 30, 270)
    assert widen((5, 500, 0, 512), 0.1, (512, 512)) == (0, 512, 0, 512)


def test_the_lung_crop_fills_the_input_with_the_lungs():
    image, _ = full_field_slice()
    whole = Preprocessing(image_size=64, hu_window=LUNG_WINDOW)(image)
    cropped = CROPPED(image)
    lung = lambda tensor: float(((tensor[0] - (0.3 - 0.5) / 0.5).abs() < 0.1).float().mean())  # noqa: E731
    assert lung(cropped) > 3 * lung(whole)  # the lungs fill the input, the air around the body is gone


def test_a_heatmap_of_the_crop_lands_on_the_crop_and_nowhere_else():
    cam = torch.ones(4, 4)
    placed = place_map(cam, (100, 300, 50, 450), (512, 512), size=(256, 256))
    assert placed.shape == (256, 256)
    assert placed[50:150, 25:225].min() == 1.0
    assert placed[:50].max() == 0.0 and placed[150:].max() == 0.0 and placed[:, :25].max() == 0.0


def test_the_card_records_the_crop_and_refuses_it_without_a_lung_window():
    assert Preprocessing.from_dict(CROPPED.to_dict()) == CROPPED
    card = tiny_card(modality="ct")
    card.preprocessing = Preprocessing(image_size=64, lung_crop=0.1)
    with pytest.raises(CardError, match="lung_crop needs an hu_window"):
        card.validate()


# ------------------------------------------------------------------ X-ray: the box of the lung segmenter's mask
PINNED = ("xray-lungs", "ab" * 32)
SEGMENTED = Preprocessing(image_size=64, lung_crop=0.1, lung_segmenter=PINNED)


def lungs_mask(size: int = 64) -> np.ndarray:
    """A segmenter-grid mask with two lungs spanning rows 10-49 and columns 8-55."""
    mask = np.zeros((size, size), dtype=bool)
    mask[10:50, 8:28] = True
    mask[12:46, 36:56] = True
    return mask


def test_the_box_of_a_mask_on_the_segmenter_grid_is_scaled_to_the_image():
    assert mask_box(lungs_mask(), (512, 384)) == (80, 400, 48, 336)
    assert mask_box(np.zeros((64, 64), dtype=bool), (512, 384)) is None


def test_a_segmenter_crop_needs_the_mask_and_cuts_the_image_to_its_box_plus_margin():
    image = np.random.default_rng(0).random((512, 384), dtype=np.float32)
    with pytest.raises(ValueError, match="pass its mask"):
        SEGMENTED.crop_box(image)
    assert SEGMENTED.crop_box(image, lungs_mask()) == widen((80, 400, 48, 336), 0.1, (512, 384))
    assert SEGMENTED.crop_box(image, np.zeros((64, 64), dtype=bool)) == (0, 512, 0, 384)  # no lungs: kept whole


def test_the_card_pins_the_segmenter_only_with_a_crop():
    card = tiny_card(modality="xray")
    card.preprocessing = SEGMENTED
    card.validate()
    assert Preprocessing.from_dict(SEGMENTED.to_dict()) == SEGMENTED
    for preprocessing, message in ((Preprocessing(image_size=64, lung_segmenter=PINNED), "needs a lung_crop"),
                                   (Preprocessing(image_size=64, lung_crop=0.1), "or a lung_segmenter")):
        card.preprocessing = preprocessing
        with pytest.raises(CardError, match=message):
            card.validate()


class KnownLungs:
    """A stand-in segmenter whose mask is `lungs_mask`, whatever the image."""

    name = PINNED[0]
    card = SimpleNamespace(sha256=PINNED[1])

    def input_size_mask(self, _pixels: np.ndarray) -> np.ndarray:
        return lungs_mask()


def segmented_classifier(card_name: str = "xray-cropped") -> tuple[torch.nn.Module, object]:
    card = tiny_card(name=card_name, modality="xray")
    card.preprocessing = SEGMENTED
    torch.manual_seed(0)
    return build_model(card.architecture, len(card.classes)), card


def test_the_classifier_sees_only_the_box_of_its_segmenters_lungs_and_its_heatmap_stays_there():
    model, card = segmented_classifier()
    classifier = Classifier(model, card, lung_segmenter=KnownLungs())
    image = np.random.default_rng(1).random((512, 384), dtype=np.float32)
    top, bottom, left, right = widen((80, 400, 48, 336), 0.1, (512, 384))
    whole_image_card = Preprocessing(image_size=64)
    assert torch.equal(classifier.to_input(image), whole_image_card(image[top:bottom, left:right]))
    _, cam = predict_and_map(classifier, image)
    outside = np.ones(image.shape, dtype=bool)
    outside[top:bottom, left:right] = False
    assert cam[outside].max() == 0.0 and cam[~outside].max() > 0.0


def test_a_classifier_refuses_to_run_without_the_segmenter_its_card_pins():
    model, card = segmented_classifier()
    with pytest.raises(CheckpointError, match="xray-lungs"):
        Classifier(model, card)
    other = KnownLungs()
    other.card = SimpleNamespace(sha256="cd" * 32)  # same name, other weights
    with pytest.raises(CheckpointError, match="give that segmenter"):
        Classifier(model, card, lung_segmenter=other)


def test_loading_finds_the_pinned_segmenter_beside_the_classifier_by_name_and_hash(tmp_path, monkeypatch):
    monkeypatch.delenv("COVID_WEIGHTS_DIR", raising=False)
    weights = tmp_path / "weights"
    segmenter_dir = write_segmenter(weights, "xray-lungs-fixture", "xray", "lungs", seed=4)
    from covid_models.models.checkpoint import read_card

    pinned = ("xray-lungs-fixture", read_card(segmenter_dir).sha256)
    model, card = segmented_classifier()
    card.preprocessing = Preprocessing(image_size=64, lung_crop=0.1, lung_segmenter=pinned)
    save_model_dir(weights / "xray-cropped", model, card)
    loaded = Classifier.load(weights / "xray-cropped")
    assert (loaded.lung_segmenter.name, loaded.lung_segmenter.card.sha256) == pinned
    assert loaded.predict(np.random.default_rng(2).random((100, 90), dtype=np.float32)).positive_probability >= 0

    alone = tmp_path / "elsewhere" / "xray-cropped"
    save_model_dir(alone, model, card)
    with pytest.raises(CheckpointError, match="not in its folder nor in weights/"):
        Classifier.load(alone)
