"""Local validation: how a shipped model does on one hospital's own labelled sample, and what else could explain it.

What a radiology department does with any AI tool before using it. For a `LocalSample` and a classifier:
- `score_sample`: every image read through `io.read_image`, its calibrated probability and feature vector, the
  model's out-of-distribution flag and, when guards are given, the chest-image check (`image_checks.check_image`);
  the image's size, bit depth and DICOM tags (view, manufacturer) come with it;
- `validate`: ROC with a patient-bootstrap interval, sensitivity / specificity / PPV / NPV at the card's operating
  point (each with its patient-bootstrap interval), calibration, a table per view / manufacturer / site, the
  check's and the guard's shares. Minimum counts are enforced: with fewer than `MIN_PATIENTS` patients in a class
  there is no AUC headline (`headline` False and why); the intervals are always given;
- `confound_check`: how well the metadata alone (view, manufacturer, site, image size, bit depth) predicts the label,
  by patient-grouped cross-validation, beside the model's AUC, and the model's AUC within each view;
- `recalibrate`: temperature and operating point refit on the sample, with a cross-validated estimate (each fold
  scored by a refit that never saw it) of the resulting sensitivity and specificity.
scikit-learn is imported inside the functions that use it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from covid_models.analysis.image_analysis import Hold, free
from covid_models.imaging.scan import ImageReadError
from covid_models.local.samples import NEGATIVE, LocalSample
from covid_models.metrics import auc, binary_report, bootstrap_ci, threshold_metrics, youden_threshold
from covid_models.models.inference import Classifier

MIN_PATIENTS = 10  # per class: below this no AUC headline, no adaptation
FOLDS = 5
METADATA_COLUMNS = ("view", "manufacturer", "site")  # categorical metadata
NUMERIC_METADATA = ("width", "height", "bit_depth")
Progress = Callable[[float, str], None]


class ValidationError(ValueError):
    """A sample that cannot give the asked-for figure (too few patients, a class missing); says why."""


@dataclass
class ScoredSample:
    """A sample after the model: `frame` (the sample's rows that could be read, with width, height, bit_depth,
    manufacturer, probability, out_of_distribution, refused, refusal), per-image `probabilities` (N, C) and
    `features` (N, D), and the rows that could not be read (name, reason)."""

    frame: pd.DataFrame
    probabilities: np.ndarray
    features: np.ndarray
    positive_class: str
    positive_index: int  # the positive class's column of `probabilities`
    unreadable: list[tuple[str, str]]

    @property
    def labels(self) -> np.ndarray:
        return self.frame["positive"].to_numpy(dtype=int)

    @property
    def groups(self) -> np.ndarray:
        return self.frame["patient_id"].astype(str).to_numpy()

    @property
    def scores(self) -> np.ndarray:
        return self.frame["probability"].to_numpy(dtype=float)


def score_sample(classifier: Classifier, sample: LocalSample, *, guards: Mapping[str, Classifier] | None = None,
                 lung_segmenter: Any = None, batch_size: int = 16, progress: Progress | None = None,
                 hold: Hold = free) -> ScoredSample:
    """Run `classifier` on every image of `sample`; unreadable files are named and left out, never fatal.

    `guards` (one classifier per modality) and `lung_segmenter` (the X-ray lung model) turn on the chest-image check.
    `hold(model)` is entered for each batch or image a shared model runs on (see `analysis.analyse`), never for the
    whole sample, so that a long validation does not keep other visitors from the model.
    """
    from covid_models.analysis.image_checks import check_image, lung_mask

    card = classifier.card
    positive = card.classes.index(card.positive_class)
    rows, inputs, metadata, unreadable = [], [], [], []
    probabilities, features = [], []
    total = len(sample.frame)

    def flush() -> None:
        if inputs:
            with hold(classifier):
                probs, feats = classifier.forward(torch.stack(inputs))
            predictions = classifier.predictions(probs, feats)
            probabilities.append(probs.numpy())
            features.append(feats.numpy())
            for prediction, meta in zip(predictions, metadata[-len(inputs):], strict=True):
                meta["out_of_distribution"] = prediction.out_of_distribution
            inputs.clear()

    for index in range(total):
        name = str(sample.frame["name"].iloc[index])
        try:
            scan, data = sample.read(index)
            tensor = classifier.to_input(scan)
        except ImageReadError as error:
            unreadable.append((name, str(error)))
            continue
        meta = scan.metadata
        summary = meta.dicom_summary or {}
        check = None
        if guards:
            lungs = lung_mask(lung_segmenter, scan, hold) if lung_segmenter is not None else None
            check = check_image(scan, data, guards, lungs, hold)
        rows.append(index)
        inputs.append(tensor)
        metadata.append({
            "width": int(meta.original_width or meta.width), "height": int(meta.original_height or meta.height),
            "bit_depth": int(meta.bits_stored or 8), "manufacturer": summary.get("Manufacturer", ""),
            "dicom_view": summary.get("ViewPosition", ""),
            "refused": None if check is None else check.refused,
            "refusal": "" if check is None else "; ".join(check.reasons),
        })
        if len(inputs) == batch_size:
            flush()
        if progress is not None:
            progress((index + 1) / total, f"Scoring image {index + 1} of {total}")
    flush()
    frame = sample.frame.iloc[rows].reset_index(drop=True)
    extra = pd.DataFrame(metadata)
    if not extra.empty:
        frame["view"] = [v or d for v, d in zip(frame["view"], extra["dicom_view"], strict=True)]
        frame = pd.concat([frame, extra.drop(columns="dicom_view")], axis=1)
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, len(card.classes)))
    frame["probability"] = probs[:, positive] if len(probs) else []
    feats = np.concatenate(features) if features else np.zeros((0, 0))
    return ScoredSample(frame, probs, feats, card.positive_class, positive, unreadable)


# ------------------------------------------------------------------------------------------------- minimum counts
def patient_counts(labels: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    """Patients per binary class (1 positive, 0 other)."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    return {cls: int(len(set(groups[labels == cls]))) for cls in (1, 0)}


