"""Training classifiers (scripts/train.py, scripts/cross_validate.py) on the shared runtime of `training.loop`:
CUDA (bf16, channels_last, compile) or CPU, DDP under torchrun, resume.

Model selection on validation AUC; after training, temperature scaling and operating points are fitted
on validation; the test split is evaluated exactly once, and everything goes into the card.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from covid_models import __version__
from covid_models.imaging.preprocessing import LUNG_WINDOW, Augmentation
from covid_models.metrics import auc, sensitivity_threshold, threshold_metrics, youden_threshold
from covid_models.models.architectures import build_model, get_architecture
from covid_models.models.checkpoint import save_model_dir
from covid_models.models.inference import penultimate_layer
from covid_models.models.model_card import ModelCard
from covid_models.models.ood import OodGuard
from covid_models.models.segmentation import Segmenter
from covid_models.models.trust import source_probes
from covid_models.training.datasets import BalancedSampler, ImageDataset, balanced_weights
from covid_models.training.evaluation import classification_report
from covid_models.training.loop import (
    Runtime,
    Selection,
    autocast,
    fit_epochs,
    git_commit,
    make_loader,
    seed_everything,
    setup_runtime,
    teardown,
)
from covid_models.training.manifests import data_summary, manifest_hash
from covid_models.training.splits import split_tables

RESUME_FILE = "resume_state.pt"


# --- classifier training ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    name: str
    modality: str
    architecture: str
    classes: list[str]
    positive_class: str
    epochs: int = 10
    batch_size: int = 32
    image_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    pretrained: str | None = "imagenet"
    balance: bool = True
    compile: bool = False
    operating_point: str = "youden"
    patience: int | None = None
    half: bool = False
    source_adversarial: float = 0.0  # weight of the gradient-reversed source head; 0 = off
    lung_crop: float | None = None  # the lung-focused input (`Preprocessing.lung_crop`); None = whole image
    lung_segmenter: str | None = None  # X-ray: the segmenter folder whose lung mask gives the crop's box
    equalise: bool = False  # histogram-equalised input (`Preprocessing.equalise`)
    extra: dict[str, Any] = field(default_factory=dict)


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -weight (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(features: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    return _GradientReversal.apply(features, weight)


class SourceAdversary(nn.Module):
    """Wraps a classifier with a head that predicts the image's source from its features through a gradient
    reversal, so training pushes the features to carry as little source as the class task allows.

    The head also sees the model's class probabilities (detached), so it asks "which source, given the
    class?": where a plain adversary would erase the disease too (every COVID film of `xray/` comes from one
    source), the conditional one erases what the source adds beyond the class (as in CDAN, Long et al. 2018).
    Output: class logits and source logits concatenated; targets: (N, 2) rows of (class, source).
    """

    def __init__(self, model: nn.Module, num_classes: int, num_sources: int, weight: float):
        super().__init__()
        self.model, self.num_classes, self.weight = model, num_classes, weight
        features = penultimate_layer(model).in_features
        self.head = nn.Sequential(nn.Linear(features + num_classes, 128), nn.ReLU(), nn.Linear(128, num_sources))
        self._features: list[torch.Tensor] = []
        penultimate_layer(model).register_forward_hook(lambda _m, inp, _o: self._features.append(inp[0]))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self._features.clear()
        logits = self.model(inputs)
        features = reverse_gradient(self._features[-1].float(), self.weight)
        classes = torch.softmax(logits.detach().float(), 1)
        return torch.cat([logits.float(), self.head(torch.cat([features, classes], 1))], 1)


class AdversarialLoss(nn.Module):
    """Class cross-entropy plus source cross-entropy on `SourceAdversary` outputs."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.05):
        super().__init__()
        self.num_classes = num_classes
        self.classes = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.sources = nn.CrossEntropyLoss()

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (self.classes(outputs[:, :self.num_classes], targets[:, 0])
                + self.sources(outputs[:, self.num_classes:], targets[:, 1]))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature minimising the validation negative log-likelihood (Guo et al. 2017)."""
    logits, labels = logits.detach().clone(), labels.detach().clone()  # may come from inference mode
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)
    loss_fn = nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


@torch.inference_mode()
def collect(model: nn.Module, loader: DataLoader, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, labels and penultimate features of a whole loader (in order)."""
    model.eval()
    captured: list[torch.Tensor] = []
    hook = penultimate_layer(model).register_forward_hook(lambda _m, inp, _o: captured.append(inp[0].float().cpu()))
    logits, labels = [], []
    try:
        for inputs, targets in loader:
            inputs = inputs.to(runtime.device, non_blocking=True)
            if runtime.cuda:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with autocast(runtime):
                logits.append(model(inputs).float().cpu())
            labels.append(targets)
    finally:
        hook.remove()
    return torch.cat(logits), torch.cat(labels), torch.cat(captured)


