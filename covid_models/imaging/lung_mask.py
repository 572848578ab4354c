"""A classical 3-D lung mask on HU: threshold, remove what is not lung, split left from right, fill.

No network: air-filled regions inside the body are found by a threshold (-320 HU); air reached from the image
border (outside air, the scan-field padding of -3024 / -2048 HU) is removed slice by slice; the trachea and main
bronchi (small, dark, central regions above the lungs' hilum) are removed; of the remaining 3-D regions only those
at least 2 cm wide and deep (not the table's flat air channels) and reaching the upper half of the largest one are
kept (the lungs; bowel and stomach gas lie below). Each slice's lung regions are assigned to the left or the right
lung by the body's midline, and holes (vessels, airways, dense lesions surrounded by lung) are filled.

The mask is computed on an in-plane grid of about `GRID_MM` per pixel (every second pixel of a 0.7 mm scan), which
keeps the work and memory of a 512 x 512 scan four times smaller; the voxel volume is that of the grid.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AIR_HU = -320  # air-filled lung below this, soft tissue above (Hu et al. 2001 pick a threshold near -400)
AIRWAY_HU = -900  # the lumen of the trachea and main bronchi is nearly pure air
AIRWAY_MAX_MM2 = 600.0  # a trachea or main bronchus cross-section is well under 6 cm2
AIRWAY_CENTRAL = 0.12  # ... and its centre lies within this share of the body's width from the midline
LUNG_LOW_SHARE = 0.05  # a second region smaller than this share of the largest is not a lung
LUNG_MIN_EXTENT_MM = 20.0  # a lung is at least this wide and deep (a table's air channel is a few mm deep)
FILL_MM = 3.0  # closing radius: vessels and fissures at the lung border are lung
GRID_MM = 1.4  # in-plane pixel size of the mask grid, about (never finer than the scan)
RIGHT, LEFT = 1, 2  # label values: the patient's right lung and left lung
SLAB = 32

Progress = Callable[[float], None]
_PLANE = np.zeros((3, 3, 3), dtype=bool)
_PLANE[1] = True  # 8-connectivity within a slice, none across slices


@dataclass(frozen=True, eq=False)
class LungMask:
    """Lung labels (0 outside, RIGHT, LEFT) on the mask grid: the scan's slices, rows and columns / `factor`."""

    labels: np.ndarray  # uint8 (slices, rows // factor, columns // factor)
    factor: int
    spacing: tuple[float, float, float]  # mm of the grid
    midline: float  # the body's midline, a column of the grid

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def volume_ml(self, label: int | None = None) -> float:
        """Volume of one lung, or of both."""
        count = np.count_nonzero(self.labels) if label is None else np.count_nonzero(self.labels == label)
        return int(count) * self.voxel_ml


def grid_factor(pixel_spacing: float) -> int:
    return max(1, round(GRID_MM / pixel_spacing))


