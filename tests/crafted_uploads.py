"""Small files that declare or inflate to far more than they weigh: what an attacker uploads to exhaust a server.

Each is generated in a fraction of a second without ever holding what it declares: the zeros of a deflated pixel
data or of a zip member are compressed as a stream. The bounds tests (test_upload_bounds.py) read them in a fresh
process and measure the time and the peak resident memory of the read alone.
"""
from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, generate_uid

_CHUNK = 1 << 20


def _zeros_deflated(size: int) -> bytes:
    """`size` zero bytes as raw deflate blocks, without the final block: one megabyte is compressed once, and its
    block (ended by a full flush, so that it refers to nothing before it) is repeated."""
    def block(length: int) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(bytes(length)) + compressor.flush(zlib.Z_FULL_FLUSH)

    whole, rest = divmod(size, _CHUNK)
    return block(_CHUNK) * whole + (block(rest) if rest else b"")


def _deflate_end() -> bytes:
    return zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()


def deflated_ct_slice(rows: int, columns: int, *, frames: int = 1, position: float = 0.0) -> bytes:
    """A CT slice (or `frames` of them) in the deflated transfer syntax whose zero pixels (rows x columns x 16 bits)
    deflate to about a thousandth of their size: 16000 x 16000 is 512 MB of pixel data in 0.5 MB."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.Modality, ds.Rows, ds.Columns = "CT", rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelSpacing, ds.ImageOrientationPatient = ["0.7", "0.7"], ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["0", "0", f"{position:g}"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_bytes = rows * columns * 2 * frames
    body.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    header = compressor.compress(body.getvalue()) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head.getvalue() + header + _zeros_deflated(pixel_bytes) + _deflate_end()


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_of_zero_members(count: int, size: int, name: str = "IM{:04d}.dcm") -> bytes:
    """A zip of `count` members of `size` zero bytes each, named as DICOM files; the zeros are compressed once
    (about 1000:1) and the archive is written by hand around them."""
    packed = _zeros_deflated(size) + _deflate_end()
    crc = 0
    zeros = bytes(_CHUNK)
    for start in range(0, size, _CHUNK):
        crc = zlib.crc32(zeros[:min(_CHUNK, size - start)], crc)
    out, directory = io.BytesIO(), io.BytesIO()
    for index in range(count):
        file_name = name.format(index).encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(packed), size, len(file_name), 0))
        out.write(file_name + packed)
        directory.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(packed), size,
                                    len(file_name), 0, 0, 0, 0, 0, offset) + file_name)
    start = out.tell()
    out.write(directory.getvalue())
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory.getvalue()), start, 0))
    return out.getvalue()


def float64_ct_nifti(shape: tuple[int, int, int]) -> bytes:
    """A gzipped NIfTI-1 volume of float64 HU (air, body, lungs in a smooth pattern), `shape` = (x, y, z), written
    slab by slab so that the float64 volume itself is never held; about 8 bytes a voxel once inflated."""
    import nibabel as nib

    x, y, z = shape
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float64)
    header.set_zooms((0.7, 0.7, 1.0))
    header.set_qform(np.diag([0.7, 0.7, 1.0, 1.0]), code=1)
    header.set_sform(np.diag([0.7, 0.7, 1.0, 1.0]), code=1)
    header.set_data_offset(352)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as stream:
        stream.write(header.binaryblock + b"\x00" * 4)
        columns = np.linspace(-1, 1, x)[:, None]
        rows = np.linspace(-1, 1, y)[None, :]
        body = np.where(columns ** 2 + rows ** 2 < 0.8, 40.0, -1000.0)
        lungs = ((np.abs(columns) - 0.4) ** 2 + rows ** 2) < 0.1
        plane = np.where(lungs, -850.0, body).astype(np.float64).tobytes(order="F")
        for _ in range(z):
            stream.write(plane)
    return raw.getvalue()
