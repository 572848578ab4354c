"""The chest-image check: colour, both guards, the lung fields (the segmenter's, or dark regions enclosed by the
body); and which modality an image is analysed as. Grey photographs are refused by the shipped models."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import chest_like_png
from PIL import Image

import covid_models.analysis.image_checks as image_checks
from covid_models.analysis.image_checks import (
    MAX_COLOURED_SHARE,
    MIN_ENCLOSED_DARK,
    ModalityChoice,
    check_image,
    choose_modality,
    coloured_share,
    detected_modality,
    enclosed_dark_share,
    lung_fields,
    lung_mask,
)
from covid_models.benchmarking import photographs
from covid_models.imaging.io import read_image


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_colour_photograph_is_coloured_and_a_grey_film_saved_as_rgb_is_not():
    from sklearn.datasets import load_sample_image

    assert coloured_share(jpeg(load_sample_image("china.jpg")), "RGB") > MAX_COLOURED_SHARE
    grey = np.asarray(Image.open(io.BytesIO(chest_like_png(size=128))))
    assert coloured_share(jpeg(np.stack([grey] * 3, axis=2)), "RGB") == pytest.approx(0.0, abs=0.005)
    assert coloured_share(chest_like_png(), "L") == 0.0  # greyscale modes are not even opened


def ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]] / np.array(shape)[:, None, None]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def test_two_lung_fields_on_either_side_are_plausible_one_blob_is_not():
    lungs = ellipse((100, 100), 0.5, 0.3, 0.3, 0.13) | ellipse((100, 100), 0.5, 0.7, 0.3, 0.13)
    area, plausible = lung_fields(lungs)
    assert 0.2 < area < 0.3 and plausible
    assert not lung_fields(ellipse((100, 100), 0.5, 0.5, 0.3, 0.3))[1]
    assert not lung_fields(np.zeros((50, 50), bool))[1]
    assert not lung_fields(ellipse((100, 100), 0.5, 0.2, 0.3, 0.1) | ellipse((100, 100), 0.5, 0.4, 0.05, 0.05))[1]


def test_the_guards_name_a_modality_only_when_one_clearly_accepts():
    assert detected_modality({"xray": 3.0, "ct": 0.4}) == "ct"
    assert detected_modality({"xray": 0.5, "ct": 2.0}) == "xray"
    assert detected_modality({"xray": 0.9, "ct": 0.95}) is None  # both accept about equally
    assert detected_modality({"xray": 1.5, "ct": 2.0}) is None  # neither accepts
    assert detected_modality({"xray": 0.5}) is None  # one guard cannot compare


def test_the_modality_comes_from_the_tag_then_the_dataset_then_a_confirmed_setting():
    assert choose_modality("ct", None, "xray", "xray").modality == "ct"
    assert choose_modality(None, "ct", "xray", "xray") == ModalityChoice("ct", "from the dataset")
    asked = choose_modality(None, None, "ct", "xray")
    assert asked.ask == ("ct", "xray")
    assert choose_modality(None, None, "xray", "xray").ask is None
    assert "could not tell" in choose_modality(None, None, None, "xray").origin


def test_an_image_both_guards_reject_without_lung_fields_is_refused_with_the_reason(monkeypatch):
    ratios = {"xray": 4.0, "ct": 6.0}
    monkeypatch.setattr(image_checks, "guard_prediction", lambda classifier, scan, hold=None: None)
    monkeypatch.setattr(image_checks, "guard_ratio", lambda classifier, prediction: ratios[classifier])
    scan = read_image(chest_like_png())
    check = check_image(scan, b"", {"xray": "xray", "ct": "ct"})  # the stub guard_ratio takes the modality
    assert check.refused and check.modality is None
    assert check.reasons == ("it looks neither like a chest X-ray nor like a chest CT the models were trained on",)
    ratios["ct"] = 0.5
    assert not check_image(scan, b"", {"xray": "xray", "ct": "ct"}).refused
    ratios["ct"] = 6.0
    assert not check_image(scan, b"", {"xray": "xray"}).refused  # one guard alone refuses nothing


def test_a_dicom_is_never_reopened_by_pillow_for_its_colours():
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    check = check_image(read_image(data), data, {})
    assert check.coloured_share == 0.0 and not check.refused and check.modality is None


def grey_photograph(name: str = "flower.jpg:crop1:grey") -> bytes:
    """One of the greyscale photographs `scripts/evaluate_image_checks.py` evaluates (this one passed as a CT)."""
    return dict(photographs())[name]


def test_dark_regions_enclosed_by_a_body_count_and_dark_regions_reaching_the_border_do_not():
    shape = (200, 200)
    slice_like = np.where(ellipse(shape, 0.5, 0.5, 0.4, 0.45), 0.9, 0.0)  # a bright body in black air
    slice_like[ellipse(shape, 0.5, 0.3, 0.25, 0.12) | ellipse(shape, 0.5, 0.7, 0.25, 0.12)] = 0.1  # two lungs
    assert 0.15 < enclosed_dark_share(slice_like) < 0.25
    opened = slice_like.copy()
    opened[90:110, :] = 0.0  # a dark band from border to border joins the lungs to the air outside
    assert enclosed_dark_share(opened) < MIN_ENCLOSED_DARK
    assert enclosed_dark_share(np.full(shape, 0.5)) == 0.0  # nothing dark at all
    assert enclosed_dark_share(read_image(chest_like_png()).pixels) >= MIN_ENCLOSED_DARK


def test_an_image_the_ct_guard_accepts_without_lung_fields_is_refused_with_the_reason(monkeypatch):
    ratios = {"xray": 4.0, "ct": 0.5}
    monkeypatch.setattr(image_checks, "guard_prediction", lambda classifier, scan, hold=None: None)
    monkeypatch.setattr(image_checks, "guard_ratio", lambda classifier, prediction: ratios[classifier])
    data = grey_photograph()
    check = check_image(read_image(data), data, {"xray": "xray", "ct": "ct"})
    assert check.enclosed_dark < MIN_ENCLOSED_DARK
    assert check.refused and check.modality is None
    assert check.reasons == ("it looks neither like a chest X-ray nor like a chest CT slice (no dark lung fields "
                             "inside a body were found in it)",)
    scan = read_image(chest_like_png())  # the same guards, lung fields inside a body: a CT slice
    assert check_image(scan, b"", {"xray": "xray", "ct": "ct"}).modality == "ct"


@pytest.fixture(scope="module")
def shipped_checks():
    """The shipped classifiers' guards and X-ray lung segmenter, as the Analyze page uses them."""
    from conftest import WEIGHTS_DIR

    from covid_models.models.inference import Classifier
    from covid_models.models.segmentation import Segmenter

    guards = {m: Classifier.load(WEIGHTS_DIR / f"{m}-efficientnet-lite0") for m in ("xray", "ct")}
    return guards, Segmenter.load(WEIGHTS_DIR / "xray-lungs-unet")