def _positive_auc(logits: torch.Tensor, labels: torch.Tensor, positive: int) -> float:
    try:
        return auc((labels == positive).numpy(), torch.softmax(logits, 1)[:, positive].numpy())
    except ValueError:
        return float("nan")


def train_classifier(config: TrainConfig, frame: pd.DataFrame, out_dir: str | Path, *, resume: bool = False,
                     device: str | None = None, log=print) -> ModelCard | None:
    """Train, select, calibrate, evaluate once on test and write the model directory; returns its card (main rank)."""
    runtime = setup_runtime(device)
    try:
        return _train(config, frame, Path(out_dir), runtime, resume, log)
    finally:
        teardown(runtime)


def _train(config: TrainConfig, frame: pd.DataFrame, out_dir: Path, runtime: Runtime, resume: bool, log
           ) -> ModelCard | None:
    started = time.time()
    seed_everything(config.seed)
    arch = get_architecture(config.architecture)
    segmenter = Segmenter.load(config.lung_segmenter) if config.lung_segmenter else None
    lungs = None if segmenter is None else segmenter.input_size_mask
    preprocessing = arch.preprocessing(config.image_size, LUNG_WINDOW if config.modality == "ct" else None,
                                       config.lung_crop,
                                       None if segmenter is None else (segmenter.name, segmenter.card.sha256),
                                       config.equalise)
    augmentation = Augmentation.for_modality(config.modality)
    positive = config.classes.index(config.positive_class)
    splits = split_tables(frame)
    sources = sorted(frame["source"].unique())
    show = runtime.is_main
    datasets = {
        "train": ImageDataset(splits["train"], config.classes, preprocessing, augmentation, progress=show,
                              sources=sources if config.source_adversarial else None, lungs=lungs),
        "val": ImageDataset(splits["val"], config.classes, preprocessing, progress=show, lungs=lungs),
    }
    sampler = None
    if config.balance:
        weights = balanced_weights(splits["train"], by=("label",))
        sampler = BalancedSampler(weights, len(weights), config.seed, runtime.rank, runtime.world_size)
    train_loader = make_loader(datasets["train"], config.batch_size, runtime, sampler=sampler, shuffle=True,
                               seed=config.seed)
    val_loader = make_loader(datasets["val"], config.batch_size * 2, runtime)

    model = build_model(config.architecture, len(config.classes), config.pretrained).to(runtime.device)
    if runtime.cuda:
        model = model.to(memory_format=torch.channels_last)
    train_model: nn.Module = model
    loss_fn: nn.Module = nn.CrossEntropyLoss(label_smoothing=0.05)
    adversary: SourceAdversary | None = None
    if config.source_adversarial:
        adversary = SourceAdversary(model, len(config.classes), len(sources), config.source_adversarial)
        train_model = adversary.to(runtime.device)
        loss_fn = AdversarialLoss(len(config.classes))
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if runtime.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[runtime.local_rank] if runtime.cuda else None)
    if config.compile:
        train_model = torch.compile(train_model)

    def validate() -> dict[str, float]:
        logits, labels, _ = collect(model, val_loader, runtime)
        return {"val_loss": float(nn.functional.cross_entropy(logits, labels)),
                "val_auc": _positive_auc(logits, labels, positive),
                "val_accuracy": float((logits.argmax(1) == labels).float().mean())}

    selection = Selection(validate, "val_auc", {"val_loss": "val loss", "val_auc": "val AUC",
                                                "val_accuracy": "val acc"}, patience=config.patience)
    fit = fit_epochs(model, optimizer, train_loader, loss_fn, runtime, epochs=config.epochs, lr=config.lr,
                     resume_path=out_dir / RESUME_FILE, resume=resume, started=started, selection=selection,
                     train_model=train_model, log=log,
                     saved_modules={"adversary": adversary.head} if adversary is not None else None)
    if not show:
        return None

    model.eval()
    val_logits, val_labels, val_features = collect(model, val_loader, runtime)
    temperature = fit_temperature(val_logits, val_labels)
    val_probability = torch.softmax(val_logits / temperature, 1)[:, positive].numpy()
    val_positive = (val_labels == positive).numpy()
    thresholds = {
        "youden": (youden_threshold(val_positive, val_probability), "maximises sensitivity + specificity on val"),
        "sensitivity_95": (sensitivity_threshold(val_positive, val_probability, 0.95),
                           "highest threshold reaching 95% sensitivity on val"),
    }
    operating_points = {
        name: {**{k: v for k, v in threshold_metrics(val_positive, val_probability, t).items()
                  if k in ("threshold", "sensitivity", "specificity")}, "rule": rule, "chosen_on": "val"}
        for name, (t, rule) in thresholds.items()
    }

    train_eval = datasets["train"].for_evaluation()
    _, train_labels, train_features = collect(model, make_loader(train_eval, config.batch_size * 2, runtime), runtime)
    ood = OodGuard.fit(train_features, train_labels, val_features)

    test_dataset = ImageDataset(splits["test"], config.classes, preprocessing, progress=True, lungs=lungs)
    test_logits, _, test_features = collect(model, make_loader(test_dataset, config.batch_size * 2, runtime),
                                            runtime)
    test_probability = torch.softmax(test_logits / temperature, 1).numpy()
    threshold = operating_points[config.operating_point]["threshold"]
    test_report = classification_report(splits["test"], test_probability, config.classes, config.positive_class,
                                        threshold)
    test_report["source_probe"] = source_probes(test_features.numpy(), splits["test"], seed=config.seed)
    val_report = classification_report(splits["val"], torch.softmax(val_logits / temperature, 1).numpy(),
                                       config.classes, config.positive_class, threshold, n_resamples=200)
    card = ModelCard(
        name=config.name, task="classification", modality=config.modality, architecture=config.architecture,
        classes=list(config.classes), positive_class=config.positive_class, preprocessing=preprocessing,
        temperature=temperature, operating_points=operating_points, default_operating_point=config.operating_point,
        metrics={"test": test_report, "val": {k: val_report[k] for k in ("auc", "auc_ci95", "n", "ece")}},
        data={**data_summary(frame), "manifest_sha256": manifest_hash(frame)},
        training={**{k: v for k, v in asdict(config).items() if k not in ("name", "classes", "extra")},
                  "image_size": preprocessing.image_size, "augmentation": augmentation.to_dict(),
                  "history": fit.history, "best_val_auc": fit.best_score,
                  "device": runtime.describe(), "duration_s": round(fit.earlier_s + time.time() - started, 1),
                  "torch": torch.__version__, "covid_models": __version__, "git_commit": git_commit(),
                  **config.extra},
        extra={"ood": ood.card_entry()},
    )
    save_model_dir(out_dir, model, card, half=config.half, extra_tensors=ood.state())
    (out_dir / RESUME_FILE).unlink(missing_ok=True)
    return card
