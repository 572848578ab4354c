"""Analyze page, driven through AppTest: what the page shows is what the library computes for the same bytes."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from app_fixtures import chest_like_png, make_weights_dir, page_test, with_lung_crop
from PIL import Image
from pydicom.data import get_testdata_file

import covid_models.analysis.image_analysis
from covid_models import RESEARCH_USE_NOTICE
from covid_models.imaging.io import read_dicom_identifiers, read_image
from covid_models.models.inference import Classifier, Ensemble

PAGE = "pages/analyze.py"
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("analyze"))


def upload(at, *files: tuple[str, bytes]):
    at.file_uploader(key="uploads").set_value([(name, data, "application/octet-stream") for name, data in files])
    return at.run()


def shown_probabilities(at, index: int = 0) -> dict[str, float]:
    """The probability table of the index-th analysed image, as the page shows it."""
    tables = [t.value for t in at.dataframe if "Probability" in t.value.columns]
    table = tables[index]
    return dict(zip(table["Class"], table["Probability"], strict=True))


def texts(node) -> list[str]:
    """Every text the page shows under `node` (markdown, alerts, captions, headings, tables, labels)."""
    found = []
    for element in getattr(node, "children", {}).values():
        if type(element).__name__ == "Expander":
            found.append(f"[expander {element.label}]")
        found.extend(texts(element))
        value = getattr(element, "value", None)
        if isinstance(value, pd.DataFrame):
            found.append(value.to_csv())
        elif isinstance(value, str):
            found.append(value)
        for attribute in ("label", "caption", "body"):
            text = getattr(element.proto, attribute, None) if hasattr(element, "proto") else None
            if isinstance(text, str):
                found.append(text)
    return found


def test_an_uploaded_png_shows_the_probabilities_the_library_computes(weights, monkeypatch):
    data = chest_like_png(seed=1)
    at = page_test(PAGE, weights, monkeypatch).run()
    at.selectbox(key="model-xray").set_value(str(weights / "xray-fixture-b"))
    upload(at, ("chest.png", data))
    assert not at.exception
    expected = Classifier.load(weights / "xray-fixture-b").predict(read_image(data))
    assert shown_probabilities(at) == pytest.approx(expected.probabilities, abs=1e-6)
    assert at.metric[0].value == f"{expected.positive_probability:.1%}"
    assert any("youden" in c.value and "test fixture" in c.value for c in at.caption)
    assert any(RESEARCH_USE_NOTICE in text for text in texts(at.main))
    captions = [caption for image in at.image for caption in image.captions]
    assert any(c.startswith("Grad-CAM") for c in captions)
    assert [b.label for b in at.get("download_button")] == ["Annotated image (PNG)", "Report (PDF)", "Report (HTML)"]


def test_a_model_cropped_to_its_segmenters_lungs_shows_what_the_library_computes(tmp_path, monkeypatch):
    weights = make_weights_dir(tmp_path)
    model = with_lung_crop(weights / "xray-fixture-b", weights / "xray-lungs-fixture")
    data = chest_like_png(seed=1)
    classifier = Classifier.load(model)
    assert classifier.lung_segmenter.name == "xray-lungs-fixture"  # found beside it in the weights folder
    at = page_test(PAGE, weights, monkeypatch).run()
    at.selectbox(key="model-xray").set_value(str(model))
    upload(at, ("chest.png", data))
    assert not at.exception
    assert shown_probabilities(at) == pytest.approx(classifier.predict(read_image(data)).probabilities, abs=1e-6)
    from pages.shared import load_classifier, load_segmenter

    segmenter = load_segmenter(str(weights / "xray-lungs-fixture"))
    assert load_classifier(str(model)).lung_segmenter is segmenter  # one copy of the segmenter per server


def test_the_ensemble_shows_the_mean_of_its_members(weights, monkeypatch):
    data = chest_like_png(seed=2)
    at = page_test(PAGE, weights, monkeypatch).run()
    at.selectbox(key="model-xray").set_value("ensemble")
    upload(at, ("chest.png", data))
    assert not at.exception
    members = [Classifier.load(weights / name) for name in ("xray-fixture-a", "xray-fixture-b")]
    expected = Ensemble(members).predict(read_image(data))
    assert shown_probabilities(at) == pytest.approx(expected.probabilities, abs=1e-6)
    assert any("not validated for the ensemble" in c.value for c in at.caption)


@pytest.mark.parametrize("method", ["gradcam++", "eigencam", "hirescam"])
def test_each_heatmap_method_can_be_chosen(weights, monkeypatch, method):
    at = page_test(PAGE, weights, monkeypatch).run()
    at.selectbox(key="method").set_value(method)
    upload(at, ("chest.png", chest_like_png(seed=3)))
    assert not at.exception
    from covid_models.analysis.explain import METHOD_LABELS

    assert any(c.startswith(METHOD_LABELS[method]) for image in at.image for c in image.captions)


def test_a_slow_method_shows_progress_while_computing_and_none_once_cached(weights, monkeypatch):
    from covid_models.analysis.explain import METHOD_LABELS

    at = page_test(PAGE, weights, monkeypatch).run()
    at.selectbox(key="method").set_value("ablationcam")
    upload(at, ("chest.png", chest_like_png(seed=7)))
    assert not at.exception
    assert any(c.startswith(METHOD_LABELS["ablationcam"]) for image in at.image for c in image.captions)
    assert not at.get("progress")  # the bar is removed once the heatmap is there
    at.slider(key="opacity").set_value(0.7).run()  # a rerun served from the cache
    assert not at.exception and not at.get("progress")
    assert any(c.startswith(METHOD_LABELS["ablationcam"]) for image in at.image for c in image.captions)


def test_moving_the_opacity_slider_changes_the_view_without_recomputing(weights, monkeypatch):
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, ("chest.png", chest_like_png(seed=4)))
    before = shown_probabilities(at)
    calls = counting(monkeypatch, *MODEL_CALLS)
    at.slider(key="opacity").set_value(0.8).run()
    assert not at.exception
    assert calls == []  # served from the cache
    assert shown_probabilities(at) == before


def test_a_corrupt_file_shows_an_error_and_the_rest_of_the_batch_is_analysed(weights, monkeypatch):
    good = chest_like_png(seed=5)
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20), ("notes.txt", b"just text\n" * 30),
           ("chest.png", good))
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("PNG file is incomplete" in e for e in errors)
    assert any("not a readable image" in e and "text file" in e for e in errors)
    expected = Classifier.load(weights / "xray-fixture-a").predict(read_image(good))
    assert shown_probabilities(at) == pytest.approx(expected.probabilities, abs=1e-6)
    summary = at.dataframe[0].value
    assert list(summary["File"]) == ["broken.png", "notes.txt", "chest.png"]
    assert list(summary["Result"].str.startswith("not analysed")) == [True, True, False]


def test_a_dicom_ct_gets_its_modality_from_the_header_and_window_presets(weights, monkeypatch):
    data = CT_SMALL.read_bytes()
    at = page_test(PAGE, weights, monkeypatch).run()
    assert at.radio(key="modality").value == "xray"  # the user's default does not override the DICOM tag
    upload(at, ("CT_small.dcm", data))
    assert not at.exception
    ct = Classifier.load(weights / "ct-fixture")
    assert shown_probabilities(at) == pytest.approx(ct.predict(read_image(data)).probabilities, abs=1e-6)
    window = next(r for r in at.radio if r.label.startswith("Window"))
    assert window.options[1:] == ["Lung (-600 / 1500)", "Mediastinum (40 / 400)", "Bone (400 / 1800)", "Custom"]


def counting(monkeypatch, *targets: str) -> list[str]:
    """Wrap each dotted `target` so that its calls are recorded (and still made); returns the record."""
    import importlib

    calls: list[str] = []
    for target in targets:
        module_name, _, attribute = target.rpartition(".")
        try:
            owner = importlib.import_module(module_name)
        except ModuleNotFoundError:  # a method: module.Class.method
            module_name, _, class_name = module_name.rpartition(".")
            owner = getattr(importlib.import_module(module_name), class_name)
        original = getattr(owner, attribute)

        def wrapper(*args, _original=original, _target=target, **kwargs):
            calls.append(_target)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, wrapper)
    return calls


MODEL_CALLS = ("pages.analyze_compute.analyse", "covid_models.models.inference.Classifier.predictions",
               "covid_models.models.segmentation.Segmenter.probability", "covid_models.analysis.explain.place_map")


def test_one_upload_runs_no_network_twice_for_the_same_answer(weights, monkeypatch):
    """The chest-image check's guard pass is the X-ray prediction (one per modality's guard),
    and the check's lung mask is the one the analysis shows (one lung-segmenter pass)."""
    at = page_test(PAGE, weights, monkeypatch).run()
    calls = counting(monkeypatch, "covid_models.models.inference.Classifier.predictions",
                     "covid_models.models.segmentation.Segmenter.probability",
                     "covid_models.analysis.explain.place_map")
    data = chest_like_png(seed=12)
    upload(at, ("chest.png", data))
    assert not at.exception and shown_probabilities(at)
    assert calls.count("covid_models.models.inference.Classifier.predictions") == 2  # the X-ray and the CT guard
    assert calls.count("covid_models.models.segmentation.Segmenter.probability") == 1
    assert calls.count("covid_models.analysis.explain.place_map") == 1  # the heatmap
    library = Classifier.load(weights / "xray-fixture-a").predict(read_image(data))
    assert shown_probabilities(at) == pytest.approx(library.probabilities, abs=5e-5)  # as the table rounds