def checked(data: bytes, name: str, guards, lungs):
    """The check of one file as the Analyze page makes it (the lung mask at display size, shared with the analysis)."""
    scan = read_image(data, name=name)
    return check_image(scan, data, guards, lung_mask(lungs, scan))


@pytest.mark.slow
def test_the_shipped_models_refuse_every_grey_photograph_the_evaluation_uses(shipped_checks):
    """18 greyscale photographs (whole and cropped), the kind a colour check alone lets through as CT slices."""
    guards, lungs = shipped_checks
    passed = [name for name, data in photographs() if name.endswith(":grey")
              and not checked(data, name, guards, lungs).refused]
    assert passed == []


@pytest.mark.slow
@pytest.mark.real_data
def test_the_shipped_models_accept_held_out_chest_x_rays_and_ct_slices(real_data, shipped_checks):
    """A seeded sample of 8 held-out images per group (X-ray and CT test splits, Hannover films): the measured false
    refusal rate is about 2 % (README), so at most one of the 24 may be refused."""
    from scripts.evaluate_image_checks import chest_images

    guards, lungs = shipped_checks
    refused = [f"{group}: {name}" for group, name, data in chest_images(real_data, per_group=8)
               if checked(data, name, guards, lungs).refused]
    assert len(refused) <= 1, refused
