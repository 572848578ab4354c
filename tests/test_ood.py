"""The out-of-distribution guard: foreign images are flagged, genuine ones rarely."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import WEIGHTS_DIR, require_or_skip

from covid_models.benchmarking import grey_photographs
from covid_models.imaging.io import read_image
from covid_models.models.inference import Classifier
from covid_models.models.ood import OodGuard
from covid_models.training.manifests import load_dataset
from covid_models.training.splits import ensure_split


def test_guard_flags_features_unlike_the_training_ones():
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(2, 32, generator=generator)
    labels = torch.randint(0, 2, (400,), generator=generator)
    train = directions[labels] + 0.1 * torch.randn(400, 32, generator=generator)
    val = directions[torch.randint(0, 2, (200,), generator=generator)] + 0.1 * torch.randn(200, 32,
                                                                                         generator=generator)
    guard = OodGuard.fit(train, labels, val)
    foreign = torch.randn(100, 32, generator=generator)
    assert np.mean(guard.score(val) > guard.threshold) <= 0.02
    assert np.mean(guard.score(foreign) > guard.threshold) >= 0.95


def test_guard_survives_the_checkpoint_round_trip():
    generator = torch.Generator().manual_seed(1)
    train, labels = torch.randn(100, 8, generator=generator), torch.randint(0, 3, (100,), generator=generator)
    guard = OodGuard.fit(train, labels, torch.randn(50, 8, generator=generator))
    again = OodGuard.from_state(guard.state(), guard.card_entry())
    probe = torch.randn(10, 8, generator=generator)
    assert np.allclose(guard.score(probe), again.score(probe), rtol=1e-4)


def _shipped(name: str) -> Classifier:
    path = WEIGHTS_DIR / name
    if not path.is_dir():
        require_or_skip(f"{name} is not in weights/")
    return Classifier.load(path)


@pytest.mark.real_data
@pytest.mark.slow
def test_shipped_xray_model_flags_photographs_and_ct_slices_but_few_real_xrays(real_data):
    classifier = _shipped("xray-efficientnet-lite0")
    xray = ensure_split(load_dataset(real_data, "xray"), seed=0, data_root=real_data)
    genuine = [read_image(p).pixels for p in xray[xray["split"] == "test"]["image"].head(60)]
    ct = [read_image(p).pixels for p in load_dataset(real_data, "ct")["image"].head(40)]
    flagged = {name: np.mean([p.out_of_distribution for p in classifier.predict_batch(images)])
               for name, images in (("genuine", genuine), ("photos", grey_photographs()), ("ct", ct))}
    assert flagged["genuine"] <= 0.1
    assert flagged["photos"] >= 0.5
    assert flagged["ct"] >= 0.5


def test_statistics_of_an_older_format_are_refused_with_a_clear_message():
    old = {"ood.mean": torch.zeros(4), "ood.components": torch.eye(4), "ood.class_means": torch.zeros(2, 4),
           "ood.precision": torch.eye(4)}
    with pytest.raises(ValueError, match="older format"):
        OodGuard.from_state(old, {"method": "mahalanobis (PCA + Ledoit-Wolf)", "threshold": 1.0})
