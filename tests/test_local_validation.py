"""Local validation and adaptation: patient-grouped folds, minimum counts, the confound check, and an adapted head
pinned to its base model."""
from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import WEIGHTS_DIR
from PIL import Image

from covid_models.local.adaptation import AdaptationError, adapt, adapted_card, save_adapted
from covid_models.local.samples import SampleError, sample_from_zip
from covid_models.local.validation import (
    MIN_PATIENTS,
    ScoredSample,
    confound_check,
    grouped_folds,
    recalibrate,
    score_sample,
    validate,
)
from covid_models.models.checkpoint import CheckpointError, read_card
from covid_models.models.discovery import find_models
from covid_models.models.inference import Classifier, penultimate_layer
from covid_models.models.model_card import display_name, is_adapted
from tests.model_fixtures import write_tiny_classifier


def synthetic(patients: tuple[int, int], *, images_per_patient: int = 2, dim: int = 16, signal: float = 1.5,
              view_predicts: bool = False, seed: int = 0) -> ScoredSample:
    """A scored sample: `patients` = (positive, other) patient counts; features carry `signal` along one axis."""
    rng = np.random.default_rng(seed)
    rows, features = [], []
    for label, count in ((1, patients[0]), (0, patients[1])):
        for p in range(count):
            patient_view = ("AP" if label else "PA") if view_predicts else rng.choice(["AP", "PA"])
            for i in range(images_per_patient):
                rows.append({"name": f"{label}-{p}-{i}.png", "image": f"{label}-{p}-{i}", "label": "covid" if label
                             else "normal", "positive": label, "patient_id": f"{label}:{p}", "view": patient_view,
                             "site": "here", "width": 512, "height": 512, "bit_depth": 8, "manufacturer": "",
                             "out_of_distribution": False, "refused": None, "refusal": ""})
                features.append(rng.normal(size=dim) + signal * label * np.eye(dim)[0])
    frame = pd.DataFrame(rows)
    features = np.asarray(features, dtype=np.float32)
    score = 1 / (1 + np.exp(-(features[:, 0] - signal / 2)))
    frame["probability"] = score
    probabilities = np.stack([score, 1 - score], 1)
    return ScoredSample(frame, probabilities, features, "covid", 0, [])


def test_every_patient_lies_in_exactly_one_fold_of_the_adaptation():
    scored = synthetic((30, 20), images_per_patient=3)
    folds = grouped_folds(scored.labels, scored.groups, 5, seed=1)
    per_patient = scored.frame.assign(fold=folds).groupby("patient_id")["fold"].nunique()
    assert (per_patient == 1).all() and len(np.unique(folds)) == 5
    adaptation = adapt(scored, n_resamples=50)
    per_patient = scored.frame.assign(fold=adaptation.folds).groupby("patient_id")["fold"].nunique()
    assert (per_patient == 1).all()
    for fold in np.unique(adaptation.folds):  # both classes in every held-out fold (stratified)
        assert set(scored.labels[adaptation.folds == fold]) == {0, 1}


def test_the_reported_performance_is_cross_validated_not_the_fit():
    noise = synthetic((30, 30), signal=0.0, dim=64, seed=3)  # features carry no label: a fit would still separate
    adaptation = adapt(noise, n_resamples=50)
    fitted = noise.features @ adaptation.weight[0] + adaptation.bias[0]
    from covid_models.metrics import auc

    assert auc(noise.labels, fitted) > 0.9  # the fit memorises 120 images in 64 dimensions...
    assert adaptation.report["auc"] < 0.7  # ...the cross-validated AUC says there is nothing to learn


@pytest.mark.parametrize("patients", [(MIN_PATIENTS - 1, 30), (30, MIN_PATIENTS - 1)])
def test_adaptation_and_recalibration_refuse_below_the_minimum_patients_per_class(patients):
    scored = synthetic(patients)
    with pytest.raises(AdaptationError, match=f"fewer than {MIN_PATIENTS} patients"):
        adapt(scored)
    with pytest.raises(ValueError, match=f"fewer than {MIN_PATIENTS} patients"):
        recalibrate(scored, 1.0)


def test_adaptation_refuses_a_sample_without_one_class():
    with pytest.raises(AdaptationError, match="no other case"):
        adapt(synthetic((30, 0)))