def test_a_window_change_redraws_the_image_only_leaving_the_probability_byte_identical(weights, monkeypatch):
    """The window presets are display settings: the models keep their card's canonical input."""
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, ("CT_small.dcm", CT_SMALL.read_bytes()))
    before, metric = shown_probabilities(at), at.metric[0].value
    calls = counting(monkeypatch, *MODEL_CALLS)
    window = next(r for r in at.radio if r.label.startswith("Window"))
    for preset in ("lung", "mediastinum", "bone", "custom", "file"):
        window.set_value(preset).run()
        assert not at.exception
        assert shown_probabilities(at) == before and at.metric[0].value == metric, preset  # exactly equal
        window = next(r for r in at.radio if r.label.startswith("Window"))
    captions = [c for image in at.image for c in image.captions]
    assert "Image" in captions  # back to the file's own window
    assert calls == []  # no model ran again


def test_the_window_counter_sees_a_model_that_runs(weights, monkeypatch):
    """The check above can fail: a new image, analysed, is counted."""
    at = page_test(PAGE, weights, monkeypatch).run()
    calls = counting(monkeypatch, *MODEL_CALLS)
    upload(at, ("CT_small.dcm", CT_SMALL.read_bytes()))
    assert not at.exception
    assert set(calls) == set(MODEL_CALLS)


