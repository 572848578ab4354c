"""MODEL_CARD.md: the card.json facts written for people (intended use, data, metrics, limits).

Apart from `model_card.py` (the card's schema and validation) because rendering is a separate concern: the
schema is read by every page and script, the Markdown only when a model directory is written.
"""
from __future__ import annotations

import json
from typing import Any

from covid_models import RESEARCH_USE_NOTICE
from covid_models.imaging.preprocessing import Preprocessing
from covid_models.models.model_card import ModelCard
from covid_models.models.trust import source_warning, within_source_short


def _num(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _metrics_section(card: ModelCard) -> list[str]:
    test = card.metrics.get("test", {})
    if "auc" in test:
        ci = test.get("auc_ci95") or [None, None]
        lines = [
            f"Test split, {test.get('positive_class')}-vs-rest, {test['n']} images ({test['n_positive']} positive):",
            "",
            "| metric | value |", "| --- | --- |",
            f"| AUC (95% CI, patient bootstrap) | {_num(test['auc'])} ({_num(ci[0])}-{_num(ci[1])}) |",
            f"| AUC within one source (read this first) | {within_source_short(card) or 'none recorded'} |",
        ]
        if (warning := source_warning(card)) is not None:
            lines[0:0] = [f"> {warning}", ""]
        for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "ece", "multiclass_accuracy"):
            if key in test:
                lines.append(f"| {key} | {_num(test[key])} |")
        lines += ["", *_confusion_table(test), "", "Per source (read these before trusting the totals):", "",
                  "| source | images | labels | AUC | sensitivity | specificity |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for source, sub in test.get("per_source", {}).items():
            lines.append(f"| {source} | {sub['n']} | {sub.get('by_label')} | {_num(sub['auc'])} | "
                         f"{_num(sub['sensitivity'])} | {_num(sub['specificity'])} |")
        return lines
    return ["| metric | value |", "| --- | --- |"] + [
        f"| {key} | {value if not isinstance(value, float) else _num(value)} |" for key, value in test.items()
        if not isinstance(value, (dict, list))]


def _confusion_table(test: dict[str, Any]) -> list[str]:
    """The multi-class confusion matrix as a labelled table (rows: true class, columns: predicted class)."""
    classes, matrix = test.get("classes"), test.get("confusion_matrix")
    if not classes or not matrix:
        return []
    return ["Confusion matrix on the test split (rows: true class, columns: predicted class, images):", "",
            "| true \\ predicted | " + " | ".join(classes) + " |", "| --- |" + " ---: |" * len(classes),
            *[f"| {label} | " + " | ".join(str(n) for n in row) + " |" for label, row in zip(classes, matrix,
                                                                                             strict=True)]]


def _data_section(data: dict[str, Any]) -> list[str]:
    """Counts per split, source and label as a table; anything else as compact JSON."""
    counts = data.get("counts")
    if not counts:
        return [f"```\n{_compact(data)}\n```"]
    keys = [k for k in counts[0] if k != "n"]
    lines = [f"{data.get('n_images')} images of {data.get('n_patients')} patients; manifest fingerprint "
             f"`{data.get('manifest_sha256', 'n/a')}`.", "",
             "| " + " | ".join(keys) + " | images |", "| " + " --- |" * (len(keys) + 1)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + f" | {row['n']} |" for row in counts]
    return lines


def _segmentation_section(metrics: dict[str, Any]) -> list[str]:
    """Dice/IoU per image (mean, SD, bootstrap CI) on the test split, or pooled over cross-validation folds."""
    cv = metrics.get("cross_validation")
    block = metrics.get("test") or (cv or {}).get("pooled")
    if not block:
        return ["No held-out metrics recorded."]
    where = (f"{cv['k']}-fold cross-validation ({cv['grouped_by']}); every image scored once by a model that did "
             "not see it" if cv else "Test split (patient-level)")
    lines = [f"{where}: {block['n']} images, scored at their own resolution, threshold "
             f"{block.get('threshold', (cv or {}).get('threshold'))}.", "",
             "| metric (per image) | mean | SD | 95% CI (bootstrap) |", "| --- | --- | --- | --- |"]
    for key in ("dice", "iou", "dice_postprocessed", "iou_postprocessed", "postprocessing_dice_change"):
        if key in block:
            s = block[key]
            lines.append(f"| {key} | {_num(s['mean'])} | {_num(s['std'])} | {_num(s['ci95_low'])}-"
                         f"{_num(s['ci95_high'])} |")
    lines.append(f"| pooled Dice (all pixels) | {_num(block.get('pooled_dice'))} | | |")
    if cv:
        lines += ["", "| fold | images | mean Dice | mean IoU |", "| --- | --- | --- | --- |"]
        lines += [f"| {f['fold']} | {f['n']} | {_num(f['dice_mean'])} | {_num(f['iou_mean'])} |" for f in cv["folds"]]
        lines += ["", "The shipped model was then trained on all images: it has no held-out score of its own."]
    for what, record in (("Negatives scored by the fold model that did not see them", (cv or {}).get("negatives")),
                         ("Held-out negatives (never trained or chosen on), scored by this model",
                          metrics.get("negatives_held_out"))):
        if record:
            area = record["area"]
            lines += ["", f"{what}: {record['n']} slices without infection; share of pixels called infection "
                          f"{_num(area['mean'])} (95% CI {_num(area['ci95_low'])}-{_num(area['ci95_high'])}, median "
                          f"{_num(record['median_area'])}, max {_num(record['max_area'])}); "
                          f"{record['slices_with_any']} slices with any, {record['slices_over_1_percent']} with 1 % "
                          "or more."]
    return lines


def render_model_card(card: ModelCard) -> str:
    training = card.training
    lines = [
        f"# {card.name}", "",
        f"> {RESEARCH_USE_NOTICE}", "",
        "## Model", "",
        f"- Task: {card.task}; modality: {card.modality}; architecture: `{card.architecture}`",
        f"- Classes: {', '.join(card.classes)}" + (f"; positive class: {card.positive_class}" if card.positive_class
                                                    else ""),
        f"- Input: greyscale{_window_and_crop(card.preprocessing)}, resized to "
        f"{card.preprocessing.image_size}x{card.preprocessing.image_size}, "
        f"replicated to {card.preprocessing.channels} channels, mean {card.preprocessing.mean}, "
        f"std {card.preprocessing.std}",
    ]
    base = card.extra.get("base_model")
    if isinstance(base, dict):
        lines += [f"- Adapted to {card.extra.get('adapted_to')} on base model `{base.get('name')}` (weights sha256 "
                  f"{str(base.get('sha256'))[:12]}...): {card.training.get('method')}. Its metrics below are "
                  "cross-validated on the local sample (each image scored by a head that never saw its patient)."]
    if card.task == "classification":
        lines.append(f"- Calibration: temperature {card.temperature:.3f} (fitted on validation)")
        for name, point in card.operating_points.items():
            marker = " (default)" if name == card.default_operating_point else ""
            lines.append(f"- Operating point `{name}`{marker}: threshold {point['threshold']:.3f} — {point['rule']} "
                         f"(val sensitivity {_num(point.get('sensitivity'))}, specificity "
                         f"{_num(point.get('specificity'))})")
    lines += ["", "## Intended use", "",
              "Research and education: exploring how CNNs behave on public COVID-19 chest imaging data, and "
              "a starting point for retraining on a hospital's own, properly curated data. Not for diagnosis.", "",
              "## Data", ""] + _data_section(card.data)
    lines += ["", "## Metrics" if card.task == "segmentation" else "## Test metrics", ""]
    if card.task == "segmentation":
        lines += _segmentation_section(card.metrics)
    else:
        lines += _metrics_section(card)
    if card.extra:
        lines += ["", "## Other facts", "", f"```\n{_compact(card.extra)}\n```"]
    lines += ["", "## Training", "",
              f"- Device: {training.get('device')}; duration: {training.get('duration_s')} s; "
              f"git commit: {training.get('git_commit')}",
              f"- Command: `{training.get('command', 'n/a')}`"]
    jitter = training.get("window_jitter")
    if jitter:
        low, high = jitter["width_scale"]
        lines.append(f"- HU window jitter: each training slice re-windowed around the card's HU window, level "
                     f"+-{jitter['level_shift']:g} HU, width x{low:g}-{high:g}")
    if training.get("note"):
        lines.append(f"- Note: {training['note']}")
    lines += ["",
              "## Limitations", "",
              "- Public COVID-19 datasets confound source and label: images of one class often come from one "
              "hospital or from paper figures. Check the per-source rows above; a high overall AUC can come from "
              "recognising the source, not the disease.",
              "- Small test sets: the confidence intervals are wide.",
              "- Validate on your own hospital's images (`scripts/evaluate.py`) before any use.", ""]
    return "\n".join(lines)


def _compact(value: Any, limit: int = 1500) -> str:
    text = json.dumps(value, indent=1, default=str)
    return text if len(text) <= limit else text[:limit] + "\n..."


def _window_and_crop(preprocessing: Preprocessing) -> str:
    """The CT input's fixed HU window and the lung crop, in words ('' for a whole X-ray input)."""
    words = ""
    if preprocessing.hu_window is not None:
        centre, width = preprocessing.hu_window
        words += f" (CT HU through the fixed window L {centre:g} / W {width:g})"
    if preprocessing.lung_crop is not None:
        words += f", cropped to the lungs' box with a {preprocessing.lung_crop:.0%} margin"
        if preprocessing.lung_segmenter is not None:
            name, sha256 = preprocessing.lung_segmenter
            words += f" (lungs found by segmenter `{name}`, weights sha256 {sha256[:12]}...)"
    if preprocessing.equalise:
        words += ", histogram-equalised"
    return words
