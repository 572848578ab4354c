"""Evaluate a classifier on any labelled data: how a hospital validates a model on its own images.

    python scripts/evaluate.py weights/ct-efficientnet-lite0 ../shared/data
    python scripts/evaluate.py weights/xray-efficientnet-lite0 /data/our-hospital --split all --out metrics.json

DATA is the curated root (with ct/ and xray/), a manifest.csv or a class-per-folder tree. By default the
`test` split is evaluated: the manifest's own split column, or the same seeded patient split the
model was trained with (with the manifests its card says were added, split the same way). `--split all`
evaluates every image (an external dataset the model never saw). Metrics use the model's calibration and
default operating point from its card.

Every image is first screened as the Analyze page screens it (`covid_models.analysis.image_checks.screen`, with the
checking models installed beside the checkpoint or in --weights): the headline metrics cover every image, as the card's
do (what the model does when asked), and the `screening` block counts the images refused (not a chest image, or not of
the model's modality) and held back (out of distribution), with their reasons, and states the metrics on the images that
got an answer (what a user is shown).

Besides the metrics: the source probe (can a linear classifier tell the image's source from the network's
features?), the share of the heatmap inside the lungs per class, and for CT models, with `--volumes`, the
distribution of slice probabilities on real DICOM scans (`ct-volumes/`). `--write-card` stores these, and
the test probabilities (for exact figures at any threshold), in the model's card; it refuses unless the
evaluated table is the model's own (same manifest fingerprint).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from covid_models import runtime
from covid_models.imaging.scan import ImageReadError
from covid_models.local.adaptation import reproduce
from covid_models.local.samples import sample_from_folder, sample_from_manifest
from covid_models.local.validation import ValidationError, score_sample
from covid_models.models.checkpoint import CheckpointError, save_card
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier
from covid_models.models.model_card import is_adapted
from covid_models.models.trust import source_probes
from covid_models.training.evaluation import classification_report, format_report, predict_frame
from covid_models.training.manifests import DataError, load_dataset, manifest_hash
from covid_models.training.splits import LeakageError, training_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="model directory (weights/<name>)")
    parser.add_argument("data", type=Path, help="data root, manifest.csv or folder tree")
    parser.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write the metrics as JSON here")
    parser.add_argument("--lung-segmenter", type=Path,
                        help="lung segmentation model for the heatmap check (default: a shipped lung model of the "
                             "same modality, if any); the share of the Grad-CAM heatmap inside the lungs is reported")
    parser.add_argument("--no-cam-check", action="store_true", help="skip the heatmap-inside-lungs check")
    parser.add_argument("--cam-limit", type=int, default=200, help="images per class for the heatmap check")
    parser.add_argument("--volumes", type=Path,
                        help="CT models: a ct-volumes folder (manifest.csv of DICOM series) for the robustness table")
    parser.add_argument("--write-card", action="store_true",
                        help="store the source probe, heatmap shares, volume table and test scores in the card")
    parser.add_argument("--weights", type=Path,
                        help="folder of the models that check each image (the other modality's classifier, the X-ray "
                             "lung segmenter); default: the checkpoint's own folder")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out files that cannot be read (each named, and counted in the report) instead of "
                             "stopping at the first one")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.configure()  # passive OpenMP waiting and the allocator thresholds (covid_models.runtime)
    args = parse_args(argv)
    try:
        classifier = Classifier.load(args.checkpoint)
        card = classifier.card
        if is_adapted(card):
            return evaluate_adapted(classifier, args)
        own_data = False
        if args.split == "all":
            frame = load_dataset(args.data, card.modality)
            frame = frame[frame["label"].isin(card.classes)].reset_index(drop=True)
        else:
            frame = training_table(args.data, card.modality, card.classes, seed=int(card.training.get("seed", 0)),
                                   add_manifests=card.training.get("add_manifests", ()),
                                   extra_train=card.training.get("extra_train", ()))
            own_data = manifest_hash(frame) == card.data.get("manifest_sha256")
            if own_data:
                print(f"data and split identical to the model's training data (manifest {manifest_hash(frame)})")
            frame = frame[frame["split"] == args.split].reset_index(drop=True)
        if args.write_card and not (own_data and args.split == "test"):
            raise DataError("--write-card needs the model's own test split (same data and manifest fingerprint)")
        if frame.empty:
            raise DataError(f"no images with labels {card.classes} in the {args.split} split of {args.data}")
        print(f"evaluating {card.name} on {len(frame)} images ({args.split})")
        skipped: list[tuple[int, str]] | None = [] if args.skip_unreadable else None
        probabilities, features = predict_frame(classifier, frame, args.batch_size, skipped=skipped)
        if skipped:
            for position, reason in skipped:
                print(f"skipped unreadable {frame['image'].iloc[position]}: {reason}", file=sys.stderr)
            frame = frame.drop(index=frame.index[[position for position, _ in skipped]]).reset_index(drop=True)
            print(f"{len(skipped)} unreadable file(s) skipped; evaluating the {len(frame)} others")
        if frame.empty:
            raise DataError("no readable image to evaluate")
    except (CheckpointError, DataError, LeakageError, ImageReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, ImageReadError):
            print("(--skip-unreadable leaves such files out and counts them)", file=sys.stderr)
        return 2
    report = classification_report(frame, probabilities, card.classes, card.positive_class, card.threshold)
    report["source_probe"] = source_probes(features, frame, seed=int(card.training.get("seed", 0)))
    positive = card.classes.index(card.positive_class)
    report["scores"] = {"probability": [round(float(p), 5) for p in probabilities[:, positive]],
                        "positive": [int(label == card.positive_class) for label in frame["label"]],
                        "source": frame["source"].astype(str).tolist()}
    report["model"], report["data"], report["split"] = card.name, str(args.data), args.split
    report["unreadable_skipped"] = len(skipped or [])
    report["screening"] = screening(classifier, frame, probabilities, args.weights or args.checkpoint.resolve().parent)
    report["command"] = "python scripts/evaluate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    segmenter = args.lung_segmenter or shipped_lung_segmenter(card.modality)
    if segmenter is not None and not args.no_cam_check:
        report["cam_inside_lungs"] = cam_inside_lungs(classifier, segmenter, frame, args.cam_limit)
    if args.volumes is not None:
        report["volumes"] = volume_table(classifier, args.volumes)
    print(format_report(report))
    print_screening(report["screening"])
    print_trust(report)
    if args.write_card:
        card.metrics["test"].update({k: report[k] for k in ("source_probe", "scores")})
        for key in ("cam_inside_lungs", "volumes"):
            if key in report:
                card.metrics[key] = {**report[key], "command": report["command"]}
        save_card(args.checkpoint, card)
        print(f"wrote the trust measures and test scores into {args.checkpoint}/card.json")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {args.out}")
    return 0


def screening(classifier: Classifier, frame, probabilities: np.ndarray, weights: Path) -> dict:
    """Every image screened as the Analyze page screens it: counts and reasons of the images refused and held back,
    and the metrics on the images that got an answer (None when fewer than one of each class remain)."""
    from collections import Counter

    from tqdm import tqdm

    from covid_models.analysis.image_checks import REFUSED, check_models, screen
    from covid_models.analysis.report import HELD_BACK
    from covid_models.imaging.io import read_image

    models = check_models(classifier, weights)
    statuses, reasons = [], Counter()
    for path in tqdm(frame["image"], desc="image checks", unit="img"):
        screened = screen(read_image(path), Path(path), classifier, models)
        statuses.append(screened.status)
        if not screened.answered:
            reasons[screened.reason] += 1
    answered = np.array([status == "ok" for status in statuses], dtype=bool)
    card = classifier.card
    rest = frame[answered].reset_index(drop=True)
    metrics = None
    if rest["label"].eq(card.positive_class).any() and rest["label"].ne(card.positive_class).any():
        full = classification_report(rest, probabilities[answered], card.classes, card.positive_class, card.threshold)
        metrics = {key: full[key] for key in ("n", "n_positive", "auc", "auc_ci95", "sensitivity", "specificity")}
    return {"checked": len(statuses), "answered": int(answered.sum()), "refused": statuses.count(REFUSED),
            "held_back": statuses.count(HELD_BACK), "reasons": dict(reasons), "checked_with": models.names,
            "metrics_on_answered": metrics}


def print_screening(block: dict) -> None:
    """How many images the page's checks would have refused or held back, and the metrics on the others."""
    def fmt(value: float | None) -> str:
        return "n/a" if value is None or value != value else f"{value:.3f}"

    print(f"image checks (as on the Analyze page, with {', '.join(block['checked_with'])}): {block['refused']} "
          f"refused, {block['held_back']} held back, {block['answered']} of {block['checked']} answered")
    for reason, count in block["reasons"].items():
        print(f"  {count} x {reason}")
    metrics = block["metrics_on_answered"]
    if metrics is None:
        print("  no metrics on the answered images: they do not hold both classes")
    else:
        ci = metrics["auc_ci95"] or [None, None]
        print(f"  on the {metrics['n']} answered images: AUC {fmt(metrics['auc'])} (95% CI {fmt(ci[0])}-{fmt(ci[1])}), "
              f"sensitivity {fmt(metrics['sensitivity'])}, specificity {fmt(metrics['specificity'])}")


