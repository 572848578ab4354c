"""The Validate locally page: upload a labelled sample, read its metrics, adapt a head, publish it (administrators
only), and find it listed on the Analyze page as "X-ray, adapted to <site>"."""
from __future__ import annotations

import io
import zipfile

import pytest

from covid_models.models.discovery import find_models
from covid_models.models.model_card import display_name
from tests.app_fixtures import labelled_sample_zip, make_weights_dir, page_test

SITE = "Test Hospital"
TOKEN = "a-long-administrator-token-for-tests"


def sample_zip(patients_per_class: int = 12) -> bytes:
    return labelled_sample_zip("normal", patients_per_class=patients_per_class, seed=0)


def uploaded(at, weights, data: bytes, site: str = SITE):
    """The page with the first fixture X-ray model chosen and the sample zip uploaded."""
    at.run()
    at.selectbox(key="validate-model").set_value(str(weights / "xray-fixture-a")).run()
    at.text_input(key="validate-site").set_value(site)
    at.file_uploader(key="validate-zip").set_value(("sample.zip", data, "application/zip"))
    at.run()
    return at


def test_upload_metrics_adapt_publish_and_the_model_is_listed(tmp_path, monkeypatch):
    weights = make_weights_dir(tmp_path, segmentation=False)
    monkeypatch.setenv("COVID_REVIEW_ADMIN_TOKEN", TOKEN)
    at = uploaded(page_test("pages/validate.py", weights, monkeypatch), weights, sample_zip())
    assert not at.exception
    assert any("24 labelled images" in c.value for c in at.caption)
    at.button(key="validate-run").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["AUC"] != "not shown" and float(metrics["Sensitivity"]) >= 0  # 12 patients per class: a headline
    confounds = next(d.value for d in at.dataframe if "predictor" in d.value.columns)
    assert {"view", "the model"} <= set(confounds["predictor"])  # the view's AUC beside the model's
    assert len(at.get("plotly_chart")) == 2  # ROC and calibration

    at.button(key="validate-adapt").click().run()
    assert not at.exception and not at.error
    assert any(f"X-ray, adapted to {SITE}: cross-validated AUC" in s.value for s in at.success)
    assert at.get("download_button")

    at.text_input(key="validate-admin").set_value("wrong")
    at.button(key="validate-publish").click().run()
    assert any("token is wrong" in e.value for e in at.error)
    assert len(find_models(weights).found) == 3  # nothing published

    at.text_input(key="validate-admin").set_value(TOKEN)
    at.button(key="validate-publish").click().run()
    assert any("Published" in s.value for s in at.success)
    labels = [display_name(card) for _, card in find_models(weights).found]
    assert f"X-ray, adapted to {SITE}" in labels

    analyze = page_test("pages/analyze.py", weights, monkeypatch)
    analyze.run()
    assert f"X-ray, adapted to {SITE}" in analyze.selectbox(key="model-xray").options


