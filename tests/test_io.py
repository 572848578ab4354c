"""Specification of covid_models.imaging.io: every format and mode becomes a 2-D float32 image in [0, 1]."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from bad_input_corpus import dicom_bytes, encode, make_dicom, png_header_only, with_transfer_syntax
from PIL import Image, features
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

from covid_models.imaging.io import content_hash, read_dicom_identifiers, read_image
from covid_models.imaging.scan import MAX_PIXELS, WINDOW_PRESETS, ImageReadError, Scan, apply_window, rewindow

RNG = np.random.default_rng(7)
GREY = RNG.integers(0, 256, (40, 48), dtype=np.uint8)
HU_STORED = RNG.integers(0, 2500, (48, 40)).astype(np.int16)


def bundled(name: str) -> Path:
    """A test file shipped inside the pinned pydicom wheel (no download: a missing file is a failure)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with the installed pydicom"
    return Path(path)


def assert_valid_scan(scan: Scan) -> None:
    pixels = scan.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2 and pixels.flags["C_CONTIGUOUS"]
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert (scan.metadata.height, scan.metadata.width) == pixels.shape


# ------------------------------------------------------------------------------------ plain image formats
def test_grey_png_is_divided_by_255():
    scan = read_image(encode(Image.fromarray(GREY), "PNG"))
    assert_valid_scan(scan)
    np.testing.assert_allclose(scan.pixels, GREY / 255.0, atol=1e-6)
    assert scan.metadata.source_format == "png" and scan.metadata.bits_stored == 8
    assert scan.metadata.modality is None and scan.modality_values is None and scan.metadata.window is None


def test_colour_becomes_grey_by_luminance():
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    scan = read_image(encode(Image.fromarray(red), "PNG"))
    np.testing.assert_allclose(scan.pixels, 0.299, atol=1e-5)
    assert any("converted to grey" in note for note in scan.metadata.notes)


def test_alpha_is_composited_on_black():
    rgba = np.full((32, 32, 4), 255, np.uint8)
    rgba[:16, :, 3] = 0  # top half fully transparent white
    scan = read_image(encode(Image.fromarray(rgba), "PNG"))
    assert scan.pixels[:16].max() == 0.0 and scan.pixels[16:].min() == pytest.approx(1.0)
    assert "transparent areas composited on black" in scan.metadata.notes


def test_palette_with_transparency_makes_the_transparent_index_black():
    image = Image.new("P", (32, 32), 1)
    image.putpalette([255, 255, 255, 200, 200, 200] + [0] * 762)
    image.paste(0, (0, 0, 16, 32))  # left half: white, but index 0 is transparent
    scan = read_image(encode(image, "PNG", transparency=0))
    assert scan.pixels[:, :16].max() == 0.0
    np.testing.assert_allclose(scan.pixels[:, 16:], 200 / 255, atol=1e-5)


def test_16_bit_png_is_scaled_by_its_own_range():
    values = np.linspace(1000, 3000, 40 * 48).reshape(40, 48).astype(np.uint16)
    scan = read_image(encode(Image.fromarray(values), "PNG"))
    assert scan.metadata.bits_stored == 16
    assert scan.pixels.min() == 0.0 and scan.pixels.max() == pytest.approx(1.0)
    np.testing.assert_allclose(scan.pixels, (values - 1000.0) / 2000.0, atol=1e-6)
    assert any("16-bit image scaled from its own range (1000..3000)" in note for note in scan.metadata.notes)


def test_16_bit_tiff_and_float_tiff_read():
    values = RNG.integers(0, 4096, (40, 48), dtype=np.uint16)
    for image in (Image.fromarray(values), Image.fromarray(values.astype(np.float32))):
        scan = read_image(encode(image, "TIFF"))
        assert_valid_scan(scan)
        np.testing.assert_allclose(scan.pixels, (values - values.min()) / np.ptp(values), atol=1e-5)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_is_converted_to_grey(fmt):
    black = Image.new("CMYK", (32, 32), (0, 0, 0, 255))
    white = Image.new("CMYK", (32, 32), (0, 0, 0, 0))
    assert read_image(encode(black, fmt)).pixels.max() < 0.05
    assert read_image(encode(white, fmt)).pixels.min() > 0.95


