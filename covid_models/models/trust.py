"""Measures of whether a classifier reads the disease or the image's source.

COVID classifiers trained on pooled public data notoriously learn the hospital, not the disease. Two
numbers make that visible and go into every card:
- the **source probe**: how well a linear classifier recovers the image's `source` from the network's
  penultimate features (cross-validated, grouped by patient). The lower, the less the network encodes where
  an image came from. Within one class (e.g. COVID films of ieee8023 vs Hannover) it measures source
  information that the class cannot explain.
- the **within-source AUC**: COVID-vs-rest inside one source that has both, by patient-grouped k-fold
  cross-validation (each fold scored by a model that never saw it): `patient_folds` makes the folds.
scikit-learn is imported inside the functions: the app never needs it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from covid_models.formatting import class_name


def patient_folds(frame: pd.DataFrame, k: int = 5, seed: int = 0, stratify: str = "label") -> np.ndarray:
    """Fold index (0..k-1) per row: every patient in exactly one fold, `stratify` balanced across folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    if frame["patient_id"].nunique() < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} patients, got {frame['patient_id'].nunique()}")
    folds = np.full(len(frame), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(frame, frame[stratify], frame["patient_id"])):
        folds[held] = fold
    return folds


def source_probe(features: np.ndarray, sources: Sequence[str], groups: Sequence[str], k: int = 5, seed: int = 0
                 ) -> dict[str, Any] | None:
    """Cross-validated AUC of a logistic regression predicting `sources` from `features`, folds grouped by
    patient (macro one-vs-rest for more than two sources); None with fewer than two sources or too few
    patients per source to cross-validate. 0.5 means no linearly readable source information."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sources, groups = np.asarray(sources).astype(str), np.asarray(groups).astype(str)
    names = sorted(set(sources))
    patients_per_source = [len(set(groups[sources == s])) for s in names]
    folds = min(k, *patients_per_source) if len(names) > 1 else 0
    if folds < 2:
        return None
    target = np.array([names.index(s) for s in sources])
    probability = np.zeros((len(target), len(names)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in splitter.split(features, target, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        model.fit(features[train], target[train])
        probability[np.ix_(held, model[-1].classes_)] = model.predict_proba(features[held])
    if len(names) == 2:
        auc = roc_auc_score(target, probability[:, 1])
    else:
        auc = roc_auc_score(target, probability, multi_class="ovr", average="macro", labels=list(range(len(names))))
    counts = {str(s): int((sources == s).sum()) for s in names}
    return {"auc": float(auc), "n": int(len(target)), "folds": int(folds), "by_source": counts}


def source_probes(features: np.ndarray, frame: pd.DataFrame, k: int = 5, seed: int = 0) -> dict[str, Any]:
    """The source probe over all images and within each class that has images of several sources."""
    result: dict[str, Any] = {"all": source_probe(features, frame["source"], frame["patient_id"], k, seed),
                              "within_class": {}}
    for label, rows in frame.groupby("label").indices.items():
        probe = source_probe(features[rows], frame["source"].iloc[rows], frame["patient_id"].iloc[rows], k, seed)
        if probe is not None:
            result["within_class"][str(label)] = probe
    return result


# ------------------------------------------------------------------------------ what qualifies a headline AUC
def _auc_text(block: dict[str, Any]) -> str:
    ci = block.get("auc_ci95") or []
    interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if len(ci) == 2 and None not in ci else ""
    return f"AUC {block['auc']:.3f}{interval}"


def _has_auc(block: Any) -> bool:
    return isinstance(block, dict) and isinstance(block.get("auc"), (int, float)) and block["auc"] == block["auc"]


def headline_auc(card: Any) -> str:
    """The card's pooled test AUC in words ("Test AUC 0.948 (95% CI ...) on 184 held-out images, all sources")."""
    test = card.metrics.get("test") or {}
    if not _has_auc(test):
        return "No test AUC recorded in its card."
    pooled = "all sources pooled" if single_source(card) is None else "all of one source"
    return f"Test {_auc_text(test)} on {test.get('n', '?')} held-out images, {pooled}."


FLAGGED = ("flagged: the calibrated probability of the positive class is at or above the model's default operating "
           "point (the threshold in its card); the same word for an image, a CT slice or a scan")
POOLED_INTERVAL = "95% CI by patient-level bootstrap over the whole test split"
SOURCE_INTERVAL = "95% CI by patient-level bootstrap over that source's test images"


def within_source(card: Any) -> list[str]:
    """The within-source figures of a card: its cross-validated within-source AUC, else the per-source test AUCs
    of the sources that hold both classes (for a card tested on one source, its test AUC with the same interval,
    so that one AUC never shows two intervals). Empty when the card has none."""
    cv = card.metrics.get("within_source_cv")
    if _has_auc(cv):
        return [f"within {cv.get('source', 'one source')} ({cv.get('n', '?')} images, patient-grouped "
                f"cross-validation): {_auc_text(cv)}"]
    test = card.metrics.get("test") or {}
    if (source := single_source(card)) is not None and _has_auc(test):
        return [f"within {source} ({test.get('n', '?')} test images, all of them): {_auc_text(test)}"]
    per_source = test.get("per_source") or {}
    return [f"within {source} ({block.get('n', '?')} test images): {_auc_text(block)}"
            for source, block in per_source.items() if _has_auc(block)]