def shortfall(labels: np.ndarray, groups: np.ndarray, positive_class: str, minimum: int = MIN_PATIENTS) -> str | None:
    """Why the sample is too small for a headline figure or an adaptation; None when it is not."""
    counts = patient_counts(labels, groups)
    names = {1: positive_class, 0: NEGATIVE}
    missing = [names[c] for c, n in counts.items() if n == 0]
    if missing:
        return f"the sample has no {missing[0]} case: both classes are needed"
    small = [f"{names[c]} ({n} patient{'s' if n != 1 else ''})" for c, n in counts.items() if n < minimum]
    if small:
        return (f"fewer than {minimum} patients in {' and '.join(small)}: an AUC from so few is not a result to "
                "act on")
    return None


# ------------------------------------------------------------------------------------------------- validation
def _rate(numerator: str, denominator: tuple[str, ...]) -> Callable[[np.ndarray, np.ndarray], float]:
    def statistic(labels: np.ndarray, predicted: np.ndarray) -> float:
        counts = {"tp": np.sum(predicted & labels), "fp": np.sum(predicted & ~labels),
                  "tn": np.sum(~predicted & ~labels), "fn": np.sum(~predicted & labels)}
        total = sum(counts[key] for key in denominator)
        if not total:
            raise ValueError("empty")
        return float(counts[numerator] / total)
    return statistic


RATES = {"sensitivity": _rate("tp", ("tp", "fn")), "specificity": _rate("tn", ("tn", "fp")),
         "precision": _rate("tp", ("tp", "fp")), "npv": _rate("tn", ("tn", "fn"))}


def operating_point_report(labels: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray,
                           n_resamples: int = 1000) -> dict[str, Any]:
    """Sensitivity, specificity, PPV (precision), NPV at `threshold`, each with a patient-bootstrap 95 % interval."""
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(scores) >= threshold
    report = threshold_metrics(labels, scores, threshold)
    for name, statistic in RATES.items():
        report[f"{name}_ci95"] = list(bootstrap_ci(statistic, labels, predicted, groups=groups,
                                                   n_resamples=n_resamples))
    return report


def validate(scored: ScoredSample, threshold: float, n_resamples: int = 1000) -> dict[str, Any]:
    """The validation report of a scored sample at the card's operating point `threshold` (see the module doc)."""
    labels, scores, groups = scored.labels, scored.scores, scored.groups
    if not len(labels):
        raise ValidationError("no image of the sample could be read")
    why = shortfall(labels, groups, scored.positive_class)
    report = binary_report(labels, scores, threshold, groups=groups, n_resamples=n_resamples)
    report.update(operating_point_report(labels, scores, threshold, groups, n_resamples))
    report["brier"] = float(np.mean((scores - labels) ** 2))
    report["patients"] = {scored.positive_class: patient_counts(labels, groups)[1],
                          NEGATIVE: patient_counts(labels, groups)[0]}
    report["headline"] = why is None
    report["no_headline_because"] = why
    report["minimum_patients_per_class"] = MIN_PATIENTS
    report["unreadable"] = len(scored.unreadable)
    frame = scored.frame
    report["out_of_distribution_share"] = float(frame["out_of_distribution"].mean())
    checked = frame["refused"].dropna() if "refused" in frame else pd.Series(dtype=bool)
    report["image_check_refused_share"] = float(checked.astype(bool).mean()) if len(checked) else None
    report["subgroups"] = subgroup_table(scored, threshold)
    return report