def to_grid(hu: np.ndarray, factor: int) -> np.ndarray:
    """HU averaged over factor x factor blocks (int16), slab by slab; rows and columns beyond a whole block dropped."""
    if factor == 1:
        return hu
    slices, rows, columns = hu.shape
    out = np.empty((slices, rows // factor, columns // factor), dtype=np.int16)
    rows, columns = rows // factor * factor, columns // factor * factor
    for start in range(0, slices, SLAB):
        slab = hu[start:start + SLAB, :rows, :columns]
        total = np.zeros((len(slab), rows // factor, columns // factor), dtype=np.int32)
        for dy in range(factor):
            for dx in range(factor):
                total += slab[:, dy::factor, dx::factor]
        out[start:start + SLAB] = np.floor_divide(total + factor * factor // 2, factor * factor)
    return out


def from_grid(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D grid mask back at the scan's (rows, columns), nearest neighbour, zero beyond the last whole block."""
    full = np.zeros(shape, dtype=mask.dtype)
    grown = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)
    full[: grown.shape[0], : grown.shape[1]] = grown
    return full


def segment_lungs(hu: np.ndarray, spacing: tuple[float, float, float], progress: Progress | None = None
                  ) -> LungMask:
    """The left and right lungs of an HU volume in the canonical orientation (see `covid_models.imaging.ct_volume`)."""
    report = progress or (lambda _fraction: None)
    factor = grid_factor(min(spacing[1], spacing[2]))
    grid = to_grid(hu, factor)
    grid_spacing = (spacing[0], spacing[1] * factor, spacing[2] * factor)
    pixel_mm2 = grid_spacing[1] * grid_spacing[2]
    air = grid < AIR_HU
    report(0.1)
    labels, count = ndimage.label(air, structure=_PLANE)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(),
                                       labels[:, :, -1].ravel()]))
    inside = np.ones(count + 1, dtype=bool)
    inside[border] = False
    inside[0] = False
    candidates = inside[labels]
    body = ~(air & ~candidates)  # everything but the air reached from the border
    profile = np.count_nonzero(body, axis=(0, 1))
    columns = np.nonzero(profile)[0]
    midline = float(np.average(np.arange(body.shape[2]), weights=profile)) if columns.size else body.shape[2] / 2
    width = float(columns[-1] - columns[0] + 1) if columns.size else float(body.shape[2])
    del body
    report(0.3)
    _remove_airways(candidates, labels, grid, pixel_mm2, midline, width)
    del labels
    report(0.5)
    lungs = _lung_regions(candidates, grid_spacing)
    del candidates
    report(0.7)
    result = _split_and_fill(lungs, midline, grid_spacing)
    report(1.0)
    return LungMask(labels=result, factor=factor, spacing=grid_spacing, midline=midline)


def _remove_airways(candidates: np.ndarray, labels: np.ndarray, grid: np.ndarray, pixel_mm2: float, midline: float,
                    width: float) -> None:
    """Drop, slice by slice, the small dark central regions: trachea and main bronchi (in place)."""
    count = int(labels.max())
    if count == 0:
        return
    area = np.bincount(labels.ravel(), minlength=count + 1)[1:] * pixel_mm2
    small = np.zeros(count + 1, dtype=bool)
    small[1:] = area < AIRWAY_MAX_MM2
    selected = small[labels]  # the few voxels of small regions: measured without touching the rest
    ids, values = labels[selected], grid[selected].astype(np.float64)
    if ids.size == 0:
        return
    sums = np.bincount(ids, weights=values, minlength=count + 1)
    counts = np.bincount(ids, minlength=count + 1)
    centre = np.asarray([(box[2].start + box[2].stop - 1) / 2 if box is not None else -1.0
                         for box in ndimage.find_objects(labels)])
    picked = np.nonzero(counts[1:])[0] + 1
    mean_hu = sums[picked] / counts[picked]
    airway = picked[(np.abs(centre[picked - 1] - midline) < AIRWAY_CENTRAL * width) & (mean_hu < AIRWAY_HU)]
    if airway.size:
        drop = np.zeros(count + 1, dtype=bool)
        drop[airway] = True
        candidates &= ~drop[labels]


def _lung_regions(candidates: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The 3-D regions that are lungs: large, at least LUNG_MIN_EXTENT_MM across in both in-plane directions (the
    table's air channels are long and wide but flat), and reaching the upper half of the largest such region."""
    labels, count = ndimage.label(candidates)
    if count == 0:
        return candidates
    sizes = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    extent = np.asarray([[(box[1].stop - box[1].start) * spacing[1], (box[2].stop - box[2].start) * spacing[2]]
                         for box in boxes])
    sizes[extent.min(axis=1) < LUNG_MIN_EXTENT_MM] = 0
    largest = int(np.argmax(sizes))
    if sizes[largest] == 0:
        return np.zeros_like(candidates)
    top, bottom = boxes[largest][0].start, boxes[largest][0].stop
    middle = (top + bottom) / 2
    keep = np.zeros(count + 1, dtype=bool)
    for order in np.argsort(sizes)[::-1][:2]:
        if sizes[order] >= LUNG_LOW_SHARE * sizes[largest] and boxes[order][0].start < middle:
            keep[order + 1] = True
    return keep[labels]


def _split_and_fill(lungs: np.ndarray, midline: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """Left/right labels per slice by the midline (a region across it is cut there), then closed and filled."""
    result = np.zeros(lungs.shape, dtype=np.uint8)
    if not lungs.any():
        return result
    left_side = np.arange(lungs.shape[2]) >= midline
    regions, count = ndimage.label(lungs, structure=_PLANE)
    centres = np.asarray([(box[2].start + box[2].stop - 1) / 2 for box in ndimage.find_objects(regions)])
    side = np.zeros(count + 1, dtype=np.uint8)
    side[1:] = np.where(centres >= midline, LEFT, RIGHT)
    result[:] = side[regions]
    del regions
    # a region crossing the midline (lungs touching at the anterior junction) is cut at the midline
    crossing = lungs & (((result == RIGHT) & left_side) | ((result == LEFT) & ~left_side))
    result[crossing] = np.where(left_side, LEFT, RIGHT)[np.nonzero(crossing)[2]]
    radius = max(1, round(FILL_MM / min(spacing[1], spacing[2])))
    disk = np.zeros((1, 2 * radius + 1, 2 * radius + 1), dtype=bool)
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk[0] = yy**2 + xx**2 <= radius**2
    for label in (RIGHT, LEFT):
        mask = result == label
        boxes = ndimage.find_objects(mask.astype(np.uint8))
        if not boxes or boxes[0] is None:
            continue
        box = tuple(slice(max(0, s.start - radius - 1), s.stop + radius + 1) for s in boxes[0])
        part = mask[box]
        closed = ndimage.binary_closing(np.pad(part, ((0, 0), (radius, radius), (radius, radius))),
                                        structure=disk)[:, radius:-radius, radius:-radius]
        filled = ndimage.binary_fill_holes(closed, structure=_PLANE)
        target = result[box]
        target[filled & (target == 0)] = label
    return result
