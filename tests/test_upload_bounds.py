"""Memory and time per upload are bounded by construction: nothing is inflated before it is measured.

Each crafted file below weighs kilobytes to a few megabytes but declares, or inflates to, hundreds of megabytes to
gigabytes. It is read in a fresh process (the library imported first), and the read alone is measured: wall time,
and the peak resident memory above the level just before it (Linux VmHWM, reset before the read). A refusal must
come within REFUSAL_SECONDS and REFUSAL_PEAK_MB, far below what inflating would cost (measured before these
checks: +1,022 MB for the 16000 x 16000 DICOM, +1.24 GB for the zip of 8000 x 8000 slices, 28 s for one 60 MB
zero-filled .dcm). The bounds are generous for a loaded machine: the reads take milliseconds and a few MB.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import PROJECT_ROOT
from crafted_uploads import deflated_ct_slice, float64_ct_nifti, zip_of, zip_of_zero_members
from scan_phantoms import dicom_series, phantom, zipped

from covid_models.imaging.ct_volume import VolumeLimits, VolumeReadError
from covid_models.imaging.nifti import NIFTI_AXES
from covid_models.imaging.volumes import read_volume

HU = phantom()
REFUSAL_SECONDS = 1.0
REFUSAL_PEAK_MB = 100.0
NIFTI_SLACK_MB = 64.0  # a NIfTI read holds its result, the compressed input and one 16 MB slab (with temporaries)

MEASURE = textwrap.dedent("""
    import json, sys, time
    from covid_models.imaging.io import read_dicom_identifiers, read_image
    from covid_models.imaging.scan import ImageReadError
    from covid_models.imaging.volumes import read_volume

    def status_mb(key):  # as covid_models.benchmarking (not imported: it loads torch, seconds on a loaded machine)
        with open("/proc/self/status") as handle:
            return int(next(line for line in handle if line.startswith(key)).split()[1]) / 1024

    call, path, name = sys.argv[1:4]
    data = open(path, "rb").read()
    read = {"image": lambda: read_image(data, name=name), "identifiers": lambda: read_dicom_identifiers(data),
            "volume": lambda: read_volume(data, name=name)}[call]
    before = status_mb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak (VmHWM) starts again from the current level
    start = time.perf_counter()
    try:
        result = read()
        outcome = "read: " + str(getattr(getattr(result, "hu", None), "shape", ""))
    except ImageReadError as error:
        outcome = str(error)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": status_mb("VmHWM:") - before, "outcome": outcome}))