def subgroup_table(scored: ScoredSample, threshold: float) -> list[dict[str, Any]]:
    """Per view, manufacturer and site (where the sample has more than one value or any value): counts, AUC with
    its interval (only when both classes have patients in the group), sensitivity and specificity."""
    frame, labels, scores, groups = scored.frame, scored.labels, scored.scores, scored.groups
    rows = []
    for column in METADATA_COLUMNS:
        if column not in frame or (frame[column].astype(str) == "").all():
            continue
        for value, index in frame.groupby(frame[column].astype(str).replace("", "(not given)")).indices.items():
            y, s, g = labels[index], scores[index], groups[index]
            row: dict[str, Any] = {"by": column, "value": value, "images": int(len(index)),
                                   "positive": int(y.sum()), "patients": int(len(set(g)))}
            if 0 < y.sum() < len(y):
                row["auc"] = auc(y, s)
                row["auc_ci95"] = list(bootstrap_ci(auc, y, s, groups=g, n_resamples=300))
            else:
                row["auc"], row["auc_ci95"] = None, None
            metrics = threshold_metrics(y, s, threshold)
            row["sensitivity"], row["specificity"] = metrics["sensitivity"], metrics["specificity"]
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------- confounds
def grouped_folds(labels: np.ndarray, groups: np.ndarray, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Fold number per row: every patient in one fold, classes balanced; k lowered to the smaller class's patient
    count (at least 2). ValidationError when a class has fewer than 2 patients."""
    from sklearn.model_selection import StratifiedGroupKFold

    counts = patient_counts(labels, groups)
    k = min(k, *counts.values())
    if k < 2:
        raise ValidationError("cross-validation needs at least two patients in each class")
    folds = np.full(len(labels), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[held] = fold
    return folds


def metadata_matrix(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray | None:
    """Design matrix of the named metadata: one-hot categories, log sizes (numeric columns such as the image size or
    a scan's slice thickness); None when none of them varies."""
    parts = []
    for column in columns:
        if column not in frame:
            continue
        if column in NUMERIC_METADATA or pd.api.types.is_numeric_dtype(frame[column]):
            values = np.log2(frame[column].to_numpy(dtype=float).clip(1e-3))[:, None]
            if np.ptp(values) > 0:
                parts.append(values)
        else:
            values = frame[column].fillna("").astype(str)
            if values.nunique() > 1:
                parts.append(pd.get_dummies(values).to_numpy(dtype=float))
    return np.hstack(parts) if parts else None


def cross_validated_auc(design: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: np.ndarray,
                        C: float = 1.0) -> tuple[np.ndarray, float]:
    """Out-of-fold scores of a logistic regression on `design`, ranked within their fold (0..1), and their AUC.

    Ranking within the fold keeps what each fold's model says about its own held-out images and drops the fold's
    intercept: pooled raw probabilities of a predictor with no signal rank whole folds by their training prevalence,
    which pushes the pooled AUC well below 0.5 (0.30 for image width on the UCSD CT test split, where width alone
    gives 0.54)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.zeros(len(labels))
    for fold in np.unique(folds):
        train, held = folds != fold, folds == fold
        if len(np.unique(labels[train])) < 2:
            out[held] = labels[train].mean()
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        model.fit(design[train], labels[train])
        out[held] = model.predict_proba(design[held])[:, 1]
    for fold in np.unique(folds):
        held = folds == fold
        out[held] = (pd.Series(out[held]).rank().to_numpy() - 0.5) / held.sum()
    return out, auc(labels, out)


def confound_check(scored: ScoredSample, seed: int = 0,
                   metadata: tuple[str, ...] = (*METADATA_COLUMNS, *NUMERIC_METADATA)) -> dict[str, Any]:
    """How well metadata alone (the `metadata` columns; a scan sample names its own) predicts the label
    (patient-grouped CV AUC, each field and all together) beside the model's AUC, and the model's AUC within each
    view."""
    frame, labels, groups, scores = scored.frame, scored.labels, scored.groups, scored.scores
    folds = grouped_folds(labels, groups, seed=seed)
    rows = []
    available = [c for c in metadata if metadata_matrix(frame, (c,)) is not None]
    for name, columns in [*((c, (c,)) for c in available), ("all metadata together", tuple(available))]:
        design = metadata_matrix(frame, columns)
        if design is None:
            continue
        oof, value = cross_validated_auc(design, labels, groups, folds)
        rows.append({"predictor": name, "auc": value,
                     "auc_ci95": list(bootstrap_ci(auc, labels, oof, groups=groups, n_resamples=300))})
    within = []
    if "view" in frame and frame["view"].astype(str).ne("").any():
        for view, index in frame.groupby(frame["view"].astype(str).replace("", "(not given)")).indices.items():
            y, s, g = labels[index], scores[index], groups[index]
            entry = {"view": view, "images": int(len(index)), "positive_patients": int(len(set(g[y == 1]))),
                     "other_patients": int(len(set(g[y == 0]))), "model_auc": None, "model_auc_ci95": None}
            if 0 < y.sum() < len(y):
                entry["model_auc"] = auc(y, s)
                entry["model_auc_ci95"] = list(bootstrap_ci(auc, y, s, groups=g, n_resamples=300))
            within.append(entry)
    return {"folds": int(folds.max() + 1), "metadata": rows, "model_auc": auc(labels, scores),
            "model_auc_ci95": list(bootstrap_ci(auc, labels, scores, groups=groups, n_resamples=300)),
            "model_within_view": within,
            "note": "An AUC well above 0.5 from metadata alone means the label can be guessed without reading the "
                    "image: the model's AUC may then measure the same shortcut. Compare within each view. At or below "
                    "0.5 the metadata carries no usable signal (cross-validating a predictor without signal gives "
                    "less than 0.5: what a fold's training part shows, its held-out part shows reversed)."}


# ------------------------------------------------------------------------------------------------- recalibration
def fit_scale(log_probabilities: np.ndarray, labels: np.ndarray, positive: int) -> float:
    """Factor s (new temperature = old / s) minimising the binary log-loss of softmax(s * log p)[positive]."""
    from scipy.optimize import minimize_scalar

    def loss(log_s: float) -> float:
        p = _scaled_positive(log_probabilities, np.exp(log_s), positive).clip(1e-7, 1 - 1e-7)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    return float(np.exp(minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded").x))


def _scaled_positive(log_probabilities: np.ndarray, scale: float, positive: int) -> np.ndarray:
    z = log_probabilities * scale
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e[:, positive] / e.sum(1)


def cross_validated_operating_point(labels: np.ndarray, groups: np.ndarray, folds: np.ndarray,
                                    fit: Callable[[np.ndarray], tuple[Callable[[np.ndarray], np.ndarray], float]],
                                    n_resamples: int = 1000) -> dict[str, Any]:
    """Sensitivity and specificity of a refit judged on data it never saw: for each fold, `fit(train_mask)` returns
    (a score function of a row mask, a threshold) from the other folds; the fold is scored and called with them."""
    called = np.zeros(len(labels), dtype=bool)
    scores = np.zeros(len(labels))
    for fold in np.unique(folds):
        held = folds == fold
        score_of, threshold = fit(~held)
        scores[held] = score_of(held)
        called[held] = scores[held] >= threshold
    y = np.asarray(labels).astype(bool)
    result = {"folds": int(len(np.unique(folds)))}
    for name in ("sensitivity", "specificity"):
        result[name] = RATES[name](y, called)
        result[f"{name}_ci95"] = list(bootstrap_ci(RATES[name], y, called, groups=groups, n_resamples=n_resamples))
    return result


def recalibrate(scored: ScoredSample, temperature: float, seed: int = 0) -> dict[str, Any]:
    """Temperature and operating point (Youden) refit on the sample, with their cross-validated effect; `temperature`
    is the card's (the sample's probabilities were computed with it)."""
    if (why := shortfall(scored.labels, scored.groups, scored.positive_class)) is not None:
        raise ValidationError(f"Not recalibrated: {why}.")
    from covid_models.metrics import expected_calibration_error

    labels, groups = scored.labels, scored.groups
    positive = scored.positive_index
    logp = np.log(np.clip(scored.probabilities, 1e-12, 1.0))
    scale = fit_scale(logp, labels, positive)
    refit = _scaled_positive(logp, scale, positive)
    threshold = youden_threshold(labels, refit)
    folds = grouped_folds(labels, groups, seed=seed)

    def fit(train: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
        s = fit_scale(logp[train], labels[train], positive)
        t = youden_threshold(labels[train], _scaled_positive(logp[train], s, positive))
        return (lambda rows: _scaled_positive(logp[rows], s, positive)), t

    return {"temperature": float(temperature / scale), "previous_temperature": float(temperature),
            "threshold": float(threshold), "rule": "maximises sensitivity + specificity on the local sample",
            "ece_before": expected_calibration_error(labels, scored.scores),
            "ece_after_in_sample": expected_calibration_error(labels, refit),
            "cross_validated": cross_validated_operating_point(labels, groups, folds, fit)}