def test_dicom_identifiers_are_shown_only_on_request_inside_their_expander(weights, monkeypatch):
    data = CT_SMALL.read_bytes()
    identifiers = [v for v in read_dicom_identifiers(data).values() if len(v) >= 5]
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, ("CT_small.dcm", data))
    everything = "\n".join(texts(at.main))
    assert "GE MEDICAL SYSTEMS" in everything  # the technical header is shown
    assert not [value for value in identifiers if value in everything]
    at.toggle(key=next(t.key for t in at.toggle if t.label == "Show identifiers")).set_value(True).run()
    assert not at.exception
    expander = next(e for e in at.expander if e.label.startswith("Patient identifiers"))
    inside = "\n".join(texts(expander))
    assert "CompressedSamples^CT1" in inside
    outside = "\n".join(texts(at.main)).replace(inside, "")
    assert not [value for value in identifiers if value in outside]


def recorded_reports(monkeypatch) -> list:
    """Every ReportContent the page builds for its downloads, recorded (and still built)."""
    import covid_models.analysis.report

    original, reports = covid_models.analysis.report.ReportContent, []

    def recording(**fields):
        reports.append(original(**fields))
        return reports[-1]

    monkeypatch.setattr(covid_models.analysis.report, "ReportContent", recording)
    return reports


def held_back_weights(tmp_path: Path) -> Path:
    """Every X-ray is out of distribution for the X-ray models; the CT model has no guard, so no image is refused
    as a non-chest image by the guards (that needs both modalities' guards to reject it)."""
    from app_fixtures import CT_CLASSES, write_classifier

    weights = make_weights_dir(tmp_path, ood_threshold=-1.0, segmentation=False)
    write_classifier(weights, "ct-fixture", "ct", CT_CLASSES, seed=3)
    return weights


