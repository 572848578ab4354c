"""Analyze page, driven through AppTest: what the page shows is what the library computes for the same bytes."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from app_fixtures import chest_like_png, make_weights_dir, page_test
from pydicom.data import get_testdata_file

from covid_models import RESEARCH_USE_NOTICE
from covid_models.inference import Classifier, Ensemble
from covid_models.io import read_dicom_identifiers, read_image

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
    from covid_models.explain import METHOD_LABELS

    assert any(c.startswith(METHOD_LABELS[method]) for image in at.image for c in image.captions)


def test_a_slow_method_shows_progress_while_computing_and_none_once_cached(weights, monkeypatch):
    from covid_models.explain import METHOD_LABELS

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


MODEL_CALLS = ("covid_models.analysis.analyse", "covid_models.inference.Classifier.predict",
               "covid_models.segmentation.Segmenter.probability", "covid_models.explain.class_activation_map")


def test_a_window_change_redraws_the_image_only_leaving_the_probability_byte_identical(weights, monkeypatch):
    """The window presets are display settings: the models keep their card's canonical input (issue 11, bug 3)."""
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


def test_an_out_of_distribution_image_is_held_back(tmp_path, monkeypatch):
    weights = make_weights_dir(tmp_path, ood_threshold=-1.0, segmentation=False)  # every image is OOD
    at = page_test(PAGE, weights, monkeypatch).run()
    upload(at, ("chest.png", chest_like_png(seed=6)))
    assert not at.exception
    assert any("does not look like a chest X-ray the model was trained on" in e.value
               and "held back" in e.value for e in at.error)
    assert len(at.metric) == 0
    held = next(e for e in at.expander if e.label.startswith("Probabilities (held back"))
    assert list(held.dataframe[0].value["Class"]) and len(at.dataframe) == 1
    captions = [caption for image in at.image for caption in image.captions]
    assert any(c.startswith("Grad-CAM") and "not to be interpreted" in c for c in captions)


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
    from covid_models.explain import heatmap
    from covid_models.segmentation import Segmenter, cam_mass_inside

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