def test_validation_gives_no_auc_headline_below_the_minimum_but_always_an_interval():
    small = validate(synthetic((MIN_PATIENTS - 1, 20)), 0.5, n_resamples=100)
    assert small["headline"] is False and "fewer than 10 patients in covid (9 patients)" in small["no_headline_because"]
    assert small["auc_ci95"][0] < small["auc_ci95"][1]
    assert all(small[f"{name}_ci95"][0] <= small[name] <= small[f"{name}_ci95"][1]
               for name in ("sensitivity", "specificity", "precision", "npv"))
    assert validate(synthetic((20, 20)), 0.5, n_resamples=100)["headline"] is True


def test_the_confound_check_finds_a_view_that_predicts_the_label():
    check = confound_check(synthetic((25, 25), view_predicts=True))
    view = next(row for row in check["metadata"] if row["predictor"] == "view")
    assert view["auc"] > 0.95
    within = {row["view"]: row for row in check["model_within_view"]}
    assert within["AP"]["model_auc"] is None and within["AP"]["other_patients"] == 0  # one class per view


def test_the_confound_check_finds_nothing_when_the_view_is_unrelated_to_the_label():
    check = confound_check(synthetic((40, 40), view_predicts=False, seed=5))
    view = next(row for row in check["metadata"] if row["predictor"] == "view")
    assert view["auc"] < 0.7
    assert all(row["model_auc"] is not None for row in check["model_within_view"])


def _base(tmp_path, name="base-xray"):
    directory = write_tiny_classifier(tmp_path / "weights" / name, name=name)
    return directory, Classifier.load(directory)


def _adapted_beside(tmp_path, base_dir, base: Classifier):
    dim = penultimate_layer(base.model).in_features
    scored = synthetic((15, 15), dim=dim)
    adaptation = adapt(scored, n_resamples=50)
    card = adapted_card(base.card, adaptation, scored, site="St Elsewhere", command="python scripts/x.py")
    return save_adapted(base_dir.parent / card.name, card, adaptation), adaptation


def test_an_adapted_card_names_its_base_by_name_and_hash_and_records_its_provenance(tmp_path):
    base_dir, base = _base(tmp_path)
    folder, _ = _adapted_beside(tmp_path, base_dir, base)
    card = read_card(folder)
    assert is_adapted(card) and display_name(card) == "X-ray, adapted to St Elsewhere"
    assert card.extra["base_model"] == {"name": "base-xray", "sha256": read_card(base_dir).sha256}
    assert card.data["site"] == "St Elsewhere" and card.data["counts"][0]["patients"] == 15
    assert card.training["command"] == "python scripts/x.py" and len(card.training["date"]) == 10
    assert card.metrics["test"]["kind"].startswith("cross-validated")
    assert card.metrics["test"]["auc_ci95"][0] < card.metrics["test"]["auc"] < card.metrics["test"]["auc_ci95"][1]
    assert (folder / "model.safetensors").stat().st_size < 50_000  # the head alone, not the network
    assert "Adapted to St Elsewhere on base model `base-xray`" in (folder / "MODEL_CARD.md").read_text()


def test_an_adapted_model_loads_on_its_base_and_applies_its_own_head(tmp_path):
    base_dir, base = _base(tmp_path)
    folder, adaptation = _adapted_beside(tmp_path, base_dir, base)
    loaded = Classifier.load(folder)
    image = torch.rand(1, 3, 64, 64)
    probabilities, features = loaded.forward(image)
    _, base_features = base.forward(image)
    torch.testing.assert_close(features, base_features)  # the frozen features of the base
    logit = float(features[0].numpy() @ adaptation.weight[0] + adaptation.bias[0])
    expected = 1 / (1 + np.exp(-logit / adaptation.temperature))
    assert float(probabilities[0, 0]) == pytest.approx(expected, rel=1e-4)
    assert loaded.card.classes == ["covid", "other"] and (loaded.ood is None) == (base.ood is None)


def test_an_adapted_model_refuses_to_load_on_a_base_with_other_weights(tmp_path):
    base_dir, base = _base(tmp_path)
    folder, _ = _adapted_beside(tmp_path, base_dir, base)
    torch.manual_seed(123)
    write_tiny_classifier(base_dir, name="base-xray")  # retrained in place: same name, other weights
    with pytest.raises(CheckpointError, match="not the model this one was built on"):
        Classifier.load(folder)


def test_an_adapted_model_without_its_base_says_which_model_to_install(tmp_path):
    base_dir, base = _base(tmp_path)
    folder, _ = _adapted_beside(tmp_path, base_dir, base)
    card = json.loads((folder / "card.json").read_text())
    card["extra"]["base_model"]["name"] = "gone"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="'gone'.*not in its folder"):
        Classifier.load(folder)


