"""Evaluating a classifier on a labelled table: the report stored in cards and printed by evaluate.py."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from covid_models.metrics import binary_report, confusion_matrix
from covid_models.models.inference import Classifier


def predict_frame(classifier: Classifier, frame: pd.DataFrame, batch_size: int = 32, progress: bool = True,
                  skipped: list[tuple[int, str]] | None = None, mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities (N, C) and feature vectors (N, D) for every image of `frame`; of its left-right
    mirror images with `mirror` (test-time augmentation for a model trained with mirroring, e.g. axial CT).

    An unreadable file raises ImageReadError naming it; when a `skipped` list is given, it is recorded there
    instead, as (row position, reason), and left out of the result (so N is the number of readable images).
    """
    from covid_models.imaging.io import read_image
    from covid_models.imaging.scan import ImageReadError

    paths = frame["image"].tolist()
    batches = range(0, len(paths), batch_size)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="predicting", unit="batch")
    probabilities, features = [], []
    for start in batches:
        inputs = []
        for position, path in enumerate(paths[start:start + batch_size], start):
            try:
                inputs.append(classifier.to_input(read_image(path)))
            except ImageReadError as error:
                if skipped is None:
                    raise ImageReadError(f"{path}: {error}") from error
                skipped.append((position, str(error)))
        if inputs:
            batch = torch.stack(inputs)
            probs, feats = classifier.forward(batch.flip(-1) if mirror else batch)
            probabilities.append(probs.numpy())
            features.append(feats.numpy())
    if not probabilities:
        return np.zeros((0, len(classifier.card.classes)), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probabilities), np.concatenate(features)


def classification_report(frame: pd.DataFrame, probabilities: np.ndarray, classes: list[str],
                          positive_class: str, threshold: float, n_resamples: int = 1000) -> dict[str, Any]:
    """Positive-vs-rest metrics with a patient-level bootstrap CI, multi-class accuracy, and per-source tables."""
    labels = np.array([classes.index(label) for label in frame["label"]])
    positive = classes.index(positive_class)
    is_positive = (labels == positive).astype(int)
    score = probabilities[:, positive]
    groups = frame["patient_id"].to_numpy()
    predicted = probabilities.argmax(1)
    report: dict[str, Any] = {
        "positive_class": positive_class,
        **binary_report(is_positive, score, threshold, groups=groups, n_resamples=n_resamples),
        "multiclass_accuracy": float((predicted == labels).mean()),
        "classes": classes,
        "confusion_matrix": confusion_matrix(labels, predicted, len(classes)),
        "per_source": {},
    }
    for source, rows in frame.groupby("source").indices.items():
        sub = binary_report(is_positive[rows], score[rows], threshold, groups=groups[rows], n_resamples=200)
        sub.pop("reliability")
        sub.pop("roc")
        sub["by_label"] = {str(k): int(v) for k, v in frame.iloc[rows]["label"].value_counts().items()}
        report["per_source"][str(source)] = sub
    return report


def format_report(report: dict[str, Any]) -> str:
    """The human summary printed by the scripts."""
    def fmt(value: Any) -> str:
        return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"

    ci = report.get("auc_ci95") or [None, None]
    lines = [
        f"{report['positive_class']}-vs-rest on {report['n']} images ({report['n_positive']} positive)",
        f"  AUC {fmt(report['auc'])} (95% CI {fmt(ci[0])}-{fmt(ci[1])}, patient bootstrap)",
        f"  at threshold {report['threshold']:.3f}: sensitivity {fmt(report['sensitivity'])}, "
        f"specificity {fmt(report['specificity'])}, precision {fmt(report['precision'])}, F1 {fmt(report['f1'])}, "
        f"accuracy {fmt(report['accuracy'])}",
        f"  ECE {fmt(report['ece'])}; multi-class accuracy {fmt(report['multiclass_accuracy'])}",
        f"  confusion matrix (rows true {report['classes']}, columns predicted): {report['confusion_matrix']}",
        "  per source:",
    ]
    for source, sub in report["per_source"].items():
        lines.append(f"    {source:<14} n={sub['n']:<4} {sub['by_label']} AUC {fmt(sub['auc'])} "
                     f"sens {fmt(sub['sensitivity'])} spec {fmt(sub['specificity'])} acc {fmt(sub['accuracy'])}")
    return "\n".join(lines)
