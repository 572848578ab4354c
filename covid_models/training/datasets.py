"""Torch datasets and sampling: labelled images decoded once into network inputs, and class-balanced draws.

Separate from the tables (`manifests`, `splits`): this is the only part of the data layer that needs torch's
`Dataset` and reads pixels for training.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from covid_models.imaging.io import read_image
from covid_models.imaging.preprocessing import Augmentation, Preprocessing
from covid_models.training.manifests import DataError


def balanced_weights(frame: pd.DataFrame, by: Sequence[str] = ("label",)) -> np.ndarray:
    """Per-row sampling weights so every (by...) stratum is drawn equally often."""
    keys = frame[list(by)].astype(str).agg("|".join, axis=1)
    counts = keys.map(keys.value_counts())
    return (1.0 / counts.to_numpy()).astype(np.float64)


class BalancedSampler(Sampler[int]):
    """Weighted sampling with replacement, sharded across DDP ranks (same draw on every rank, own slice)."""

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = num_samples - num_samples % world_size
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(draws[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples // self.world_size


def _load_resized(path: str, preprocessing: Preprocessing, orientation: str = "as_is",
                  lungs: Callable[[np.ndarray], np.ndarray] | None = None) -> torch.Tensor:
    from covid_models.models.segmentation import orient

    pixels = orient(preprocessing.model_pixels(read_image(path)), orientation)
    return preprocessing.square(preprocessing.crop(pixels, None if lungs is None else lungs(pixels)))


class ImageDataset(Dataset):
    """Labelled images as network inputs; decoded and resized once, kept in memory.

    Caching the resized image makes CPU epochs cost only the network; augmentation happens after
    the cache, on each draw. The cache is float32, exactly what `Preprocessing.resize` gives at
    inference (a uint8 cache would round, and evaluation would no longer match the app).
    """

    def __init__(self, frame: pd.DataFrame, classes: Sequence[str], preprocessing: Preprocessing,
                 augmentation: Augmentation | None = None, workers: int = 4, progress: bool = False,
                 sources: Sequence[str] | None = None, lungs: Callable[[np.ndarray], np.ndarray] | None = None):
        """`sources`, when given, makes each target a (class, source index) pair for a source adversary.
        `lungs` gives the lung mask of an image when the preprocessing crops to a segmenter's lungs.

        An `orientation` column (e.g. "transpose" for the MedSeg slices) puts rows into display orientation.
        """
        unknown = set(frame["label"]) - set(classes)
        if unknown:
            raise DataError(f"labels {sorted(unknown)} are not among the classes {list(classes)}")
        self.frame = frame.reset_index(drop=True)
        self.labels = torch.tensor([list(classes).index(label) for label in self.frame["label"]])
        if sources is not None:
            source_index = torch.tensor([list(sources).index(s) for s in self.frame["source"]])
            self.labels = torch.stack([self.labels, source_index], 1)
        self.preprocessing, self.augmentation = preprocessing, augmentation
        paths = self.frame["image"].tolist()
        orientations = self.frame.get("orientation", pd.Series(["as_is"] * len(paths))).fillna("as_is").tolist()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            images = pool.map(lambda po: _load_resized(po[0], preprocessing, po[1], lungs),
                              zip(paths, orientations, strict=True))
            if progress:
                from tqdm import tqdm
                images = tqdm(images, total=len(paths), desc="decoding images", unit="img")
            self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def for_evaluation(self) -> ImageDataset:
        """The same decoded images without augmentation and with class targets only: the trainer evaluates
        its training images (for the OOD guard) without decoding them a second time."""
        view = copy.copy(self)
        view.augmentation = None
        view.labels = self.labels[:, 0] if self.labels.ndim == 2 else self.labels
        return view

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augmentation is not None:
            image = self.augmentation(image)
        return self.preprocessing.normalise(image), self.labels[index]
