"""Validate on your own images: a shipped model on a hospital's labelled sample, the confound check, recalibration,
and an adapted head (`covid_models.local.validation`, `covid_models.local.adaptation`; the page only lays them out).

Results belong to the visitor who ran them: they live in this browser session's state, the adapted model folder's
files too (nothing is left on the server's disk), offered as a zip download. Only an administrator (the review
page's token) can publish an adapted folder into the shared weights folder, where the Analyze, Review and Model
performance pages list it as "X-ray, adapted to <site>".

Whole CT scans (a zip of scans with a CSV, or a folder of them) are validated by scan-level label through the CT
scan analysis (`covid_models.local.scans`): the per-scan table, the held-back scans, the burden and the secondary
probability as scores, the pattern reading as the operating point, the confound check and the cross-validated
quantitative model.
"""
from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import streamlit as st

from covid_models.analysis.figures import calibration_figure, roc_figure
from covid_models.imaging.scan import ImageReadError
from covid_models.local.adaptation import AdaptationError, adapt, adapted_card, save_adapted
from covid_models.local.samples import LocalSample, sample_from_dicom, sample_from_folder, sample_from_zip
from covid_models.local.scans import (
    ScanSample,
    scan_sample_from_folder,
    scan_sample_from_zip,
    scan_table,
    score_scans,
    validate_scans,
)
from covid_models.local.validation import (
    MIN_PATIENTS,
    ValidationError,
    confound_check,
    recalibrate,
    score_sample,
    validate,
)
from covid_models.models.checkpoint import CheckpointError
from covid_models.models.model_card import ModelCard, display_name, is_adapted, modality_name
from covid_models.reviews.identity import admin_token_matches
from covid_models.training.data_folders import typed_folders_allowed
from covid_models.training.manifests import DataError
from pages.review_sign_in import admin_token
from pages.shared import (
    enter_through_app,
    held,
    hold_for,
    infection_models,
    load_classifier,
    load_segmenter,
    model_cards,
    refresh_model_list,
    show_error,
    typed_folder,
    weights_dir,
)

enter_through_app()

RESULT_KEY, ADAPTED_KEY = "validate-result", "validate-adapted"
INPUTS = {"zip": "A zip of images with a CSV (file,label[,patient_id,view,site])",
          "dicom": "DICOM files with a CSV keyed by SOPInstanceUID or file",
          "folder": "A folder on this server (manifest.csv, labels.csv or class sub-folders)",
          "scans-zip": "Whole CT scans: a zip with one folder, zip or NIfTI file per scan and a CSV "
                       "(scan,label[,patient_id,site,manufacturer])",
          "scans-folder": "Whole CT scans: a folder on this server (scan folders or NIfTI files and a labels.csv)"}
SCAN_INPUTS = ("scans-zip", "scans-folder")
FOLDER_INPUTS = ("folder", "scans-folder")