def evaluate_adapted(classifier: Classifier, args: argparse.Namespace) -> int:
    """A head adapted to a local site: its cross-validation run again on the same sample with the card's recipe
    (`adaptation.reproduce`), the recorded and recomputed AUC side by side. DATA is the sample the card names: a
    manifest (its `data.sample.source` kept) or a folder as `scripts/validate_local.py` reads it."""
    card = classifier.card
    sample_spec = card.data.get("sample") or {}
    try:
        if sample_spec.get("kind") == "manifest":
            sample = sample_from_manifest(args.data, card.positive_class, source=sample_spec.get("source"))
        elif sample_spec.get("kind") == "folder":
            sample = sample_from_folder(args.data, card.positive_class)
        else:
            raise DataError(f"{card.name} was fit on an uploaded {sample_spec.get('kind', 'sample')}; unpack it into "
                            "a folder with a labels.csv and refit with scripts/validate_local.py --folder to reproduce "
                            "it")
        print(f"reproducing {card.name} (adapted to {card.extra.get('adapted_to')}) on {len(sample.frame)} images")
        scored = score_sample(classifier, sample)
        result = reproduce(card, scored)
    except (DataError, ImageReadError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    def interval(ci: list | None) -> str:
        return "n/a" if not ci else f"{ci[0]:.3f}-{ci[1]:.3f}"

    print(f"cross-validated AUC recorded in the card {result['recorded_auc']:.3f} "
          f"({interval(result['recorded_auc_ci95'])}) on {result['recorded_n']} images; recomputed "
          f"{result['recomputed_auc']:.3f} ({interval(result['recomputed_auc_ci95'])}) on {result['n']}: "
          + ("reproduced" if result["matches"] else "NOT reproduced"))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=float))
    return 0 if result["matches"] else 1


