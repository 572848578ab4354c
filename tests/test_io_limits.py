"""Limits of covid_models.imaging.io: memory per upload is bounded, and values no display can show are refused.

The memory test reads a crafted 7000 x 7000 deflated DICOM (548 KB on disk, 98 MB of pixels once inflated) in a
fresh process and compares the process's peak resident memory with its level just before the read.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from bad_input_corpus import encode, make_dicom
from conftest import PROJECT_ROOT
from PIL import Image
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian

from covid_models.imaging.io import read_image
from covid_models.imaging.scan import WORKING_SIDE, ImageReadError

PEAK_BOUND_MB = 300.0  # at most 300 MB above the level before the upload
AFTER_BOUND_MB = 30.0  # and back near that level once the Scan is dropped


def deflated_dicom(side: int) -> bytes:
    """A side x side CT slice (smooth ramps, so that it deflates to well under a megabyte) in the deflated syntax."""
    ramp = (np.arange(side, dtype=np.int32) * 2000 // side).astype(np.int16)
    pixels = (ramp[:, None] + ramp[None, :] // 2).astype(np.int16)
    ds = dcmread(io.BytesIO(make_dicom(pixels, pixel_spacing=(0.1, 0.1))))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


MEASURE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "tests")
    from covid_models.benchmarking import peak_rss_mb, reset_peak_rss, rss_mb
    from covid_models.imaging.io import read_image
    data = open(sys.argv[1], "rb").read()
    before = rss_mb()
    reset_peak_rss()
    scan = read_image(data, name="big.dcm")
    peak = peak_rss_mb()
    shape = list(scan.pixels.shape)
    hu_shape = None if scan.modality_values is None else list(scan.modality_values.shape)
    meta = scan.metadata
    del scan
    print(json.dumps({"before": before, "peak": peak, "after": rss_mb(), "shape": shape, "hu_shape": hu_shape,
                      "original": [meta.original_width, meta.original_height], "spacing": meta.pixel_spacing}))
""")


@pytest.mark.slow
def test_a_7000_pixel_deflated_dicom_stays_within_300_mb_and_is_given_back(tmp_path):
    data = deflated_dicom(7000)
    assert len(data) < 2_000_000  # a small upload...
    path = tmp_path / "big.dcm"
    path.write_bytes(data)
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True,
                            timeout=600, check=True, cwd=PROJECT_ROOT)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # ...whose pixels (98 MB stored, 196 MB as float32) no longer all stay in memory at once
    assert figures["peak"] - figures["before"] <= PEAK_BOUND_MB, figures
    assert figures["after"] - figures["before"] <= AFTER_BOUND_MB, figures
    assert max(figures["shape"]) <= WORKING_SIDE and figures["hu_shape"] == figures["shape"]
    assert figures["original"] == [7000, 7000]
    scale = 7000 / figures["shape"][0]
    assert figures["spacing"] == pytest.approx([0.1 * scale, 0.1 * scale])


# ------------------------------------------------------------------------------ reduction to the working size
def test_images_up_to_the_working_size_are_kept_pixel_for_pixel():
    grey = np.random.default_rng(0).integers(0, 256, (WORKING_SIDE, 700), dtype=np.uint8)
    scan = read_image(encode(Image.fromarray(grey), "PNG"))
    np.testing.assert_allclose(scan.pixels, grey / 255.0, atol=1e-6)
    assert (scan.metadata.original_width, scan.metadata.original_height) == (700, WORKING_SIDE)
    assert not any("reduced" in note for note in scan.metadata.notes)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG"])
def test_larger_images_are_block_averaged_to_the_working_size(fmt):
    """3000 x 2100 -> factor 3 -> 1000 x 700: each working pixel is the mean of the 3 x 3 block it stands for
    (JPEG: decoded at 1/2 by the decoder, then averaged; lossy, so compared loosely)."""
    rows = np.linspace(0, 255, 2100)[:, None] * np.ones((1, 3000))
    scan = read_image(encode(Image.fromarray(rows.astype(np.uint8)), fmt))
    assert max(scan.pixels.shape) <= WORKING_SIDE
    assert (scan.metadata.original_width, scan.metadata.original_height) == (3000, 2100)
    assert (scan.metadata.width, scan.metadata.height) == scan.pixels.shape[::-1]
    assert any(note.startswith("reduced from 3000 x 2100") for note in scan.metadata.notes)
    expected = rows.astype(np.uint8).astype(np.float32).reshape(700, 3, 1000, 3).mean(axis=(1, 3)) / 255
    if fmt != "JPEG":
        np.testing.assert_allclose(scan.pixels, expected, atol=1e-5)
    else:
        small = np.asarray(Image.fromarray(expected).resize(scan.pixels.shape[::-1], Image.Resampling.BOX))
        assert np.abs(scan.pixels - small).mean() < 0.01


def test_a_large_16_bit_image_is_scaled_after_its_reduction_and_turned_by_exif():
    values = np.tile(np.arange(2048, dtype=np.uint16) * 16, (1200, 1))  # 2048 x 1200, left dark, right bright
    image = Image.fromarray(values)
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    scan = read_image(encode(image, "PNG", exif=exif))
    assert scan.pixels.shape == (1024, 600)  # turned: the file's width is now the height
    assert scan.pixels[0].mean() < 0.01 and scan.pixels[-1].mean() > 0.99
    assert "EXIF orientation 6 applied" in scan.metadata.notes


def test_a_frame_that_would_decode_beyond_the_memory_limit_is_refused_before_decoding():
    with pytest.raises(ImageReadError, match="too large to analyse safely.*MB of memory"):
        read_image(encode(Image.new("RGB", (6000, 6000)), "PNG"))  # 36 MP, held by Pillow as 4 bytes a pixel


# --------------------------------------------------------------------------------- values out of range
def test_a_float_tiff_at_float32_limits_is_refused_not_shown_blank():
    values = np.zeros((64, 64), np.float32)
    values[:32] = 3e38
    values[32:] = -3e38
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(encode(Image.fromarray(values), "TIFF"))


def test_a_dicom_whose_rescale_overflows_is_refused_not_shown_blank():
    stored = np.random.default_rng(1).integers(0, 2500, (64, 64)).astype(np.int16)
    with pytest.raises(ImageReadError, match="out of range.*rescale slope 1e\\+38"):
        read_image(make_dicom(stored, rescale=(1e38, 0.0)))


def test_large_but_plausible_values_are_still_read():
    values = np.linspace(-1e6, 1e6, 64 * 64, dtype=np.float32).reshape(64, 64)
    scan = read_image(encode(Image.fromarray(values), "TIFF"))
    assert scan.pixels.min() == 0.0 and scan.pixels.max() == 1.0
