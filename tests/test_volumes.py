"""Reading CT volumes: DICOM series (files, folders, zips) and NIfTI into the canonical orientation, and every bad
series refused with a clear message. Phantoms come from scan_phantoms; the real scans from ../shared/data."""
from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scan_phantoms import SPACING, dicom_series, nifti_ras, phantom, zipped

from covid_models.imaging.ct_volume import VolumeLimits, VolumeReadError
from covid_models.imaging.scan import ImageReadError
from covid_models.imaging.volumes import read_label_volume, read_volume

HU = phantom()


def shuffled(files, seed=0):
    files = list(files)
    random.Random(seed).shuffle(files)
    return files


def assert_phantom(volume, hu=HU, spacing=SPACING):
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing == pytest.approx(spacing)


def test_shuffled_files_come_back_in_order_with_the_real_slice_step_and_hu():
    volume = read_volume(shuffled(dicom_series(HU)))
    assert_phantom(volume)  # order, HU (stored + 1024, intercept -1024), spacing 2.5 mm (not SliceThickness 5)
    assert volume.metadata.sorted_by.startswith("ImagePositionPatient")
    assert volume.metadata.shape == HU.shape
    assert volume.voxel_ml == pytest.approx(2.5 * 1.5 * 1.5 / 1000)


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (-1, 0, 0, 0, 1, 0)])
@pytest.mark.parametrize("feet_first", [False, True])
def test_any_axial_storage_reads_back_to_the_canonical_orientation(orientation, feet_first):
    volume = read_volume(shuffled(dicom_series(HU, orientation=orientation, feet_first=feet_first), seed=1))
    assert_phantom(volume)


def test_instance_number_is_the_fallback_without_positions():
    volume = read_volume(shuffled(dicom_series(HU, positions=False, slice_thickness=2.5)))
    assert_phantom(volume)
    assert volume.metadata.sorted_by.startswith("InstanceNumber")


def test_a_nested_folder_with_other_files(tmp_path):
    folder = tmp_path / "export" / "a" / "b"
    folder.mkdir(parents=True)
    for name, data in dicom_series(HU):
        (folder / name).write_bytes(data)
    (tmp_path / "export" / "README.txt").write_text("not dicom")
    volume = read_volume(tmp_path / "export")
    assert_phantom(volume)
    assert any("not DICOM" in note for note in volume.metadata.notes)


def test_a_zip_with_nested_folders_as_bytes_or_as_the_one_upload(tmp_path):
    archive = zipped(shuffled(dicom_series(HU)), folder="Patient/Study/Series 2/")
    assert_phantom(read_volume(archive, name="scan.zip"))
    assert_phantom(read_volume([("scan.zip", archive)]))
    path = tmp_path / "scan.zip"
    path.write_bytes(archive)
    assert_phantom(read_volume(path))


@pytest.mark.parametrize("gz", [True, False])
def test_nifti_in_ras_is_reoriented_with_its_spacing(gz, tmp_path):
    data = nifti_ras(HU, gz=gz)
    assert_phantom(read_volume(data, name="ct.nii.gz" if gz else "ct.nii"))
    path = tmp_path / ("ct.nii.gz" if gz else "ct.nii")
    path.write_bytes(data)
    assert_phantom(read_volume(path))
    assert read_volume(path).metadata.source_format == "nifti"


def test_nifti_label_map_reads_in_the_same_orientation():
    labels = (HU == -850).astype(np.int16)
    np.testing.assert_array_equal(read_label_volume(nifti_ras(labels)), labels)


def test_several_series_the_largest_axial_ct_by_default_and_the_others_listed():
    small = dicom_series(HU[:10])
    other_modality = dicom_series(np.concatenate([HU, HU]), modality="MR", study_uid="1.2.3")
    volume = read_volume(shuffled(small + dicom_series(HU) + other_modality))
    assert_phantom(volume)
    series = volume.metadata.series
    assert [info.slices for info in series] == [40, 10, 80]  # axial CT first, then by size
    assert [info.modality for info in series] == ["CT", "CT", "MR"]
    assert volume.metadata.chosen_series == 0
    np.testing.assert_array_equal(read_volume(small + dicom_series(HU), series=1).hu, HU[:10])
    with pytest.raises(VolumeReadError, match="not CT"):
        read_volume(small + other_modality, series=1)


