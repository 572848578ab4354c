"""Manifests, folder imports, patient-level splits and the leakage check."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covid_models.imaging.preprocessing import Augmentation, Preprocessing
from covid_models.training.datasets import BalancedSampler, ImageDataset, balanced_weights
from covid_models.training.manifests import DataError, import_folder, load_dataset, load_manifest
from covid_models.training.splits import LeakageError, check_no_leakage, ensure_split, held_out_images, patient_split


def _frame(n_patients: int = 60, images_per_patient: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = rng.choice(["covid", "normal", "pneumonia"], p=[0.2, 0.5, 0.3])
        source = rng.choice(["siteA", "siteB"])
        for i in range(images_per_patient):
            rows.append({"image": f"/img/p{p}_{i}.png", "label": label, "patient_id": f"P{p}", "source": source})
    return pd.DataFrame(rows)


def test_patient_split_never_puts_a_patient_in_two_splits():
    split = patient_split(_frame(), seed=3)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    check_no_leakage(split)


def test_patient_split_is_seeded_and_roughly_follows_the_fractions():
    frame = _frame(200)
    first, again, other = patient_split(frame, seed=1), patient_split(frame, seed=1), patient_split(frame, seed=2)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
    shares = first["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.06)
    assert shares["val"] == pytest.approx(0.15, abs=0.05)


def test_patient_split_is_stratified_by_label():
    split = patient_split(_frame(300), seed=0)
    table = pd.crosstab(split["split"], split["label"], normalize="index")
    assert (table.max() - table.min()).max() < 0.1  # each split has about the same class mix


def test_near_duplicate_images_of_different_patients_stay_on_one_side():
    frame = _frame(80, 1)
    links = [("p1_0", "p2_0"), ("p2_0", "p3_0")]
    split = patient_split(frame, seed=5, linked_ids=links).set_index("patient_id")
    assert split.loc["P1", "split"] == split.loc["P2", "split"] == split.loc["P3", "split"]


def test_leakage_check_fails_loudly_naming_the_patient():
    frame = patient_split(_frame(), seed=0)
    frame.loc[frame.index[0], "split"] = "test" if frame.loc[frame.index[0], "split"] != "test" else "train"
    with pytest.raises(LeakageError, match="P0"):
        check_no_leakage(frame)


def test_ensure_split_keeps_an_official_split():
    frame = _frame(20)
    frame["split"] = ["test" if pid in {"P1", "P2"} else "train" for pid in frame["patient_id"]]
    assert ensure_split(frame)["split"].tolist() == frame["split"].tolist()


def test_held_out_images_are_the_official_test_rows_sorted_by_image(tmp_path):
    (tmp_path / "xray").mkdir()
    (tmp_path / "xray" / "manifest.csv").write_text(
        "image,label,patient_id,source,split\n"
        "c.png,covid,p1,s,test\na.png,normal,p2,s,test\nb.png,covid,p3,s,train\n")
    rows = held_out_images(tmp_path, "xray")
    assert [Path(p).name for p in rows["image"]] == ["a.png", "c.png"]
    assert rows.index.tolist() == [0, 1]


def test_held_out_images_refuse_a_leaky_official_split(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        "image,label,patient_id,source,split\na.png,covid,p1,s,test\nb.png,covid,p1,s,train\n")
    with pytest.raises(LeakageError, match="p1"):
        held_out_images(tmp_path, "xray")


def test_manifest_paths_are_resolved_relative_to_the_manifest(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "manifest.csv").write_text("image,label,patient_id,source\nimages/a.png,covid,x:1,s\n")
    frame = load_manifest(tmp_path / "manifest.csv")
    assert frame["image"].iloc[0] == str(tmp_path / "images" / "a.png")


def test_rows_without_patient_id_get_one_per_file_with_a_warning(tmp_path):
    (tmp_path / "manifest.csv").write_text("image,label\na.png,covid\nb.png,normal\n")
    with pytest.warns(UserWarning, match="patient_id"):
        frame = load_manifest(tmp_path)
    assert frame["patient_id"].nunique() == 2


def _write_png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)


def test_folder_trees_of_the_public_datasets_import_case_insensitively(tmp_path):
    for folder, name in [("COVID", "1.png"), ("non-COVID", "2.png"), ("Normal", "3.png"),
                         ("Viral Pneumonia", "4.png"), ("CT_COVID", "5.jpg"), ("ignored", "6.png")]:
        _write_png(tmp_path / folder / name)
    with pytest.warns(UserWarning, match="no patient ids"):
        frame = import_folder(tmp_path)
    labels = dict(zip([p.split("/")[-1] for p in frame["image"]], frame["label"], strict=True))
    assert labels == {"1.png": "covid", "2.png": "non_covid", "3.png": "normal", "4.png": "pneumonia",
                      "5.jpg": "covid"}
    assert frame["patient_id"].nunique() == len(frame)


def test_folder_tree_with_split_folders_keeps_them(tmp_path):
    _write_png(tmp_path / "train" / "COVID" / "a.png")
    _write_png(tmp_path / "test" / "normal" / "b.png")
    with pytest.warns(UserWarning):
        frame = load_dataset(tmp_path, "xray")
    assert sorted(frame["split"]) == ["test", "train"]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no images"):
        import_folder(tmp_path)


def test_balanced_weights_draw_each_class_equally_often():
    frame = pd.DataFrame({"label": ["a"] * 90 + ["b"] * 10})
    sampler = BalancedSampler(balanced_weights(frame), 20000, seed=0)
    drawn = frame["label"].to_numpy()[list(sampler)]
    assert (drawn == "b").mean() == pytest.approx(0.5, abs=0.03)


def test_balanced_sampler_shards_one_draw_across_ranks():
    weights = np.ones(100)
    ranks = [list(BalancedSampler(weights, 100, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    together = list(BalancedSampler(weights, 100, seed=0))
    assert sorted(ranks[0] + ranks[1]) == sorted(together)


def test_image_dataset_yields_normalised_tensors_and_label_indices(tmp_path):
    _write_png(tmp_path / "a.png", 255)
    frame = pd.DataFrame({"image": [str(tmp_path / "a.png")], "label": ["normal"], "patient_id": ["p"],
                          "source": ["s"]})
    dataset = ImageDataset(frame, ["covid", "normal"], Preprocessing(image_size=16))
    tensor, label = dataset[0]
    assert tensor.shape == (3, 16, 16) and label.item() == 1
    assert torch.allclose(tensor, torch.ones_like(tensor))  # (1 - 0.5) / 0.5


def test_evaluation_view_reuses_the_decoded_images_without_augmentation_or_source_targets(tmp_path):
    for name, value in (("a.png", 40), ("b.png", 200)):
        _write_png(tmp_path / name, value)
    frame = pd.DataFrame({"image": [str(tmp_path / "a.png"), str(tmp_path / "b.png")], "label": ["normal", "covid"],
                          "patient_id": ["p", "q"], "source": ["s", "t"]})
    classes, preprocessing = ["covid", "normal"], Preprocessing(image_size=16)
    training = ImageDataset(frame, classes, preprocessing, Augmentation.for_modality("xray"), sources=["s", "t"])
    view, decoded = training.for_evaluation(), ImageDataset(frame, classes, preprocessing)
    assert view.images is training.images  # nothing decoded again
    for index in range(2):
        assert torch.equal(view[index][0], decoded[index][0]) and torch.equal(view[index][1], decoded[index][1])
    assert training.augmentation is not None and training.labels.shape == (2, 2)  # the training set unchanged


def test_unknown_labels_are_refused(tmp_path):
    frame = pd.DataFrame({"image": ["x"], "label": ["flu"], "patient_id": ["p"], "source": ["s"]})
    with pytest.raises(DataError, match="flu"):
        ImageDataset(frame, ["covid", "normal"], Preprocessing())


@pytest.mark.real_data
def test_real_manifests_split_without_leakage(real_data):
    ct = ensure_split(load_dataset(real_data, "ct"), data_root=real_data)
    assert set(ct["split"]) == {"train", "val", "test"} and len(ct) == 746
    xray = ensure_split(load_dataset(real_data, "xray"), seed=0, data_root=real_data)
    check_no_leakage(xray)
    same_picture = xray.set_index(xray["image"].str.extract(r"(xr-ieee-\d+)")[0])["split"]
    assert same_picture["xr-ieee-0136"] == same_picture["xr-ieee-0235"]  # near-duplicate, different patient ids
