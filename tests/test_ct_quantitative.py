"""The quantitative CT reading in HU as a specification: density bands and lesion burden on phantoms of known HU and
lesion volume, Pan's severity points on known involvement per zone, small lesions and lesions outside the lungs
ignored, the COVID-19 pattern rule, held-back scans, a single DICOM slice's reading, the heatmap-in-lungs signal, and
every lung-containing slice of the shared scans accepted by the chest-image check."""
from __future__ import annotations

import json

import numpy as np
import pytest
from app_fixtures import CT_CLASSES, write_classifier
from scan_phantoms import (
    ADULT_SCALE,
    ADULT_SPACING,
    LEFT_LUNG,
    LESION,
    LESION_HU,
    RIGHT_LUNG,
    adult_phantom,
    band_segmenter,
    box_voxels,
    dicom_series,
    with_fitted_threshold,
)

from covid_models.analysis.ct_quantitative import (
    DENSITY_BANDS,
    MIN_LESION_ML,
    MIN_LUNG_ML,
    band_percents,
    drop_small_lesions,
    read_slice_quantities,
    severity,
    zone_burdens,
)
from covid_models.analysis.image_analysis import mask_share_signal
from covid_models.analysis.scan_analysis import analyse_scan
from covid_models.imaging.lung_mask import LEFT, RIGHT, LungMask
from covid_models.imaging.volumes import read_volume
from covid_models.models.inference import Classifier

VOXEL_ML = float(np.prod(ADULT_SPACING)) / 1000
GROUND_GLASS_HU = -500


def up(box: tuple[slice, ...]) -> tuple[slice, ...]:
    """A box of the small phantom on the adult phantom's in-plane grid."""
    return box[0], slice(box[1].start * ADULT_SCALE, box[1].stop * ADULT_SCALE), \
        slice(box[2].start * ADULT_SCALE, box[2].stop * ADULT_SCALE)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    directory = write_classifier(tmp_path_factory.mktemp("weights"), "ct-fixture", "ct", CT_CLASSES, seed=3)
    loaded = Classifier.load(directory)
    loaded.card.preprocessing = type(loaded.card.preprocessing)(image_size=64, hu_window=(-600.0, 1500.0))
    return loaded


def analyse(hu: np.ndarray, classifier: Classifier, threshold: float | None = 0.5):
    segmenter = band_segmenter(128)  # the adult phantom's own size: no resampling at the lung's edges
    if threshold is not None:
        with_fitted_threshold(segmenter, threshold)
    return analyse_scan(read_volume(dicom_series(hu, ADULT_SPACING)), classifier, segmenter)


def test_band_percents_follow_the_stated_hu_limits():
    values = np.array([-1000, -951, -950, -701, -700, -301, -300, 49, 50, 400])
    assert band_percents(values) == {"low attenuation": 20.0, "aerated": 20.0, "ground glass": 20.0,
                                     "consolidation": 20.0, "vessels and dense": 20.0}
    assert all(band.source for band in DENSITY_BANDS)


def test_density_bands_and_burden_on_a_phantom_of_known_hu_and_lesion_volume(classifier):
    hu = adult_phantom()
    ground_glass = (slice(11, 15), slice(40, 80), slice(76, 100))  # inside the left lung, above the vessel
    hu[ground_glass] = GROUND_GLASS_HU
    analysis = analyse(hu, classifier)
    reading = analysis.reading
    lung = box_voxels(up(RIGHT_LUNG)) + box_voxels(up(LEFT_LUNG))
    assert not analysis.held_back and reading.lung_total == pytest.approx(lung * VOXEL_ML)
    assert reading.lung["right"] == pytest.approx(box_voxels(up(RIGHT_LUNG)) * VOXEL_ML)
    assert reading.lung_total > MIN_LUNG_ML
    lesion, vessel = box_voxels(up(LESION)), 15 * 6 * 6  # the vessel (40 HU) is filled into the left lung's mask
    assert reading.bands["ground glass"] == pytest.approx(100 * box_voxels(ground_glass) / lung)
    assert reading.bands["consolidation"] == pytest.approx(100 * (lesion + vessel) / lung)
    assert reading.bands["aerated"] == pytest.approx(100 * (lung - lesion - vessel - box_voxels(ground_glass)) / lung)
    # the band 'segmenter' finds the -100 HU lesion (16.2 ml), not the -500 HU ground glass
    assert reading.lesion == pytest.approx({"right": lesion * VOXEL_ML, "left": 0.0})
    assert reading.lesion_percent("right") == pytest.approx(100 * lesion / box_voxels(up(RIGHT_LUNG)))
    assert reading.lesion_bands["consolidation"] == 100.0
    assert reading.bilateral is False and reading.peripheral == 0.0  # one central lesion
    assert analysis.burden.infection_ml == pytest.approx(reading.lesion_total)
    summary = analysis.summary()
    json.dumps(summary)
    assert summary["quantitative"]["lesion_total"] == pytest.approx(lesion * VOXEL_ML, abs=0.01)
    assert summary["quantitative"]["severity"]["score"] == reading.severity_score == 1
    assert summary["positive"] is False and summary["result"].startswith("Pattern not suggestive")


