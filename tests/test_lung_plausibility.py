"""An implausible X-ray lung mask is said so, and no share of the heatmap inside it is shown anywhere: not on the
Analyze or Review page, not in a report (a film whose mask missed a lung once read "55 % of the heatmap inside the
lungs" in green)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_fixtures import chest_like_png, make_weights_dir, page_test
from app_fixtures_b import make_data_dir, point_app_at, register_on_review_page
from PIL import Image

import pages.analyze_compute
from covid_models.analysis.image_analysis import analyse, report_content
from covid_models.analysis.lung_plausibility import AREA, MIN_BALANCE, MIN_FILL, MIN_HEIGHT, implausible, measure
from covid_models.analysis.overlays import display_size
from covid_models.analysis.report import render_html
from covid_models.imaging.io import read_image
from covid_models.models.inference import Classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
NO_PAIR = "does not look like a pair of lungs"
SHARE = "of the heatmap lies inside the lungs"


def ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[:shape[0], :shape[1]]
    return ((y - cy * shape[0]) / (ry * shape[0])) ** 2 + ((x - cx * shape[1]) / (rx * shape[1])) ** 2 <= 1


def two_lungs(shape: tuple[int, int]) -> np.ndarray:
    return ellipse(shape, 0.5, 0.3, 0.3, 0.13) | ellipse(shape, 0.5, 0.7, 0.3, 0.13)


def one_lung(shape: tuple[int, int]) -> np.ndarray:
    """The left lung alone: the mask of a film whose right hemithorax is white."""
    return ellipse(shape, 0.5, 0.7, 0.3, 0.13)


def test_two_lung_fields_are_plausible_one_a_sliver_or_a_whole_film_are_not():
    shape = (200, 200)
    assert implausible(two_lungs(shape)) is None
    assert "one lung field" in implausible(one_lung(shape))
    assert "one lung field is" in implausible(one_lung(shape) | ellipse(shape, 0.5, 0.3, 0.1, 0.05))
    assert implausible(np.ones(shape, bool)) is not None


def test_the_ranges_hold_every_training_mask_of_the_lung_segmenter(real_data: Path):
    folder = real_data / "segmentation" / "xray-lungs"
    shapes = [measure(np.asarray(Image.open(folder / path).convert("L")) > 127)
              for path in pd.read_csv(folder / "manifest.csv")["mask"]]
    assert len(shapes) > 300 and all(shape.sides for shape in shapes)
    assert AREA[0] <= min(s.area for s in shapes) and max(s.area for s in shapes) <= AREA[1]
    assert MIN_BALANCE <= min(s.balance for s in shapes) < MIN_BALANCE + 0.01, "the ranges are the masks', rounded"
    assert MIN_FILL <= min(s.fill for s in shapes) < MIN_FILL + 0.01
    assert MIN_HEIGHT <= min(s.height for s in shapes) < MIN_HEIGHT + 0.01


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("plausibility"))


def test_a_mask_missing_one_lung_gives_no_share_and_says_why_in_the_report(weights: Path):
    scan = read_image(chest_like_png(seed=7))
    mask = one_lung(display_size(scan.pixels.shape))
    analysis = analyse(scan, [Classifier.load(weights / "xray-fixture-a")], masks={"lungs": mask})
    assert "lungs" not in analysis.shares and analysis.lung_share is None
    texts = [signal.text for signal in analysis.signals]
    assert any(NO_PAIR in text and "one lung field" in text for text in texts)
    assert not any(SHARE in text for text in texts)
    content = report_content(analysis, "film.png", "Grad-CAM")
    html = render_html(content)
    assert content.lung_share is None and NO_PAIR in html and "Heatmap inside the lungs" not in html


def test_the_analyze_page_says_the_lung_mask_is_implausible_and_shows_no_share(weights: Path, monkeypatch):
    monkeypatch.setattr(pages.analyze_compute, "lung_mask",
                        lambda lungs, scan, hold=None: one_lung(display_size(scan.pixels.shape)))
    at = page_test("pages/analyze.py", weights, monkeypatch).run()
    at.file_uploader(key="uploads").set_value([("chest.png", chest_like_png(seed=7), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [e.value for e in (*at.success, *at.warning, *at.caption, *at.markdown)]
    assert any(NO_PAIR in text for text in at.warning.values)
    assert not any(SHARE in text for text in shown)


def test_the_review_page_says_the_lung_mask_is_implausible_and_shows_no_share(tmp_path_factory, monkeypatch):
    """The fixture's untrained lung segmenter outlines most of the film: implausible, so no share."""
    root = tmp_path_factory.mktemp("plausibility-review")
    weights, data = make_weights_dir(root), make_data_dir(root)
    point_app_at(monkeypatch, root / "reviews.sqlite3", data)
    at = page_test("pages/review.py", weights, monkeypatch)
    at.run(timeout=120)
    register_on_review_page(at, "Dr Ada Test", "ada's test passphrase")
    at.radio(key="review-source").set_value("data")
    at.run(timeout=120)
    at.number_input(key="review-n").set_value(1)
    at.button(key="review-start").click()
    at.run(timeout=120)
    assert not at.exception, [e.value for e in at.exception]
    assert any(NO_PAIR in text for text in at.warning.values)
    assert not any(SHARE in e.value for e in (*at.success, *at.warning, *at.caption))