def test_fitting_and_publishing_a_head_leave_no_files_behind_on_the_server(tmp_path, monkeypatch):
    weights = make_weights_dir(tmp_path, segmentation=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.setenv("COVID_REVIEW_ADMIN_TOKEN", TOKEN)
    at = uploaded(page_test("pages/validate.py", weights, monkeypatch), weights, sample_zip())
    at.button(key="validate-run").click().run()
    at.button(key="validate-adapt").click().run()
    at.button(key="validate-adapt").click().run()  # a second fit replaces the first
    assert not at.exception and not at.error
    assert list(scratch.iterdir()) == []  # the adapted folder lives in the visitor's session only
    at.text_input(key="validate-admin").set_value(TOKEN)
    at.button(key="validate-publish").click().run()
    assert any("Published" in s.value for s in at.success)
    installed = sorted(path.name for path in weights.iterdir())
    assert not [name for name in installed if name.startswith(".")]  # no half-written folder left beside it
    published = next(weights / name for name in installed if "adapted" in name)
    assert {"card.json", "MODEL_CARD.md"} <= {path.name for path in published.iterdir()}
    assert list(scratch.iterdir()) == []


def test_a_weak_administrator_token_cannot_publish_and_the_page_says_why(tmp_path, monkeypatch):
    weights = make_weights_dir(tmp_path, segmentation=False)
    monkeypatch.setenv("COVID_REVIEW_ADMIN_TOKEN", "admin-2024")  # what the review page refuses, so does this one
    at = uploaded(page_test("pages/validate.py", weights, monkeypatch), weights, sample_zip())
    at.button(key="validate-run").click().run()
    at.button(key="validate-adapt").click().run()
    assert any("Administrator sign-in is off" in e.value for e in at.error)
    assert "validate-publish" not in [b.key for b in at.button]
    assert "admin-2024" not in repr(at._tree)


def test_a_sample_below_the_minimum_gets_no_headline_and_no_adaptation(tmp_path, monkeypatch):
    weights = make_weights_dir(tmp_path, segmentation=False)
    at = uploaded(page_test("pages/validate.py", weights, monkeypatch), weights, sample_zip(patients_per_class=6))
    at.button(key="validate-run").click().run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["AUC"] == "not shown"
    assert any("fewer than 10 patients" in w.value for w in at.warning)
    at.button(key="validate-adapt").click().run()
    assert any("Not adapted: fewer than 10 patients" in e.value for e in at.error)
    assert not at.get("download_button")


def test_another_visitor_sees_none_of_the_results(tmp_path, monkeypatch):
    weights = make_weights_dir(tmp_path, segmentation=False)
    at = uploaded(page_test("pages/validate.py", weights, monkeypatch), weights, sample_zip())
    at.button(key="validate-run").click().run()
    assert at.metric
    other = page_test("pages/validate.py", weights, monkeypatch)
    other.run()
    assert not other.metric and not other.get("plotly_chart")


def test_the_shipped_adapted_head_is_offered_on_analyze_with_its_cross_validated_figure(monkeypatch):
    from conftest import WEIGHTS_DIR

    from covid_models.models.model_card import is_adapted

    if not any(is_adapted(card) for _, card in find_models(WEIGHTS_DIR).found):
        pytest.skip("no adapted head in weights/")
    at = page_test("pages/analyze.py", WEIGHTS_DIR, monkeypatch).run()
    widget = at.selectbox(key="model-xray")
    assert "X-ray, adapted to ieee8023" in widget.options
    assert not any(option.startswith("Ensemble") for option in widget.options)  # an adapted head is no member
    at.selectbox(key="model-xray").set_value(str(WEIGHTS_DIR / "xray-efficientnet-lite0-adapted-ieee8023")).run()
    assert not at.exception
    assert any(c.value.startswith("A head adapted to ieee8023 on xray-efficientnet-lite0: cross-validated AUC 0.888")
               for c in at.sidebar.caption)


def test_the_shipped_adapted_head_sits_beside_its_base_on_model_performance(monkeypatch):
    from conftest import WEIGHTS_DIR

    from covid_models.models.model_card import is_adapted

    adapted = [card for _, card in find_models(WEIGHTS_DIR).found if is_adapted(card)]
    if not adapted:
        pytest.skip("no adapted head in weights/")
    at = page_test("pages/performance.py", WEIGHTS_DIR, monkeypatch).run()
    at.selectbox(key="performance-model-xray").set_value(adapted[0].name).run()
    assert not at.exception
    assert any("adapted to ieee8023 on the frozen features of xray-efficientnet-lite0" in i.value for i in at.info)
    side = next(d.value for d in at.dataframe if "on the local sample" in d.value.columns)
    assert side["on the local sample"].str.startswith("AUC 0.888").any()  # the head, cross-validated
    assert side["on the local sample"].str.startswith("AUC 0.899").any()  # its base on the same images


def test_whole_ct_scans_are_validated_with_their_table_held_back_scans_and_no_auc_below_the_minimum(tmp_path,
                                                                                                    monkeypatch):

    from tests.app_fixtures import CT_CLASSES, with_ct_reading, with_lung_window, write_classifier, write_segmenter
    from tests.scan_phantoms import ADULT_SPACING, adult_phantom, dicom_series, phantom

    weights = tmp_path / "weights"
    classifier = with_lung_window(write_classifier(weights, "ct-fixture", "ct", CT_CLASSES, seed=3))
    with_ct_reading(with_lung_window(write_segmenter(weights, "ct-infection-fixture", "ct", "infection", seed=5)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for scan, hu, spacing in (("adult", adult_phantom(), ADULT_SPACING), ("small", phantom(), (2.5, 1.5, 1.5))):
            for name, data in dicom_series(hu, spacing, identifiers={"Manufacturer": "Acme"}):
                archive.writestr(f"{scan}/{name}", data)
        archive.writestr("labels.csv", "scan,label,patient_id\nadult,covid,a\nsmall,other,b\n")
    at = page_test("pages/validate.py", weights, monkeypatch)
    at.run()
    at.selectbox(key="validate-model").set_value(str(classifier)).run()
    at.radio(key="validate-input").set_value("scans-zip").run()
    at.file_uploader(key="validate-scans-zip").set_value(("scans.zip", buffer.getvalue(), "application/zip"))
    at.run()
    assert not at.exception and any("2 labelled scans" in c.value for c in at.caption)
    at.button(key="validate-run").click().run()
    assert not at.exception and not at.error
    table = next(d.value for d in at.dataframe if "held_back" in d.value.columns)
    assert list(table["scan"]) == ["adult", "small"] and list(table["manufacturer"]) == ["Acme", "Acme"]
    warnings = " ".join(w.value for w in at.warning)
    assert "1 scan(s) held back" in warnings and "small:" in warnings and "Too few scans for an AUC" in warnings
    assert {m.label: m.value for m in at.metric}["Lesion burden AUC"] == "not shown"
