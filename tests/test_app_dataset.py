"""The dataset page shows the manifests' own counts, the leakage check's verdict, and says what is wrong with a path."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest
from app_fixtures import make_weights_dir, page_test
from app_fixtures_b import make_data_dir, point_app_at
from streamlit.testing.v1 import AppTest

from covid_models.models.discovery import discover_models
from covid_models.training.manifests import load_manifest

PAGE = "pages/dataset.py"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dataset")
    return make_weights_dir(root), make_data_dir(root)


def _page(folders: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, data: bool = True,
          roots: list[Path] | None = None) -> AppTest:
    """The page with the fixture data folder configured (`data`) and/or typing allowed inside `roots`."""
    weights, data_root = folders
    point_app_at(monkeypatch, tmp_path / "reviews.sqlite3", data_root if data else None)
    if roots is None:
        monkeypatch.delenv("COVID_DATA_ROOTS", raising=False)
    else:
        monkeypatch.setenv("COVID_DATA_ROOTS", os.pathsep.join(map(str, roots)))
    return page_test(PAGE, weights, monkeypatch)


def _run(at: AppTest) -> AppTest:
    at.run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _metrics(at: AppTest, label: str) -> list[str]:
    return [m.value for m in at.metric if m.label == label]


def _counts_tables(at: AppTest) -> list[pd.DataFrame]:
    return [table.value for table in at.dataframe if "total" in table.value.columns]


def test_counts_shown_equal_the_manifests(folders, tmp_path, monkeypatch) -> None:
    at = _run(_page(folders, tmp_path, monkeypatch))
    xray = load_manifest(folders[1] / "xray" / "manifest.csv")
    ct = load_manifest(folders[1] / "ct" / "manifest.csv")
    assert _metrics(at, "Images") == [str(len(xray)), str(len(ct))]
    assert _metrics(at, "Patients")[:2] == [str(xray["patient_id"].nunique()), str(ct["patient_id"].nunique())]
    xray_table, ct_table = _counts_tables(at)
    assert xray_table.loc["total", "total"].item() == len(xray)
    for label, n in xray["label"].value_counts().items():
        assert xray_table.loc["total", label].item() == n
    expected = pd.crosstab([ct["split"], ct["source"]], ct["label"])
    for (split, source), row in expected.iterrows():
        for label, n in row.items():
            assert ct_table.loc[(split, source), label] == n
    assert _metrics(at, "Image/mask pairs") == ["4"]


def test_leakage_check_result_is_shown_and_a_missing_split_is_made_and_said(folders, tmp_path, monkeypatch) -> None:
    at = _run(_page(folders, tmp_path, monkeypatch))
    passed = [s.value for s in at.success if s.value.startswith("Patient-leakage check passed")]
    assert len(passed) == 2
    assert any("xray manifest has no split column" in i.value and "seed 0" in i.value for i in at.info)


def test_a_patient_in_two_splits_is_reported_as_leakage(folders, tmp_path, monkeypatch) -> None:
    leaky = tmp_path / "leaky"
    (leaky / "ct").mkdir(parents=True)
    manifest = pd.read_csv(folders[1] / "ct" / "manifest.csv")
    manifest["image"] = [str(folders[1] / "ct" / p) for p in manifest["image"]]
    manifest.loc[manifest["split"] == "test", "patient_id"] = manifest.loc[0, "patient_id"]  # a train patient
    manifest.to_csv(leaky / "ct" / "manifest.csv", index=False)
    at = _run(_page(folders, tmp_path, monkeypatch, data=False, roots=[tmp_path]))
    at.text_input(key="dataset-folder").input(str(leaky))
    _run(at)
    assert any("Patient-leakage check failed" in e.value and "1 patient(s) in more than one split" in e.value
               for e in at.error)


def test_a_typed_path_that_does_not_exist_gets_a_clear_message(folders, tmp_path, monkeypatch) -> None:
    at = _run(_page(folders, tmp_path, monkeypatch, data=False, roots=[tmp_path]))
    assert any("Type the path of a data folder" in i.value for i in at.info)
    at.text_input(key="dataset-folder").input(str(tmp_path / "nowhere"))
    _run(at)
    assert [e.value for e in at.error] == ["Could not complete this step. There is no folder at that path inside the "
                                           "allowed data folders. Check the spelling."]
    assert "data_dir" not in at.session_state


def test_typed_folders_outside_the_roots_are_refused_alike_cached_and_never_walked(folders, tmp_path,
                                                                                  monkeypatch) -> None:
    """'/' walked the whole filesystem (6.7 s), on every rerun, and the error named server paths and process ids;
    now it is refused at once, with the same words as a path that does not exist, and the verdict is cached."""
    import pages.shared

    calls = []
    real = pages.shared.confined_folder
    monkeypatch.setattr(pages.shared, "confined_folder", lambda *a: calls.append(a) or real(*a))
    pages.shared._typed_folder.clear()
    at = _run(_page(folders, tmp_path, monkeypatch, data=False, roots=[tmp_path]))
    messages = []
    for typed in ("/", "/proc", "/no/such/folder", str(tmp_path / ".." / ".."), "~"):
        start = time.perf_counter()
        at.text_input(key="dataset-folder").input(typed)
        _run(at)
        assert time.perf_counter() - start < 30  # not a benchmark: '/' once took minutes cold
        messages.append([e.value for e in at.error])
    assert all(m == messages[0] for m in messages) and len(messages[0]) == 1
    assert "not one this server allows" in messages[0][0] and "/proc" not in messages[0][0]
    assert str(tmp_path) not in messages[0][0] and "Errno" not in messages[0][0]
    assert not at.metric and "data_dir" not in at.session_state
    before = len(calls)
    _run(at)  # a rerun with "~" still typed
    assert len(calls) == before


def test_without_configured_roots_there_is_no_text_box_and_the_configured_folder_is_used(folders, tmp_path,
                                                                                         monkeypatch) -> None:
    at = _run(_page(folders, tmp_path, monkeypatch))
    assert not [t for t in at.text_input if t.key == "dataset-folder"]
    assert _metrics(at, "Images")[0] == str(len(load_manifest(folders[1] / "xray" / "manifest.csv")))
    at = _run(_page(folders, tmp_path, monkeypatch, data=False))
    assert not at.text_input and any("No data folder is configured" in i.value for i in at.info)


def test_a_folder_without_manifests_is_named_as_such(folders, tmp_path, monkeypatch) -> None:
    at = _run(_page(folders, tmp_path, monkeypatch, data=False, roots=[tmp_path]))
    at.text_input(key="dataset-folder").input(str(tmp_path))
    _run(at)
    assert any("holds none of the manifests" in e.value for e in at.error)
    assert not at.metric


def test_a_valid_typed_folder_is_kept_for_the_other_pages(folders, tmp_path, monkeypatch) -> None:
    at = _run(_page(folders, tmp_path, monkeypatch, data=False, roots=[folders[1].parent]))
    at.text_input(key="dataset-folder").input(str(folders[1]))
    _run(at)
    assert at.session_state["data_dir"] == str(folders[1])
    assert _metrics(at, "Images")[0] == str(len(load_manifest(folders[1] / "xray" / "manifest.csv")))


def test_the_gallery_shows_a_few_seeded_images_per_class(folders, tmp_path, monkeypatch) -> None:
    at = _run(_page(folders, tmp_path, monkeypatch))
    first = [image.captions for image in at.image]
    assert first[0] and len(first[0]) <= 4
    at.number_input(key="dataset-seed").set_value(3)
    _run(at)
    assert [image.captions for image in at.image] != first
    xray_labels = [m.value for m in at.markdown if m.value.startswith("**")]
    assert xray_labels[:3] == ["**covid** (12 images)", "**normal** (12 images)", "**pneumonia** (12 images)"]


def test_the_cards_table_lists_every_model(folders, tmp_path, monkeypatch) -> None:
    at = _run(_page(folders, tmp_path, monkeypatch))
    cards = at.dataframe[0].value
    assert sorted(cards["model"]) == sorted(card.name for _, card in discover_models(folders[0]))
    assert set(cards.loc[cards["model"] == "ct-fixture", "per split"]) == {"train: 30, val: 5, test: 5"}


@pytest.mark.real_data
def test_the_real_data_folder_is_described_without_error(real_data: Path, folders, tmp_path, monkeypatch) -> None:
    at = _run(_page((folders[0], real_data), tmp_path, monkeypatch))
    assert _metrics(at, "Images") == [str(len(load_manifest(real_data / "xray" / "manifest.csv"))),
                                      str(len(load_manifest(real_data / "ct" / "manifest.csv")))]
    assert len([s for s in at.success if s.value.startswith("Patient-leakage check passed")]) == 2
