"""How a reader works through a review session: a blinded reading is recorded, then the model's reading is revealed on
the same item, then agreed or disagreed with; file names stay hidden while blinded; the keys listed are the keys that
work; a whole CT scan is read in the CT scan page's viewer, whose scrubber and windows run no model."""
# ruff: noqa: F811  (the review page's fixtures are imported from test_app_review and requested by name)
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from test_app_review import (  # noqa: F401  (the fixtures are used by name)
    _captions,
    _everything_shown,
    _page,
    _run,
    _shown_position,
    _start_from_data,
    _start_with_scan,
    _verdict,
    ct_only,
    database,
    folders,
    scan_zip,
    store,
)

import covid_models.analysis.scan_analysis
import covid_models.models.inference
import covid_models.models.segmentation
from covid_models.formatting import class_name
from pages.shared import READING_LABEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _legend(at: AppTest) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Keys: "))


def _names(store, session: int) -> list[str]:
    return [item.display_name for item in store.items(session)]


def test_a_blinded_reading_reveals_the_models_reading_on_the_same_item_then_agree_moves_on(
        folders, database, store, monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=3, blinded=True)
    assert _shown_position(at) == "#### Image 1 of 3", "a neutral title: no file name"
    assert not any(name in _everything_shown(at) for name in _names(store, session)), "no file name anywhere"
    legend = _legend(at)
    assert "1-9 your reading" in legend and "U unsure" in legend and "N non-diagnostic" in legend
    assert "A agree" not in legend and "D disagree" not in legend, "A and D do nothing before the reveal"
    assert not at.metric and not any("Model reading" in m.value for m in at.markdown)

    at.button(key="review-reading-normal").click()
    _run(at)
    first = store.item(session, 0)
    assert (first.reviewer_label, first.version) == ("normal", 1)
    assert int(at.session_state["review-position"]) == 0, "the reader stays on the image they read"
    assert _shown_position(at) == "#### Image 1 of 3"
    assert f"Model reading: **{class_name(first.predicted_label)}**" in [m.value for m in at.markdown], "revealed here"
    assert {m.label: m.value for m in at.metric}["COVID-19 probability"] == f"{first.covid_probability:.1%}"
    assert any("Your blinded reading: **normal**. The model's reading is now shown" in i.value for i in at.info)
    legend = _legend(at)
    assert "A agree" in legend and "D disagree" in legend and "your reading" not in legend
    assert not at.button(key="review-agree").disabled
    assert not any(name in _everything_shown(at) for name in _names(store, session)), "still no file name"

    _verdict(at, "agree")
    agreed = store.item(session, 0)
    assert (agreed.verdict, agreed.version) == ("agree", 2), "the verdict after the reveal, the reading kept before it"
    assert [entry.reviewer_label for entry in store.history(session, 0)][0] == "normal"
    assert int(at.session_state["review-position"]) == 1 and _shown_position(at) == "#### Image 2 of 3"
    assert not at.metric, "the next image is blinded again"


def test_an_open_session_shows_file_names_and_the_agree_and_disagree_keys(folders, database, store,
                                                                        monkeypatch) -> None:
    at = _page(folders, database, monkeypatch)
    session = _start_from_data(at, n=2)
    assert _shown_position(at) == f"#### Image 1 of 2: {store.item(session, 0).display_name}"
    legend = _legend(at)
    assert "A agree" in legend and "D disagree" in legend and "your reading" not in legend


def _count_model_calls(monkeypatch) -> list[str]:
    """Every run of a network (classifier, segmenter, slice heatmap, scan analysis) recorded as it is made."""
    import pages.scan_viewer
    import pages.shared

    calls: list[str] = []
    targets = [(covid_models.models.inference.Classifier, "predictions"),
               (covid_models.models.segmentation.Segmenter, "probability"),
               (pages.scan_viewer, "slice_heatmap"), (pages.shared, "analyse_scan")]  # where each is looked up
    for owner, name in targets:
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_a_scan_item_is_read_in_the_scan_viewer_whose_scrubber_windows_and_masks_run_no_model(
        ct_only, database, store, scan_zip, monkeypatch) -> None:
    at = _page(ct_only, database, monkeypatch, data=False)
    session = _start_with_scan(at, scan_zip)
    prefix = f"review-scan-{session}-0"
    calls = _count_model_calls(monkeypatch)
    at.slider(key=f"{prefix}-slice").set_value(7)
    _run(at)
    at.radio(key=f"{prefix}-window").set_value("mediastinum")
    _run(at)
    at.slider(key=f"{prefix}-row").set_value(10)
    _run(at)
    at.toggle(key=f"{prefix}-lungs").set_value(False)
    _run(at)
    at.toggle(key=f"{prefix}-infection").set_value(False)
    _run(at)
    assert calls == [], "scrubbing, windows and masks redraw from the cached analysis"
    captions = _captions(at)
    assert any(c.startswith("Axial slice 7 of 40: ") for c in captions)
    assert any(c.startswith("Coronal view") for c in captions)
    assert at.get("plotly_chart") and any("Zone" in frame.value.columns for frame in at.dataframe)
    assert at.radio(key=f"{prefix}-window").value == "mediastinum"


def test_a_blinded_scan_item_scrubs_and_windows_without_masks_then_reveals_them_on_the_same_item(
        ct_only, database, store, scan_zip, monkeypatch) -> None:
    at = _page(ct_only, database, monkeypatch, data=False)
    session = _start_with_scan(at, scan_zip, blinded=True)
    prefix = f"review-scan-{session}-0"
    item = store.item(session, 0)
    assert _shown_position(at) == "#### CT scan 1 of 1", "no file name while blinded"
    assert "phantom.zip" not in _everything_shown(at)
    assert at.slider(key=f"{prefix}-slice").value == 21, "the middle slice, not the model's most suspicious one"
    calls = _count_model_calls(monkeypatch)
    at.slider(key=f"{prefix}-slice").set_value(5)
    _run(at)
    at.radio(key=f"{prefix}-window").set_value("bone")
    _run(at)
    assert calls == []
    assert not [t for t in at.toggle if t.key.startswith(prefix)], "no mask or heatmap toggle before the reading"
    assert [c.split(":")[0] for c in _captions(at)][0] == "Axial slice 5 of 40", "no slice probability"
    assert not at.metric and not at.get("plotly_chart")
    assert f"{item.covid_probability:.1%}" not in _everything_shown(at)

    at.button(key="review-reading-covid").click()
    _run(at)
    assert int(at.session_state["review-position"]) == 0
    assert {m.label for m in at.metric} >= {READING_LABEL, "Lesion burden"}
    assert at.toggle(key=f"{prefix}-lungs").value, "the masks appear once the reading is recorded"
    assert at.get("plotly_chart")
    assert calls == [], "the reveal draws the cached analysis"
