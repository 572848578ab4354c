"""Manifest reading and the patient split at scale: same results as the per-row code they replaced."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covid_models.benchmarking import reference_patient_split, reference_split_groups
from covid_models.training.manifests import absolute_paths, image_stems, load_manifest
from covid_models.training.splits import patient_split, split_groups


def generated_manifest(rows: int, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-6 images whose labels sometimes disagree (ties included), several sources, linked images."""
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, max(1, rows // 3), rows)
    labels = np.array(["covid", "normal", "pneumonia"])[rng.integers(0, 3, rows)]
    sources = np.array(["nih", "ieee", "bimcv", "rsna"])[patients % 4]
    return pd.DataFrame({"image": [f"/data/{s}/img{i:06d}.png" for i, s in enumerate(sources)], "label": labels,
                         "patient_id": [f"p{p}" for p in patients], "source": sources})


@pytest.mark.parametrize(("seed", "fractions"), [(0, (0.7, 0.15, 0.15)), (3, (0.6, 0.2, 0.2)), (11, (0.8, 0.1, 0.1))])
def test_the_vectorised_split_gives_exactly_the_split_of_the_per_group_code(seed, fractions):
    frame = generated_manifest(6000, seed)
    links = [(f"img{a:06d}", f"img{b:06d}") for a, b in np.random.default_rng(seed).integers(0, 6000, (200, 2))]
    expected = reference_patient_split(frame, fractions, seed, links)
    got = patient_split(frame, fractions, seed, links)
    pd.testing.assert_frame_equal(got, expected)
    assert "_group" not in got.columns and list(frame.columns) == list(generated_manifest(1).columns)


def test_groups_are_those_of_the_union_find_including_links_through_images_outside_the_manifest():
    frame = generated_manifest(3000, 5)
    links = [(f"img{a:06d}", f"img{b:06d}") for a, b in np.random.default_rng(5).integers(0, 3000, (300, 2))]
    links += [("img000001", "elsewhere"), ("elsewhere", "img002999")]  # two images joined through a third
    np.testing.assert_array_equal(split_groups(frame, links), reference_split_groups(frame, links))
    np.testing.assert_array_equal(split_groups(frame), reference_split_groups(frame))


def test_image_stems_are_path_stems():
    names = ["a/b/x.png", "x.tar.gz", ".hidden", "dir.d/noext", "..a.png", "a.", "/abs/y.dcm", "z"]
    assert image_stems(pd.Series(names)).tolist() == [Path(n).stem for n in names]


def test_manifest_paths_resolve_each_folder_once_and_match_a_resolve_per_row(tmp_path):
    (tmp_path / "real" / "a").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    paths = ["real/a/x.png", "linked/a/y.png", "./real/../real/a/z.png", "top.png", str(tmp_path / "abs.png")]
    assert absolute_paths(tmp_path, paths) == [str((tmp_path / p).resolve()) for p in paths]
    pd.DataFrame({"image": paths, "label": "covid", "patient_id": "p", "source": "s"}).to_csv(
        tmp_path / "manifest.csv", index=False)
    assert load_manifest(tmp_path)["image"].tolist() == [os.fspath((tmp_path / p).resolve()) for p in paths]
    assert Path(load_manifest(tmp_path)["image"][1]).parent == tmp_path / "real" / "a"


# ------------------------------------------------------------------------------------ typed data folders
def test_a_typed_folder_must_resolve_inside_a_root(tmp_path):
    from covid_models.training.data_folders import confined_folder
    from covid_models.training.manifests import DataError

    root = tmp_path / "data"
    (root / "xray").mkdir(parents=True)
    (root / "escape").symlink_to(tmp_path)
    assert confined_folder(str(root / "xray"), [root]) == root / "xray"
    assert confined_folder("xray", [root]) == root / "xray"  # relative: inside the first root
    for outside in ("/", str(tmp_path), "../", str(root / "escape"), str(root / "xray" / ".." / ".."), "~root",
                    "/no/such/folder", "x" * 5000):
        with pytest.raises(DataError, match="not one this server allows") as caught:
            confined_folder(outside, [root])
        assert str(tmp_path) not in str(caught.value)
    with pytest.raises(DataError, match="does not let visitors choose"):
        confined_folder(str(root), [])


def test_allowed_roots_default_to_the_configured_data_folder(tmp_path, monkeypatch):
    from covid_models.training.data_folders import allowed_data_roots, typed_folders_allowed

    monkeypatch.delenv("COVID_DATA_ROOTS", raising=False)
    monkeypatch.setenv("COVID_DATA_DIR", str(tmp_path))
    assert allowed_data_roots() == [tmp_path.resolve()] and not typed_folders_allowed()
    monkeypatch.setenv("COVID_DATA_ROOTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path)]))
    assert allowed_data_roots() == [tmp_path.resolve()] and typed_folders_allowed()  # missing folders dropped


def test_a_folder_import_stops_at_its_bounds_instead_of_walking_on(tmp_path, monkeypatch):
    import covid_models.training.manifests as manifests

    for index in range(30):
        (tmp_path / "covid" / f"d{index}").mkdir(parents=True)
    monkeypatch.setattr(manifests, "WALK_MAX_ENTRIES", 20)
    with pytest.raises(manifests.DataError, match="too many files"):
        manifests.import_folder(tmp_path)