@pytest.mark.parametrize(
    ("fmt", "expected", "params"),
    [("BMP", "bmp", {}), ("JPEG", "jpeg", {"quality": 95}), ("TIFF", "tiff", {}), ("GIF", "gif", {}),
     pytest.param("WEBP", "webp", {"lossless": True},
                  marks=pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WEBP"))],
)
def test_every_plain_format_reads_with_its_content(fmt, expected, params):
    scan = read_image(encode(Image.fromarray(GREY), fmt, **params))
    assert_valid_scan(scan)
    assert scan.metadata.source_format == expected and scan.pixels.shape == GREY.shape
    assert np.abs(scan.pixels - GREY / 255.0).mean() < 0.05


def test_exif_orientation_6_rotates_the_image():
    image = Image.fromarray(np.zeros((20, 40), np.uint8))  # 40 wide, 20 high as stored
    exif = image.getexif()
    exif[0x0112] = 6
    scan = read_image(encode(image, "JPEG", exif=exif))
    assert scan.pixels.shape == (40, 20)
    assert (scan.metadata.width, scan.metadata.height) == (20, 40)
    assert "EXIF orientation 6 applied" in scan.metadata.notes


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animations_give_their_first_frame(fmt):
    frames = [Image.fromarray(np.full((32, 32), value, np.uint8)) for value in (30, 120, 220)]
    scan = read_image(encode(frames[0], fmt, save_all=True, append_images=frames[1:]))
    assert scan.metadata.frames == 3 and scan.metadata.frame_index == 0
    assert scan.pixels.mean() == pytest.approx(30 / 255, abs=0.01)
    assert "first frame of 3 used" in scan.metadata.notes


# ----------------------------------------------------------------------------------------- inputs
def test_path_string_bytes_and_stream_inputs_read_alike(tmp_path):
    data = encode(Image.fromarray(GREY), "PNG")
    path = tmp_path / "chest.png"
    path.write_bytes(data)
    scans = [read_image(path), read_image(str(path)), read_image(data), read_image(io.BytesIO(data)),
             read_image(bytearray(data))]
    for scan in scans:
        np.testing.assert_array_equal(scan.pixels, scans[0].pixels)


@pytest.mark.parametrize(("data", "name", "expected"), [
    (encode(Image.fromarray(GREY), "PNG"), "chest.jpg", "png"),
    (make_dicom(HU_STORED), "slice.png", "dicom"),
    (encode(Image.fromarray(GREY), "JPEG"), "scan.dcm", "jpeg"),
    (make_dicom(HU_STORED), "no_extension", "dicom"),
])
def test_format_is_sniffed_from_content_not_extension(data, name, expected):
    scan = read_image(data, name=name)
    assert scan.metadata.source_format == expected
    if "." in name:
        assert any("but the content is" in note for note in scan.metadata.notes)


def test_stream_name_is_used_as_extension_hint():
    stream = io.BytesIO(encode(Image.fromarray(GREY), "PNG"))
    stream.name = "upload.jpg"
    assert any(".jpg" in note for note in read_image(stream).metadata.notes)


# ------------------------------------------------------------------------------------------- DICOM
def test_ct_rescale_gives_hounsfield_units_and_lung_window_by_default():
    scan = read_image(make_dicom(HU_STORED, rescale=(1.0, -1024.0)))
    np.testing.assert_allclose(scan.modality_values, HU_STORED - 1024.0)
    assert scan.modality_values.dtype == np.float32
    assert scan.metadata.window == WINDOW_PRESETS["lung"]
    np.testing.assert_allclose(scan.pixels, apply_window(HU_STORED - 1024.0, -600, 1500), atol=1e-6)
    assert scan.metadata.modality == "ct" and scan.metadata.dicom_modality == "CT"
    assert scan.metadata.pixel_spacing == (0.7, 0.7)


def test_rescale_slope_is_applied():
    scan = read_image(make_dicom(HU_STORED, rescale=(2.0, -1000.0)))
    np.testing.assert_allclose(scan.modality_values, HU_STORED * 2.0 - 1000.0)


def test_window_in_the_file_wins_over_the_default():
    scan = read_image(make_dicom(HU_STORED, window=(40, 400)))
    assert scan.metadata.window == (40.0, 400.0)
    np.testing.assert_allclose(scan.pixels, apply_window(scan.modality_values, 40, 400), atol=1e-6)


def test_monochrome1_is_the_inverse_of_monochrome2():
    data = HU_STORED.astype(np.uint16)
    mono1 = read_image(make_dicom(data, modality="DX", photometric="MONOCHROME1", rescale=None))
    mono2 = read_image(make_dicom(data, modality="DX", photometric="MONOCHROME2", rescale=None))
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)
    np.testing.assert_array_equal(mono1.modality_values, mono2.modality_values)
    assert any("MONOCHROME1 inverted" in note for note in mono1.metadata.notes)
    np.testing.assert_allclose(rewindow(mono1, 1000, 500), 1.0 - rewindow(mono2, 1000, 500), atol=1e-6)


def test_xray_without_window_uses_its_full_range():
    data = (np.arange(48 * 40).reshape(48, 40) + 100).astype(np.uint16)
    scan = read_image(make_dicom(data, modality="DX", rescale=None))
    assert scan.metadata.modality == "xray"
    assert scan.pixels.min() == 0.0 and scan.pixels.max() == 1.0
    np.testing.assert_allclose(scan.pixels, (data - 100.0) / np.ptp(data), atol=1e-5)
    np.testing.assert_allclose(rewindow(scan, *scan.metadata.window), scan.pixels, atol=1e-6)


@pytest.mark.parametrize(("dicom_modality", "expected"), [
    ("CT", "ct"), ("CR", "xray"), ("DX", "xray"), ("RG", "xray"), ("MR", None), ("US", None), ("OT", None),
])
def test_dicom_modality_maps_to_ct_xray_or_unknown(dicom_modality, expected):
    scan = read_image(make_dicom(HU_STORED, modality=dicom_modality))
    assert scan.metadata.modality == expected and scan.metadata.dicom_modality == dicom_modality


def test_multiframe_returns_the_middle_frame():
    frames = np.stack([np.full((32, 32), 100 * i, np.int16) for i in range(5)])
    scan = read_image(make_dicom(frames, rescale=None, window=(200, 100)))
    assert scan.metadata.frames == 5 and scan.metadata.frame_index == 2
    assert np.all(scan.modality_values == 200)
    assert "middle frame 3 of 5 used" in scan.metadata.notes


@pytest.mark.parametrize("compressed", [
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
])
def test_bundled_encodings_decode_like_the_uncompressed_file(compressed):
    reference = read_image(bundled("MR_small.dcm"))
    scan = read_image(bundled(compressed))
    np.testing.assert_array_equal(scan.modality_values, reference.modality_values)
    np.testing.assert_array_equal(scan.pixels, reference.pixels)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_generated_lossless_dicom_decodes_exactly(syntax):
    plain = read_image(make_dicom(HU_STORED))
    compressed = read_image(make_dicom(HU_STORED, transfer_syntax=syntax))
    np.testing.assert_array_equal(compressed.modality_values, plain.modality_values)
    assert compressed.metadata.dicom_summary["TransferSyntax"] == syntax.name


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm",
                                  "examples_palette.dcm", "SC_ybr_full_422_uncompressed.dcm", "image_dfl.dcm"])
