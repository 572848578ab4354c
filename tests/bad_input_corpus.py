"""A generated corpus of good, odd and broken image files, and the builders of its DICOM and Pillow files.

Every entry point that accepts files (read_image, scripts/predict.py, the app's upload) must turn each file
into a valid Scan or an ImageReadError, never anything else. The file name says what is expected:
`ok-*` must read, `bad-*` must raise ImageReadError, `any-*` (truncated or bit-flipped) may do either.
Generation is deterministic (fixed seeds) and takes about a second: images are small.
"""
from __future__ import annotations

import copy
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, features
from pydicom import Dataset, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

EXPECTATIONS = ("ok", "bad", "any")
UNDECODABLE_SYNTAXES = (UID("1.2.840.10008.1.2.4.100"), UID("1.2.826.0.1.3680043.9.7433.99.1"))  # MPEG2, private
_SOP_CLASSES = {"CT": CTImageStorage, "DX": DigitalXRayImageStorageForPresentation}


def make_dicom(
    pixels: np.ndarray,
    *,
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = (1.0, -1024.0),
    window: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] | None = (0.7, 0.7),
    identifiers: dict[str, str] | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> bytes:
    """A DICOM file holding `pixels` (int16 or uint16; 2-D, or 3-D for frames) with the given attributes."""
    signed = pixels.dtype.kind == "i"
    pixels = pixels.astype(np.int16 if signed else np.uint16)
    sop_class = _SOP_CLASSES.get(modality, SecondaryCaptureImageStorage)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    for keyword, value in (identifiers or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    return dicom_bytes(ds)


def dicom_bytes(ds: Dataset, *, file_format: bool = True) -> bytes:
    """Serialise a dataset; `file_format=False` writes the bare dataset (no preamble, no meta header)."""
    buffer = io.BytesIO()
    if file_format:
        dcmwrite(buffer, ds, enforce_file_format=True)
    else:
        bare = copy.deepcopy(ds)
        del bare.file_meta
        dcmwrite(buffer, bare, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def with_transfer_syntax(data: bytes, uid: UID, frame: bytes = b"\x00" * 64) -> bytes:
    """A copy of a DICOM file claiming `uid`, with `frame` as its encapsulated (compressed) pixel data."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Pillow image -> file bytes in `fmt` (PNG, JPEG, ...)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which holds almost no data (a decompression-bomb probe)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(
        b"IEND", b""
    )


def png_bomb(width: int, height: int) -> bytes:
    """A real, complete PNG of zeros: tiny on disk, width*height bytes once decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def valid_samples(rng: np.random.Generator) -> dict[str, bytes]:
    """One small readable file per supported format and mode: name (without ok- prefix) -> bytes."""
    grey = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    grey16 = rng.integers(0, 4096, (40, 48), dtype=np.uint16)
    frames = [Image.fromarray(np.full((40, 48), v, np.uint8)) for v in (30, 120, 220)]
    palette = Image.fromarray(grey).convert("P")
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6
    hu = rng.integers(0, 2000, (48, 40)).astype(np.int16)
    samples = {
        "grey.png": encode(Image.fromarray(grey), "PNG"),
        "rgb.png": encode(Image.fromarray(rgb), "PNG"),
        "rgba.png": encode(Image.fromarray(rgba), "PNG"),
        "grey-alpha.png": encode(Image.fromarray(rgba[..., :2].copy()), "PNG"),
        "palette-transparent.png": encode(palette, "PNG", transparency=0),
        "grey16.png": encode(Image.fromarray(grey16), "PNG"),
        "bilevel.png": encode(Image.fromarray(grey > 128), "PNG"),
        "grey.jpg": encode(Image.fromarray(grey), "JPEG"),
        "rgb.jpg": encode(Image.fromarray(rgb), "JPEG"),
        "cmyk.jpg": encode(Image.fromarray(rgba).convert("CMYK"), "JPEG"),
        "exif-orientation-6.jpg": encode(rotated, "JPEG", exif=exif),
        "rgb.bmp": encode(Image.fromarray(rgb), "BMP"),
        "palette.bmp": encode(palette, "BMP"),
        "grey16.tif": encode(Image.fromarray(grey16), "TIFF"),
        "cmyk.tif": encode(Image.fromarray(rgba).convert("CMYK"), "TIFF"),
        "float.tif": encode(Image.fromarray(grey.astype(np.float32) / 7), "TIFF"),
        "lzw.tif": encode(Image.fromarray(rgb), "TIFF", compression="tiff_lzw"),
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "palette-transparent.gif": encode(palette, "GIF", transparency=0),
        "animated.png": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "ct.dcm": make_dicom(hu),
        "ct-window.dcm": make_dicom(hu, window=(40, 400)),
        "dx-monochrome1.dcm": make_dicom(hu.astype(np.uint16), modality="DX", photometric="MONOCHROME1", rescale=None),
        "ct-multiframe.dcm": make_dicom(np.stack([hu, hu + 100, hu + 200])),
        "ct-rle.dcm": make_dicom(hu, transfer_syntax=RLELossless),
    }
    if features.check("webp"):
        samples["rgb.webp"] = encode(Image.fromarray(rgb), "WEBP", lossless=True)
    for bundled in ("CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle.dcm"):
        path = get_testdata_file(bundled, download=False)
        if path is None:
            raise FileNotFoundError(f"pydicom's bundled test file {bundled} is missing from the installed wheel")
        samples[f"pydicom-{bundled}"] = Path(path).read_bytes()
    samples["ct-no-preamble.dcm"] = samples["ct.dcm"][128:]
    return samples


def invalid_samples(rng: np.random.Generator, valid: dict[str, bytes]) -> dict[str, bytes]:
    """Files that must raise ImageReadError: name (without bad- prefix) -> bytes."""
    rtplan = get_testdata_file("rtplan.dcm", download=False)
    if rtplan is None:
        raise FileNotFoundError("pydicom's bundled test file rtplan.dcm is missing from the installed wheel")
    samples = {
        "empty.png": b"",
        "1x1.png": encode(Image.new("L", (1, 1)), "PNG"),
        "8x8.jpg": encode(Image.new("L", (8, 8)), "JPEG"),
        "100000x1.png": encode(Image.new("L", (100_000, 1)), "PNG"),
        "1x3000.gif": encode(Image.new("L", (1, 3000)), "GIF"),
        "strip-2000x20.png": encode(Image.new("L", (2000, 20)), "PNG"),
        "header-20000x20000.png": png_header_only(20_000, 20_000),
        "header-8000x8000.png": png_header_only(8_000, 8_000),
        "bomb-7200x7200.png": png_bomb(7_200, 7_200),
        "pdf.png": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 4,
        "zip.jpg": b"PK\x03\x04" + rng.bytes(200),
        "text.dcm": b"This is not an image, just some notes about the patient.\n" * 3,
        "html.png": b"<!DOCTYPE html><html><body>Not found</body></html>",
        "gzip.dcm": b"\x1f\x8b\x08\x00" + rng.bytes(300),
        "rtplan-no-pixels.dcm": Path(rtplan).read_bytes(),
        "dicom-mpeg2.dcm": with_transfer_syntax(valid["ct.dcm"], UNDECODABLE_SYNTAXES[0]),
        "dicom-private-syntax.dcm": with_transfer_syntax(valid["ct.dcm"], UNDECODABLE_SYNTAXES[1]),
        "dicom-jpeg-garbage.dcm": with_transfer_syntax(valid["ct.dcm"], JPEGBaseline8Bit, rng.bytes(256)),
        "dicom-huge-header.dcm": make_dicom(np.zeros((16, 16), np.int16)).replace(
            struct.pack("<HHHH", 0x0028, 0x0010, 0x5355, 2) + struct.pack("<H", 16),
            struct.pack("<HHHH", 0x0028, 0x0010, 0x5355, 2) + struct.pack("<H", 60_000),
        ).replace(
            struct.pack("<HHHH", 0x0028, 0x0011, 0x5355, 2) + struct.pack("<H", 16),
            struct.pack("<HHHH", 0x0028, 0x0011, 0x5355, 2) + struct.pack("<H", 60_000),
        ),
    }
    for index, length in enumerate((1, 2, 7, 64, 500, 4096, 20_000)):
        samples[f"random-{index}-{length}.png"] = rng.bytes(length)
    return samples


def build_corpus(directory: Path) -> list[Path]:
    """Write the corpus (over 500 files) into `directory` and return their paths, sorted."""
    rng = np.random.default_rng(20200311)
    directory.mkdir(parents=True, exist_ok=True)
    valid = valid_samples(rng)
    files: dict[str, bytes] = {f"ok-{name}": data for name, data in valid.items()}
    files.update({f"bad-{name}": data for name, data in invalid_samples(rng, valid).items()})
    for name, data in valid.items():
        stem, suffix = name.rsplit(".", 1)
        for wrong in ("jpg", "png", "dcm", "txt"):
            if wrong != suffix:
                files[f"ok-{stem}-named-as.{wrong}"] = data
        files[f"ok-{stem}-no-extension"] = data
        for cut in sorted({1, 4, 8, 16, 33, 100, 132, len(data) // 4, len(data) // 2, len(data) - 1,
                           *rng.integers(1, len(data), 6).tolist()}):
            if 0 < cut < len(data):
                files[f"any-{stem}-cut-{cut}.{suffix}"] = data[:cut]
        for flip in range(5):
            damaged = bytearray(data)
            for position in rng.integers(min(16, len(data) - 1), len(data), 1 + flip * 3):
                damaged[position] ^= int(rng.integers(1, 256))
            files[f"any-{stem}-flipped-{flip}.{suffix}"] = bytes(damaged)
    magics = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF")
    for index in range(60):
        prefix = magics[index % len(magics)] if index % 2 else b""
        files[f"any-random-{index}.bin"] = prefix + rng.bytes(int(rng.integers(1, 3000)))
    for index in range(10):
        files[f"any-random-dicm-{index}.dcm"] = b"\x00" * 128 + b"DICM" + rng.bytes(int(rng.integers(0, 2000)))
    paths = []
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        paths.append(path)
    return sorted(paths)
