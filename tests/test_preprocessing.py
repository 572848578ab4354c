"""The preprocessing contract and radiograph-safe augmentations."""
from __future__ import annotations

import numpy as np
import torch

from covid_models.imaging.preprocessing import Augmentation, Preprocessing


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


# --- the canonical CT input -------------------------------------------------------------------------------
CT_PREPROCESSING = Preprocessing(image_size=64, hu_window=(-600.0, 1500.0))


def _ct_slice() -> np.ndarray:
    """Stored values of a CT slice: air, lung, soft tissue, bone and the -3024 HU padding outside the field."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 2500, (96, 80)).astype(np.int16)
    stored[:6] = -2000  # -3024 HU after the -1024 intercept: outside the scan field
    return stored


def test_dicom_ct_in_hu_and_the_same_slice_as_a_lung_windowed_png_give_the_same_input():
    from bad_input_corpus import encode, make_dicom
    from PIL import Image

    from covid_models.imaging.io import read_image
    from covid_models.imaging.scan import apply_window

    stored = _ct_slice()
    dicom = read_image(make_dicom(stored, rescale=(1.0, -1024.0), window=(40, 400)))  # a mediastinal file window
    windowed = apply_window(stored.astype(np.float32) - 1024.0, -600.0, 1500.0)
    png = read_image(encode(Image.fromarray((windowed * 255).round().astype(np.uint8)), "PNG"))
    from_dicom, from_png = CT_PREPROCESSING(dicom), CT_PREPROCESSING(png)
    assert torch.allclose(from_dicom, from_png, atol=2 / 255 / 0.5)  # 8-bit rounding of the PNG only
    assert not torch.allclose(from_dicom, CT_PREPROCESSING(dicom.pixels), atol=0.1)  # not the file's window


def test_padding_outside_the_scan_field_reads_as_air():
    from bad_input_corpus import make_dicom

    from covid_models.imaging.io import read_image

    pixels = CT_PREPROCESSING.model_pixels(read_image(make_dicom(_ct_slice(), rescale=(1.0, -1024.0))))
    assert np.all(pixels[:6] == 0.0)


def test_a_display_window_preset_never_changes_the_model_input():
    from bad_input_corpus import make_dicom

    from covid_models.imaging.io import read_image
    from covid_models.imaging.scan import WINDOW_PRESETS, rewindow

    scan = read_image(make_dicom(_ct_slice(), rescale=(1.0, -1024.0)))
    reference = CT_PREPROCESSING(scan)
    for preset in WINDOW_PRESETS.values():
        rewindow(scan, *preset)  # what the viewer draws
        assert torch.equal(CT_PREPROCESSING(scan), reference)


def test_xray_models_take_the_file_as_read():
    from bad_input_corpus import make_dicom

    from covid_models.imaging.io import read_image

    scan = read_image(make_dicom(_ct_slice(), modality="DX", rescale=None))
    np.testing.assert_array_equal(Preprocessing(image_size=64).model_pixels(scan), scan.pixels)
    assert Preprocessing.from_dict(CT_PREPROCESSING.to_dict()) == CT_PREPROCESSING


def test_ct_augmentation_mirrors_left_right_but_xray_augmentation_does_not():
    image = torch.zeros(1, 32, 32)
    image[:, :, :8] = 1.0  # bright on the image's left
    plain = dict(max_rotation_deg=0.0, max_shift=0.0, scale_range=(1.0, 1.0), brightness=0.0, contrast=0.0)
    ct, xray = Augmentation(**plain, hflip=0.5), Augmentation(**plain)
    generator = torch.Generator().manual_seed(0)
    ct_right = sum(bool(ct(image, generator)[0, :, 24:].mean() > 0.5) for _ in range(40))
    xray_right = sum(bool(xray(image, generator)[0, :, 24:].mean() > 0.5) for _ in range(40))
    assert 8 < ct_right < 32 and xray_right == 0


def test_gamma_and_degradation_keep_range_and_change_the_image():
    image = torch.rand(1, 48, 48)
    augment = Augmentation(max_rotation_deg=0.0, max_shift=0.0, scale_range=(1.0, 1.0), brightness=0.0, contrast=0.0,
                           gamma=0.5, degrade=1.0)
    out = augment(image, torch.Generator().manual_seed(2))
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    assert (out - image).abs().mean() > 0.01


def test_histogram_equalisation_spreads_grey_levels_evenly_and_keeps_their_order():
    from covid_models.imaging.preprocessing import equalise_histogram

    image = np.random.default_rng(0).beta(2, 8, size=(128, 128)).astype(np.float32)  # a dark, skewed film
    equalised = equalise_histogram(image)
    counts, _ = np.histogram(equalised, bins=4, range=(0, 1))
    assert np.all(np.abs(counts / image.size - 0.25) < 0.03)
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(equalised.ravel()[order]) >= 0)
    assert np.array_equal(equalise_histogram(np.full((8, 8), 0.3, np.float32)), np.full((8, 8), 0.3, np.float32))


def test_an_equalising_card_gives_two_exposures_of_one_film_nearly_the_same_input():
    image = np.random.default_rng(1).beta(2, 5, size=(96, 96)).astype(np.float32)
    brighter = image ** 0.6  # another exposure or export curve: a monotone change of grey levels
    plain, equalising = Preprocessing(image_size=32), Preprocessing(image_size=32, equalise=True)
    assert float((plain(image) - plain(brighter)).abs().mean()) > 0.2
    assert float((equalising(image) - equalising(brighter)).abs().mean()) < 0.02
    assert Preprocessing.from_dict(equalising.to_dict()) == equalising
