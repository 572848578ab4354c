"""Infection segmenter training with real negatives: empty masks, patients kept whole, the held-out part never trained
on, the per-epoch draw, HU window jitter in its limits with masks aligned, a small training run, the false-positive
measures (area on slices, ml inside the lungs of a scan) and the old-against-new comparison script."""
from __future__ import annotations

import json
from pathlib import Path

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
from covid_models.training.recipe_comparison import decide, sign_test
from covid_models.training.segmentation import (
    NegativeSampler,
    SegmentationConfig,
    SegmentationDataset,
    read_pair,
    train_segmenter,
)
from covid_models.training.splits import NEGATIVE_LABEL, load_segmentation_negatives, negatives_never_trained_on


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
    assert negatives_never_trained_on(card) == {Path(image).stem for image in held_out}  # what a rule may be fit on
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


def _tiny_infection_model(directory, bias: float, per_image_dice: list[float], seed: int = 0):
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
                     training={"seed": seed},
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


# --- two recipes over several seeds -------------------------------------------------------------------


def test_the_sign_test_is_exact_and_two_sided():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == sign_test(0, 5) == pytest.approx(2 / 32)
    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024)
    assert sign_test(3, 3) == 1.0


def _seed_result(seed: int, dice_old: list[float], dice_new: list[float], area_old: list[float],
                 area_new: list[float]) -> dict:
    images = [f"s{i}" for i in range(len(dice_old))]
    negatives = [f"n{i}" for i in range(len(area_old))]
    return {"seed": seed, "dice": pd.DataFrame({"image": images, "fold": 1, "dice_old": dice_old,
                                                "dice_new": dice_new, "seed": seed}),
            "held_out": pd.DataFrame({"image": negatives, "area_old": area_old, "area_new": area_new, "seed": seed}),
            "out_of_fold": None}


def test_the_new_recipe_replaces_the_old_only_with_dice_kept_and_fewer_false_positives():
    same_dice = [0.6, 0.7, 0.8, 0.65]
    fewer = _seed_result(1, same_dice, same_dice, [0.01] * 10, [0.0] * 10)
    assert decide([fewer])["replace"]
    worse_dice = _seed_result(1, same_dice, [d - 0.1 for d in same_dice], [0.01] * 10, [0.0] * 10)
    verdict = decide([worse_dice])
    assert not verdict["dice_difference"]["passes"] and verdict["held_out_negatives"]["passes"]
    assert not verdict["replace"]
    too_few_pairs = _seed_result(1, same_dice, same_dice, [0.01] * 4, [0.0] * 4)  # 4 of 4 lower: p = 0.125
    assert not decide([too_few_pairs])["held_out_negatives"]["passes"]
    two_seeds = decide([_seed_result(1, same_dice, same_dice, [0.01] * 3, [0.0] * 3),
                        _seed_result(2, same_dice, same_dice, [0.01] * 3, [0.0] * 3)])
    assert two_seeds["held_out_negatives"]["pairs"] == 6 and two_seeds["held_out_negatives"]["new_lower"] == 6
    assert two_seeds["replace"]  # six pairs of two seeds: p = 0.031


def test_the_recipe_script_pairs_runs_by_seed_and_prints_the_decision(tmp_path, capsys):
    from scripts.compare_segmenter_recipes import main

    data = tmp_path / "data"
    _write_negatives(data / "ct-negatives", patients=20, per_patient=1, size=48)
    dice = [0.5, 0.6, 0.7]
    old = [_tiny_infection_model(tmp_path / f"old{s}", 20.0, dice, seed=s) for s in (1, 2)]
    new = [_tiny_infection_model(tmp_path / f"new{s}", -20.0, dice, seed=s) for s in (2, 1)]
    out = tmp_path / "decision.json"
    arguments = [a for pair in zip(["--old"] * 2, map(str, old), strict=True) for a in pair]
    arguments += [a for pair in zip(["--new"] * 2, map(str, new), strict=True) for a in pair]
    assert main([*arguments, "--data", str(data), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Decision: replace the shipped model" in printed
    decision = json.loads(out.read_text())
    assert decision["held_out_negatives"]["pairs"] == 12 and decision["held_out_negatives"]["new_lower"] == 12
    assert [run["seed"] for run in decision["runs"]] == [1, 2] and decision["runs"][0]["new"] == str(new[1])
    assert main(["--old", str(old[0]), "--new", str(new[0]), "--data", str(data)]) == 2
    assert "different seeds" in capsys.readouterr().err


def test_a_card_says_which_negatives_its_model_never_trained_on(tmp_path):
    from dataclasses import replace

    from covid_models.models.checkpoint import read_card

    positives_only = read_card(_tiny_infection_model(tmp_path / "old", 0.0, [0.5]))
    assert negatives_never_trained_on(positives_only) is None  # it saw no negative: all of them are unseen
    with_negatives = replace(positives_only, data={"by_label": {"infection": 1, NEGATIVE_LABEL: 5}})
    with pytest.raises(DataError, match="does not list the held-out"):
        negatives_never_trained_on(with_negatives)


def test_the_pattern_rule_is_fitted_only_on_negatives_the_segmenter_never_trained_on(tmp_path, capsys):
    from scan_phantoms import adult_phantom

    from scripts.fit_ct_reading import main

    data = tmp_path / "data"
    (data / "ct-negatives" / "images").mkdir(parents=True)
    chest = adult_phantom()[20]  # a slice with both lungs, exported as the LUNA16 slices are: -1000 to +400 HU
    grey = (np.clip((chest + 1000) / 1400, 0, 1) * 255).round().astype(np.uint8)
    names = [f"neg{i}" for i in range(6)]
    for name in names:
        Image.fromarray(grey).save(data / "ct-negatives" / "images" / f"{name}.png")
    pd.DataFrame({"image": [f"images/{n}.png" for n in names], "patient_id": names}).to_csv(
        data / "ct-negatives" / "manifest.csv", index=False)
    model = _tiny_infection_model(tmp_path / "seg", -20.0, [0.5])
    burdens = tmp_path / "burdens.csv"
    assert main([str(model), str(data), "--dry-run", "--out", str(burdens)]) == 0
    assert sorted(pd.read_csv(burdens)["image"]) == [f"images/{n}.png" for n in names]  # it saw no negative
    card = json.loads((model / "card.json").read_text())
    card["data"]["by_label"] = {"infection": 1, NEGATIVE_LABEL: 4}
    card["metrics"]["negatives_held_out"] = {"per_image": {"image": names[:2], "area": [0.0, 0.0]}}
    (model / "card.json").write_text(json.dumps(card))
    main([str(model), str(data), "--dry-run", "--out", str(burdens)])
    assert sorted(pd.read_csv(burdens)["image"]) == [f"images/{n}.png" for n in names[:2]]
    del card["metrics"]["negatives_held_out"]
    (model / "card.json").write_text(json.dumps(card))
    assert main([str(model), str(data), "--dry-run"]) == 2
    assert "does not list the held-out" in capsys.readouterr().err
