"""Evaluation metrics: ROC/AUC with bootstrap CI, threshold metrics, calibration, operating points, Dice/IoU.

Plain functions on numpy arrays, so the trainer, `scripts/evaluate.py` and the app compute every
number the same way. scikit-learn is imported by the functions that use it, so that the dashboard, which
needs only Cohen's kappa and confusion tables from here, does not load it (about 55 MB).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic(*arrays)`; resamples whole `groups` (patients) when given.

    Resamples where the statistic is undefined (e.g. one class only for AUC) are skipped. `auc` and
    `mean` are computed for all resamples at once from per-element counts (the trainer's CIs cost 1000
    scikit-learn calls otherwise); the draws are the same as one resample at a time, so a seed gives the
    same interval either way (tests/test_metrics.py compares them with the loop).
    """
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    if not n:
        return float("nan"), float("nan")
    inverse = np.arange(n) if groups is None else np.unique(groups, return_inverse=True)[1].ravel()
    n_groups = int(inverse.max()) + 1 if n else 0
    picks = rng.integers(0, n_groups, (n_resamples, n_groups))  # the same stream as one draw per resample
    vectorised = _WEIGHTED_STATISTICS.get(statistic)
    if vectorised is not None:
        values = np.concatenate([vectorised(_element_counts(chunk, inverse, n_groups), *arrays)
                                 for chunk in np.array_split(picks, max(1, n_resamples // 128))])
    else:
        values = np.array([_statistic_or_nan(statistic, arrays, _resample_index(row, inverse, n_groups))
                           for row in picks], dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def _element_counts(picks: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """(resamples, elements): how often each element is drawn, given the groups drawn per resample."""
    rows = len(picks)
    offsets = (picks + n_groups * np.arange(rows)[:, None]).ravel()
    group_counts = np.bincount(offsets, minlength=rows * n_groups).reshape(rows, n_groups)
    return group_counts[:, inverse].astype(np.float64)


def _resample_index(picks: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    members = [np.flatnonzero(inverse == g) for g in range(n_groups)]
    return np.concatenate([members[p] for p in picks])


def _statistic_or_nan(statistic: Callable[..., float], arrays: Sequence[np.ndarray], index: np.ndarray) -> float:
    try:
        return statistic(*(a[index] for a in arrays))
    except ValueError:
        return float("nan")


def _weighted_auc(counts: np.ndarray, y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC per row of `counts` (the Mann-Whitney form, ties counted half, as roc_auc_score); NaN where a
    resample holds one class only."""
    order = np.argsort(np.asarray(score), kind="stable")
    sorted_score, positive = np.asarray(score)[order], np.asarray(y_true).astype(bool)[order]
    counts = counts[:, order]
    positives, negatives = counts * positive, counts * ~positive
    below = np.cumsum(negatives, axis=1)
    first = np.searchsorted(sorted_score, sorted_score, side="left")  # first element of each tie group
    last = np.searchsorted(sorted_score, sorted_score, side="right") - 1
    padded = np.concatenate([np.zeros((len(counts), 1)), below], axis=1)
    strictly_below, tied = padded[:, first], below[:, last] - padded[:, first]
    pairs = positives.sum(1) * negatives.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (positives * (strictly_below + 0.5 * tied)).sum(1) / pairs, np.nan)


def _weighted_mean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    return counts @ np.asarray(values, dtype=np.float64) / counts.sum(1)


def mean(values: np.ndarray) -> float:
    """The mean as a bootstrap statistic (vectorised by `bootstrap_ci`)."""
    return float(np.mean(values))


def auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC; raises ValueError when only one class is present."""
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        raise ValueError("AUC is undefined with a single class")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, score))


def roc_points(y_true: np.ndarray, score: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve (fpr, tpr, thresholds), thinned to at most `max_points` for storage in a card."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y_true, score, drop_intermediate=True)
    thresholds = np.minimum(thresholds, 1.0)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist(), "thresholds": thresholds.round(6).tolist()}


def threshold_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, accuracy, F1 and the confusion counts at `threshold`."""
    y_true = np.asarray(y_true).astype(bool)
    pred = np.asarray(score) >= threshold
    tp = int(np.sum(pred & y_true))
    tn = int(np.sum(~pred & ~y_true))
    fp = int(np.sum(pred & ~y_true))
    fn = int(np.sum(~pred & y_true))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    sensitivity, precision = ratio(tp, tp + fn), ratio(tp, tp + fp)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "threshold": float(threshold),
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "precision": precision,
        "npv": ratio(tn, tn + fn),
        "accuracy": ratio(tp + tn, len(y_true)),
        "f1": f1,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y_true, score)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def sensitivity_threshold(y_true: np.ndarray, score: np.ndarray, target: float = 0.95) -> float:
    """Highest threshold whose sensitivity reaches `target` (the most specific screening cut-off)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y_true, score)
    reaching = np.flatnonzero(tpr >= target)
    return float(min(thresholds[reaching[0]], 1.0))


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the positive-class probability over equal-width bins."""
    y_true, prob = np.asarray(y_true, dtype=float), np.asarray(prob, dtype=float)
    bins = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(prob[in_bin].mean() - y_true[in_bin].mean())
    return float(ece)


def reliability_curve(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Per-bin mean predicted probability, observed frequency and count, for the calibration diagram."""
    y_true, prob = np.asarray(y_true, dtype=float), np.asarray(prob, dtype=float)
    bins = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    mean_pred, observed, counts = [], [], []
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            mean_pred.append(round(float(prob[in_bin].mean()), 5))
            observed.append(round(float(y_true[in_bin].mean()), 5))
            counts.append(int(in_bin.sum()))
    return {"mean_predicted": mean_pred, "observed": observed, "count": counts}


def binary_report(
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    *,
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """The full binary evaluation stored in cards and printed by evaluate.py.

    The AUC CI resamples patients (`groups`) when given, since slices of one patient are not independent.
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    report: dict[str, Any] = {"n": int(len(y_true)), "n_positive": int(y_true.sum())}
    try:
        report["auc"] = auc(y_true, prob)
        report["auc_ci95"] = list(bootstrap_ci(auc, y_true, prob, groups=groups, n_resamples=n_resamples))
        report["roc"] = roc_points(y_true, prob)
    except ValueError:
        report["auc"], report["auc_ci95"], report["roc"] = None, None, None
    report.update(threshold_metrics(y_true, prob, threshold))
    report["ece"] = expected_calibration_error(y_true, prob)
    report["reliability"] = reliability_curve(y_true, prob)
    return report


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> list[list[int]]:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix.tolist()


def cohen_kappa(first: Sequence[str], second: Sequence[str], labels: Sequence[str]) -> float:
    """Agreement between two raters beyond chance: (observed - expected) / (1 - expected); NaN when the
    expected agreement is 1 (both raters always gave the same single label)."""
    index = {label: i for i, label in enumerate(labels)}
    table = np.zeros((len(labels), len(labels)))
    for a, b in zip(first, second, strict=True):
        table[index[a], index[b]] += 1
    total = table.sum()
    observed = np.trace(table) / total
    expected = float(table.sum(axis=1) @ table.sum(axis=0)) / total**2
    return float("nan") if expected == 1 else float((observed - expected) / (1 - expected))


def dice(prediction: np.ndarray, target: np.ndarray, empty: float = 1.0) -> float:
    """Dice coefficient of two binary masks; `empty` when both are empty."""
    prediction, target = np.asarray(prediction, dtype=bool), np.asarray(target, dtype=bool)
    total = prediction.sum() + target.sum()
    return float(2 * np.logical_and(prediction, target).sum() / total) if total else empty


def iou(prediction: np.ndarray, target: np.ndarray, empty: float = 1.0) -> float:
    """Intersection over union of two binary masks; `empty` when both are empty."""
    prediction, target = np.asarray(prediction, dtype=bool), np.asarray(target, dtype=bool)
    union = np.logical_or(prediction, target).sum()
    return float(np.logical_and(prediction, target).sum() / union) if union else empty


def summary_with_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean, standard deviation and bootstrap 95 % CI of the mean of per-image scores."""
    values = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(mean, values, n_resamples=n_resamples, seed=seed)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "ci95_low": low, "ci95_high": high, "n": int(len(values))}


_WEIGHTED_STATISTICS: dict[Callable[..., float], Callable[..., np.ndarray]] = {auc: _weighted_auc, mean: _weighted_mean}
