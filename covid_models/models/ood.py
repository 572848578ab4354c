"""Out-of-distribution guard: Mahalanobis distance of an image's features to the training images.

The features are the classifier's penultimate vector, L2-normalised (its direction carries what kind
of image it is; its length mostly carries confidence). The guard is fitted on the training split:
class means and one shared covariance with Ledoit-Wolf shrinkage, in the full feature space (a PCA
subspace of the training features would discard exactly the directions in which foreign images
differ). The threshold is the 99th percentile of the validation images' scores, so about 1 % of
genuine images are flagged; photographs, MR slices or a CT given to the X-ray model land far away.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

OOD_PREFIX = "ood."
METHOD = "mahalanobis (Ledoit-Wolf, shared covariance) on L2-normalised penultimate features, fitted on train"


def _normalise(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.double(), dim=1)


@dataclass(frozen=True)
class OodGuard:
    class_means: torch.Tensor  # (C, D), of normalised training features
    precision: torch.Tensor  # (D, D)
    threshold: float

    def score(self, features: torch.Tensor) -> np.ndarray:
        """Minimum over classes of the squared Mahalanobis distance (higher = less like the training data)."""
        normalised = _normalise(features)
        distances = [torch.einsum("ni,ij,nj->n", normalised - mean, self.precision.double(), normalised - mean)
                     for mean in self.class_means.double()]
        return torch.stack(distances).min(dim=0).values.numpy()

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{OOD_PREFIX}class_means": self.class_means.float(), f"{OOD_PREFIX}precision": self.precision.float()}

    def card_entry(self) -> dict[str, Any]:
        return {"method": METHOD, "threshold": self.threshold,
                "threshold_rule": "99th percentile of validation scores", "dimensions": int(self.precision.shape[0])}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], entry: dict[str, Any] | None) -> OodGuard:
        if entry is None:
            raise ValueError("checkpoint has OOD tensors but its card has no 'ood' entry")
        if entry.get("method") != METHOD or set(state) != {f"{OOD_PREFIX}class_means", f"{OOD_PREFIX}precision"}:
            raise ValueError("its out-of-distribution statistics are of an older format; refit them with "
                             "scripts/fit_ood.py")
        return cls(state[f"{OOD_PREFIX}class_means"].double(), state[f"{OOD_PREFIX}precision"].double(),
                   threshold=float(entry["threshold"]))

    @classmethod
    def fit(cls, train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
            quantile: float = 0.99) -> OodGuard:
        from sklearn.covariance import LedoitWolf

        features = _normalise(train_features)
        labels = train_labels.long()
        classes = labels.unique()
        class_means = torch.stack([features[labels == c].mean(0) for c in classes])
        residuals = features - class_means[torch.searchsorted(classes, labels)]
        precision = torch.from_numpy(LedoitWolf().fit(residuals.numpy()).precision_)
        guard = cls(class_means, precision, threshold=float("inf"))
        return cls(class_means, precision, float(np.quantile(guard.score(val_features), quantile)))