def test_an_out_of_distribution_image_shows_no_probability_heatmap_or_mask_anywhere(tmp_path, monkeypatch):
    """Page, batch table (and its CSV), PDF and HTML carry nothing to be read of a held-back image."""
    from test_report import pdf_text

    from covid_models.analysis.report import HELD_BACK, render_html, render_pdf

    weights = held_back_weights(tmp_path)
    reports = recorded_reports(monkeypatch)
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, ("chest.png", chest_like_png(seed=6)), ("other.png", chest_like_png(seed=16)))
    assert not at.exception
    assert any("does not look like a chest X-ray the model was trained on" in e.value
               and "held back" in e.value for e in at.error)
    assert len(at.metric) == 0
    probabilities = [f"{p:.1%}" for p in Classifier.load(weights / "xray-fixture-a").predict(
        read_image(chest_like_png(seed=6))).probabilities.values()]
    everything = "\n".join(texts(at.main))
    assert not [p for p in probabilities if p in everything]
    summary = at.dataframe[0].value
    assert list(summary["COVID-19 probability"]) == ["held back", "held back"]
    assert "None" not in summary.to_csv() and "nan" not in summary.to_csv()
    captions = [caption for image in at.image for caption in image.captions]
    assert not any(c.startswith("Grad-CAM") or "mask" in c.lower() for c in captions if "held back" not in c)
    assert not any("of the heatmap" in text for text in texts(at.main))
    assert "Annotated image (PNG)" not in [b.label for b in at.get("download_button")]
    assert reports
    for content in reports:
        for text in (render_html(content), pdf_text(render_pdf(content))):
            assert "held back" in text
            assert not [p for p in probabilities if p in text], text[:400]
            assert text.lower().count("heatmap") == HELD_BACK.lower().count("heatmap")  # only "no ... heatmap"


def test_a_photograph_is_refused_with_a_reason(weights, monkeypatch):
    """scikit-learn's china.jpg is refused outright, with why; nothing is computed or offered."""
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(buffer, format="JPEG")
    reports = recorded_reports(monkeypatch)
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, ("china.jpg", buffer.getvalue()), ("chest.png", chest_like_png(seed=9)))
    assert not at.exception
    refusal = next(e.value for e in at.error if "refused" in e.value)
    assert "not a chest X-ray or CT" in refusal and "coloured" in refusal
    assert len(at.metric) == 1  # the chest image only
    assert list(at.dataframe[0].value["Result"])[0] == "refused: not a chest image"
    assert all(content.file_name == "chest.png" for content in reports)


def test_a_ct_slice_given_as_an_x_ray_makes_the_page_ask(weights, monkeypatch):
    """The guards say CT, the setting says X-ray: nothing is analysed until the user answers."""
    import covid_models.analysis.image_checks

    monkeypatch.setattr(covid_models.analysis.image_checks, "guard_ratio",
                        lambda classifier, scan, hold=None: {"xray": 3.0, "ct": 0.4}[classifier.card.modality])
    at = page_test(PAGE, weights, monkeypatch).run()
    assert at.radio(key="modality").value == "xray"
    upload(at, ("slice.png", chest_like_png(seed=11)))
    assert not at.exception
    assert any("looks like a chest CT, but the settings say X-ray" in w.value for w in at.warning)
    question = next(r for r in at.radio if r.label == "Analyse this image as")
    assert question.value is None and len(at.metric) == 0 and not at.dataframe
    question.set_value("ct").run()
    assert not at.exception
    assert set(shown_probabilities(at)) == {"covid", "non_covid"}
    assert any("CT as you confirmed" in c.value for c in at.caption)


def test_reports_are_the_same_at_every_opacity_and_carry_the_pages_warnings(weights, monkeypatch):
    """Fixed, stated rendering; every warning and note the page shows goes into the report."""
    import dataclasses

    from covid_models.analysis.report import render_html

    reports = recorded_reports(monkeypatch)
    at = page_test(PAGE, weights, monkeypatch).run()
    at.slider(key="opacity").set_value(0.0).run()
    upload(at, ("chest.png", chest_like_png(seed=12)))
    at.slider(key="opacity").set_value(1.0).run()
    assert not at.exception
    first, last = reports[0], reports[-1]
    assert render_html(first) == render_html(dataclasses.replace(last, created=first.created))
    assert "fixed 45% opacity" in render_html(first)
    shown = [w.value for w in at.warning] + [c.value for c in at.caption]
    assert all(text in shown or any(text in s for s in shown) for text in last.warnings)
    assert any("reading is unreliable" in text for text in last.warnings)  # the 3-class note