def test_the_metadata_carries_no_identifier():
    identifiers = {"PatientName": "Doe^Janet", "PatientID": "PID-48151623", "AccessionNumber": "ACC-42",
                   "InstitutionName": "St Elsewhere Hospital", "PatientBirthDate": "19450101"}
    files = dicom_series(HU[:5], identifiers=identifiers, study_uid="1.2.826.0.1.4815162342",
                         series_uid="1.2.826.0.1.4815162343")
    text = repr(read_volume(files).metadata)
    for value in (*identifiers.values(), "4815162342", "4815162343", "Janet"):
        assert value not in text


# ------------------------------------------------------------------------------------------------- bad input
def _modify(files, index, **changes):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(files[index][1]))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return [*files[:index], (files[index][0], buffer.getvalue()), *files[index + 1:]]


def _mixed_sizes():
    uids = {"study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5"}
    return dicom_series(HU[:5], **uids)[:3] + dicom_series(np.zeros((2, 32, 32), np.int16) - 1000, **uids)


BAD_SERIES = {
    "non-CT": (lambda: dicom_series(HU[:5], modality="MR"), "MR, not CT"),
    "single slice": (lambda: dicom_series(HU[:1]), "at least 3 slices"),
    "inconsistent orientation": (lambda: _modify(dicom_series(HU[:5]), 2, ImageOrientationPatient=[1, 0, 0, 0, 0.9,
                                                                                                     0.43589]),
                                 "inconsistent orientation"),
    "inconsistent pixel spacing": (lambda: _modify(dicom_series(HU[:5]), 2, PixelSpacing=[1.0, 1.0]),
                                   "inconsistent spacing"),
    "gap": (lambda: [f for i, f in enumerate(dicom_series(HU[:10])) if i not in (4, 5)], "2 slice\\(s\\) are missing"),
    "uneven steps": (lambda: _modify(dicom_series(HU[:6]), 3, ImagePositionPatient=[-48, -48, -8.4]),
                     "inconsistent spacing"),
    "duplicate position": (lambda: _modify(dicom_series(HU[:5]), 2, ImagePositionPatient=[-48, -48, -2.5]),
                           "same position"),
    "mixed sizes": (_mixed_sizes, "different sizes"),
    "sagittal": (lambda: dicom_series(HU[:5], orientation=(0, 1, 0, 0, 0, -1)), "not axial"),
    "no image": (lambda: [("notes.txt", b"hello")], "No DICOM image"),
    "nothing": (lambda: [], "Nothing was uploaded"),
    "empty file": (lambda: [("a.zip", b"")], "empty"),
}


@pytest.mark.parametrize("case", list(BAD_SERIES))
def test_a_bad_series_is_refused_with_a_clear_message(case):
    build, message = BAD_SERIES[case]
    with pytest.raises(VolumeReadError, match=message) as caught:
        read_volume(build())
    assert isinstance(caught.value, ImageReadError)  # the pages catch one error type for every upload


def test_slice_and_voxel_limits_are_checked_before_decoding():
    files = dicom_series(HU[:10])
    with pytest.raises(VolumeReadError, match="at most 5 can be analysed"):
        read_volume(files, limits=VolumeLimits(max_slices=5))
    with pytest.raises(VolumeReadError, match="million voxels"):
        read_volume(files, limits=VolumeLimits(max_voxels=10 * 64 * 64 - 1))


def test_a_zip_path_that_climbs_out_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in dicom_series(HU[:5]):
            archive.writestr("../../" + name, data)
    with pytest.raises(VolumeReadError, match="climbs out"):
        read_volume(buffer.getvalue(), name="x.zip")


def test_a_zip_bomb_is_refused_by_its_declared_size():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.dcm", b"\x00" * (8 * 2**20))
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(VolumeReadError, match="inflates to"):
        read_volume(buffer.getvalue(), limits=VolumeLimits(max_total_bytes=2**20))


