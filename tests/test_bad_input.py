"""Bad input never crashes the reader: each file becomes a valid Scan or an ImageReadError, nothing else."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from bad_input_corpus import EXPECTATIONS, build_corpus, encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from covid_models.imaging.io import read_image
from covid_models.imaging.scan import ImageReadError, Scan

# Damaged files make Pillow and pydicom warn; the warnings are expected and not what these tests judge.
pytestmark = pytest.mark.filterwarnings("ignore")

MAGIC_PREFIXES = (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*",
                  b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"\x00" * 128 + b"DICM", b"\x08\x00", b"DICM")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_corpus(tmp_path_factory.mktemp("bad_input_corpus"))


def outcome(source: Path | bytes) -> str:
    """'ok' for a Scan meeting the contract, 'bad' for ImageReadError; anything else propagates and fails."""
    try:
        scan = read_image(source)
    except ImageReadError as error:
        assert str(error), "an ImageReadError must carry a message"
        return "bad"
    assert_contract(scan)
    return "ok"


def assert_contract(scan: Scan) -> None:
    pixels = scan.pixels
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.float32 and pixels.ndim == 2
    assert pixels.flags["C_CONTIGUOUS"] and np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_corpus_is_large_and_covers_every_expectation(corpus):
    kinds = Counter(path.name.split("-", 1)[0] for path in corpus)
    assert len(corpus) >= 500
    assert set(kinds) == set(EXPECTATIONS) and min(kinds.values()) >= 20


def test_every_corpus_file_reads_or_raises_image_read_error(corpus):
    unexpected = []
    for path in corpus:
        expected = path.name.split("-", 1)[0]
        try:
            result = outcome(path)
        except Exception as exc:  # noqa: BLE001 - collect every leak, then fail listing them all
            unexpected.append(f"{path.name}: leaked {type(exc).__name__}: {exc}")
            continue
        if expected != "any" and result != expected:
            unexpected.append(f"{path.name}: expected {expected}, got {result}")
    assert unexpected == []


def test_corpus_covers_the_cases_of_the_issue(corpus):
    names = " ".join(path.name for path in corpus)
    for case in ("random", "cut", "named-as", "empty", "1x1", "100000x1", "header-20000x20000", "bomb", "grey16",
                 "cmyk", "animated.gif", "animated.png", "palette-transparent", "exif-orientation", "rtplan-no-pixels",
                 "dicom-mpeg2", "dicom-private-syntax", "ct-multiframe", "ct-no-preamble"):
        assert case in names, case


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(MAGIC_PREFIXES), body=st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_image_read_error(prefix, body):
    outcome(prefix + body)


@settings(max_examples=60, deadline=None)
@given(
    pixels=arrays(
        dtype=st.sampled_from([np.uint8, np.uint16]),
        shape=st.tuples(st.integers(16, 64), st.integers(16, 64)),
    )
)
def test_any_uint8_or_uint16_array_saved_as_png_reads_back(pixels):
    scan = read_image(encode(Image.fromarray(pixels), "PNG"))
    assert_contract(scan)
    assert scan.pixels.shape == pixels.shape
    if pixels.dtype == np.uint8:
        np.testing.assert_allclose(scan.pixels, pixels / 255.0, atol=1e-6)
    elif np.ptp(pixels) > 0:
        np.testing.assert_allclose(scan.pixels, (pixels - pixels.min()) / np.ptp(pixels), atol=1e-6)
