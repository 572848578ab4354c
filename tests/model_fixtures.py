"""Small model directories for tests: an untrained classifier with a complete, valid card."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covid_models.models.architectures import build_model, get_architecture
from covid_models.models.checkpoint import save_model_dir
from covid_models.models.model_card import ModelCard
from covid_models.training.evaluation import classification_report


def tiny_card(name: str = "tiny", modality: str = "xray", classes: tuple[str, ...] = ("covid", "normal"),
              image_size: int = 64) -> ModelCard:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"label": rng.choice(classes, 40), "patient_id": [f"p{i}" for i in range(40)],
                          "source": rng.choice(["a", "b"], 40)})
    probabilities = rng.dirichlet(np.ones(len(classes)), 40)
    report = classification_report(frame, probabilities, list(classes), "covid", 0.5, n_resamples=50)
    return ModelCard(
        name=name, task="classification", modality=modality, architecture="efficientnet_lite0",
        classes=list(classes), positive_class="covid",
        preprocessing=get_architecture("efficientnet_lite0").preprocessing(image_size), temperature=1.3,
        operating_points={"youden": {"threshold": 0.5, "sensitivity": 0.9, "specificity": 0.8,
                                     "rule": "test fixture", "chosen_on": "val"}},
        default_operating_point="youden", metrics={"test": report},
        training={"seed": 0, "history": [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_auc": 0.5}]},
    )


def write_tiny_classifier(directory: Path, **card_kwargs) -> Path:
    card = tiny_card(**card_kwargs)
    model = build_model(card.architecture, len(card.classes))
    return save_model_dir(directory, model, card)
