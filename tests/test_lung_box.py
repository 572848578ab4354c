"""The lung-focused CT input: the lungs' box on a windowed slice, the crop in the card, the heatmap put back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from covid_models.explain import place_map
from covid_models.lung_box import lung_box, widen
from covid_models.model_card import CardError
from covid_models.preprocessing import LUNG_WINDOW, Preprocessing

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
    from model_fixtures import tiny_card

    card = tiny_card(modality="ct")
    card.preprocessing = Preprocessing(image_size=64, lung_crop=0.1)
    with pytest.raises(CardError, match="lung_crop needs an hu_window"):
        card.validate()
