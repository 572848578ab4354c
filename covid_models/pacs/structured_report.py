"""The tool's reading of a study as a DICOM Structured Report (TID 1500 measurement report, via highdicom).

A viewer shows it next to the images it reads: the COVID-19 probability, the operating point's threshold and the
reading against it, the lesion burden and severity score when the analysis gives them, the model's name and the
sha256 of its weights, and the research-use notice. It goes into the study's own Study Instance UID, in a series of
its own; its UIDs are derived from the study, the model's weights and the item, so storing the same result again
names the same instance (and `store_report` finds it and stores nothing).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from covid_models.pacs.client import Pacs
from covid_models.pacs.screening import Reading

NOTICE = "Research use only: not for diagnosis. An AI screening reading to be read by a radiologist."
MANUFACTURER = "covid-screening (open source)"
SERIES_DESCRIPTION = "AI COVID-19 screening, research use only"
VERDICT_SERIES_DESCRIPTION = "Reviewer verdicts on AI COVID-19 screening"
SERIES_NUMBER = 9701
VERDICT_SERIES_NUMBER = 9702
SCHEME = "99COVIDSCREEN"  # a private coding scheme for the concepts no standard code names
CONCEPTS = {
    "probability": hd.sr.CodedConcept("COVPROB", SCHEME, "COVID-19 probability"),
    "threshold": hd.sr.CodedConcept("COVTHR", SCHEME, "Operating point threshold"),
    "burden": hd.sr.CodedConcept("COVBURDEN", SCHEME, "Lesion burden (percent of lung volume)"),
    "severity": hd.sr.CodedConcept("COVSEV", SCHEME, "Severity score"),
    "reading": hd.sr.CodedConcept("COVREAD", SCHEME, "COVID-19 reading at the operating point"),
    "verdict": hd.sr.CodedConcept("COVVERDICT", SCHEME, "Reviewer verdict on the AI reading"),
    "held_back": hd.sr.CodedConcept("COVHELD", SCHEME, "Held back: unlike the training images"),
}
UNITS = {"probability": hd.sr.CodedConcept("{probability}", "UCUM", "probability"),
         "percent": hd.sr.CodedConcept("%", "UCUM", "percent"),
         "score": hd.sr.CodedConcept("{score}", "UCUM", "score")}
POSITIVE, NEGATIVE = hd.sr.CodedConcept("10828004", "SCT", "Positive"), hd.sr.CodedConcept("260385009", "SCT",
                                                                                            "Negative")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")


def result_uids(study_uid: str, weights_sha256: str, item: str, what: str = "reading") -> tuple[str, str]:
    """(series UID, SOP instance UID) of a result: the same study, model and item give the same UIDs."""
    series = generate_uid(entropy_srcs=[study_uid, weights_sha256, f"{what}-series"])
    instance = generate_uid(entropy_srcs=[study_uid, weights_sha256, item, what])
    return series, instance


_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber")  # the report copies them; empty when absent


def _evidence(headers: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    if not headers:
        raise ValueError("a report needs the header of at least one image it reads")
    evidence = []
    for header in headers:
        header = copy.deepcopy(header)
        for keyword in _TYPE_2:
            if keyword not in header:
                setattr(header, keyword, "")
        evidence.append(header)
    return evidence


def _algorithm(reading: Reading) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=reading.model_name[:64], version=reading.weights_sha256[:64],
                                         parameters={"operating point": reading.operating_point[:64]})


def _report(headers: Sequence[pydicom.Dataset], group: hd.sr.MeasurementsAndQualitativeEvaluations,
            comments: Sequence[str], series_uid: str, series_number: int, sop_uid: str, description: str
            ) -> hd.sr.Comprehensive3DSR:
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[MANUFACTURER]), name=MANUFACTURER[:64], manufacturer_name=MANUFACTURER)))
    content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion
                                      if headers[0].get("Modality") == "CT" else codes.cid100.ImagingProcedure,
                                      imaging_measurements=[group])
    for text in comments:  # the notice and the model's words, on the report's root container
        content[0].ContentSequence.append(hd.sr.TextContentItem(
            name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    report = hd.sr.Comprehensive3DSR(
        evidence=_evidence(headers), content=content[0], series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True)
    report.SeriesDescription = description
    return report


def reading_report(reading: Reading, headers: Sequence[pydicom.Dataset]) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one reading; `headers`: the datasets (no pixel data needed) of what was read."""
    series_uid, sop_uid = result_uids(reading.item.study_uid, reading.weights_sha256, reading.item.text)
    algorithm = _algorithm(reading)
    measurements, evaluations = [], []

    def measure(concept: str, value: float, unit: str) -> None:
        measurements.append(hd.sr.Measurement(name=CONCEPTS[concept], value=float(value), unit=UNITS[unit],
                                              algorithm_id=algorithm))

    measure("threshold", reading.threshold, "probability")
    if reading.held_back:
        evaluations.append(hd.sr.QualitativeEvaluation(CONCEPTS["held_back"], POSITIVE))
    else:
        measure("probability", reading.probability, "probability")
        evaluations.append(hd.sr.QualitativeEvaluation(CONCEPTS["reading"],
                                                       POSITIVE if reading.positive else NEGATIVE))
        if reading.lesion_burden_percent is not None:
            measure("burden", reading.lesion_burden_percent, "percent")
        if reading.severity_score is not None:
            measure("severity", reading.severity_score, "score")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[sop_uid, "group"]),
                                                     identifier=f"AI {reading.kind} reading"),
        algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=evaluations)
    comments = [NOTICE, f"Model {reading.model_name}, weights sha256 {reading.weights_sha256}.",
                f"Operating point: {reading.operating_point}."]
    if reading.held_back:
        comments.append("The model held its reading back: this image does not look like the images it was trained "
                        "on, so no probability is given.")
    return _report(headers, group, comments, series_uid, SERIES_NUMBER, sop_uid, SERIES_DESCRIPTION)


