"""PNG, JPEG, BMP, TIFF, GIF and WEBP files (through Pillow) into a greyscale `Scan`.

Separate from DICOM because these formats carry no modality values: the grey levels are all there is.
Scaling choices (documented because they change what the model sees):
- 8-bit and colour images: value / 255; colour to grey by ITU-R BT.601 luminance; alpha composited on black.
- 16-bit, 32-bit and floating-point images: min-max over the image itself, because radiographs exported
  as 16-bit rarely use the full 0..65535 range (a 12-bit detector stored in 16 bits would look black).
The size is checked from the header before decoding; a large image is reduced to the working size strip by strip
(JPEG already while decoding), and an EXIF orientation is applied to the reduced result.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, features

from covid_models.imaging.pixels import block_mean, finish_pixels, full_range, luminance, reduced_note, reduction_factor
from covid_models.imaging.scan import ImageReadError, Scan, ScanMetadata, check_decoded_bytes, check_geometry

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF", "webp": "WEBP"}


def read_raster(data: bytes, fmt: str, max_pixels: int, notes: list[str]) -> Scan:
    """The `Scan` of a Pillow format `fmt` (as `formats.sniff` names it; its first frame when it holds several), with
    `notes` on what was done. The size is checked from the header before decoding."""
    if fmt == "webp" and not features.check("webp"):
        raise ImageReadError("WEBP images are not supported by this installation. Convert the file to PNG.")
    with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]]) as image:
        width, height = image.size
        check_geometry(width, height, max_pixels)
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            image.seek(0)
            notes.append(f"first frame of {frames} used")
        factor = reduction_factor(width, height)
        if factor > 1 and fmt == "jpeg":  # the JPEG decoder scales by 1/2, 1/4 or 1/8 for free
            image.draft(image.mode, (-(-width // factor), -(-height // factor)))
            factor = reduction_factor(*image.size)
        check_decoded_bytes(image.size[0] * image.size[1] * _PIL_BYTES_PER_PIXEL.get(image.mode, 4))
        image.load()
        orientation = _exif_orientation(image, notes)
        reduced = factor > 1 or image.size != (width, height)
        pixels, bits = _pillow_to_grey(image, notes) if factor == 1 else _reduced_pillow_grey(image, factor, notes)
        if orientation is not None:
            pixels = np.asarray(Image.fromarray(np.asarray(pixels, dtype=np.float32), "F").transpose(orientation))
        if reduced:
            notes.append(reduced_note(width, height, pixels.shape))
        mode = image.mode
    return Scan(
        pixels=finish_pixels(pixels),
        metadata=ScanMetadata(
            source_format=fmt, width=pixels.shape[1], height=pixels.shape[0], modality=None, dicom_modality=None,
            bits_stored=bits, photometric=mode, window=None, pixel_spacing=None, frames=frames, frame_index=0,
            notes=tuple(notes), dicom_summary={}, original_width=width, original_height=height,
        ),
        modality_values=None,
    )


_PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I;16S": 2}
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "F")
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # as ImageOps.exif_transpose; applied to the grey result, so that a large image is turned after its reduction


def _exif_orientation(image: Image.Image, notes: list[str]) -> Image.Transpose | None:
    """Phones and some exporters store the image sideways plus an EXIF tag saying how to turn it."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block should not lose a readable image
        notes.append("EXIF data unreadable; image shown as stored")
        return None
    if orientation in _EXIF_TRANSPOSE:
        notes.append(f"EXIF orientation {orientation} applied")
        return _EXIF_TRANSPOSE[orientation]
    return None


def _reduced_pillow_grey(image: Image.Image, factor: int, notes: list[str]) -> tuple[np.ndarray, int]:
    """`_pillow_to_grey` of a large image at 1/`factor` of its size, converted strip by strip.

    High-depth images are averaged before their min-max scaling, which must see the whole (reduced) image.
    """
    width, height = image.size
    strip_rows = factor * 64
    strip_notes: list[str] = []
    parts = []
    for top in range(0, height, strip_rows):
        strip = image.crop((0, top, width, min(height, top + strip_rows)))
        if image.mode in _HIGH_DEPTH_MODES:
            values = np.asarray(strip).astype(np.float32)
        else:
            values, _ = _pillow_to_grey(strip, strip_notes if top == 0 else [])
        parts.append(block_mean(values, factor))
    reduced = np.concatenate(parts)
    if image.mode in _HIGH_DEPTH_MODES:
        return _scaled_high_depth(reduced, image.mode, notes)
    notes.extend(strip_notes)
    return reduced, 8 if image.mode != "1" else 1


def _scaled_high_depth(values: np.ndarray, mode: str, notes: list[str]) -> tuple[np.ndarray, int]:
    """16-bit, 32-bit and float values min-max scaled over the image itself, and the bit depth."""
    scaled, lo, hi = full_range(values)
    bits = 16 if mode.startswith("I;16") else 32
    notes.append(f"{bits}-bit image scaled from its own range ({lo:g}..{hi:g})")
    return scaled, bits


def _pillow_to_grey(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, int]:
    """Greyscale float pixels and the bit depth they came from."""
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        return _scaled_high_depth(np.asarray(image).astype(np.float32), mode, notes)
    if mode == "1":
        return np.asarray(image, dtype=np.float32), 1
    if mode == "L" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.float32) / np.float32(255), 8
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    if mode not in ("L", "LA"):
        kind = "palette" if mode in ("P", "PA") else mode
        notes.append(f"{kind} image converted to grey (luminance)")
    rgb = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    grey = luminance(rgb) / np.float32(255)
    if has_alpha:
        grey *= rgb[..., 3].astype(np.float32) / np.float32(255)
        notes.append("transparent areas composited on black")
    return grey, 8