def test_an_adapted_model_copied_alone_finds_its_base_in_the_projects_weights_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("COVID_WEIGHTS_DIR", raising=False)
    shipped = next(d for d, card in find_models(WEIGHTS_DIR).found if is_adapted(card))
    alone = shutil.copytree(shipped, tmp_path / shipped.name)  # its base is not beside it, only in weights/
    loaded = Classifier.load(alone)
    assert loaded.card.name == read_card(shipped).name
    assert loaded.card.classes == ["covid", "other"]


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_zip(rows: list[tuple[str, str, str]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("labels.csv", "file,label,patient_id\n" + "".join(f"{f},{lab},{p}\n" for f, lab, p in rows))
        for index, (file, _, _) in enumerate(rows):
            archive.writestr(file, _png(40 + index))
    return buffer.getvalue()


def test_a_zip_with_a_csv_is_read_scored_and_validated(tmp_path):
    rows = [(f"img/{i}.png", "COVID-19" if i % 2 else "normal", f"p{i // 2}") for i in range(12)]
    sample = sample_from_zip(sample_zip(rows), "covid")
    assert sample.counts() == {"covid": {"images": 6, "patients": 6}, "other": {"images": 6, "patients": 6}}
    _, base = _base(tmp_path)
    scored = score_sample(base, sample)
    assert len(scored.frame) == 12 and scored.features.shape[0] == 12 and not scored.unreadable
    report = validate(scored, base.card.threshold, n_resamples=50)
    assert report["headline"] is False  # 6 patients per class


def test_a_zip_naming_a_missing_file_or_without_labels_is_refused_with_the_reason():
    with pytest.raises(SampleError, match="not in the zip"):
        sample_from_zip(_zip_with_csv("file,label\nb.png,covid\n"), "covid")
    with pytest.raises(SampleError, match="'label' column"):
        sample_from_zip(_zip_with_csv("file,diagnosis\na.png,covid\n"), "covid")


def _zip_with_csv(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("labels.csv", text)
        archive.writestr("a.png", _png(10))
    return buffer.getvalue()


def test_an_adapted_model_goes_through_the_pages_analysis_with_a_heatmap(tmp_path):
    from covid_models.analysis.image_analysis import analyse
    from covid_models.imaging.io import read_image

    base_dir, base = _base(tmp_path)
    folder, _ = _adapted_beside(tmp_path, base_dir, base)
    analysis = analyse(read_image(_png(90), name="chest.png"), [Classifier.load(folder)], [])
    assert analysis.prediction.model == read_card(folder).name and set(analysis.prediction.probabilities) == {
        "covid", "other"}
    assert analysis.heat is not None and analysis.heat.shape == analysis.grey.shape[:2]


def _dicom_with_uid(uid: str, view: str) -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.SOPInstanceUID = uid
    dataset.ViewPosition = view
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def test_dicom_files_are_matched_to_their_labels_by_sop_instance_uid_and_give_their_view(tmp_path):
    from covid_models.local.samples import sample_from_dicom

    files = [(f"scan/{i}.dcm", _dicom_with_uid(f"1.2.3.{i}", "AP" if i % 2 else "PA")) for i in range(4)]
    table = "SOPInstanceUID,label,patient_id\n" + "".join(f"1.2.3.{i},{'covid' if i % 2 else 'normal'},p{i}\n"
                                                          for i in reversed(range(4)))
    sample = sample_from_dicom(files, table.encode(), "covid")
    assert dict(zip(sample.frame["name"], sample.frame["positive"], strict=True)) == {
        "scan/3.dcm": 1, "scan/2.dcm": 0, "scan/1.dcm": 1, "scan/0.dcm": 0}
    _, base = _base(tmp_path)
    scored = score_sample(base, sample)
    assert dict(zip(scored.frame["name"], scored.frame["view"], strict=True))["scan/3.dcm"] == "AP"  # from the tag
    assert set(scored.frame["bit_depth"]) == {16}
    with pytest.raises(SampleError, match="match no uploaded DICOM file by sopinstanceuid"):
        sample_from_dicom(files, b"SOPInstanceUID,label\n9.9.9,covid\n", "covid")


def test_a_folder_whose_list_names_files_outside_it_is_refused(tmp_path):
    from covid_models.local.samples import sample_from_folder

    (tmp_path / "outside.png").write_bytes(_png(10))
    for listing, text in (("labels.csv", "file,label\n../outside.png,covid\n"),
                          ("manifest.csv", "image,label,patient_id\n../outside.png,covid,p1\n")):
        folder = tmp_path / listing.replace(".", "-")
        folder.mkdir()
        (folder / listing).write_text(text)
        with pytest.raises(SampleError, match="outside its folder"):
            sample_from_folder(folder, "covid")