@pytest.mark.slow
def test_a_slow_heatmap_in_one_session_holds_up_no_other_session(weights, monkeypatch):
    """While session A computes Score-CAM, session B's upload on the same model shows its
    probability (A's heatmap is made to wait until B is done, so "B first" is no race)."""
    import threading

    import covid_models.analysis.explain as explain

    started, release = threading.Event(), threading.Event()
    original = explain.ScoreCAM.weights

    def waiting(self, *args, **kwargs):
        started.set()
        release.wait(timeout=600)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(explain.ScoreCAM, "weights", waiting)
    first = page_test(PAGE, weights, monkeypatch, timeout=600).run()
    second = page_test(PAGE, weights, monkeypatch).run()  # a second session of the same server (shared caches)
    first.selectbox(key="method").set_value("scorecam")
    first.file_uploader(key="uploads").set_value([("slow.png", chest_like_png(seed=13), "image/png")])
    finished: list[str] = []
    thread = threading.Thread(target=lambda: (first.run(), finished.append("first")))
    thread.start()
    try:
        assert started.wait(timeout=600), "session A never started its Score-CAM"
        upload(second, ("fast.png", chest_like_png(seed=14)))
        finished.append("second")
        assert not second.exception and len(second.metric) == 1
    finally:
        release.set()
        thread.join(timeout=600)
    assert finished == ["second", "first"]
    assert not first.exception and len(first.metric) == 1
    assert any(c.startswith("Score-CAM") for image in first.image for c in image.captions)


def test_an_example_from_the_test_split_is_analysed_with_one_click(weights, tmp_path, monkeypatch):
    root = tmp_path / "data" / "xray"
    (root / "images").mkdir(parents=True)
    rows = []
    for index, (label, split) in enumerate([("covid", "test"), ("normal", "test"), ("covid", "train")]):
        (root / "images" / f"x{index}.png").write_bytes(chest_like_png(seed=10 + index))
        rows.append({"image": f"images/x{index}.png", "label": label, "patient_id": f"p{index}",
                     "source": "fixture", "split": split})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    monkeypatch.setenv("COVID_DATA_DIR", str(root.parent))
    at = page_test(PAGE, weights, monkeypatch).run()
    buttons = [b for b in at.button if b.label.startswith(("covid:", "normal:"))]
    assert sorted(b.label for b in buttons) == ["covid: x0.png", "normal: x1.png"]  # test split only
    next(b for b in buttons if b.label == "covid: x0.png").click().run()
    assert not at.exception
    expected = Classifier.load(weights / "xray-fixture-a").predict(read_image(root / "images" / "x0.png"))
    assert shown_probabilities(at) == pytest.approx(expected.probabilities, abs=1e-6)
    assert any("Reference label in the dataset: **covid**" in c.value for c in at.caption)


def test_an_example_is_analysed_as_its_dataset_modality_whatever_the_setting(weights, tmp_path, monkeypatch):
    root = tmp_path / "data" / "ct"
    (root / "images").mkdir(parents=True)
    (root / "images" / "slice.png").write_bytes(chest_like_png(seed=20))
    pd.DataFrame([{"image": "images/slice.png", "label": "covid", "patient_id": "p1", "source": "fixture",
                   "split": "test"}]).to_csv(root / "manifest.csv", index=False)
    monkeypatch.setenv("COVID_DATA_DIR", str(root.parent))
    at = page_test(PAGE, weights, monkeypatch).run()
    assert at.radio(key="modality").value == "xray"
    next(b for b in at.button if b.label == "covid: slice.png").click().run()
    assert not at.exception
    assert set(shown_probabilities(at)) == {"covid", "non_covid"}