def test_bundled_compressed_and_colour_dicoms_read(name):
    assert_valid_scan(read_image(bundled(name)))


def test_colour_dicom_becomes_grey_without_modality_values():
    scan = read_image(bundled("SC_rgb_rle.dcm"))
    assert scan.modality_values is None and scan.metadata.window is None
    assert any("converted to grey" in note for note in scan.metadata.notes)


def test_bundled_multiframe_colour_dicom_gives_middle_frame():
    scan = read_image(bundled("examples_ybr_color.dcm"))
    assert scan.metadata.frames == 30 and scan.metadata.frame_index == 14


def test_dicom_without_preamble_or_meta_header_still_reads():
    full = make_dicom(HU_STORED)
    reference = read_image(full)
    for data in (full[128:], dicom_bytes(dcmread(io.BytesIO(full)), file_format=False)):
        scan = read_image(data)
        assert scan.metadata.source_format == "dicom"
        np.testing.assert_array_equal(scan.modality_values, reference.modality_values)


def test_metadata_carries_no_patient_identifiers():
    identifiers = {
        "PatientName": "Doe^Janet", "PatientID": "PID-778899", "PatientBirthDate": "19610203",
        "AccessionNumber": "ACC-445566", "InstitutionName": "Saint Example Hospital",
        "ReferringPhysicianName": "House^Gregory", "StudyDate": "20200314",
    }
    data = make_dicom(HU_STORED, identifiers=identifiers)
    scan = read_image(data)
    text = repr(scan.metadata)
    for value in identifiers.values():
        assert value not in text
        assert value.split("^")[0] not in text
    assert scan.metadata.dicom_summary["Modality"] == "CT"
    stream = io.BytesIO(data)
    read_image(stream)
    shown = read_dicom_identifiers(stream)  # the same upload, read a second time
    assert {keyword: shown[keyword] for keyword in identifiers} == identifiers


