"""The classical lung mask on phantoms with exact boxes (outside air, padding, trachea, bowel gas, vessel, lesion)
and on the COPDGene scan against its reference label map."""
from __future__ import annotations

import numpy as np
import pytest
from scan_phantoms import LEFT_LUNG, RIGHT_LUNG, SPACING, box_voxels, phantom

from covid_models.imaging.lung_mask import LEFT, RIGHT, from_grid, grid_factor, segment_lungs, to_grid
from covid_models.imaging.volumes import read_label_volume, read_volume


def expected_labels(shape=(40, 64, 64)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[RIGHT_LUNG] = RIGHT  # the patient's right: the low columns (viewer's left)
    labels[LEFT_LUNG] = LEFT
    return labels


def test_the_lungs_of_the_phantom_exactly_without_trachea_bowel_gas_or_outside_air():
    fractions = []
    mask = segment_lungs(phantom(), SPACING, progress=fractions.append)
    assert mask.factor == 1
    np.testing.assert_array_equal(mask.labels, expected_labels())  # vessel and lesion filled in, airways out
    assert mask.volume_ml(RIGHT) == pytest.approx(box_voxels(RIGHT_LUNG) * 2.5 * 1.5 * 1.5 / 1000)
    assert mask.volume_ml() == pytest.approx((box_voxels(RIGHT_LUNG) + box_voxels(LEFT_LUNG)) * 5.625e-3)
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_a_fine_scan_is_masked_on_a_coarser_grid_with_the_same_result():
    fine = phantom(scale=2)
    mask = segment_lungs(fine, (2.5, 0.75, 0.75))
    assert mask.factor == 2 and mask.spacing == pytest.approx(SPACING)
    np.testing.assert_array_equal(mask.labels, expected_labels())
    body = (slice(None), slice(8, 56), slice(4, 60))  # the padding circle is drawn at each scale, so differs
    np.testing.assert_array_equal(to_grid(fine, 2)[body], phantom()[body])
    np.testing.assert_array_equal(from_grid(mask.labels[20], 2, (129, 128))[:128], np.kron(mask.labels[20],
                                                                                            np.ones((2, 2), np.uint8)))


def test_grid_factor():
    assert [grid_factor(s) for s in (0.5, 0.7, 1.0, 1.5, 4.2)] == [3, 2, 1, 1, 1]


def test_no_lungs_gives_an_empty_mask():
    body = np.full((5, 32, 32), 40, dtype=np.int16)
    assert not segment_lungs(body, (2.0, 1.5, 1.5)).labels.any()


@pytest.mark.real_data
def test_copdgene_lung_dice_against_its_reference_mask(real_data):
    folder = real_data / "ct-volumes" / "copdgene-10002k-64"
    volume = read_volume(folder / "dicom")
    reference = read_label_volume(folder / "lung-mask.nii.gz") > 0
    mask = segment_lungs(volume.hu, volume.spacing).labels > 0
    dice = 2 * np.count_nonzero(mask & reference) / (np.count_nonzero(mask) + np.count_nonzero(reference))
    assert dice >= 0.95, f"lung Dice {dice:.3f}"
