"""Measures of source learning: patient-grouped folds and the source probe."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covid_models.models.trust import patient_folds, source_probe, source_probes

RNG = np.random.default_rng(0)


def _frame(n_patients: int = 60, per_patient: int = 3) -> pd.DataFrame:
    patients = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    labels = np.repeat(np.where(np.arange(n_patients) % 3 == 0, "covid", "normal"), per_patient)
    sources = np.repeat(np.where(np.arange(n_patients) % 2 == 0, "a", "b"), per_patient)
    return pd.DataFrame({"patient_id": patients, "label": labels, "source": sources})


def test_patient_folds_keep_each_patient_in_one_fold_and_balance_the_classes():
    frame = _frame()
    folds = patient_folds(frame, k=5)
    assert set(folds) == set(range(5))
    assert (frame.assign(fold=folds).groupby("patient_id")["fold"].nunique() == 1).all()
    covid_per_fold = frame.assign(fold=folds).query("label == 'covid'").groupby("fold").size()
    assert covid_per_fold.max() - covid_per_fold.min() <= 3  # one patient's images at most


def test_patient_folds_refuse_fewer_patients_than_folds():
    with pytest.raises(ValueError, match="at least 5 patients"):
        patient_folds(_frame(n_patients=4), k=5)


def test_source_probe_finds_a_planted_source_signal_and_not_an_absent_one():
    frame = _frame()
    noise = RNG.normal(size=(len(frame), 16))
    planted = noise.copy()
    planted[:, 3] += np.where(frame["source"] == "a", 2.0, -2.0)
    assert source_probe(planted, frame["source"], frame["patient_id"])["auc"] > 0.95
    assert 0.3 < source_probe(noise, frame["source"], frame["patient_id"])["auc"] < 0.7


def test_source_probe_is_grouped_by_patient():
    """Features that only identify the patient (same vector for a patient's images) carry no source signal
    a held-out patient could reveal: grouped folds keep the probe near chance."""
    frame = _frame()
    per_patient = {p: RNG.normal(size=16) for p in frame["patient_id"].unique()}
    features = np.stack([per_patient[p] for p in frame["patient_id"]])
    assert source_probe(features, frame["source"], frame["patient_id"])["auc"] < 0.75


def test_source_probe_needs_two_sources_and_reports_within_class_probes():
    frame = _frame()
    features = RNG.normal(size=(len(frame), 8))
    assert source_probe(features, ["a"] * len(frame), frame["patient_id"]) is None
    probes = source_probes(features, frame)
    assert probes["all"]["n"] == len(frame)
    assert set(probes["within_class"]) == {"covid", "normal"}