def test_read_dicom_identifiers_rejects_non_dicom():
    with pytest.raises(ImageReadError, match="not a readable DICOM"):
        read_dicom_identifiers(encode(Image.fromarray(GREY), "PNG"))


def test_dicom_summary_keeps_technical_fields():
    summary = read_image(bundled("CT_small.dcm")).metadata.dicom_summary
    assert summary["TransferSyntax"] == "Explicit VR Little Endian" and summary["SOPClass"] == "CT Image Storage"
    assert summary["KVP"] == "120" and summary["RescaleIntercept"] == "-1024"


# ---------------------------------------------------------------------------------- windowing helpers
def test_apply_window_follows_the_dicom_linear_formula():
    values = np.array([-2000.0, -1350.0, -600.0, 149.0, 150.0, 3000.0])
    out = apply_window(values, -600, 1500)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, (-600 + 600.5) / 1499 + 0.5, 1.0, 1.0, 1.0], atol=1e-6)
    assert apply_window(values, 0, 1).tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(("center", "width"), [(0, 0), (0, -5), (float("nan"), 100)])
def test_apply_window_rejects_invalid_windows(center, width):
    with pytest.raises(ValueError):
        apply_window(np.zeros(3), center, width)


def test_rewindow_needs_modality_values():
    with pytest.raises(ValueError):
        rewindow(read_image(encode(Image.fromarray(GREY), "PNG")), 0, 100)


def test_content_hash_is_sha256_of_the_bytes():
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"%PDF-1.7\n" + b"x" * 100, "PDF document"),
    (b"hello, these are my notes\n" * 5, "text file"),
    (encode(Image.new("L", (8, 8)), "PNG"), "too small"),
    (encode(Image.new("L", (2100, 100)), "PNG"), "implausible shape"),
    (png_header_only(20_000, 20_000), "too large"),
    (png_header_only(8_000, 8_000), "too large"),  # header-only: the size is refused before any decoding
    (encode(Image.fromarray(GREY), "PNG")[:200], "incomplete"),
    (bundled("rtplan.dcm").read_bytes(), "without pixel data"),
    (with_transfer_syntax(make_dicom(HU_STORED), "1.2.840.10008.1.2.4.100"), "MPEG2"),
    (with_transfer_syntax(make_dicom(HU_STORED), "1.2.826.0.1.3680043.9.7433.99.1"), "1.2.826.0.1.3680043.9.7433.99.1"),
    (make_dicom(HU_STORED)[:-100], "incomplete"),
])
def test_unreadable_files_raise_a_readable_error(data, message):
    with pytest.raises(ImageReadError, match=message) as caught:
        read_image(data)
    assert isinstance(caught.value, ValueError) and not str(caught.value).startswith("<")


def test_max_pixels_is_configurable_and_checked_for_dicom_too():
    with pytest.raises(ImageReadError, match="too large"):
        read_image(encode(Image.fromarray(GREY), "PNG"), max_pixels=1000)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(make_dicom(HU_STORED), max_pixels=1000)
    assert MAX_PIXELS == 50_000_000


def test_missing_file_raises_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="could not be opened"):
        read_image(tmp_path / "absent.png")
