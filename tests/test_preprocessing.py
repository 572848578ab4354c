"""The preprocessing contract and radiograph-safe augmentations."""
from __future__ import annotations

import numpy as np
import torch

from covid_models.preprocessing import Augmentation, Preprocessing


def test_preprocessing_round_trips_through_the_card_dict():
    record = Preprocessing(image_size=256, channels=3, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert Preprocessing.from_dict(record.to_dict()) == record


def test_transform_resizes_replicates_and_normalises():
    pixels = np.full((300, 200), 0.75, dtype=np.float32)
    tensor = Preprocessing(image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3)(pixels)
    assert tensor.shape == (3, 64, 64)
    assert torch.allclose(tensor, torch.ones_like(tensor))  # (0.75 - 0.5) / 0.25


def test_batched_normalise_matches_single_images():
    prep = Preprocessing(image_size=32)
    images = torch.rand(4, 1, 32, 32)
    batched = prep.normalise(images)
    assert batched.shape == (4, 3, 32, 32)
    assert torch.allclose(batched[2], prep.normalise(images[2]))


def test_augmentation_keeps_range_and_shape_and_varies():
    image = torch.rand(1, 64, 64)
    augment = Augmentation()
    generator = torch.Generator().manual_seed(0)
    outputs = [augment(image, generator) for _ in range(5)]
    assert all(o.shape == image.shape and o.min() >= 0 and o.max() <= 1 for o in outputs)
    assert not torch.allclose(outputs[0], outputs[1])


def test_augmentation_never_flips_the_chest_upside_down():
    """A bright top half stays on top under any sampled transform (rotation is at most 10 degrees)."""
    image = torch.zeros(1, 64, 64)
    image[:, :32] = 1.0
    augment = Augmentation(brightness=0, contrast=0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        out = augment(image, generator)[0]
        assert out[8:24].mean() > out[40:56].mean()


def test_mask_follows_the_image_geometry():
    image = torch.zeros(1, 32, 32)
    image[:, 8:16, 8:16] = 1.0
    mask = (image > 0).float()
    params = Augmentation(brightness=0, contrast=0).sample(torch.Generator().manual_seed(3))
    warped, warped_mask = Augmentation.apply(image, params, mask)
    assert set(warped_mask.unique().tolist()) <= {0.0, 1.0}  # nearest: still a binary mask
    overlap = ((warped > 0.5) & (warped_mask > 0.5)).sum() / (warped_mask > 0.5).sum()
    assert overlap > 0.8
