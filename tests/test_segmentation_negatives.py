"""Infection segmenter training with real negatives: empty masks, patients kept whole, the held-out part never trained
on, the per-epoch draw, HU window jitter in its limits with masks aligned, a small training run, the false-positive
measures (area on slices, ml inside the lungs of a scan) and the old-against-new comparison script."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scan_phantoms import LESION, band_segmenter, box_voxels, dicom_series, phantom

from covid_models.imaging.preprocessing import LUNG_WINDOW, Augmentation, WindowJitter
from covid_models.imaging.volumes import read_volume
from covid_models.metrics import dice
from covid_models.models.segmentation import Segmenter, segmentation_preprocessing
from covid_models.training.infection_false_positives import (
    false_positive_areas,
    scan_false_positive_ml,
    summarise_false_positive_areas,
)
from covid_models.training.manifests import DataError, load_segmentation_manifest
from covid_models.training.segmentation import (
    NegativeSampler,
    SegmentationConfig,
    SegmentationDataset,
    read_pair,
    train_segmenter,
)
from covid_models.training.splits import NEGATIVE_LABEL, load_segmentation_negatives


def _write_negatives(folder, patients: int = 10, per_patient: int = 2, size: int = 40) -> None:
    (folder / "images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for p in range(patients):
        for s in range(per_patient):
            name = f"images/n{p}-{s}.png"
            Image.fromarray((rng.random((size, size + 4)) * 255).astype(np.uint8)).save(folder / name)
            rows.append({"image": name, "label": "non_covid", "source": "synthetic", "patient_id": f"neg{p}"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)


def _write_positives(folder, count: int = 6, size: int = 48) -> pd.DataFrame:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = []
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        mask[8 + i:28 + i, 12:30] = 255
        Image.fromarray(mask).save(folder / "images" / f"p{i}.png")  # the image is its own mask: a bright block
        Image.fromarray(mask).save(folder / "masks" / f"p{i}.png")
        rows.append({"image": f"images/p{i}.png", "mask": f"masks/p{i}.png", "source": "synthetic",
                     "patient_id": f"pos{i}"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return load_segmentation_manifest(folder, "infection")


# --- the negatives table ------------------------------------------------------------------------------


def test_negatives_have_empty_masks_and_keep_each_patient_on_one_side(tmp_path):
    _write_negatives(tmp_path, patients=10, per_patient=2)
    negatives = load_segmentation_negatives(tmp_path, held_out=0.3, seed=0)
    assert len(negatives) == 20 and (negatives["label"] == NEGATIVE_LABEL).all()
    assert (negatives["mask"] == "").all() and (negatives["orientation"] == "as_is").all()
    assert (negatives.groupby("patient_id")["split"].nunique() == 1).all()
    assert negatives.groupby("split")["patient_id"].nunique().to_dict() == {"test": 3, "train": 7}
    pixels, mask = read_pair(negatives["image"][0], negatives["mask"][0], "as_is")
    assert mask.shape == pixels.shape == (40, 44) and mask.dtype == bool and not mask.any()
    again = load_segmentation_negatives(tmp_path, held_out=0.3, seed=0)
    pd.testing.assert_frame_equal(negatives, again)  # the same held-out patients whenever it is rebuilt
    other = load_segmentation_negatives(tmp_path, held_out=0.3, seed=1)
    assert set(other.loc[other["split"] == "test", "patient_id"]) != set(
        negatives.loc[negatives["split"] == "test", "patient_id"])


def test_negatives_manifest_problems_are_clear_errors(tmp_path):
    _write_negatives(tmp_path, patients=2, per_patient=1)
    with pytest.raises(ValueError, match="held-out share"):
        load_segmentation_negatives(tmp_path, held_out=1.0)
    pd.DataFrame({"image": ["images/n0-0.png"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match="patient_id"):
        load_segmentation_negatives(tmp_path)


def test_each_epoch_draws_every_positive_and_a_fresh_share_of_the_negatives():
    is_negative = np.array([False] * 4 + [True] * 10)
    sampler = NegativeSampler(is_negative, per_epoch=3, seed=0)
    draws = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 7 and len(set(drawn)) == 7
        assert set(range(4)) <= set(drawn)
        draws.append(frozenset(drawn) - set(range(4)))
    assert len(set(draws)) > 1  # not the same negatives every epoch
    shards = [NegativeSampler(is_negative, per_epoch=3, seed=0, rank=r, world_size=2) for r in range(2)]
    together = list(shards[0]) + list(shards[1])
    assert len(together) == len(set(together)) == 6 and len(shards[0]) == 3


# --- HU window jitter ---------------------------------------------------------------------------------


def test_window_jitter_rewindows_in_hu_with_known_values():
    jitter = WindowJitter()
    grey = torch.tensor([0.0, 0.5, 1.0])  # -1350, -600 and +150 HU under the lung window
    torch.testing.assert_close(jitter.apply(grey, LUNG_WINDOW, 0.0, 1.0), grey)
    # level -500, width 1500: -600 HU -> (-600 - (-1250)) / 1500
    torch.testing.assert_close(jitter.apply(grey, LUNG_WINDOW, 100.0, 1.0),
                               torch.tensor([0.0, 650 / 1500, 1400 / 1500]))
    # level -600, width 1200: -1350 HU is below the window, +150 above it
    torch.testing.assert_close(jitter.apply(grey, LUNG_WINDOW, 0.0, 0.8), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(jitter.apply(torch.tensor([0.25]), LUNG_WINDOW, 0.0, 1.25),
                               torch.tensor([(-975 + 1537.5) / 1875]))


def test_window_jitter_stays_within_its_limits_and_keeps_the_order_of_grey_levels():
    jitter = WindowJitter(level_shift=100.0, width_scale=(0.8, 1.25))
    generator = torch.Generator().manual_seed(0)
    draws = [jitter.sample(generator) for _ in range(500)]
    shifts, scales = np.array(draws).T
    assert shifts.min() >= -100 and shifts.max() <= 100 and shifts.min() < -80 and shifts.max() > 80
    assert scales.min() >= 0.8 and scales.max() <= 1.25 and scales.min() < 0.85 and scales.max() > 1.2
    ramp = torch.linspace(0, 1, 101)
    for shift, scale in draws[:50]:
        out = jitter.apply(ramp, LUNG_WINDOW, shift, scale)
        assert out.min() >= 0 and out.max() <= 1 and (out.diff() >= 0).all()


def test_window_jitter_keeps_image_and_mask_aligned_and_leaves_empty_masks_empty(tmp_path):
    positives = _write_positives(tmp_path / "pos", count=2)
    _write_negatives(tmp_path / "neg", patients=2, per_patient=1, size=48)
    frame = pd.concat([positives, load_segmentation_negatives(tmp_path / "neg", held_out=0.5)], ignore_index=True)
    preprocessing = segmentation_preprocessing(64, hu_window=LUNG_WINDOW)
    dataset = SegmentationDataset(frame, preprocessing, augmentation=Augmentation(max_rotation_deg=15, max_shift=0.1),
                                  window_jitter=WindowJitter())
    torch.manual_seed(1)
    for _ in range(5):
        image, mask = dataset[0]
        grey = image[0] * 0.5 + 0.5  # un-normalised
        assert grey.min() >= 0 and grey.max() <= 1
        assert dice((grey > 0.5).numpy(), mask[0].numpy() > 0.5) > 0.9
        for negative in (2, 3):
            assert not dataset[negative][1].any()
    with pytest.raises(ValueError, match="hu_window"):
        SegmentationDataset(frame, segmentation_preprocessing(64), window_jitter=WindowJitter())


# --- training with negatives --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("folds", [2, None])
def test_training_with_negatives_records_their_false_positives_and_never_trains_on_the_held_out_ones(
        tmp_path, monkeypatch, folds):
    positives = _write_positives(tmp_path / "pos", count=6)
    _write_negatives(tmp_path / "neg", patients=8, per_patient=1, size=48)
    negatives = load_segmentation_negatives(tmp_path / "neg", held_out=0.25)
    if folds is None:
        positives["split"] = ["train", "train", "val", "val", "test", "test"]
    import covid_models.training.segmentation as training

    trained_on = []
    original = training.SegmentationDataset.__init__

    def record(self, frame, *args, **kwargs):
        trained_on.append(set(frame["image"]))
        original(self, frame, *args, **kwargs)

    monkeypatch.setattr(training.SegmentationDataset, "__init__", record)
    config = SegmentationConfig(name="neg", modality="ct", target="infection", epochs=1, batch_size=4, image_size=64,
                                folds=folds, window_jitter=WindowJitter(), negatives_per_positive=1.0)
    card = train_segmenter(config, positives, tmp_path / "out", device="cpu", log=lambda _line: None,
                           negatives=negatives)
    held_out = set(negatives.loc[negatives["split"] == "test", "image"])
    assert len(held_out) == 2 and all(not (images & held_out) for images in trained_on)
    record_ = card.metrics["negatives_held_out"]
    assert record_["n"] == 2 and len(record_["per_image"]["image"]) == 2 and 0 <= record_["area"]["mean"] <= 1
    assert card.data["by_label"] == {"infection": 6, NEGATIVE_LABEL: 8}
    assert card.training["window_jitter"] == {"level_shift": 100.0, "width_scale": (0.8, 1.25)}
    assert card.preprocessing.hu_window == LUNG_WINDOW  # DICOM slices and volumes reach it through the lung window
    if folds:
        cv = card.metrics["cross_validation"]
        assert cv["negatives"]["n"] == 6 and sum(f["n"] for f in cv["negatives"]["folds"]) == 6
        assert cv["pooled"]["dice"]["n"] == 6  # Dice is taken on the positives only
    assert Segmenter.load(tmp_path / "out").target == "infection"


# --- false-positive measures --------------------------------------------------------------------------


def test_false_positive_area_is_the_share_of_pixels_called_infection(tmp_path):
    (tmp_path / "images").mkdir()
    grey = np.zeros((32, 32), np.uint8)
    grey[:, :8] = round(0.8 * 255)  # inside the band segmenter's band: a quarter of the slice called infection
    Image.fromarray(grey).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "images" / "b.png")
    frame = pd.DataFrame({"image": [str(tmp_path / "images" / n) for n in ("a.png", "b.png")]})
    areas = false_positive_areas(band_segmenter(32), frame)
    assert areas["area"].tolist() == [0.25, 0.0]
    summary = summarise_false_positive_areas(areas)
    assert summary["n"] == 2 and summary["slices_with_any"] == 1 and summary["slices_over_1_percent"] == 1


def test_scan_false_positive_ml_counts_only_what_lies_inside_the_lungs():
    volume = read_volume(dicom_series(phantom()))
    figures = scan_false_positive_ml(band_segmenter(64), volume)
    assert figures["infection_ml"] == pytest.approx(box_voxels(LESION) * 2.5 * 1.5 * 1.5 / 1000)
    assert figures["lung_ml"] > figures["infection_ml"] and figures["scored_slices"] == 24


# --- the comparison script ----------------------------------------------------------------------------


def _tiny_infection_model(directory, bias: float, per_image_dice: list[float]):
    from covid_models.models.checkpoint import save_model_dir
    from covid_models.models.model_card import ModelCard
    from covid_models.models.segmentation import build_segmentation_model

    model = build_segmentation_model("unet", pretrained=False)
    with torch.no_grad():
        for parameter in model.segmentation_head.parameters():
            parameter.zero_()
        model.segmentation_head[0].bias.fill_(bias)  # a constant logit: everything or nothing called infection
    images = [f"s{i}" for i in range(len(per_image_dice))]
    pooled = {"n": len(images), "dice": {"mean": float(np.mean(per_image_dice)), "std": 0.0, "ci95_low": 0.0,
                                         "ci95_high": 1.0, "n": len(images)}, "pooled_dice": 0.5}
    card = ModelCard(name=directory.name, task="segmentation", modality="ct", architecture="unet",
                     classes=["infection"], positive_class="infection",
                     preprocessing=segmentation_preprocessing(64, hu_window=LUNG_WINDOW),
                     operating_points={"fixed": {"threshold": 0.5, "rule": "fixed"}}, default_operating_point="fixed",
                     metrics={"cross_validation": {"k": 2, "grouped_by": "slice", "threshold": 0.5, "folds": [],
                                                   "pooled": pooled, "per_image": {
                         "image": images, "fold": [1] * len(images), "dice": per_image_dice}}},
                     extra={"encoder": "tu-tf_efficientnet_lite0", "target": "infection", "postprocess": None})
    save_model_dir(directory, model, card)
    return directory


def test_the_comparison_script_reports_dice_pairs_false_positive_area_and_ml_per_scan(tmp_path, capsys):
    from scripts.evaluate_infection_segmenter import main

    data = tmp_path / "data"
    _write_negatives(data / "ct-negatives", patients=10, per_patient=1, size=48)
    series = data / "ct-volumes" / "phantom" / "dicom"
    series.mkdir(parents=True)
    for name, payload in dicom_series(phantom()):
        (series / name).write_bytes(payload)
    pd.DataFrame([{"volume": "phantom", "path": "phantom/dicom", "format": "dicom-series", "label": "non_covid"}]
                 ).to_csv(data / "ct-volumes" / "manifest.csv", index=False)
    nothing = _tiny_infection_model(tmp_path / "nothing", -20.0, [0.5, 0.6, 0.7])
    everything = _tiny_infection_model(tmp_path / "everything", 20.0, [0.6, 0.6, 0.8])
    out = tmp_path / "compare.json"
    assert main(["--model", str(nothing), "--model", str(everything), "--data", str(data), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out ct-negatives" in printed and "| phantom | non_covid |" in printed
    result = json.loads(out.read_text())
    paired = result["dice"][str(everything)]["paired_vs_first"]
    assert paired["mean"] == pytest.approx(0.2 / 3) and paired["better"] == 2 and paired["n"] == 3
    assert result["negatives"][str(nothing)]["area"]["mean"] == 0.0
    assert result["negatives"][str(everything)]["area"]["mean"] == 1.0
    assert result["negatives"][str(everything)]["n"] == 3  # the held-out 30 % of 10 patients
    scan = result["scans"][0]["by_model"]
    assert scan[str(nothing)]["infection_ml"] == 0.0
    assert scan[str(everything)]["infection_ml"] == pytest.approx(scan[str(everything)]["lung_ml"], rel=0.05)
