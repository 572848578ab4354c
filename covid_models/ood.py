"""Out-of-distribution guard: Mahalanobis distance of an image's features to the training images.

Fitted on the penultimate features of the training split (class means, one shared covariance with
Ledoit-Wolf shrinkage, in a PCA subspace to keep it small and well conditioned). The threshold is
the 99th percentile of the validation images' scores, so about 1 % of genuine chest images are
flagged. Photographs, MR slices or a CT given to the X-ray model land far away.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

OOD_PREFIX = "ood."


@dataclass(frozen=True)
class OodGuard:
    mean: torch.Tensor  # (D,) centring of the features
    components: torch.Tensor  # (D, K) PCA basis
    class_means: torch.Tensor  # (C, K)
    precision: torch.Tensor  # (K, K)
    threshold: float

    def score(self, features: torch.Tensor) -> np.ndarray:
        """Minimum over classes of the Mahalanobis distance (higher = less like the training data)."""
        projected = (features.float() - self.mean) @ self.components
        diffs = projected[:, None, :] - self.class_means[None]
        distances = torch.einsum("nck,kl,ncl->nc", diffs, self.precision, diffs).clamp_min(0).sqrt()
        return distances.min(dim=1).values.numpy()

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{OOD_PREFIX}mean": self.mean, f"{OOD_PREFIX}components": self.components,
                f"{OOD_PREFIX}class_means": self.class_means, f"{OOD_PREFIX}precision": self.precision}

    def card_entry(self) -> dict[str, Any]:
        return {"method": "mahalanobis (PCA + Ledoit-Wolf) on penultimate features, fitted on train",
                "threshold": self.threshold, "threshold_rule": "99th percentile of validation scores",
                "dimensions": int(self.components.shape[1])}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], entry: dict[str, Any] | None) -> OodGuard:
        if entry is None:
            raise ValueError("checkpoint has OOD tensors but its card has no 'ood' entry")
        return cls(*(state[f"{OOD_PREFIX}{k}"].float() for k in ("mean", "components", "class_means", "precision")),
                   threshold=float(entry["threshold"]))

    @classmethod
    def fit(cls, train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
            dimensions: int = 64, quantile: float = 0.99) -> OodGuard:
        from sklearn.covariance import LedoitWolf

        features = train_features.double()
        mean = features.mean(0)
        centred = features - mean
        k = min(dimensions, centred.shape[0] - 1, centred.shape[1])
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        components = vh[:k].T
        projected = centred @ components
        labels = train_labels.long()
        class_means = torch.stack([projected[labels == c].mean(0) for c in labels.unique()])
        residuals = projected - class_means[torch.searchsorted(labels.unique(), labels)]
        precision = torch.from_numpy(LedoitWolf().fit(residuals.numpy()).precision_)
        guard = cls(mean.float(), components.float(), class_means.float(), precision.float(), threshold=float("inf"))
        threshold = float(np.quantile(guard.score(val_features), quantile))
        return cls(guard.mean, guard.components, guard.class_means, guard.precision, threshold)
