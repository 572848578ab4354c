"""Metrics on cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covid_models.metrics import (
    auc,
    binary_report,
    bootstrap_ci,
    cohen_kappa,
    confusion_matrix,
    dice,
    expected_calibration_error,
    iou,
    mean,
    sensitivity_threshold,
    threshold_metrics,
    youden_threshold,
)


def test_auc_of_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    with pytest.raises(ValueError):
        auc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_threshold_metrics_count_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4])
    m = threshold_metrics(y, p, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(2 / 3) and m["npv"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(5 / 7)


def test_sensitivity_threshold_reaches_the_target():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    t = sensitivity_threshold(y, p, 0.95)
    assert threshold_metrics(y, p, t)["sensitivity"] >= 0.95
    assert threshold_metrics(y, p, t + 1e-3)["sensitivity"] < 0.95 or t >= 1.0


def test_youden_threshold_separates_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    t = youden_threshold(y, p)
    assert 0.3 < t <= 0.7
    assert threshold_metrics(y, p, t)["accuracy"] == 1.0


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    y = np.array([0] * 50 + [1] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.99)) == pytest.approx(0.49)


def test_bootstrap_ci_brackets_the_estimate_and_resamples_patients():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.4 + rng.random(300) * 0.6, 0, 1)
    low, high = bootstrap_ci(auc, y, p, n_resamples=300)
    assert low < auc(y, p) < high
    groups = np.repeat(np.arange(30), 10)  # ten correlated images per patient
    g_low, g_high = bootstrap_ci(auc, y, p, n_resamples=300, groups=groups)
    assert g_low < g_high


def _bootstrap_one_resample_at_a_time(statistic, *arrays, n_resamples=1000, confidence=0.95, seed=0, groups=None):
    """The loop bootstrap_ci replaced (one statistic call per resample): the reference it must equal."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    if groups is None:
        index_sets = [np.array([i]) for i in range(n)]
    else:
        _, inverse = np.unique(groups, return_inverse=True)
        index_sets = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    values = []
    for _ in range(n_resamples):
        picks = rng.integers(0, len(index_sets), len(index_sets))
        idx = np.concatenate([index_sets[p] for p in picks])
        try:
            value = statistic(*(a[idx] for a in arrays))
        except ValueError:
            continue
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("grouped", [False, True])
def test_vectorised_bootstrap_gives_the_loops_intervals_for_the_same_seed(seed, grouped):
    """AUC with ties and tiny groups (resamples with one class only are skipped) and the mean."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 120)
    p = np.round(np.clip(y * 0.3 + rng.random(120) * 0.7, 0, 1), 1)  # rounded: many tied scores
    groups = rng.integers(0, 40, 120) if grouped else None
    for statistic, arrays in ((auc, (y, p)), (mean, (p,))):
        fast = bootstrap_ci(statistic, *arrays, n_resamples=300, seed=seed, groups=groups)
        slow = _bootstrap_one_resample_at_a_time(statistic, *arrays, n_resamples=300, seed=seed, groups=groups)
        assert fast == pytest.approx(slow, abs=1e-12)
    small = slice(0, 6)  # six images: many resamples hold one class only
    fast = bootstrap_ci(auc, y[small], p[small], n_resamples=200, seed=seed)
    assert fast == pytest.approx(_bootstrap_one_resample_at_a_time(auc, y[small], p[small], n_resamples=200,
                                                                    seed=seed), abs=1e-12, nan_ok=True)
    generic = bootstrap_ci(lambda v: float(np.median(v)), p, n_resamples=100, seed=seed, groups=groups)
    assert generic == _bootstrap_one_resample_at_a_time(lambda v: float(np.median(v)), p, n_resamples=100,
                                                         seed=seed, groups=groups)


def test_binary_report_has_every_field_the_card_needs():
    y = np.array([0, 1] * 20)
    p = np.linspace(0, 1, 40)
    report = binary_report(y, p, 0.5, n_resamples=50)
    for key in ("auc", "auc_ci95", "roc", "sensitivity", "specificity", "precision", "f1", "accuracy", "ece",
                "reliability", "tp", "fp", "tn", "fn"):
        assert key in report


def test_confusion_matrix_rows_are_truth():
    assert confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3) == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_dice_and_iou_on_known_masks():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 pixels
    b[:, 2:7] = True  # 50 pixels, 30 shared
    assert dice(a, b) == pytest.approx(0.6)
    assert iou(a, b) == pytest.approx(30 / 70)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=2, max_size=60), st.floats(0, 1))
def test_threshold_metrics_are_consistent_for_any_scores(pairs, threshold):
    y = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    m = threshold_metrics(y, p, threshold)
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == len(y)
    for key in ("sensitivity", "specificity", "precision", "npv", "accuracy", "f1"):
        assert np.isnan(m[key]) or 0.0 <= m[key] <= 1.0
    assert 0.0 <= expected_calibration_error(y, p) <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**31))
def test_dice_and_iou_relate_for_any_masks(h, w, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((h, w)) > 0.5, rng.random((h, w)) > 0.5
    d, j = dice(a, b), iou(a, b)
    assert 0 <= j <= d <= 1
    if a.any() or b.any():
        assert d == pytest.approx(2 * j / (1 + j))


@pytest.mark.filterwarnings("ignore:.*cohen_kappa_score. is undefined")  # scikit-learn's NaN case, compared below
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abc")), min_size=1, max_size=40))
def test_cohen_kappa_agrees_with_scikit_learn(pairs):
    from sklearn.metrics import cohen_kappa_score

    first, second = zip(*pairs, strict=True)
    ours = cohen_kappa(first, second, ["a", "b", "c"])
    theirs = cohen_kappa_score(first, second, labels=["a", "b", "c"])
    assert (np.isnan(ours) and np.isnan(theirs)) or ours == pytest.approx(theirs)