def test_without_models_the_page_explains_instead_of_failing(tmp_path, monkeypatch):
    at = page_test(PAGE, tmp_path / "no-weights", monkeypatch).run()
    upload(at, ("chest.png", chest_like_png()))
    assert not at.exception
    assert any("No X-ray classifier is installed" in w.value for w in at.warning)



def test_lung_mask_and_the_share_of_the_heatmap_inside_it_are_shown(weights, monkeypatch):
    # the fixture segmenter is untrained: its mask (most of the film) is implausible, which would hide the share
    monkeypatch.setattr(covid_models.analysis.image_analysis, "lung_implausible", lambda mask: None)
    from covid_models.analysis.explain import heatmap
    from covid_models.models.segmentation import Segmenter, cam_mass_inside

    data = chest_like_png(seed=7)
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, ("chest.png", data))
    assert not at.exception
    pixels = read_image(data).pixels
    cam = heatmap(Classifier.load(weights / "xray-fixture-a"), pixels, "gradcam")
    share = cam_mass_inside(cam, Segmenter.load(weights / "xray-lungs-fixture").mask(pixels))
    signals = [e.value for e in (*at.success, *at.warning)]
    assert any(s.startswith(f"{share:.0%} of the heatmap lies inside the lungs.") for s in signals)
    assert "Lung mask" in [c for image in at.image for c in image.captions]
    at.toggle(key="show-masks").set_value(False).run()
    assert "Lung mask" not in [c for image in at.image for c in image.captions]


def test_a_ct_image_gets_the_infection_mask(weights, monkeypatch):
    at = page_test(PAGE, weights, monkeypatch).run()
    at.radio(key="modality").set_value("ct")
    upload(at, ("slice.png", chest_like_png(seed=8)))
    assert not at.exception
    assert set(shown_probabilities(at)) == {"covid", "non_covid"}
    assert any(c.startswith("Infection mask") for image in at.image for c in image.captions)
    assert any("of the heatmap lies inside the infection mask" in c.value for c in at.caption)


def shown_files(at) -> list[str]:
    """The file names the page shows analyses of (one subheader each)."""
    return [s.value for s in at.main.get("subheader")]


@pytest.mark.slow
def test_a_large_batch_is_paged_and_a_slider_recomputes_nothing(weights, monkeypatch):
    """Beyond one page of images, the page shows them a page at a time; every page analysed stays cached."""
    at = page_test(PAGE, weights, monkeypatch, timeout=600).run()
    page_size = 24  # BATCH_PAGE of the page
    upload(at, *[(f"chest-{index:02d}.png", chest_like_png(size=64, seed=100 + index))
                 for index in range(page_size + 2)])
    assert not at.exception
    assert any(f"{page_size + 2} images" in i.value and f"{page_size} at a time" in i.value for i in at.info)
    assert shown_files(at) == [f"chest-{index:02d}.png" for index in range(page_size)]
    at.selectbox(key="batch-page").set_value(page_size).run()
    assert shown_files(at) == ["chest-24.png", "chest-25.png"]
    calls = counting(monkeypatch, *MODEL_CALLS)
    at.slider(key="opacity").set_value(0.9).run()
    at.selectbox(key="batch-page").set_value(0).run()
    at.toggle(key="show-masks").set_value(False).run()
    assert not at.exception and len(shown_files(at)) == page_size
    assert calls == []


def test_the_sidebar_puts_the_within_source_auc_beside_the_headline_and_says_why_no_ensemble(monkeypatch):
    """On the shipped cards (no model is loaded: the sidebar reads cards only)."""
    from conftest import WEIGHTS_DIR

    at = page_test(PAGE, WEIGHTS_DIR, monkeypatch).run()
    assert not at.exception
    captions = [c.value for c in at.sidebar.caption]
    xray = next(c for c in captions if c.startswith("Test AUC 0.948"))
    assert "Within-source AUC, within ieee8023 (65 test images): AUC 0.605" in xray
    ct = next(c for c in captions if c.startswith("Test AUC 0.840"))  # one source: no "pooled sources" claim
    assert "All test images come from one source (ucsd)" in ct and "pooled" not in ct
    assert any(c.startswith("Ensemble: not available for X-ray, because only one X-ray classifier") for c in captions)
    assert any(c.startswith("Ensemble: not available for CT") for c in captions)