def test_lesions_under_the_minimum_size_and_outside_the_lungs_are_not_counted(classifier):
    hu = adult_phantom()
    speck = (slice(14, 15), slice(40, 42), slice(80, 82))  # 4 voxels, 0.09 ml, in the left lung
    outside = (slice(14, 20), slice(20, 28), slice(60, 68))  # in the body between the lungs, 8.6 ml
    hu[speck] = LESION_HU
    hu[outside] = LESION_HU
    assert box_voxels(speck) * VOXEL_ML < MIN_LESION_ML < box_voxels(outside) * VOXEL_ML
    analysis = analyse(hu, classifier)
    assert analysis.reading.lesion == pytest.approx({"right": box_voxels(up(LESION)) * VOXEL_ML, "left": 0.0})
    assert not analysis.infection[speck].any() and not analysis.infection[outside].any()
    kept = drop_small_lesions(np.pad(np.ones((1, 9, 9), bool), 1), (1.0, 1.0, 1.0))
    assert not kept.any()  # 81 mm3 < 524 mm3
    assert drop_small_lesions(np.ones((9, 9), bool), (1.0, 1.0)).all()  # 81 mm2 >= 78.5 mm2 (a 1 cm disk)


def test_severity_points_follow_pans_grading_on_known_involvement_per_zone():
    labels = np.zeros((30, 10, 20), dtype=np.uint8)
    labels[:, :, :10], labels[:, :, 10:] = RIGHT, LEFT
    lungs = LungMask(labels=labels, factor=1, spacing=(1.0, 1.0, 1.0), midline=10.0)
    lesion = np.zeros(labels.shape, dtype=bool)
    involved = {("right", "upper"): 0, ("right", "middle"): 30, ("right", "lower"): 100, ("left", "upper"): 300,
                ("left", "middle"): 600, ("left", "lower"): 800}  # of 1000 voxels per zone
    for (side, zone), count in involved.items():
        first = {"upper": 0, "middle": 10, "lower": 20}[zone]
        block = np.zeros(1000, dtype=bool)
        block[:count] = True
        lesion[first:first + 10, :, slice(0, 10) if side == "right" else slice(10, 20)] = block.reshape(10, 10, 10)
    zones = {(z.lung, z.zone): z for z in zone_burdens(lungs, lesion)}
    assert [zones[key].score for key in involved] == [0, 1, 2, 3, 4, 5]
    assert [zones[key].percent for key in involved] == [0.0, 3.0, 10.0, 30.0, 60.0, 80.0]
    assert [severity(p) for p in (0, 0.1, 4.99, 5, 24.9, 25, 49, 50, 74, 75, 100)] == [0, 1, 1, 2, 2, 3, 3, 4, 4,
                                                                                        5, 5]


def bilateral_peripheral(hu: np.ndarray) -> np.ndarray:
    """Lesions (-100 HU) just inside the outer wall of both lungs (surrounded by lung: a consolidation touching the
    chest wall is not lung to the HU mask), over a third of their height."""
    hu = hu.copy()
    right_lung, left_lung = up(RIGHT_LUNG), up(LEFT_LUNG)
    rows = slice(right_lung[1].start + 2, right_lung[1].stop - 2)
    hu[14:26, rows, right_lung[2].start + 2:right_lung[2].start + 6] = LESION_HU
    hu[14:26, rows, left_lung[2].stop - 6:left_lung[2].stop - 2] = LESION_HU
    hu[up(LESION)] = -850  # no central lesion
    return hu


