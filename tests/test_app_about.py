"""About page: purpose, the research-use notice, the data sources with licences, and the shipped models."""
from __future__ import annotations

import pytest
from app_fixtures import make_weights_dir, page_test

from covid_models import RESEARCH_USE_NOTICE


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights_dir(tmp_path_factory.mktemp("about"))


def shown_text(at) -> str:
    parts = [e.value for e in (*at.markdown, *at.warning, *at.info, *at.caption, *at.title, *at.header)]
    return "\n".join(str(p) for p in parts)


def test_about_shows_the_notice_sources_with_licences_and_the_models(weights, monkeypatch):
    at = page_test("pages/about.py", weights, monkeypatch).run()
    assert not at.exception
    assert RESEARCH_USE_NOTICE in shown_text(at)
    assert "Intended use" in shown_text(at)
    sources, models = at.table[0].value, at.table[1].value.reset_index()
    for source in ("ieee8023", "NIH", "UCSD", "V7 Labs", "Inf-Net"):
        assert sources.index.str.contains(source).any(), source
    assert sources["Licence"].str.contains("CC BY-NC-SA 4.0").any()
    assert sources["Licence"].str.contains("Non-commercial").any()
    assert sources["Cite"].str.contains("arXiv:2006.11988").any()
    classifiers = models[models["Task"] == "classification"]
    assert sorted(classifiers["Model"]) == ["ct-fixture", "xray-fixture-a", "xray-fixture-b"]
    assert classifiers["Test result"].str.startswith("AUC ").all()
    segmenters = models[models["Task"] == "segmentation"]
    assert list(segmenters["Test result"]) == ["mean Dice 0.500 (test, 95% CI 0.400-0.600)"] * 2
    assert dict(zip(segmenters["Model"], segmenters["Output"], strict=True)) == {
        "ct-infection-fixture": "infection (GGO, consolidation) masks", "xray-lungs-fixture": "lung masks"}


def test_about_says_where_models_are_missing_instead_of_failing(tmp_path, monkeypatch):
    at = page_test("pages/about.py", tmp_path / "empty", monkeypatch).run()
    assert not at.exception
    assert "No model directories were found" in shown_text(at)
    assert len(at.table) == 1  # the sources only


def test_the_app_opens_on_analyze_with_the_notice_in_the_sidebar(weights, monkeypatch):
    """(AppTest's switch_page runs the page without the entry script; the browser test checks other pages.)"""
    at = page_test("streamlit_app.py", weights, monkeypatch).run()
    assert not at.exception
    assert at.title[0].value == "Analyze chest images"
    assert RESEARCH_USE_NOTICE in [w.value for w in at.sidebar.warning]


def test_the_shipped_models_headline_auc_has_its_within_source_auc_beside_it(monkeypatch):
    """The About table puts ieee8023's within-source AUC next to the pooled 0.948."""
    from conftest import WEIGHTS_DIR

    at = page_test("pages/about.py", WEIGHTS_DIR, monkeypatch).run()
    assert not at.exception
    models = at.table[1].value
    xray = models.loc["xray-efficientnet-lite0"]
    assert xray["Test result"].startswith("AUC 0.948")
    assert xray["Within source"].startswith("within ieee8023 (65 test images): AUC 0.605")
    assert models.loc["xray-lungs-unet", "Within source"] == "n/a"
