"""The table a model trains and is evaluated on: added manifests never move the main data's split."""
from __future__ import annotations

import pandas as pd
import pytest

from covid_models.training.manifests import load_dataset
from covid_models.training.splits import LeakageError, ensure_split, training_table


@pytest.mark.real_data
def test_adding_the_hannover_films_keeps_the_xray_split_and_splits_them_by_patient(real_data):
    classes = ["covid", "normal", "pneumonia"]
    alone = ensure_split(load_dataset(real_data, "xray"), seed=0, data_root=real_data)
    joined = training_table(real_data, "xray", classes, add_manifests=[real_data / "xray-hannover"])
    main = joined[joined["source"] != "hannover"].set_index("image")["split"]
    pd.testing.assert_series_equal(main.sort_index(), alone.set_index("image")["split"].sort_index())
    hannover = joined[joined["source"] == "hannover"]
    assert len(hannover) == 243 and set(hannover["split"]) == {"train", "val", "test"}
    assert (hannover.groupby("patient_id")["split"].nunique() == 1).all()


@pytest.mark.real_data
def test_extra_training_rows_join_the_train_split_only_in_display_orientation(real_data):
    table = training_table(real_data, "ct", ["covid", "non_covid"],
                           extra_train=[f"{real_data / 'segmentation' / 'ct-infection'}:covid:transpose"])
    extra = table[table["source"] != "ucsd"]
    assert len(extra) == 48 and set(extra["split"]) == {"train"} and set(extra["label"]) == {"covid"}
    assert set(extra["orientation"]) == {"transpose"}
    assert table[table["source"] == "ucsd"]["split"].value_counts().to_dict() == {"train": 425, "test": 203,
                                                                                "val": 118}


def test_a_patient_in_two_manifests_splits_is_refused(tmp_path):
    for name, split in (("a", "train"), ("b", "test")):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame({"image": ["x.png"], "label": ["covid"], "patient_id": ["p1"], "source": [name],
                      "split": [split]}).to_csv(folder / "manifest.csv", index=False)
    with pytest.raises(LeakageError):
        training_table(tmp_path / "a", "xray", ["covid"], add_manifests=[tmp_path / "b"])
