"""Validate, recalibrate or adapt a shipped model on a hospital's own labelled sample.

    python scripts/validate_local.py validate --model weights/xray-efficientnet-lite0 --zip sample.zip --site Elsewhere
    python scripts/validate_local.py recalibrate --model weights/xray-efficientnet-lite0 --folder /data/local
    python scripts/validate_local.py validate --scans /data/local-ct --labels /data/local-ct/labels.csv
    python scripts/validate_local.py adapt --model weights/xray-efficientnet-lite0 \\
        --manifest ../shared/data/xray --source ieee8023 --site ieee8023 \\
        --write weights/xray-efficientnet-lite0-adapted-ieee8023 --out runs/local/ieee8023.json

The sample: `--zip` (images + a CSV `file,label[,patient_id,view,site]`), `--dicom DIR --labels CSV` (CSV keyed by
SOPInstanceUID or file), `--folder` (a manifest.csv, a labels.csv or class sub-folders) or `--manifest` (the shared
data's format; `--source` keeps one source). Labels are the model's positive class against everything else.
Whole CT scans: `--scans` (a zip with one folder, nested zip or NIfTI file per scan and a CSV
`scan,label[,patient_id,site,manufacturer]`, or such a folder with `--labels CSV`, default its labels.csv), validated
by scan-level label through the CT scan analysis (`--model`/`--segmenter`: default the first CT models found).

`validate`: ROC with a patient-bootstrap interval, sensitivity / specificity / PPV / NPV at the card's operating
point, calibration, per view / manufacturer / site, the chest-image check and out-of-distribution shares, and the
confound check (metadata alone predicting the label; the model within each view). No AUC headline below 10
patients per class. `recalibrate` adds the temperature and operating point refit, cross-validated. `adapt` adds a
logistic head on the model's frozen features, patient-grouped cross-validated, written as a model folder
(`--write`) whose card pins the base model by name and sha256.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from covid_models import runtime
from covid_models.imaging.scan import ImageReadError
from covid_models.local.samples import (
    LocalSample,
    sample_from_dicom,
    sample_from_folder,
    sample_from_manifest,
    sample_from_zip,
    unseen_by,
)
from covid_models.local.validation import ValidationError, confound_check, recalibrate, score_sample, validate
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier
from covid_models.training.manifests import DataError

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("validate", "recalibrate", "adapt"))
    parser.add_argument("--model", type=Path, help="the shipped model folder (weights/<name>); --scans: the CT "
                                                   "classifier (default: the first found)")
    parser.add_argument("--segmenter", type=Path, help="--scans: the CT infection segmenter (default: the first found)")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--zip", type=Path, help="a zip of images with one CSV of labels")
    given.add_argument("--dicom", type=Path, help="a folder of DICOM files (with --labels)")
    given.add_argument("--folder", type=Path, help="a folder with manifest.csv, labels.csv or class sub-folders")
    given.add_argument("--manifest", type=Path, help="a manifest.csv (or its folder) in the shared data's format")
    given.add_argument("--scans", type=Path, help="whole CT scans: a zip, or a folder of scan folders / NIfTI files")
    parser.add_argument("--labels", type=Path, help="--dicom: the CSV keyed by SOPInstanceUID or file; --scans: the "
                                                    "CSV scan,label[,patient_id,site,manufacturer]")
    parser.add_argument("--source", help="--manifest: keep the rows of this source only")
    parser.add_argument("--unseen-by-model", type=Path, metavar="DATA_ROOT",
                        help="leave out the images the model was trained or calibrated on (its train and validation "
                             "splits, rebuilt from DATA_ROOT with the card's recipe): for a sample drawn from its "
                             "training data")
    parser.add_argument("--site", help="the site's name (default: the source, else 'local')")
    parser.add_argument("--no-image-check", action="store_true",
                        help="skip the chest-image check (it runs the installed guards and lung model on every image)")
    parser.add_argument("--write", type=Path, help="adapt: write the adapted model folder here")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def read_sample(args: argparse.Namespace, positive_class: str, modality: str) -> LocalSample:
    if args.zip:
        return sample_from_zip(args.zip.read_bytes(), positive_class)
    if args.dicom:
        if args.labels is None:
            raise DataError("--dicom needs --labels, the CSV keyed by SOPInstanceUID or file")
        files = [(str(p.relative_to(args.dicom)), p.read_bytes()) for p in sorted(args.dicom.rglob("*")) if p.is_file()]
        return sample_from_dicom(files, args.labels.read_bytes(), positive_class)
    if args.folder:
        return sample_from_folder(args.folder, positive_class)
    return sample_from_manifest(args.manifest, positive_class, source=args.source, modality=modality)


def guards_and_lungs(modality: str) -> tuple[dict[str, Classifier], object]:
    """One shipped classifier per modality (their OOD guards) and the X-ray lung model: the chest-image check."""
    from covid_models.models.segmentation import Segmenter

    guards = {}
    for directory, card in discover_models(WEIGHTS, "classification"):
        if card.modality not in guards and "base_model" not in card.extra:
            guards[card.modality] = Classifier.load(directory)
    lungs = [d for d, c in discover_models(WEIGHTS, "segmentation", "xray") if c.classes == ["lungs"]]
    return guards, (Segmenter.load(lungs[0]) if lungs else None)


def fmt(value: object) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def interval(values: list | None) -> str:
    return "n/a" if not values else f"{fmt(values[0])}-{fmt(values[1])}"


def print_validation(report: dict, positive: str) -> None:
    patients = report["patients"]
    print(f"sample: {report['n']} images ({report['n_positive']} {positive}); patients {patients}; "
          f"{report['unreadable']} unreadable left out")
    if report["headline"]:
        print(f"  AUC {fmt(report['auc'])} (95% CI {interval(report['auc_ci95'])}, patient bootstrap)")
    else:
        print(f"  no AUC headline: {report['no_headline_because']}; interval only: 95% CI "
              f"{interval(report['auc_ci95'])}")
    print(f"  at the card's operating point {report['threshold']:.3f}: "
          + ", ".join(f"{name} {fmt(report[key])} ({interval(report[key + '_ci95'])})" for name, key in (
              ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("PPV", "precision"), ("NPV", "npv"))))
    print(f"  calibration: ECE {fmt(report['ece'])}, Brier {fmt(report['brier'])}; out-of-distribution "
          f"{report['out_of_distribution_share']:.1%}; chest-image check refused "
          + ("not run" if (refused := report["image_check_refused_share"]) is None else f"{refused:.1%}"))
    for row in report["subgroups"]:
        print(f"  {row['by']:<12} {row['value']:<16} images {row['images']:<4} positive {row['positive']:<4} "
              f"patients {row['patients']:<4} AUC {fmt(row['auc'])} ({interval(row['auc_ci95'])}) "
              f"sens {fmt(row['sensitivity'])} spec {fmt(row['specificity'])}")


def print_confounds(confounds: dict) -> None:
    print(f"confound check ({confounds['folds']}-fold patient-grouped CV of a logistic regression on metadata alone):")
    for row in confounds["metadata"]:
        print(f"  {row['predictor']:<24} predicts the label with AUC {fmt(row['auc'])} ({interval(row['auc_ci95'])})")
    print(f"  {'the model':<24} AUC {fmt(confounds['model_auc'])} ({interval(confounds['model_auc_ci95'])})")
    for row in confounds["model_within_view"]:
        print(f"  model within view {row['view']:<10} {row['positive_patients']} vs {row['other_patients']} patients: "
              f"AUC {fmt(row['model_auc'])} ({interval(row['model_auc_ci95'])})")


def print_scans(scored, report: dict) -> None:
    """The per-scan table, the held-back scans and the scan-level figures."""
    from covid_models.local.scans import scan_table

    print(scan_table(scored).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}"))
    print(f"sample: {report['scans']} scans, {report['read']} with a result; patients with a result "
          f"{report['patients']}; {len(report['unreadable'])} unreadable, {len(report['held_back'])} held back "
          "(no result: not counted as negative)")
    for row in report["held_back"]:
        print(f"  held back {row['scan']} ({row['label']}): {row['reason']}")
    if not report["headline"]:
        print(f"  no AUC headline: {report['no_headline_because']}; intervals only")
    for name, title in (("burden", "lesion burden (% of lung)"), ("secondary", "secondary classifier probability")):
        block = report["scores"].get(name)
        if block is None:
            print(f"  {title}: no scan has one")
            continue
        value = f"AUC {fmt(block['auc'])} " if report["headline"] and block["headline"] else "interval only: "
        print(f"  {title}: {value}95% CI {interval(block['auc_ci95'])} (patient bootstrap, {block['n']} scans)")
    pattern = report["pattern"]
    if pattern is None:
        print(f"  pattern reading: not read on any scan ({report['pattern_not_read']} without a reading)")
    else:
        print(f"  pattern reading 'suggestive of COVID-19' ({pattern['scans']} scans): " + ", ".join(
            f"{name} {fmt(pattern[key])} ({interval(pattern[key + '_ci95'])})" for name, key in (
                ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("PPV", "precision"),
                ("NPV", "npv"))))
    if report["confounds"] is None:
        print(f"confound check: {report['confounds_error']}")
    else:
        print_confounds(report["confounds"])
    model = report["quantitative_model"]
    if model is None:
        print(f"quantitative model: {report['quantitative_model_error']}")
    else:
        print(f"quantitative model (logistic on {', '.join(model['features'])}; {model['folds']}-fold "
              f"patient-grouped CV): AUC {fmt(model['auc'])} (95% CI {interval(model['auc_ci95'])})")


def validate_scans_command(args: argparse.Namespace, command: str) -> dict:
    """`--scans`: every scan analysed once as on the CT scan page, then the scan-level validation."""
    from covid_models.analysis.scan_analysis import scan_models
    from covid_models.local.scans import scan_sample_from_folder, scan_sample_from_zip, score_scans, validate_scans
    from covid_models.models.segmentation import Segmenter

    if args.action != "validate":
        raise ValidationError("for whole CT scans only 'validate' is offered: it includes the cross-validated "
                              "quantitative model; there is no classifier head to recalibrate or adapt")
    classifiers, segmenters = scan_models(WEIGHTS)
    classifier_dir = args.model or (classifiers[0] if classifiers else None)
    if classifier_dir is None:
        raise DataError(f"no CT classifier in {WEIGHTS}")
    segmenter_dir = args.segmenter or (segmenters[0] if segmenters else None)
    classifier = Classifier.load(classifier_dir)
    segmenter = Segmenter.load(segmenter_dir) if segmenter_dir else None
    if args.scans.is_dir():
        sample = scan_sample_from_folder(args.scans, classifier.card.positive_class, args.labels)
    else:
        sample = scan_sample_from_zip(args.scans.read_bytes(), classifier.card.positive_class)
    for note in sample.notes:
        print(f"note: {note}")
    print(f"analysing {len(sample.frame)} scans with {classifier.name}"
          + (f" and {segmenter.name}" if segmenter else " (no infection model: no burden)") + "...", flush=True)
    last = [-1]

    def progress(fraction: float, what: str) -> None:
        if int(fraction * 20) != last[0]:
            last[0] = int(fraction * 20)
            print(f"  {fraction:.0%} {what}", flush=True)

    scored = score_scans(sample, classifier, segmenter, progress=progress)
    for name, reason in scored.unreadable:
        print(f"skipped unreadable {name}: {reason}", file=sys.stderr)
    report = validate_scans(scored, seed=args.seed)
    print_scans(scored, report)
    from covid_models.local.scans import scan_table

    return {"model": classifier.name, "segmenter": None if segmenter is None else segmenter.name, "command": command,
            "scans": scan_table(scored).astype(object).where(lambda f: f.notna(), None).to_dict(orient="records"),
            "validation": report}


def write_report(path: Path | None, report: dict) -> None:
    """The JSON report, where --out asks for one."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    runtime.configure()
    args = parse_args(argv)
    command = "python scripts/validate_local.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.scans is not None:
        try:
            report = validate_scans_command(args, command)
        except (CheckpointError, DataError, ImageReadError, ValidationError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        write_report(args.out, report)
        return 0
    if args.model is None:
        print("error: --model is needed (the shipped model folder)", file=sys.stderr)
        return 2
    try:
        classifier = Classifier.load(args.model)
        card = classifier.card
        sample = read_sample(args, card.positive_class, card.modality)
        if args.unseen_by_model is not None:
            sample = unseen_by(card, args.unseen_by_model, sample)
        for note in sample.notes:
            print(f"note: {note}")
        guards, lungs = ({}, None) if args.no_image_check else guards_and_lungs(card.modality)
        print(f"scoring {len(sample.frame)} images with {card.name}...", flush=True)
        scored = score_sample(classifier, sample, guards=guards, lung_segmenter=lungs)
        for name, reason in scored.unreadable:
            print(f"skipped unreadable {name}: {reason}", file=sys.stderr)
        report = {"model": card.name, "command": command, "validation": validate(scored, card.threshold)}
        print_validation(report["validation"], card.positive_class)
        report["confounds"] = confound_check(scored, seed=args.seed)
        print_confounds(report["confounds"])
        if args.action in ("recalibrate", "adapt"):
            report["recalibration"] = recalibration = recalibrate(scored, card.temperature, seed=args.seed)
            cv = recalibration["cross_validated"]
            print(f"recalibrated: temperature {card.temperature:.3f} -> {recalibration['temperature']:.3f}, operating "
                  f"point {card.threshold:.3f} -> {recalibration['threshold']:.3f}; cross-validated sensitivity "
                  f"{fmt(cv['sensitivity'])} ({interval(cv['sensitivity_ci95'])}), specificity "
                  f"{fmt(cv['specificity'])} ({interval(cv['specificity_ci95'])}); ECE "
                  f"{fmt(recalibration['ece_before'])} before, {fmt(recalibration['ece_after_in_sample'])} after "
                  "(in sample)")
        if args.action == "adapt":
            from covid_models.local.adaptation import adapt, adapted_card, save_adapted

            site = args.site or args.source or "local"
            adaptation = adapt(scored, seed=args.seed)
            result = adaptation.report
            point = result["cross_validated_operating_point"]
            print(f"adapted head ({result['folds']}-fold patient-grouped CV, reported performance is the "
                  f"cross-validated one): AUC {fmt(result['auc'])} (95% CI {interval(result['auc_ci95'])}); fold AUCs "
                  f"{[round(a, 3) if a is not None else None for a in result['fold_aucs']]}; sensitivity "
                  f"{fmt(point['sensitivity'])} ({interval(point['sensitivity_ci95'])}), specificity "
                  f"{fmt(point['specificity'])} ({interval(point['specificity_ci95'])}) at thresholds chosen on the "
                  "other folds")
            report["adaptation"] = {k: v for k, v in result.items() if k != "roc"}
            if args.write:
                adapted = adapted_card(card, adaptation, scored, site=site, base_validation=report["validation"],
                                       confounds=report["confounds"], command=command)
                kind = "manifest" if args.manifest else "folder" if args.folder else "zip" if args.zip else "dicom"
                adapted.data["sample"] = {"kind": kind, "source": args.source}
                save_adapted(args.write, adapted, adaptation)
                print(f"wrote {args.write} ({adapted.name}); it loads on {card.name} sha256 {card.sha256[:12]}...")
    except (CheckpointError, DataError, ImageReadError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