def _patch_declared_sizes(data: bytes, new_size: int) -> bytes:
    """A zip whose headers lie: every member declares `new_size` bytes uncompressed."""
    raw = bytearray(data)
    position = 0
    while (position := raw.find(b"PK\x01\x02", position)) >= 0:  # central directory entries
        raw[position + 24:position + 28] = new_size.to_bytes(4, "little")
        position += 4
    position = 0
    while (position := raw.find(b"PK\x03\x04", position)) >= 0:  # local headers
        raw[position + 22:position + 26] = new_size.to_bytes(4, "little")
        position += 4
    return bytes(raw)


def test_a_zip_that_inflates_beyond_what_it_declares_is_stopped():
    archive = zipped(dicom_series(HU[:5]))
    with pytest.raises(VolumeReadError, match="zip bomb|damaged"):
        read_volume(_patch_declared_sizes(archive, 1000), name="x.zip")


def test_an_encrypted_zip_is_refused():
    raw = bytearray(zipped(dicom_series(HU[:5])))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = 0
        while (position := raw.find(signature, position)) >= 0:
            raw[position + offset] |= 0x1
            position += 4
    with pytest.raises(VolumeReadError, match="encrypted"):
        read_volume(bytes(raw), name="x.zip")


def test_a_truncated_zip_or_nifti_is_refused():
    with pytest.raises(VolumeReadError, match="damaged"):
        read_volume(zipped(dicom_series(HU[:5]))[:1500], name="x.zip")
    with pytest.raises(VolumeReadError, match="damaged|cut short"):
        data = nifti_ras(HU)
        read_volume(data[: len(data) // 2], name="ct.nii.gz")


def test_a_nifti_that_is_not_ct_is_refused():
    with pytest.raises(VolumeReadError, match="does not look like a CT"):
        read_volume(nifti_ras((HU == -850).astype(np.int16)), name="mask.nii.gz")


def test_a_corrupt_slice_is_a_clear_error_not_a_traceback():
    files = dicom_series(HU[:5])
    name, data = files[2]
    files[2] = (name, data[: len(data) - 4000])
    with pytest.raises(VolumeReadError, match="could not be decoded"):
        read_volume(files)


# ------------------------------------------------------------------------------------------------ real scans
def ct_volumes(real_data: Path) -> Path:
    folder = real_data / "ct-volumes"
    if not (folder / "manifest.csv").is_file():
        pytest.fail(f"{folder} is missing from the real data")
    return folder


@pytest.mark.real_data
def test_the_shared_scans_read_with_their_geometry(real_data):
    folder = ct_volumes(real_data)
    pet = read_volume(folder / "lung-pet-ct-dx-a0002" / "dicom")
    assert pet.hu.shape == (30, 512, 512) and pet.spacing == pytest.approx((8.0, 0.646484375, 0.646484375))
    copd = read_volume(folder / "copdgene-10002k-64" / "dicom")
    nifti = read_volume(folder / "copdgene-10002k-64" / "ct.nii.gz")
    np.testing.assert_array_equal(copd.hu, nifti.hu)  # DICOM and NIfTI land in the same orientation
    assert copd.spacing == pytest.approx(nifti.spacing, abs=1e-3)
    assert read_label_volume(folder / "copdgene-10002k-64" / "lung-mask.nii.gz").shape == copd.hu.shape


@pytest.mark.real_data
@pytest.mark.slow
def test_the_compressed_ricord_series_reads(real_data):
    volume = read_volume(ct_volumes(real_data) / "ricord-1a-000082" / "dicom")
    assert volume.hu.shape == (255, 512, 512)
    assert volume.spacing == pytest.approx((1.25, 0.703125, 0.703125))
    assert volume.hu.min() == -3024  # the scan-field padding, kept as HU
    assert "JPEG Lossless" in volume.metadata.summary["TransferSyntax"]


def test_a_zip_holding_one_nifti_reads_it():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("export/ct.nii.gz", nifti_ras(HU))
    volume = read_volume(buffer.getvalue(), name="x.zip")
    assert volume.metadata.source_format == "nifti"
    assert_phantom(volume)