def number(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def interval(values: list | None) -> str:
    return "n/a" if not values or None in values else f"{values[0]:.3f}–{values[1]:.3f}"


def read_input(choice: str, positive_class: str) -> LocalSample | ScanSample | None:
    """The sample the visitor gave, or None while it is incomplete."""
    if choice == "scans-zip":
        upload = st.file_uploader("Zip of CT scans and one CSV", type=["zip"], key="validate-scans-zip")
        return None if upload is None else scan_sample_from_zip(upload.getvalue(), positive_class)
    if choice == "zip":
        upload = st.file_uploader("Zip of images and one CSV", type=["zip"], key="validate-zip")
        return None if upload is None else sample_from_zip(upload.getvalue(), positive_class)
    if choice == "dicom":
        files = st.file_uploader("DICOM files", accept_multiple_files=True, key="validate-dicom") or []
        table = st.file_uploader("CSV of labels", type=["csv"], key="validate-dicom-csv")
        if not files or table is None:
            return None
        return sample_from_dicom([(f.name, f.getvalue()) for f in files], table.getvalue(), positive_class)
    text = st.text_input("Folder", key="validate-folder", help="Inside the folders this server allows "
                                                             "(COVID_DATA_ROOTS).")
    folder, message = typed_folder(text)
    if message:
        show_error(message)
    if folder is None:
        return None
    return scan_sample_from_folder(folder, positive_class) if choice == "scans-folder" else \
        sample_from_folder(folder, positive_class)


def check_models() -> tuple[dict[str, str], str | None]:
    """The chest-image check's models, as on the Analyze page: the first shipped classifier of each modality (its
    out-of-distribution guard) and the X-ray lung segmenter, by directory."""
    guards: dict[str, str] = {}
    for directory, card in model_cards("classification"):
        if not is_adapted(card):
            guards.setdefault(card.modality, directory)
    lungs = next((d for d, card in model_cards("segmentation", "xray") if card.classes == ["lungs"]), None)
    return guards, lungs


def run_validation(directory: str, sample: LocalSample, site: str) -> dict:
    """Score (with the chest-image check), validate, check confounds and recalibrate, with a progress bar; the
    result for this session only."""
    classifier = load_classifier(directory)
    guard_dirs, lungs_dir = check_models()
    models = {directory: classifier, **{d: load_classifier(d) for d in guard_dirs.values()}}
    lungs = load_segmenter(lungs_dir) if lungs_dir else None
    if lungs is not None:
        models[lungs_dir] = lungs
    bar = st.progress(0.0, text="Scoring the sample...")
    try:
        scored = score_sample(classifier, sample, guards={m: models[d] for m, d in guard_dirs.items()},
                              lung_segmenter=lungs, hold=hold_for(models),
                              progress=lambda fraction, text: bar.progress(min(1.0, fraction), text=text))
    finally:
        bar.empty()
    result = {"directory": directory, "site": site, "scored": scored, "notes": sample.notes,
              "validation": validate(scored, classifier.card.threshold)}
    try:
        result["confounds"] = confound_check(scored)
    except ValidationError as error:
        result["confounds_error"] = str(error)
    try:
        result["recalibration"] = recalibrate(scored, classifier.card.temperature)
    except ValidationError as error:
        result["recalibration_error"] = str(error)
    return result


def run_scan_validation(directory: str, segmenter_dir: str | None, sample: ScanSample, site: str) -> dict:
    """Analyse each scan once (as on the CT scan page, under the models' locks scan by scan) and validate by
    scan-level label; the result for this session only."""
    classifier = load_classifier(directory)
    models = {directory: classifier}
    segmenter = load_segmenter(segmenter_dir) if segmenter_dir else None
    if segmenter is not None:
        models[segmenter_dir] = segmenter
    bar = st.progress(0.0, text="Analysing the scans...")

    def hold(model: object) -> ExitStack:
        """Both models' locks, in the CT scan page's order (sorted by directory), taken with the classifier's."""
        stack = ExitStack()
        if model is classifier:
            for folder in sorted(models):
                stack.enter_context(held(folder))
        return stack

    try:
        scored = score_scans(sample, classifier, segmenter, hold=hold,
                             progress=lambda fraction, text: bar.progress(min(1.0, fraction), text=text))
    finally:
        bar.empty()
    return {"kind": "scans", "directory": directory, "site": site, "scored": scored, "notes": sample.notes,
            "segmenter": None if segmenter is None else segmenter.name, "validation": validate_scans(scored)}


def sample_header(result: dict, title: str, unit: str) -> None:
    """The title, the reader's notes and the items that could not be read, above either kind of validation."""
    st.subheader(title)
    for note in result["notes"]:
        st.caption(note)
    unreadable = result["scored"].unreadable
    if unreadable:
        st.warning(f"{len(unreadable)} {unit} could not be read and were left out: "
                   + "; ".join(f"{n}: {r}" for n, r in unreadable[:5]))


def show_scan_validation(result: dict, name: str) -> None:
    """The per-scan table, the held-back scans and the scan-level figures, laid out like the images' blocks."""
    report, scored = result["validation"], result["scored"]
    positive = scored.positive_class
    sample_header(result, f"{name} on your scans", "scan(s)")
    st.dataframe(scan_table(scored), hide_index=True, key="validate-scan-table")
    if report["held_back"]:
        st.warning(f"{len(report['held_back'])} scan(s) held back (no result; not counted as negative): "
                   + "; ".join(f"{row['scan']}: {row['reason']}" for row in report["held_back"][:5]))
    st.markdown(f"{report['read']} scans with a result: {report['patients'][positive]} {positive} patients, "
                f"{report['patients']['other']} other patients (minimum for an AUC headline: {MIN_PATIENTS} per "
                "class).")
    if not report["headline"]:
        st.warning(f"Too few scans for an AUC: {report['no_headline_because']}. Intervals only.",
                   icon=":material/info:")
    columns = st.columns(2)
    for column, (key, label) in zip(columns, (("burden", "Lesion burden AUC"),
                                              ("secondary", "Secondary classifier AUC")), strict=True):
        block = report["scores"].get(key)
        if block is None:
            column.metric(label, "n/a", help="no scan has this reading")
        else:
            column.metric(label, number(block["auc"]) if report["headline"] else "not shown",
                          help=f"95% CI {interval(block['auc_ci95'])}, patient bootstrap, {block['n']} scans")
    pattern = report["pattern"]
    st.markdown("**Operating point: the pattern reading 'suggestive of COVID-19'**")
    if pattern is None:
        st.caption("No scan has a pattern reading (no infection model, or its card has no fitted threshold).")
    else:
        columns = st.columns(4)
        for column, (label, key) in zip(columns, (("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
                                                  ("PPV", "precision"), ("NPV", "npv")), strict=True):
            column.metric(label, number(pattern[key]), help=f"95% CI {interval(pattern[key + '_ci95'])}, patient "
                                                            f"bootstrap, {pattern['scans']} scans")
    burden = report["scores"].get("burden")
    if burden and burden["subgroups"]:
        st.markdown("**Lesion burden by manufacturer and site**")
        st.dataframe(pd.DataFrame([{**row, "auc": number(row["auc"]), "auc_ci95": interval(row["auc_ci95"])}
                                   for row in burden["subgroups"]]), hide_index=True, key="validate-subgroups")
    show_confounds({"confounds": report["confounds"], "confounds_error": report.get("confounds_error", "")})
    st.markdown("**A logistic model on the quantitative features (patient-grouped cross-validation)**")
    model = report["quantitative_model"]
    if model is None:
        st.caption(report.get("quantitative_model_error", ""))
    else:
        st.markdown(f"Cross-validated AUC {number(model['auc'])} (95% CI {interval(model['auc_ci95'])}), "
                    f"{model['folds']} folds, on {', '.join(model['features'])}.")


def show_validation(result: dict, name: str) -> None:
    report, scored = result["validation"], result["scored"]
    positive = scored.positive_class
    sample_header(result, f"{name} on your sample", "file(s)")
    st.markdown(f"{report['n']} images: {report['patients'][positive]} {positive} patients, "
                f"{report['patients']['other']} other patients (minimum for an AUC headline: {MIN_PATIENTS} per "
                "class).")
    columns = st.columns(5)
    if report["headline"]:
        columns[0].metric("AUC", number(report["auc"]),
                          help=f"95% CI {interval(report['auc_ci95'])}, patient bootstrap")
    else:
        columns[0].metric("AUC", "not shown", help="too few patients for a headline")
        st.warning(f"No AUC headline: {report['no_headline_because']}. Its 95% interval is "
                   f"{interval(report['auc_ci95'])}.", icon=":material/info:")
    for column, (label, key) in zip(columns[1:], (("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
                                                   ("PPV", "precision"), ("NPV", "npv")), strict=True):
        column.metric(label, number(report[key]), help=f"95% CI {interval(report[key + '_ci95'])} at the card's "
                                                       f"operating point {report['threshold']:.3f}")
    st.caption(f"Intervals (patient bootstrap): AUC {interval(report['auc_ci95'])}; "
               + "; ".join(f"{k} {interval(report[k + '_ci95'])}" for k in ("sensitivity", "specificity"))
               + f". Out-of-distribution share {report['out_of_distribution_share']:.0%}"
               + ("" if report["image_check_refused_share"] is None
                  else f"; refused by the chest-image check {report['image_check_refused_share']:.0%}") + ".")
    left, right = st.columns(2)
    if report.get("roc"):
        left.plotly_chart(roc_figure([(name, report)], current={name: report["threshold"]}), key="validate-roc")
    right.plotly_chart(calibration_figure(report["reliability"], report.get("ece")), key="validate-calibration")
    if report["subgroups"]:
        st.markdown("**By view, manufacturer and site**")
        st.dataframe(pd.DataFrame([{**row, "auc": number(row["auc"]), "auc_ci95": interval(row["auc_ci95"]),
                                    "sensitivity": number(row["sensitivity"]),
                                    "specificity": number(row["specificity"])} for row in report["subgroups"]]),
                     hide_index=True, key="validate-subgroups")
    show_confounds(result)
    recalibration = result.get("recalibration")
    st.markdown("**Recalibration**")
    if recalibration is None:
        st.caption(result.get("recalibration_error", ""))
    else:
        cv = recalibration["cross_validated"]
        st.markdown(f"Temperature {recalibration['previous_temperature']:.3f} → {recalibration['temperature']:.3f}; "
                    f"operating point {report['threshold']:.3f} → {recalibration['threshold']:.3f}. Cross-validated "
                    f"({cv['folds']} folds): sensitivity {number(cv['sensitivity'])} "
                    f"({interval(cv['sensitivity_ci95'])}), specificity {number(cv['specificity'])} "
                    f"({interval(cv['specificity_ci95'])}).")


def show_confounds(result: dict) -> None:
    st.markdown("**Confound check: can the metadata alone tell the label?**")
    confounds = result.get("confounds")
    if confounds is None:
        st.caption(result.get("confounds_error", ""))
        return
    rows = [{"predictor": row["predictor"], "AUC": number(row["auc"]), "95% CI": interval(row["auc_ci95"])}
            for row in confounds["metadata"]]
    rows.append({"predictor": "the model", "AUC": number(confounds["model_auc"]),
                 "95% CI": interval(confounds["model_auc_ci95"])})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="validate-confounds")
    if confounds["model_within_view"]:
        st.dataframe(pd.DataFrame([{**row, "model_auc": number(row["model_auc"]),
                                    "model_auc_ci95": interval(row["model_auc_ci95"])}
                                   for row in confounds["model_within_view"]]), hide_index=True,
                     key="validate-within-view")
    st.caption(confounds["note"])


def adapt_section(result: dict) -> None:
    st.subheader("Adapt: a new head on the model's frozen features")
    st.caption("A logistic regression on the model's penultimate features, fit with patient-grouped "
               "cross-validation; the performance shown is the cross-validated one, never the fit's.")
    if st.button("Fit an adapted head", key="validate-adapt", type="primary"):
        bar = st.progress(0.0, text="Cross-validating...")
        try:
            adaptation = adapt(result["scored"], progress=lambda f, text: bar.progress(min(1.0, f), text=text))
        except AdaptationError as error:
            show_error(str(error))
            return
        finally:
            bar.empty()
        base = load_classifier(result["directory"]).card
        card = adapted_card(base, adaptation, result["scored"], site=result["site"],
                            base_validation=result["validation"], confounds=result.get("confounds"),
                            command=f"Validate page, {len(result['scored'].frame)} images")
        st.session_state[ADAPTED_KEY] = {"files": adapted_files(card, adaptation), "card": card}
    adapted = st.session_state.get(ADAPTED_KEY)
    if adapted is None:
        return
    card = adapted["card"]
    test = card.metrics["test"]
    point = test["cross_validated_operating_point"]
    st.success(f"{display_name(card)}: cross-validated AUC {number(test['auc'])} (95% CI "
               f"{interval(test['auc_ci95'])}); sensitivity {number(point['sensitivity'])}, specificity "
               f"{number(point['specificity'])} at thresholds chosen on the other folds.", icon=":material/tune:")
    st.download_button("Download the adapted model folder (zip)", adapted["files"]["zip"],
                       file_name=f"{card.name}.zip", mime="application/zip", key="validate-download")
    publish_section(adapted["files"]["members"], card)


def adapted_files(card, adaptation) -> dict:
    """The adapted model folder's files held in this browser session (and its zip, built once), so that nothing is
    left on the server's disk by a visitor who fits a head and leaves."""
    with tempfile.TemporaryDirectory(prefix="adapted-") as scratch:
        folder = save_adapted(Path(scratch) / card.name, card, adaptation)
        members = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(f"{card.name}/{name}", data)
    return {"members": members, "zip": buffer.getvalue()}


def publish_section(members: dict[str, bytes], card) -> None:
    """Write the adapted folder into the shared weights folder: administrators only."""
    configured = admin_token()
    if not configured:
        st.caption("Publishing into the shared weights folder needs an administrator token (COVID_REVIEW_ADMIN_TOKEN).")
        return
    typed = st.text_input("Administrator token (to publish for every user)", type="password", key="validate-admin")
    if not st.button("Publish into the shared weights folder", key="validate-publish"):
        return
    if not admin_token_matches(typed, configured):
        show_error("The administrator token is wrong; nothing was published.")
        return
    target = weights_dir() / card.name
    if target.exists():
        show_error(f"A model folder named {card.name} is already installed; it was left as it is.")
        return
    scratch = Path(tempfile.mkdtemp(prefix=f".{card.name}-", dir=weights_dir()))
    try:  # written beside, then renamed: model discovery never sees half a folder
        for name, data in members.items():
            (scratch / name).write_bytes(data)
        scratch.rename(target)
    except OSError as error:
        shutil.rmtree(scratch, ignore_errors=True)
        show_error(f"Nothing was published: the weights folder could not be written ({error.strerror or error}).")
        return
    refresh_model_list()
    st.success(f"Published: {display_name(card)} is now offered on the Analyze, Review and Model performance pages.")


def main() -> None:
    st.title("Validate on your own images")
    st.caption("Before using any AI tool, measure it on a labelled sample of your own patients. Results stay in "
               "your browser session; nothing is shared with other visitors.")
    cards = {d: c for d, c in model_cards("classification") if c.positive_class and not is_adapted(c)}
    if not cards:
        st.info("No classification model is installed.")
        return
    directory = st.selectbox("Model", list(cards), key="validate-model",
                             format_func=lambda d: f"{modality_name(cards[d].modality)}: {cards[d].name}")
    card = cards[directory]
    choices = [c for c in INPUTS if c not in FOLDER_INPUTS or typed_folders_allowed()]
    choice = st.radio("Your sample", choices, format_func=INPUTS.get, key="validate-input")
    site = st.text_input("Site name", value="local", key="validate-site", max_chars=60)
    if choice in SCAN_INPUTS:
        scans_section(directory, card, choice, site)
    else:
        images_section(directory, card, choice, site)
    result = st.session_state.get(RESULT_KEY)
    if result is None or result["directory"] not in cards:
        return
    if result.get("kind") == "scans":
        show_scan_validation(result, cards[result["directory"]].name)
        return
    show_validation(result, cards[result["directory"]].name)
    adapt_section(result)


def scans_section(directory: str, card: ModelCard, choice: str, site: str) -> None:
    """Whole CT scans: a CT model and an infection model, the scan sample and the Validate button."""
    if card.modality != "ct":
        st.info("Whole CT scans are validated with a CT model: choose one above.")
        return
    segmenters = infection_models()
    segmenter = st.selectbox("Infection model", [*segmenters, ""], key="validate-segmenter",
                             format_func=lambda d: segmenters[d].name if d else "None (no burden)")
    try:
        sample = read_input(choice, card.positive_class)
    except (DataError, ImageReadError) as error:
        show_error(str(error))
        return
    if sample is None:
        return
    st.caption(f"{len(sample.frame)} labelled scans: " + ", ".join(
        f"{name} {c['scans']} scans of {c['patients']} patients" for name, c in sample.counts().items()))
    if st.button("Validate", key="validate-run", type="primary"):
        try:
            st.session_state[RESULT_KEY] = run_scan_validation(directory, segmenter or None, sample,
                                                               site.strip() or "local")
            st.session_state.pop(ADAPTED_KEY, None)
        except (ValidationError, CheckpointError, DataError) as error:
            show_error(str(error))


def images_section(directory: str, card: ModelCard, choice: str, site: str) -> None:
    """Images: the sample and the Validate button."""
    try:
        sample = read_input(choice, card.positive_class)
    except (DataError, ImageReadError) as error:
        show_error(str(error))
        return
    if sample is not None:
        counts = sample.counts()
        st.caption(f"{len(sample.frame)} labelled images: " + ", ".join(
            f"{name} {c['images']} images of {c['patients']} patients" for name, c in counts.items()))
        if st.button("Validate", key="validate-run", type="primary"):
            try:
                st.session_state[RESULT_KEY] = run_validation(directory, sample, site.strip() or "local")
                st.session_state.pop(ADAPTED_KEY, None)
            except (ValidationError, CheckpointError, DataError) as error:
                show_error(str(error))


main()