def single_source(card: Any) -> str | None:
    """The one source of all of a card's test images, if they have one: then its headline AUC is itself a
    within-source figure, and says nothing of images from other sources."""
    per_source = (card.metrics.get("test") or {}).get("per_source") or {}
    return next(iter(per_source)) if len(per_source) == 1 else None


def _two_class_sources(card: Any) -> dict[str, dict[str, Any]]:
    """The per-source test blocks of the sources that hold both classes (those with a within-source AUC)."""
    per_source = (card.metrics.get("test") or {}).get("per_source") or {}
    return {source: block for source, block in per_source.items() if _has_auc(block)}


def within_source_short(card: Any) -> str:
    """The within-source AUCs in a few words, for a legend or a table cell beside a pooled AUC ("" when none):
    "within ieee8023 0.605 (n=65)"; for a card tested on one source, that its AUC is that source's."""
    cv = card.metrics.get("within_source_cv")
    if _has_auc(cv):
        return f"within {cv.get('source', 'one source')} {cv['auc']:.3f} (n={cv.get('n', '?')}, cross-validated)"
    if (source := single_source(card)) is not None:
        return f"all test images from {source} (the AUC is within that source)"
    return "; ".join(f"within {source} {block['auc']:.3f} (n={block.get('n', '?')})"
                     for source, block in _two_class_sources(card).items())


def within_source_figures(card: Any) -> list[dict[str, Any]]:
    """The figures that hold within one source, to lead with: per source holding both classes, its AUC with its
    interval and how that was computed, and its sensitivity and specificity at the default operating point; for a
    card tested on one source, its test figures (with the headline's own interval)."""
    test = card.metrics.get("test") or {}
    if (source := single_source(card)) is not None and _has_auc(test):
        blocks, interval = {source: test}, POOLED_INTERVAL + " (all of it from this source)"
    else:
        blocks, interval = _two_class_sources(card), SOURCE_INTERVAL
    return [{"source": name, "images": block.get("n"), "auc": block["auc"],
             "auc_ci95": block.get("auc_ci95"), "interval": interval,
             "sensitivity": block.get("sensitivity"), "specificity": block.get("specificity"),
             "flagged_negatives": (block.get("fp"), (block.get("fp") or 0) + (block.get("tn") or 0))}
            for name, block in blocks.items()]


def source_warning(card: Any, flagged: bool | None = None) -> str | None:
    """What must be read beside any result of this model, on the page and in every report: its within-source
    figures from the card, never the pooled AUC alone. `flagged`: the result is at or above the operating point,
    so the within-source specificity (how many negatives of that source are flagged too) is spelled out.
    None when the card records no test metrics."""
    test = card.metrics.get("test") or {}
    if not _has_auc(test):
        return None
    if (source := single_source(card)) is not None:
        return (f"All of this model's test images come from one source ({source}): its test AUC {test['auc']:.3f} "
                "says nothing of images from other hospitals or scanners.")
    sources = _two_class_sources(card)
    if not sources:
        return (f"This model's test AUC {test['auc']:.3f} pools sources that each hold one label, so it may measure "
                "where an image comes from, not the disease: no within-source AUC is recorded.")
    positive = test.get("positive_class") or card.positive_class
    parts = []
    for name, block in sources.items():
        ci = block.get("auc_ci95") or []
        interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if len(ci) == 2 and None not in ci else ""
        text = f"within {name} ({block.get('n', '?')} test images) AUC {block['auc']:.3f}{interval}"
        if isinstance(block.get("sensitivity"), float) and isinstance(block.get("specificity"), float):
            text += (f", sensitivity {block['sensitivity']:.3f} and specificity {block['specificity']:.3f} at the "
                     "operating point")
            negatives = block.get("fp", 0) + block.get("tn", 0)
            if flagged and negatives:
                text += (f": {block.get('fp')} of its {negatives} test images without {class_name(positive)} were "
                         "flagged as well")
        parts.append(text)
    return (f"Read this model's results with its within-source figures, not its test AUC {test['auc']:.3f} over "
            f"all sources pooled: {'; '.join(parts)}.")


def auc_qualifiers(card: Any) -> list[str]:
    """What must be read beside the headline AUC: the within-source figures, the sources without one, the probe."""
    lines = [f"Within-source AUC, {text}." for text in within_source(card)]
    if not lines:
        lines.append("No within-source AUC is recorded in this card: the headline may measure where images come "
                     "from, not the disease.")
    per_source = (card.metrics.get("test") or {}).get("per_source") or {}
    single = [source for source, block in per_source.items() if not _has_auc(block)]
    if single:
        lines.append(f"No AUC (n/a) within {', '.join(single)}: all of its test images carry one label.")
    probe = ((card.metrics.get("test") or {}).get("source_probe") or {}).get("all")
    if _has_auc(probe):
        lines.append(f"A linear probe tells the image's source from the network's features with AUC {probe['auc']:.3f} "
                     "(0.5: no source information).")
    return lines


def volume_rows(card: Any) -> list[dict[str, Any]]:
    """The card's robustness table on real CT scans (`evaluate.py --volumes`), one row per scan, for display."""
    scans = (card.metrics.get("volumes") or {}).get("scans") or []
    return [{"scan": row.get("volume"), "label": row.get("label"),
             "scan-level probability": row.get("scan_probability"),
             "slice median": row.get("slice_median"), "slice max": row.get("slice_max"),
             "slices flagged": f"{row.get('flagged_share', 0):.0%}", "lung slices": row.get("slices_scored")}
            for row in scans if isinstance(row, dict)]
