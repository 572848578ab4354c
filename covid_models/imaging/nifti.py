"""NIfTI volumes (.nii, .nii.gz) into a `Volume`: the header checked first, then voxels converted slab by slab.

Separate from DICOM because a NIfTI file is one header and one block of voxels, oriented by an affine. Bounded: the
header's shape, voxel count, data type and inflated size are checked before any voxel; the voxels are then inflated
and converted slab by slab straight into the result (never a second copy of the volume), checking the reading
deadline between slabs. Also reads label maps (a reference lung mask) into the same canonical orientation.
"""
from __future__ import annotations

import gzip
import io
import zlib
from typing import BinaryIO

import numpy as np

from covid_models.imaging.ct_volume import (
    SUPPORTED_VOLUMES,
    Deadline,
    Volume,
    VolumeLimits,
    VolumeMetadata,
    VolumeReadError,
)

NIFTI_AXES = ("L", "P", "I")  # nibabel axis codes of (x, y, z) after reorientation; stored as (z, y, x)


def is_nifti_name(name: str) -> bool:
    """Whether a file name ends in .nii or .nii.gz."""
    return name.lower().endswith((".nii", ".nii.gz"))


def is_nifti(data: bytes, name: str) -> bool:
    """Whether one uploaded file is a NIfTI volume: gzip, a NIfTI-1 or NIfTI-2 header size, or its name."""
    if data[:2] == b"\x1f\x8b":
        return True
    if len(data) >= 348 and (int.from_bytes(data[:4], "little") in (348, 540) or
                             int.from_bytes(data[:4], "big") in (348, 540)):
        return True
    return is_nifti_name(name)


_SLAB_BYTES = 16 * 1024 * 1024  # NIfTI voxels are inflated and converted this much at a time


def _nifti_stream(data: bytes) -> BinaryIO:
    """The uncompressed NIfTI file as a stream: a gzip is inflated as it is read, never further."""
    return gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" else io.BytesIO(data)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    try:
        chunk = stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeReadError("This .nii.gz file is damaged or cut short (its compression is broken). "
                              "Export it again.") from exc
    if len(chunk) < size:
        raise VolumeReadError("This NIfTI file is damaged or cut short. Export it again.")
    return chunk


def _nifti_header(stream: BinaryIO, limits: VolumeLimits):
    """The NIfTI-1 or NIfTI-2 header, checked (shape, voxel count, data type, inflated size) before any voxel."""
    import nibabel as nib

    head = _read_exactly(stream, 348)
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    klass = nib.Nifti1Image if 348 in sizes else nib.Nifti2Image if 540 in sizes else None
    if klass is nib.Nifti2Image:
        head += _read_exactly(stream, 540 - 348)
    try:
        header = klass.header_class.from_fileobj(io.BytesIO(head), check=False) if klass else None
        shape = tuple(int(v) for v in header.get_data_shape()) if header is not None else ()
        dtype = header.get_data_dtype() if header is not None else None
    except Exception as exc:  # noqa: BLE001 - any header nibabel cannot read is a damaged header for the user
        raise VolumeReadError("This file is not a readable NIfTI volume (damaged header). " + SUPPORTED_VOLUMES) \
            from exc
    if header is None or header["magic"].item() not in (b"n+1", b"n+2"):
        raise VolumeReadError("This file is not a readable NIfTI volume (damaged header, or a separate .hdr/.img "
                              "pair). " + SUPPORTED_VOLUMES)
    spatial = shape[:3]
    if len(shape) < 3 or any(v < 1 for v in shape) or any(v != 1 for v in shape[3:]):
        raise VolumeReadError(f"This NIfTI image has shape {shape}; a single 3-D CT volume is needed.")
    voxels = int(np.prod(spatial))
    if voxels > limits.max_voxels:
        raise VolumeReadError(f"This NIfTI volume has {voxels / 1e6:.0f} million voxels; the limit is "
                              f"{limits.max_voxels / 1e6:.0f} million.")
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise VolumeReadError("This NIfTI volume does not hold grey values (it is colour or complex).")
    inflated = int(header.get_data_offset()) + voxels * dtype.itemsize
    if inflated > limits.max_total_bytes:
        raise VolumeReadError(f"This NIfTI volume would inflate to {inflated / 2**30:.1f} GB ({voxels / 1e6:.0f} "
                              f"million voxels of {dtype.itemsize} bytes), more than the "
                              f"{limits.max_total_bytes / 2**30:.0f} GB limit. Export it as 16-bit integers (HU).")
    return header, len(head)


