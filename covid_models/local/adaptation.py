"""Adapting a shipped classifier to one hospital: a logistic head on its frozen penultimate features.

The head is fit with patient-grouped cross-validation, and the performance reported is the cross-validated one
(every image scored by a head that never saw its patient), never the fit's. Below `MIN_PATIENTS` patients in a
class, or with a class missing, it refuses with the reason.

An adapted model is a model folder like any other: `model.safetensors` holds the head alone (`weight`, `bias`:
two classes, the positive class and "other"), `card.json` names its base model by name and weights sha256
(`extra.base_model`), the site, the counts, the cross-validated metrics with their intervals, the confound table,
the date and the command. `Classifier.load` finds the base as it finds a pinned lung segmenter
(`discovery.pinned_folder`) and refuses a base whose weights differ from the pinned hash.
"""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covid_models.local.samples import NEGATIVE
from covid_models.local.validation import (
    FOLDS,
    ScoredSample,
    ValidationError,
    cross_validated_operating_point,
    grouped_folds,
    patient_counts,
    shortfall,
)
from covid_models.metrics import binary_report, youden_threshold
from covid_models.models.checkpoint import save_model_dir
from covid_models.models.model_card import ModelCard

C_DEFAULT = 0.1  # inverse L2 strength on standardised features: 1280 features, a few hundred images
HEAD_RULE = "maximises sensitivity + specificity on the cross-validated predictions of the local sample"


class AdaptationError(ValidationError):
    """The sample cannot give an adapted head (too few patients, a class missing); the message says why."""


@dataclass(frozen=True)
class Adaptation:
    """A fitted head and its cross-validated performance."""

    weight: np.ndarray  # (2, D): rows for [positive class, "other"], the feature standardisation folded in
    bias: np.ndarray  # (2,)
    temperature: float
    threshold: float
    out_of_fold: np.ndarray  # calibrated positive probability of each image, from the fold that held it out
    folds: np.ndarray
    report: dict[str, Any]  # the cross-validated report (binary_report on out_of_fold) and the fold figures