def verdict_report(reading: Reading, headers: Sequence[pydicom.Dataset], verdict: str, reviewer_label: str | None,
                   version: int) -> hd.sr.Comprehensive3DSR:
    """A reviewer's verdict on a reading (no reviewer name: the verdict and the label only); each saved version of
    the verdict is its own instance, so a changed verdict adds one and a re-sent one adds none."""
    series_uid, sop_uid = result_uids(reading.item.study_uid, reading.weights_sha256,
                                      f"{reading.item.text}#v{version}", "verdict")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[sop_uid, "group"]),
                                                     identifier="Reviewer verdict"),
        algorithm_id=_algorithm(reading),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            CONCEPTS["verdict"], hd.sr.CodedConcept(verdict.upper()[:16], SCHEME, verdict.replace("_", " ")))])
    comments = [NOTICE, f"Verdict: {verdict}" + (f"; reviewer's label: {reviewer_label}" if reviewer_label else "")]
    return _report(headers, group, comments, series_uid, VERDICT_SERIES_NUMBER, sop_uid, VERDICT_SERIES_DESCRIPTION)


def store_report(pacs: Pacs, report: pydicom.Dataset) -> bool:
    """Store a report unless the study already holds it (same UIDs: the same result); True when it was stored."""
    if pacs.has_instance(report.StudyInstanceUID, report.SOPInstanceUID):
        return False
    pacs.store([report])
    return True


def read_reading(report: pydicom.Dataset) -> dict[str, object]:
    """What a stored report says, read back (to check a round trip, or to show it): measurement values by concept
    meaning, the evaluations, the algorithm (model name and weights sha256) and the comments."""
    found: dict[str, object] = {"comments": [], "evaluations": {}}

    def walk(items: Sequence[pydicom.Dataset]) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "NUM":
                found[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "TEXT" and name == COMMENT.meaning:
                found["comments"].append(item.TextValue)  # type: ignore[union-attr]
            elif item.ValueType == "TEXT" and name in ("Algorithm Name", "Algorithm Version"):
                found[name] = item.TextValue
            elif item.ValueType == "CODE":
                found["evaluations"][name] = item.ConceptCodeSequence[0].CodeMeaning  # type: ignore[index]
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(report.ContentSequence)
    return found