def test_bilateral_peripheral_lesions_over_the_threshold_are_a_pattern_suggestive_of_covid19(classifier):
    analysis = analyse(bilateral_peripheral(adult_phantom()), classifier, threshold=0.5)
    reading = analysis.reading
    assert reading.bilateral and reading.peripheral == 100.0 > reading.lung_peripheral
    assert [c.met for c in reading.criteria] == [True, True, True, True]
    assert reading.suggestive and analysis.positive and reading.verdict.startswith("Pattern suggestive")
    assert reading.fit_on == "a test value" and reading.severity_score >= 6
    above = analyse(bilateral_peripheral(adult_phantom()), classifier, threshold=reading.lesion_percent() + 0.1)
    assert above.reading.suggestive is False and [c.met for c in above.reading.criteria][0] is False
    from test_report import pdf_text

    from covid_models.analysis.ct_quantitative import SECONDARY_LABEL
    from covid_models.analysis.report import render_scan_html, render_scan_pdf
    from covid_models.analysis.scan_views import scan_report_content

    report = scan_report_content(analysis, "scan.zip")
    page, text = render_scan_html(report), pdf_text(render_scan_pdf(report))
    for shown in (page, text):
        assert "Pattern suggestive of COVID-19" in shown and f"{reading.severity_score} / 30" in shown
        assert "bilateral" in shown and "Ground glass (-700 to -300 HU)" in shown
    assert SECONDARY_LABEL in page and report.criteria_rows[0] == ("Criterion", "Measured", "Needed", "Met")
    unfitted = analyse(bilateral_peripheral(adult_phantom()), classifier, threshold=None)
    assert unfitted.reading.suggestive is None and unfitted.positive is None and not unfitted.held_back
    assert "no fitted lesion-burden threshold" in unfitted.reading.verdict


def test_a_coarse_scan_is_held_back_with_its_reason(classifier):
    coarse = analyse_scan(read_volume(dicom_series(adult_phantom()[:, ::2, ::2], (10.0, 3.0, 3.0))), classifier,
                          with_fitted_threshold(band_segmenter(64)))
    assert coarse.held_back and "too coarse" in coarse.reading.held_back
    assert coarse.positive is None and coarse.summary()["burden"] is None


def test_a_single_dicom_slice_gets_the_same_figures_in_cm2():
    hu = adult_phantom()[22].astype(np.float32)
    probability = ((hu > -225) & (hu < 0)).astype(np.float32)  # what the band segmenter finds: the lesion
    found = read_slice_quantities(hu, (1.5, 1.5), probability, 0.5)
    reading = found.reading
    pixel_cm2 = 1.5 * 1.5 / 100
    assert found.has_lungs and reading.unit == "cm2" and reading.held_back is None
    assert reading.lung["right"] == pytest.approx(64 * 36 * pixel_cm2)
    assert reading.lesion == pytest.approx({"right": 12 * 12 * pixel_cm2, "left": 0.0})
    assert reading.zones == () and reading.severity_score is None
    empty = read_slice_quantities(np.full((64, 64), 40.0), (0.7, 0.7))
    assert not empty.has_lungs and "no lung" in empty.reading.held_back


def test_a_heatmap_mostly_outside_the_lungs_gets_the_xray_pages_warning():
    assert mask_share_signal("lungs", 0.3).level == "warning"
    assert "outside the lungs" in mask_share_signal("lungs", 0.3).text
    assert mask_share_signal("lungs", 0.8).level == "success"