def print_trust(report: dict) -> None:
    """The source probe, the heatmap shares and the volume table, for people."""
    def probe_line(probe: dict | None) -> str:
        return "n/a" if probe is None else f"AUC {probe['auc']:.3f} on {probe['n']} images ({probe['by_source']})"

    probes = report["source_probe"]
    print(f"source probe (linear, patient-grouped CV on the features; 0.5 = no source information): "
          f"{probe_line(probes['all'])}")
    for label, probe in probes["within_class"].items():
        print(f"  within {label}: {probe_line(probe)}")
    if "cam_inside_lungs" in report:
        print("share of the Grad-CAM heatmap inside the lungs (mean per class):")
        for label, value in report["cam_inside_lungs"].items():
            if isinstance(value, dict):
                sources = ", ".join(f"{source} {v['mean']:.3f} (n={v['n']})"
                                    for source, v in value.get("by_source", {}).items())
                print(f"  {label:<10} {value['mean']:.3f} (n={value['n']}; {sources})")
    for volume in report.get("volumes", {}).get("scans", []):
        print(f"scan {volume['volume']} ({volume['label']}): scan-level {volume['scan_probability']}, "
              f"slice probabilities median {volume['slice_median']} / p90 {volume['slice_p90']} / max "
              f"{volume['slice_max']} over {volume['slices_scored']} lung slices, {volume['flagged_share']:.0%} "
              f"at or above the operating point")