def _logistic(features: np.ndarray, labels: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """(w, b) of a logistic regression on standardised features, folded back to the raw features."""
    from sklearn.linear_model import LogisticRegression

    mean, std = features.mean(0), features.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    model = LogisticRegression(C=C, max_iter=5000).fit((features - mean) / std, labels)
    w = model.coef_[0] / std
    return w, float(model.intercept_[0] - w @ mean)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    def loss(log_t: float) -> float:
        p = np.clip(1 / (1 + np.exp(-logits / np.exp(log_t))), 1e-7, 1 - 1e-7)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    return float(np.exp(minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded").x))


def adapt(scored: ScoredSample, *, C: float = C_DEFAULT, k: int = FOLDS, seed: int = 0,
          n_resamples: int = 1000, progress: Any = None) -> Adaptation:
    """Fit the head on `scored.features` with patient-grouped k-fold CV; AdaptationError below the minimum counts."""
    features, labels, groups = scored.features, scored.labels, scored.groups
    if (why := shortfall(labels, groups, scored.positive_class)) is not None:
        raise AdaptationError(f"Not adapted: {why}.")
    folds = grouped_folds(labels, groups, k, seed)
    raw = np.zeros(len(labels))
    fold_aucs = []
    for number, fold in enumerate(np.unique(folds)):
        train, held = folds != fold, folds == fold
        w, b = _logistic(features[train], labels[train], C)
        raw[held] = features[held] @ w + b
        if progress is not None:
            progress((number + 1) / (len(np.unique(folds)) + 1), f"Fold {number + 1} of {len(np.unique(folds))}")
    temperature = _fit_temperature(raw, labels)
    out_of_fold = 1 / (1 + np.exp(-raw / temperature))
    for fold in np.unique(folds):
        held = folds == fold
        y = labels[held]
        fold_aucs.append(None if y.min() == y.max() else float(binary_report(y, out_of_fold[held], 0.5,
                                                                             n_resamples=1)["auc"]))
    threshold = youden_threshold(labels, out_of_fold)
    report = binary_report(labels, out_of_fold, threshold, groups=groups, n_resamples=n_resamples)

    def fit(train: np.ndarray):
        return (lambda rows: out_of_fold[rows]), youden_threshold(labels[train], out_of_fold[train])

    report["cross_validated_operating_point"] = cross_validated_operating_point(labels, groups, folds, fit,
                                                                                n_resamples)
    report.update({"folds": int(len(np.unique(folds))), "fold_aucs": fold_aucs, "seed": seed, "C": C,
                   "patients": {scored.positive_class: patient_counts(labels, groups)[1],
                                NEGATIVE: patient_counts(labels, groups)[0]}})
    w, b = _logistic(features, labels, C)
    if progress is not None:
        progress(1.0, "Final head fitted on every image")
    weight = np.stack([w, np.zeros_like(w)]).astype(np.float32)
    bias = np.array([b, 0.0], dtype=np.float32)
    return Adaptation(weight, bias, temperature, threshold, out_of_fold, folds, report)


def head_module(adaptation: Adaptation) -> nn.Linear:
    head = nn.Linear(adaptation.weight.shape[1], 2)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(adaptation.weight))
        head.bias.copy_(torch.from_numpy(adaptation.bias))
    return head


def site_slug(site: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", site.lower()).strip("-")[:40] or "local"


def adapted_card(base: ModelCard, adaptation: Adaptation, scored: ScoredSample, *, site: str,
                 base_validation: dict[str, Any] | None = None, confounds: dict[str, Any] | None = None,
                 command: str = "") -> ModelCard:
    """The card of an adapted head: base pinned by name and sha256, site, counts, cross-validated metrics."""
    frame = scored.frame
    test = dict(adaptation.report)
    test.update({"positive_class": base.positive_class, "classes": [base.positive_class, NEGATIVE],
                 "kind": "cross-validated (patient-grouped): every image scored by a head that never saw its patient",
                 "per_source": {site: {key: test[key] for key in ("n", "n_positive", "auc", "auc_ci95", "threshold",
                                                                  "sensitivity", "specificity", "accuracy")}
                                | {"by_label": {str(k): int(v) for k, v in frame["label"].value_counts().items()}}},
                 "scores": {"probability": [round(float(p), 5) for p in adaptation.out_of_fold],
                            "positive": [int(y) for y in scored.labels], "source": [site] * len(frame)}})
    metrics: dict[str, Any] = {"test": test}
    if base_validation is not None:
        metrics["base_on_local_sample"] = {k: base_validation.get(k) for k in (
            "n", "n_positive", "auc", "auc_ci95", "threshold", "sensitivity", "specificity", "headline")}
    if confounds is not None:
        metrics["confounds"] = confounds
    cv_point = test["cross_validated_operating_point"]
    return ModelCard(
        name=f"{base.name}-adapted-{site_slug(site)}", task="classification", modality=base.modality,
        architecture=base.architecture, classes=[base.positive_class, NEGATIVE], preprocessing=base.preprocessing,
        positive_class=base.positive_class, temperature=adaptation.temperature,
        operating_points={"local_youden": {
            "threshold": adaptation.threshold, "rule": HEAD_RULE, "chosen_on": "local sample (cross-validated)",
            "sensitivity": cv_point["sensitivity"], "specificity": cv_point["specificity"]}},
        default_operating_point="local_youden", metrics=metrics,
        data={"site": site, "n_images": int(len(frame)), "n_patients": int(frame["patient_id"].nunique()),
              "counts": [{"class": name, "patients": test["patients"][name],
                          "n": int((scored.labels == (name == base.positive_class)).sum())}
                         for name in (base.positive_class, NEGATIVE)],
              "labels": {str(k): int(v) for k, v in frame["label"].value_counts().items()},
              "unreadable_skipped": len(scored.unreadable)},
        training={"method": "logistic regression on the base model's frozen penultimate features (standardised, "
                            f"L2, C={test['C']}), {test['folds']}-fold patient-grouped cross-validation, seed "
                            f"{test['seed']}; temperature fitted on the out-of-fold logits",
                  "C": test["C"], "folds": test["folds"], "seed": test["seed"], "command": command,
                  "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")},
        extra={"base_model": {"name": base.name, "sha256": base.sha256}, "adapted_to": site},
    )


def save_adapted(directory: str | Path, card: ModelCard, adaptation: Adaptation) -> Path:
    """Write the adapted model folder (the head's tensors, card.json, MODEL_CARD.md)."""
    return save_model_dir(directory, head_module(adaptation), card)


def reproduce(card: ModelCard, scored: ScoredSample) -> dict[str, Any]:
    """The card's cross-validation run again on `scored` (the base model's features of the same sample) with the
    card's recipe: the recorded and the recomputed AUC side by side (`scripts/evaluate.py` prints them)."""
    recipe = card.training
    again = adapt(scored, C=float(recipe["C"]), k=int(recipe["folds"]), seed=int(recipe["seed"]))
    recorded = card.metrics.get("test", {})
    return {"recorded_auc": recorded.get("auc"), "recorded_auc_ci95": recorded.get("auc_ci95"),
            "recomputed_auc": again.report["auc"], "recomputed_auc_ci95": again.report["auc_ci95"],
            "n": again.report["n"], "recorded_n": recorded.get("n"),
            "matches": recorded.get("n") == again.report["n"]
            and abs((recorded.get("auc") or 0) - again.report["auc"]) < 1e-6}