def nifti_canonical(data: bytes, limits: VolumeLimits, out_dtype: type, deadline: Deadline
                     ) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float]]:
    """Scaled voxels as `out_dtype` (rounded, clipped, NaN as 0) in the canonical (head-to-feet, anterior-to-
    posterior, right-to-left) order, their spacing, and the lowest and highest scaled values.

    Voxels are inflated and converted slab by slab, each written through a view of the result that has the file's
    axis order and directions: only the result, one slab and the compressed input are ever held.
    """
    import nibabel as nib

    stream = _nifti_stream(data)
    header, position = _nifti_header(stream, limits)
    shape, dtype = tuple(int(v) for v in header.get_data_shape()[:3]), header.get_data_dtype()
    current = nib.orientations.io_orientation(header.get_best_affine())
    target = nib.orientations.axcodes2ornt(NIFTI_AXES)
    transform = nib.orientations.ornt_transform(current, target)
    canonical, zooms = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis in range(3):
        canonical[int(transform[axis, 0])] = shape[axis]
        zooms[int(transform[axis, 0])] = float(header.get_zooms()[axis])
    if not all(np.isfinite(zooms)) or min(zooms) <= 0:
        raise VolumeReadError("This NIfTI volume gives no valid voxel size, so it cannot be measured.")
    result = np.empty(canonical[::-1], dtype=out_dtype)  # (z, y, x)
    as_stored = nib.orientations.apply_orientation(result.transpose(2, 1, 0),
                                                   nib.orientations.ornt_transform(target, current))
    slope, inter = header.get_slope_inter()
    scaled = slope is not None and (slope, inter) != (1.0, 0.0) and np.isfinite([slope, inter]).all()
    limits_of_type = np.iinfo(out_dtype)
    offset = int(header.get_data_offset())
    while position < offset:
        deadline.check()
        position += len(_read_exactly(stream, min(offset - position, _SLAB_BYTES)))
    plane = shape[0] * shape[1] * dtype.itemsize
    step = max(1, _SLAB_BYTES // plane)
    low, high = np.inf, -np.inf
    for start in range(0, shape[2], step):
        deadline.check()
        count = min(step, shape[2] - start)
        slab = np.frombuffer(_read_exactly(stream, plane * count), dtype=dtype).reshape(
            (shape[0], shape[1], count), order="F").astype(np.float32)
        if scaled:
            slab = slab * np.float32(slope) + np.float32(inter)
        slab = np.nan_to_num(slab, nan=0.0, posinf=limits_of_type.max, neginf=limits_of_type.min)
        low, high = min(low, float(slab.min())), max(high, float(slab.max()))
        as_stored[:, :, start:start + count] = np.clip(np.rint(slab), limits_of_type.min, limits_of_type.max)
    return result, (zooms[2], zooms[1], zooms[0]), (low, high)


def read_nifti(data: bytes, limits: VolumeLimits, deadline: Deadline) -> Volume:
    """A CT volume from a NIfTI file, refused when it has too few slices or its values do not span air (HU)."""
    hu, spacing, (low, high) = nifti_canonical(data, limits, np.int16, deadline)
    if hu.shape[0] < limits.min_slices:
        raise VolumeReadError(f"This NIfTI volume has {hu.shape[0]} slice(s); a CT volume needs at least "
                              f"{limits.min_slices}.")
    if low > -500 or high < -200:
        raise VolumeReadError(f"This NIfTI volume does not look like a CT in Hounsfield units (values {low:g} to "
                              f"{high:g}; air is about -1000 HU). It may be a mask, an MRI or a rescaled image.")
    metadata = VolumeMetadata(source_format="nifti", shape=tuple(hu.shape), spacing=spacing,
                              sorted_by="NIfTI affine (reoriented to the canonical axes)",
                              notes=("read as NIfTI: no modality tag; taken as CT because its values span air",),
                              summary={"Modality": "CT (assumed)"})
    return Volume(hu=hu, metadata=metadata)