def volume_table(classifier: Classifier, folder: Path) -> dict:
    """Per-scan distribution of slice probabilities on real DICOM CT series (HU through the card's window).

    Slices of a COVID scan are not labelled one by one, so this is a robustness table, not a slice AUC.
    """
    import pandas as pd

    from covid_models.analysis.scan_analysis import analyse_scan
    from covid_models.imaging.volumes import read_volume

    manifest = pd.read_csv(folder / "manifest.csv")
    scans = []
    for row in manifest[manifest["format"] == "dicom-series"].itertuples():
        result = analyse_scan(read_volume(folder / row.path), classifier)
        scored = result.slice_probabilities[np.isfinite(result.slice_probabilities)]
        scans.append({
            "volume": row.volume, "label": row.label, "source": row.source, "slices_scored": int(scored.size),
            "scan_probability": None if result.scan_probability is None else round(result.scan_probability, 4),
            "slice_median": round(float(np.median(scored)), 4), "slice_p90": round(float(np.quantile(scored, 0.9)), 4),
            "slice_max": round(float(scored.max()), 4),
            "flagged_share": float((scored >= classifier.card.threshold).mean()),
            "out_of_distribution_share": float(result.slice_out_of_distribution[
                np.isfinite(result.slice_probabilities)].mean()),
        })
    return {"scans": scans, "rule": result.rule if scans else None,
            "note": "one COVID and two non-COVID scans: a smoke test of real HU input, not an evaluation"}


def shipped_lung_segmenter(modality: str) -> Path | None:
    """A lung segmentation model of `modality` in the repository's weights/, if one is shipped."""
    weights = Path(__file__).resolve().parents[1] / "weights"
    found = [d for d, c in discover_models(weights, task="segmentation", modality=modality) if c.classes == ["lungs"]]
    return found[0] if found else None


def cam_inside_lungs(classifier: Classifier, segmenter_dir: Path, frame, limit: int) -> dict[str, dict[str, float]]:
    """Mean share of the heatmap mass inside the predicted lung mask, per true class and within it per source (the
    shortcut check), from the Analyze page's own analysis (`covid_models.analysis.image_analysis.analyse`); unreadable
    files and films whose lung mask is implausible (no share is given for them) are left out."""
    from tqdm import tqdm

    from covid_models.analysis.image_analysis import analyse
    from covid_models.imaging.io import read_image
    from covid_models.models.segmentation import Segmenter

    segmenter = Segmenter.load(segmenter_dir)
    sample = frame.groupby("label", group_keys=False).head(limit)
    shares: dict[str, dict[str, list[float]]] = {}
    rows = list(zip(sample["image"], sample["label"], sample["source"].astype(str), strict=True))
    for path, label, source in tqdm(rows, desc="heatmaps", unit="img"):
        try:
            scan = read_image(path)
        except ImageReadError:
            continue
        share = analyse(scan, [classifier], [segmenter]).shares.get("lungs")  # None: an implausible lung mask
        if share is not None:
            shares.setdefault(label, {}).setdefault(source, []).append(share)
    result = {}
    for label, by_source in shares.items():
        pooled = [share for values in by_source.values() for share in values]
        result[label] = {"mean": float(np.nanmean(pooled)), "n": len(pooled),
                         "by_source": {source: {"mean": float(np.nanmean(v)), "n": len(v)}
                                       for source, v in sorted(by_source.items())}}
    return result


if __name__ == "__main__":
    sys.exit(main())