@pytest.mark.real_data
@pytest.mark.slow
def test_every_lung_containing_slice_of_the_shared_scans_passes_the_chest_image_check(real_data):
    """Each DICOM slice of the shared scans on which the scan's 3-D lung mask holds lung is accepted as a CT slice."""
    import pydicom
    from app_fixtures import PROJECT_ROOT

    from covid_models.analysis.image_checks import check_image
    from covid_models.imaging.io import read_image
    from covid_models.imaging.lung_mask import segment_lungs
    from covid_models.models.discovery import discover_models

    guards = {modality: Classifier.load(next(d for d, _ in discover_models(PROJECT_ROOT / "weights",
                                                                            "classification", modality)))
              for modality in ("xray", "ct")}
    refused = {}
    for name in ("ricord-1a-000082", "lung-pet-ct-dx-a0001", "lung-pet-ct-dx-a0002", "copdgene-10002k-64"):
        folder = real_data / "ct-volumes" / name / "dicom"
        volume = read_volume(folder)
        with_lung = np.count_nonzero(segment_lungs(volume.hu, volume.spacing).labels, axis=(1, 2)) > 0
        files = sorted((path for path in folder.rglob("*") if path.is_file()),
                       key=lambda path: -float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]))
        assert len(files) == len(with_lung)
        for path, lung in zip(files, with_lung, strict=True):
            if lung:
                data = path.read_bytes()
                check = check_image(read_image(data, name=path.name), data, guards)
                if check.refused or check.modality != "ct":
                    refused.setdefault(name, []).append(path.name)
    assert refused == {}


def test_enclosed_air_in_hu_is_the_lungs_inside_the_body_not_the_air_around_it():
    from covid_models.analysis.ct_quantitative import MIN_ENCLOSED_AIR_MM2, enclosed_air_mm2

    hu = adult_phantom()[22]
    lungs_mm2 = 2 * 64 * 36 * 1.5 * 1.5  # the lesion and the vessel are not air; the table's air channel is enclosed
    expected = lungs_mm2 - (12 * 12 + 6 * 6) * 1.5 * 1.5 + 4 * 88 * 1.5 * 1.5
    assert enclosed_air_mm2(hu, (1.5, 1.5)) == pytest.approx(expected) and expected > MIN_ENCLOSED_AIR_MM2
    below = (12 * 20 + 4 * 88) * 1.5 * 1.5  # below the lungs: bowel gas and the table's channel
    assert enclosed_air_mm2(adult_phantom()[38], (1.5, 1.5)) == pytest.approx(below)
    assert enclosed_air_mm2(np.full((32, 32), -1000.0), (1.0, 1.0)) == 0.0  # air reaching the border


def test_the_periphery_of_a_volume_is_that_of_each_of_its_slices():
    from scipy import ndimage

    from covid_models.analysis.ct_quantitative import peripheral_mask

    rng = np.random.default_rng(0)
    labels = np.zeros((6, 48, 48), np.uint8)
    for index in range(6):
        blob = ndimage.binary_opening(rng.random((48, 48)) > 0.3, iterations=2)
        labels[index][blob] = RIGHT
        labels[index, :, 24:][blob[:, 24:]] = LEFT
    labels[2] = 0  # a slice without lung
    each = np.stack([peripheral_mask(labels[index], (0.8, 0.8)) for index in range(6)])
    np.testing.assert_array_equal(peripheral_mask(labels, (0.8, 0.8)), each)
    disk = np.zeros((61, 61), np.uint8)
    yy, xx = np.mgrid[-30:31, -30:31]
    disk[yy ** 2 + xx ** 2 <= 27 ** 2] = RIGHT
    outer = peripheral_mask(disk, (1.0, 1.0))
    assert 0.45 < outer.sum() / (disk > 0).sum() < 0.6  # the outer third of a disk's radius: 5/9 of its area


def test_the_rule_says_how_often_held_out_non_covid_slices_reach_its_threshold():
    from covid_models.analysis.ct_quantitative import RuleFit

    block = {"lesion_percent_threshold": 0.81, "fit_on": "the 95th percentile on 95 slices",
             "held_out": {"negatives": 104, "false_positive_share": 0.1154}}
    fit = RuleFit.from_card({"ct_reading": block})
    assert fit.lesion_percent == 0.81
    assert fit.fit_on == ("the 95th percentile on 95 slices; 11.5% of the 104 non-COVID slices held out of that fit "
                          "reach it")
    assert RuleFit.from_card({"ct_reading": {**block, "held_out": {}}}).fit_on == "the 95th percentile on 95 slices"
    assert RuleFit.from_card({}) is None