""")


def measured(tmp_path: Path, call: str, data: bytes, name: str) -> dict:
    """Time, peak memory above the level before, and the outcome ('read: ...' or the error message) of one read."""
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    result = subprocess.run([sys.executable, "-c", MEASURE, call, str(path), name], capture_output=True, text=True,
                            timeout=600, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(name, len(data), figures)  # shown with pytest -s: the figures docs/security.md quotes
    return figures


def assert_refused_quickly(figures: dict, message: str) -> None:
    assert message in figures["outcome"], figures
    assert figures["seconds"] < REFUSAL_SECONDS, figures
    assert figures["peak_mb"] < REFUSAL_PEAK_MB, figures


# ---------------------------------------------------------------------------------------------------- DICOM
def test_a_deflated_dicom_declaring_16000_x_16000_pixels_is_refused_before_inflating(tmp_path):
    data = deflated_ct_slice(16000, 16000)  # 512 MB of pixel data in 0.5 MB
    assert len(data) < 1_000_000
    assert_refused_quickly(measured(tmp_path, "image", data, "big.dcm"), "256 megapixels")
    # the 'show header' view reads the header only, never the pixel data
    figures = measured(tmp_path, "identifiers", data, "big.dcm")
    assert figures["seconds"] < REFUSAL_SECONDS and figures["peak_mb"] < REFUSAL_PEAK_MB, figures


def test_a_multi_frame_deflated_dicom_declaring_more_pixel_data_than_a_file_may_hold_is_refused(tmp_path):
    """5 frames of 4000 x 4000: each frame is within the limits, but the 153 MB of pixel data would have to be
    inflated whole. A small one still reads."""
    data = deflated_ct_slice(4000, 4000, frames=5)
    assert_refused_quickly(measured(tmp_path, "image", data, "frames.dcm"), "pixel data would take 153 MB")
    figures = measured(tmp_path, "image", deflated_ct_slice(512, 512, frames=3), "frames.dcm")
    assert figures["outcome"].startswith("read"), figures


def test_a_zero_filled_dcm_is_refused_without_a_forced_parse(tmp_path):
    data = bytes(60 * 2**20)
    assert_refused_quickly(measured(tmp_path, "image", data, "zeros.dcm"), "not a readable image")
    assert_refused_quickly(measured(tmp_path, "volume", data, "zeros.dcm"), "No DICOM image was found")


# ------------------------------------------------------------------------------------------- zips of slices
def test_a_5_kb_zip_of_three_deflated_8000_pixel_slices_is_refused_before_inflating(tmp_path):
    archive = zip_of([(f"s/IM{i}.dcm", deflated_ct_slice(8000, 8000, position=-2.5 * i)) for i in range(3)])
    assert len(archive) < 1_000_000
    assert_refused_quickly(measured(tmp_path, "volume", archive, "slices.zip"), "8000 x 8000 pixels")


def test_a_zip_of_34_zero_filled_60_mb_members_is_refused_by_its_compression_ratio(tmp_path):
    archive = zip_of_zero_members(34, 60 * 2**20)  # 2 MB declaring 2,040 MB: under the 2 GB total limit
    assert len(archive) < 3_000_000
    assert_refused_quickly(measured(tmp_path, "volume", archive, "series.zip"), "more than 50 times its size")


def test_a_zero_filled_member_is_ignored_from_its_first_bytes_without_being_inflated(tmp_path):
    archive = zip_of_zero_members(1, 60 * 2**20)  # one member under the per-file limit: the ratio rule does not apply
    assert_refused_quickly(measured(tmp_path, "volume", archive, "series.zip"), "No DICOM image was found")


def test_a_zip_compressed_beyond_the_ratio_is_refused_but_a_real_series_is_not():
    with pytest.raises(VolumeReadError, match="more than 50 times"):
        read_volume(zip_of_zero_members(2, 40 * 2**20))
    series = zipped(dicom_series(HU))
    assert read_volume(series).hu.shape == HU.shape


def test_a_series_with_a_slice_larger_than_a_ct_slice_is_refused_from_its_header():
    files = dicom_series(HU[:4])
    files.append(("big.dcm", deflated_ct_slice(2100, 2100)))
    with pytest.raises(VolumeReadError, match="2100 x 2100 pixels.*at most 2048 x 2048"):
        read_volume(files)


def test_one_read_stops_at_its_deadline_with_a_clear_message():
    with pytest.raises(VolumeReadError, match="took longer than 0 s"):
        read_volume(zipped(dicom_series(HU)), limits=VolumeLimits(max_seconds=0))


# ---------------------------------------------------------------------------------------------------- NIfTI
def test_a_float64_nifti_under_the_voxel_limit_is_read_within_its_budget(tmp_path):
    """256 x 256 x 300 float64 voxels: 157 MB once inflated (1.9 MB on disk), 37.5 MB as the int16 result. Only
    the result, the input and one slab may be held: never the inflated file, nor a float copy of the volume."""
    shape = (256, 256, 300)
    data = float64_ct_nifti(shape)
    figures = measured(tmp_path, "volume", data, "ct.nii.gz")
    assert figures["outcome"] == "read: (300, 256, 256)", figures
    result_mb = np.prod(shape) * 2 / 2**20
    assert figures["peak_mb"] < result_mb + len(data) / 2**20 + NIFTI_SLACK_MB, figures


def test_a_nifti_whose_data_type_would_inflate_beyond_the_limit_is_refused_from_its_header():
    data = float64_ct_nifti((64, 64, 40))
    with pytest.raises(VolumeReadError, match="would inflate to .* million voxels of 8 bytes"):
        read_volume(data, name="ct.nii.gz", limits=VolumeLimits(max_total_bytes=64 * 64 * 40 * 4))


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 0, 2), (2, 1, 0), (0, 2, 1)])
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, 1, -1), (1, -1, 1)])
def test_nifti_voxels_converted_slab_by_slab_land_where_nibabel_reorients_them(axes, signs):
    """Any axis order and direction of storage: the same canonical volume as nibabel's own reorientation."""
    rng = np.random.default_rng(sum(axes) + sum(signs))
    stored = rng.integers(-1000, 400, (12, 14, 16)).astype(np.int16)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for axis, (world, sign) in enumerate(zip(axes, signs, strict=True)):
        affine[world, axis] = sign * (axis + 1) * 0.5
    image = nib.Nifti1Image(stored, affine)
    current = nib.orientations.io_orientation(affine)
    reference = image.as_reoriented(nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(NIFTI_AXES)))
    volume = read_volume(image.to_bytes(), name="ct.nii")
    np.testing.assert_array_equal(volume.hu, np.asarray(reference.dataobj).transpose(2, 1, 0))
    assert volume.spacing == pytest.approx(reference.header.get_zooms()[:3][::-1])


def test_a_series_of_deflated_slices_within_the_limits_still_reads():
    archive = zip_of([(f"s/IM{i}.dcm", deflated_ct_slice(64, 64, position=-2.5 * i)) for i in range(3)])
    volume = read_volume(archive)
    assert volume.hu.shape == (3, 64, 64) and (volume.hu == -1024).all()
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.7))


def test_a_large_private_value_before_the_pixels_is_skipped_not_refused():
    """A 3 MB private blob between the header and the pixel data (some radiograph and CT writers store thumbnails
    or raw data there): the header's size-limited parse skips it unread, and the image and the series still read."""
    import io

    from bad_input_corpus import make_dicom
    from pydicom import dcmread

    from covid_models.imaging.dicom import read_dicom_header
    from covid_models.imaging.io import read_image

    def with_blob(data: bytes) -> bytes:
        ds = dcmread(io.BytesIO(data))
        block = ds.private_block(0x0029, "BLOB WRITER", create=True)
        block.add_new(0x10, "OB", bytes(3 * 2**20))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    stored = np.random.default_rng(0).integers(0, 2000, (64, 64)).astype(np.int16)
    data = with_blob(make_dicom(stored))
    assert len(data) > 3 * 2**20
    header = read_dicom_header(data)
    assert header.pixel_keyword == "PixelData" and header.declared_bytes == 64 * 64 * 2
    assert read_image(data, name="blob.dcm").pixels.shape == (64, 64)
    files = [(name, with_blob(slice_data)) for name, slice_data in dicom_series(HU[:4])]
    assert read_volume(zip_of(files)).hu.shape == (4, *HU.shape[1:])
