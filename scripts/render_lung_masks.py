"""Pictures of the classical lung mask on the shared CT scans, for the README (docs/lung-mask-*.png).

    python scripts/render_lung_masks.py [--data ../shared/data] [--out docs]

Per scan: three axial slices (a quarter, half and three quarters down the lungs) and a coronal plane through the
lungs' middle, lung window, the patient's right lung in blue and left lung in orange, on the mask's grid (about
1.4 mm pixels), saved as a small palette PNG. Derived renderings of de-identified public scans (licences and
citations in ../shared/data/ct-volumes/README.md); no header field is drawn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from covid_models.analysis.overlays import LUNG_COLOR, mask_overlay, to_rgb
from covid_models.imaging.lung_mask import LEFT, RIGHT, segment_lungs, to_grid
from covid_models.imaging.scan import WINDOW_PRESETS, apply_window
from covid_models.imaging.volumes import read_volume

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCANS = {"ricord": "ricord-1a-000082/dicom", "lung-pet-ct-dx": "lung-pet-ct-dx-a0002/dicom",
         "copdgene": "copdgene-10002k-64/dicom"}
LEFT_COLOR = (255, 170, 40)
HEIGHT = 200  # pixels of each panel


def panel(hu: np.ndarray, labels: np.ndarray, aspect: float = 1.0) -> Image.Image:
    """One plane with both lungs tinted, HEIGHT pixels high; `aspect` = mm per row / mm per column."""
    picture = to_rgb(apply_window(hu, *WINDOW_PRESETS["lung"]))
    picture = mask_overlay(picture, labels == RIGHT, LUNG_COLOR, alpha=0.35, contour_width=1)
    picture = mask_overlay(picture, labels == LEFT, LEFT_COLOR, alpha=0.35, contour_width=1)
    image = Image.fromarray(picture)
    width = round(HEIGHT * image.width / (image.height * aspect))
    return image.resize((width, HEIGHT), Image.Resampling.BILINEAR)


def render(path: Path) -> Image.Image:
    volume = read_volume(path)
    mask = segment_lungs(volume.hu, volume.spacing)
    grid = to_grid(volume.hu, mask.factor)
    present = np.nonzero(np.count_nonzero(mask.labels, axis=(1, 2)))[0]
    first, last = int(present[0]), int(present[-1])
    panels = [panel(grid[k], mask.labels[k]) for k in (first + (last - first) * q // 4 for q in (1, 2, 3))]
    rows = np.nonzero(np.count_nonzero(mask.labels, axis=(0, 2)))[0]
    row = int((rows[0] + rows[-1]) // 2)
    panels.append(panel(grid[:, row, :], mask.labels[:, row, :], aspect=mask.spacing[0] / mask.spacing[2]))
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), HEIGHT), "white")
    x = 0
    for picture in panels:
        sheet.paste(picture, (x, 0))
        x += picture.width + 4
    return sheet.quantize(colors=128)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, relative in SCANS.items():
        target = args.out / f"lung-mask-{name}.png"
        render(args.data / "ct-volumes" / relative).save(target, optimize=True)
        print(f"{target} ({target.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
