"""Training segmentation models on the shared runtime of `training.loop` (CUDA bf16/channels_last, CPU, torchrun
DDP, progress, resume), with Dice + BCE loss and augmentations applied identically to image and mask.

Two protocols. With a patient-level train/val/test split, the epoch with the best validation Dice is kept
and the test split is scored once. With k folds (small sets such as the 48 CT slices), every image is
scored once by the model that did not see its patient, and the shipped model is then trained on all
images for the same number of epochs. Scores are always taken at each image's own resolution, through
`Segmenter`, exactly as the app computes its masks.

Negatives (`data.load_segmentation_negatives`: real slices without the target, empty masks) teach the model what is
not infection. Their "train" part joins training (folded by patient like the positives, the positives' folds
unchanged), each epoch drawing all positives and a fresh share of the negatives; their "test" part is never trained
on and only scored, for the false-positive area of the final model. A `WindowJitter` re-windows every CT slice in HU.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from covid_models import __version__
from covid_models.imaging.io import read_image
from covid_models.imaging.preprocessing import LUNG_WINDOW, Augmentation, Preprocessing, WindowJitter
from covid_models.metrics import dice, iou, summary_with_ci
from covid_models.models.architectures import SEGMENTATION_ARCHITECTURES
from covid_models.models.checkpoint import save_model_dir
from covid_models.models.model_card import ModelCard
from covid_models.models.segmentation import (
    DEFAULT_ENCODER,
    ORIENTATIONS,
    POSTPROCESS_LUNGS,
    TARGETS,
    Segmenter,
    build_segmentation_model,
    orient,
    segmentation_preprocessing,
)
from covid_models.training.infection_false_positives import false_positive_areas, summarise_false_positive_areas
from covid_models.training.loop import (
    Fit,
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
from covid_models.training.manifests import DataError, data_summary, manifest_hash
from covid_models.training.splits import (
    NEGATIVE_LABEL,
    check_no_leakage,
    ensure_split,
    grouped_folds,
    near_duplicate_links,
    split_groups,
    split_tables,
)

RESUME_PREFIX = "resume_state"
OPERATING_POINT = "fixed"


@dataclass
class SegmentationConfig:
    name: str
    modality: str
    target: str
    architecture: str = "unet"
    encoder: str = DEFAULT_ENCODER
    epochs: int = 8
    batch_size: int = 8
    image_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    pretrained: bool = True
    threshold: float = 0.5
    postprocess: str | None = None
    orientation: str = "as_is"
    folds: int | None = None  # cross-validate with this many patient-grouped folds, then train on everything
    link_similarity: float = 0.985  # thumbnails this alike are kept on one side of a split or fold
    half: bool = False
    negatives_per_positive: float = 0.5  # negatives drawn each epoch per positive image (when negatives are given)
    window_jitter: WindowJitter | None = None  # HU re-windowing of every training slice (CT models with a hu_window)
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocessing(self) -> Preprocessing:
        """The input contract stored in the card: CT models take DICOM through the lung window."""
        return segmentation_preprocessing(self.image_size, self.encoder,
                                          LUNG_WINDOW if self.modality == "ct" else None)

    def validate(self) -> None:
        if self.architecture not in SEGMENTATION_ARCHITECTURES:
            raise ValueError(f"architecture must be one of {SEGMENTATION_ARCHITECTURES}, got {self.architecture!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.postprocess not in (None, POSTPROCESS_LUNGS):
            raise ValueError(f"postprocess must be None or {POSTPROCESS_LUNGS!r}")
        if self.folds is not None and self.folds < 2:
            raise ValueError("cross-validation needs at least 2 folds")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("the threshold must lie strictly between 0 and 1")
        if self.negatives_per_positive <= 0:
            raise ValueError("negatives_per_positive must be positive")
        if self.window_jitter is not None and self.modality != "ct":
            raise ValueError("HU window jitter applies to CT models only")


# --- data ---------------------------------------------------------------------------------------------


def row_orientations(frame: pd.DataFrame, orientation: str) -> list[str]:
    """Each row's own orientation (negatives are stored as displayed), else the model's training orientation."""
    if "orientation" not in frame.columns:
        return [orientation] * len(frame)
    return frame["orientation"].fillna(orientation).tolist()


def read_pair(image_path: str, mask_path: str, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """Image in [0, 1] and boolean mask at their own (equal) size, in the model's orientation.

    An empty `mask_path` (a negative) is an all-zero mask.
    """
    pixels = read_image(image_path).pixels
    if not mask_path:
        return orient(pixels, orientation), orient(np.zeros(pixels.shape, dtype=bool), orientation)
    mask = read_image(mask_path).pixels >= 0.5
    if pixels.shape != mask.shape:
        raise DataError(f"{mask_path} is {mask.shape} but its image is {pixels.shape}")
    return orient(pixels, orientation), orient(mask, orientation)


class SegmentationDataset(Dataset):
    """Image/mask pairs decoded, oriented and resized once (uint8 in memory); augmented on each draw.

    `window_jitter` re-windows the image in HU under the preprocessing's `hu_window` before the geometric draw.
    """

    def __init__(self, frame: pd.DataFrame, preprocessing: Preprocessing, orientation: str = "as_is",
                 augmentation: Augmentation | None = None, workers: int = 4, show_progress: bool = False,
                 window_jitter: WindowJitter | None = None):
        if window_jitter is not None and preprocessing.hu_window is None:
            raise ValueError("HU window jitter needs a preprocessing with a hu_window")
        self.preprocessing, self.augmentation, self.window_jitter = preprocessing, augmentation, window_jitter
        pairs = list(zip(frame["image"], frame["mask"], row_orientations(frame, orientation), strict=True))

        def load(pair: tuple[str, str, str]) -> tuple[torch.Tensor, torch.Tensor]:
            pixels, mask = read_pair(*pair)
            image = (preprocessing.resize(pixels) * 255).round().to(torch.uint8)
            size = (preprocessing.image_size,) * 2
            small = nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")
            return image, small[0].to(torch.uint8)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            loaded = pool.map(load, pairs)
            if show_progress:
                from tqdm import tqdm
                loaded = tqdm(loaded, total=len(pairs), desc="decoding pairs", unit="pair", leave=False)
            self.items = list(loaded)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.items[index]
        image, mask = image.float() / 255, mask.float()
        if self.window_jitter is not None:
            image = self.window_jitter(image, self.preprocessing.hu_window)
        if self.augmentation is not None:
            image, mask = self.augmentation.apply(image, self.augmentation.sample(), mask)
        return self.preprocessing.normalise(image), mask


class NegativeSampler(Sampler[int]):
    """Every epoch: all positive rows and a fresh seeded draw of `per_epoch` negative rows (without replacement),
    shuffled; sharded across DDP ranks. Many negatives then cost no more epoch time than a few."""

    def __init__(self, is_negative: np.ndarray, per_epoch: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        is_negative = np.asarray(is_negative, dtype=bool)
        self.positives, self.negatives = np.flatnonzero(~is_negative), np.flatnonzero(is_negative)
        self.per_epoch = min(per_epoch, len(self.negatives))
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = rng.choice(self.negatives, self.per_epoch, replace=False)
        order = rng.permutation(np.concatenate([self.positives, drawn]))
        return order[:len(order) - len(order) % self.world_size]

    def __iter__(self):
        return iter(self._draw()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        total = len(self.positives) + self.per_epoch
        return (total - total % self.world_size) // self.world_size


# --- training -----------------------------------------------------------------------------------------


class DiceBCELoss(nn.Module):
    """Soft Dice (overlap, insensitive to how small the target is) + BCE (stable per-pixel gradients)."""

    def __init__(self) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


@torch.inference_mode()
def _validate(model: nn.Module, dataset: Dataset, config: SegmentationConfig, runtime: Runtime,
              loss_fn: nn.Module) -> dict[str, float]:
    """Mean validation loss and mean per-image Dice at the training resolution (for model selection)."""
    model.eval()
    losses, scores = [], []
    for inputs, targets in make_loader(dataset, config.batch_size * 2, runtime):
        inputs, targets = inputs.to(runtime.device), targets.to(runtime.device)
        if runtime.cuda:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(runtime):
            logits = model(inputs).float()
        losses.append(float(loss_fn(logits, targets)) * len(inputs))
        probability = torch.sigmoid(logits).cpu().numpy()
        truth = targets.cpu().numpy() > 0.5
        scores += [dice(p[0] >= config.threshold, t[0]) for p, t in zip(probability, truth, strict=True)]
    return {"val_loss": float(np.sum(losses) / len(dataset)), "val_dice": float(np.mean(scores))}


def fit(config: SegmentationConfig, train: pd.DataFrame, val: pd.DataFrame | None, runtime: Runtime,
        resume_path: Path, resume: bool, started: float, log: Callable[[str], None], label: str = ""
        ) -> tuple[nn.Module, Fit]:
    """Train one model; keep the best validation-Dice epoch when `val` is given, else the last epoch."""
    preprocessing = config.preprocessing()
    train_set = SegmentationDataset(train, preprocessing, config.orientation, Augmentation(),
                                    show_progress=runtime.is_main, window_jitter=config.window_jitter)
    is_negative = (train["label"] == NEGATIVE_LABEL).to_numpy()
    sampler = None
    if is_negative.any():
        sampler = NegativeSampler(is_negative, round(config.negatives_per_positive * (~is_negative).sum()),
                                  seed=config.seed, rank=runtime.rank, world_size=runtime.world_size)
    loader = make_loader(train_set, config.batch_size, runtime, sampler=sampler, shuffle=True, seed=config.seed)
    model = build_segmentation_model(config.architecture, config.encoder, config.pretrained).to(runtime.device)
    if runtime.cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_model: nn.Module = model
    if runtime.distributed:
        # PSPNet reads only the first encoder stages: the deeper ones get no gradient.
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.local_rank] if runtime.cuda else None,
            find_unused_parameters=config.architecture == "pspnet")
    loss_fn = DiceBCELoss()
    selection = None
    if val is not None:
        val_set = SegmentationDataset(val, preprocessing, config.orientation)
        selection = Selection(lambda: _validate(model, val_set, config, runtime, loss_fn), "val_dice",
                              {"val_loss": "val loss", "val_dice": "val Dice"})
    result = fit_epochs(model, optimizer, loader, loss_fn, runtime, epochs=config.epochs, lr=config.lr,
                        resume_path=resume_path, resume=resume, started=started, selection=selection,
                        train_model=train_model, label=label, log=log)
    return model.eval(), result


# --- evaluation ---------------------------------------------------------------------------------------


def score_images(segmenter: Segmenter, frame: pd.DataFrame, orientation: str,
                 show_progress: bool = False) -> pd.DataFrame:
    """Per-image Dice and IoU at each image's own size, raw and (when the card has one) post-processed."""
    rows = []
    pairs = list(zip(frame["image"], frame["mask"], frame["patient_id"], row_orientations(frame, orientation),
                     strict=True))
    if show_progress:
        from tqdm import tqdm
        pairs = tqdm(pairs, desc="scoring", unit="img", leave=False)
    for image_path, mask_path, patient, row_orientation in pairs:
        pixels, truth = read_pair(image_path, mask_path, row_orientation)
        probability = segmenter.probability(pixels)
        predicted = probability >= segmenter.threshold
        row = {"image": Path(image_path).stem, "patient_id": patient,
               "dice": dice(predicted, truth), "iou": iou(predicted, truth),
               "truth_pixels": int(truth.sum()), "predicted_pixels": int(predicted.sum()),
               "intersection": int(np.logical_and(predicted, truth).sum())}
        if segmenter.postprocess is not None:
            processed = segmenter.mask_from_probability(probability)
            row.update(dice_postprocessed=dice(processed, truth), iou_postprocessed=iou(processed, truth))
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_scores(scores: pd.DataFrame) -> dict[str, Any]:
    """Mean, SD and bootstrap CI per metric, the paired post-processing effect, and the pooled (global) Dice."""
    summary: dict[str, Any] = {"n": int(len(scores))}
    for metric in ("dice", "iou", "dice_postprocessed", "iou_postprocessed"):
        if metric in scores.columns:
            summary[metric] = summary_with_ci(scores[metric].to_numpy())
    if "dice_postprocessed" in scores.columns:
        summary["postprocessing_dice_change"] = summary_with_ci(
            (scores["dice_postprocessed"] - scores["dice"]).to_numpy())
    total = scores["truth_pixels"].sum() + scores["predicted_pixels"].sum()
    summary["pooled_dice"] = float(2 * scores["intersection"].sum() / total) if total else 1.0
    return summary


# --- the two protocols --------------------------------------------------------------------------------


def train_segmenter(config: SegmentationConfig, frame: pd.DataFrame, out_dir: str | Path, *, resume: bool = False,
                    device: str | None = None, log: Callable[[str], None] = print,
                    negatives: pd.DataFrame | None = None) -> ModelCard | None:
    """Train, evaluate (test split or k-fold CV) and write the model directory; returns its card (main rank).

    `negatives` (see `data.load_segmentation_negatives`): their "train" rows join training, their "test" rows are
    only scored (false-positive area of the written model).
    """
    config.validate()
    runtime = setup_runtime(device)
    try:
        return _train(config, frame, Path(out_dir), runtime, resume, log, negatives)
    finally:
        teardown(runtime)


def _resume_path(out_dir: Path, tag: str) -> Path:
    return out_dir / f"{RESUME_PREFIX}_{tag}.pt"


def _card(config: SegmentationConfig, model_frame: pd.DataFrame, metrics: dict, history: list, runtime: Runtime,
          started: float, extra: dict) -> ModelCard:
    return ModelCard(
        name=config.name, task="segmentation", modality=config.modality, architecture=config.architecture,
        classes=[config.target], positive_class=config.target,
        preprocessing=config.preprocessing(),
        operating_points={OPERATING_POINT: {"threshold": config.threshold,
                                            "rule": "fixed probability cut-off, not tuned"}},
        default_operating_point=OPERATING_POINT, metrics=metrics,
        data={**data_summary(model_frame), "manifest_sha256": manifest_hash(model_frame)},
        training={**{k: v for k, v in asdict(config).items() if k not in ("name", "extra")},
                  "loss": "soft Dice + BCE", "augmentation": asdict(Augmentation()), "history": history,
                  "device": runtime.describe(), "duration_s": round(time.time() - started, 1),
                  "torch": torch.__version__, "covid_models": __version__, "git_commit": git_commit(),
                  **config.extra},
        extra={"encoder": config.encoder, "target": config.target, "postprocess": config.postprocess,
               "training_orientation": config.orientation, **extra},
    )


def _negative_parts(negatives: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The negatives' training rows and held-out rows (both empty without negatives)."""
    if negatives is None:
        negatives = pd.DataFrame(columns=["image", "mask", "patient_id", "source", "label", "orientation", "split"])
    train = negatives[negatives["split"] == "train"].reset_index(drop=True)
    return train, negatives[negatives["split"] == "test"].reset_index(drop=True)


def _held_out_negatives(segmenter: Segmenter, held_out: pd.DataFrame) -> dict[str, Any]:
    """The card's record of the false-positive area on negatives that no model was trained or chosen on."""
    areas = false_positive_areas(segmenter, held_out)
    return {**summarise_false_positive_areas(areas), "threshold": segmenter.threshold,
            "what": "share of each held-out negative slice's pixels called infection (the slices contain none)",
            "per_image": areas[["image", "area"]].round(6).to_dict(orient="list")}


def _train(config: SegmentationConfig, frame: pd.DataFrame, out_dir: Path, runtime: Runtime, resume: bool,
           log: Callable[[str], None], negatives: pd.DataFrame | None = None) -> ModelCard | None:
    started = time.time()
    seed_everything(config.seed)
    show = runtime.is_main
    if config.folds:
        return _cross_validate_then_train(config, frame, out_dir, runtime, resume, log, started, negatives)
    frame = ensure_split(frame, seed=config.seed, link_similarity=config.link_similarity)
    splits = split_tables(frame)
    negative_train, negative_test = _negative_parts(negatives)
    table = pd.concat([frame, negative_train, negative_test], ignore_index=True)
    check_no_leakage(table)
    model, result = fit(config, pd.concat([splits["train"], negative_train], ignore_index=True), splits["val"],
                        runtime, _resume_path(out_dir, "split"), resume, started, log)
    if not show:
        return None
    extra = {"orientation_note": _orientation_note(config.orientation)}
    card = _card(config, table, {}, result.history, runtime, started, extra)
    segmenter = Segmenter(model.float(), card)
    scores = score_images(segmenter, splits["test"], config.orientation, show_progress=True)
    card.metrics = {"test": {**summarise_scores(scores), "threshold": config.threshold,
                             "per_image": scores.filter(["image", "dice", "iou", "dice_postprocessed"]).round(5)
                             .to_dict(orient="list")},
                    "val": {"dice_at_training_size": result.best_score}}
    if len(negative_test):
        card.metrics["negatives_held_out"] = _held_out_negatives(segmenter, negative_test)
    card.training["duration_s"] = round(time.time() - started, 1)
    save_model_dir(out_dir, model, card, half=config.half)
    _resume_path(out_dir, "split").unlink(missing_ok=True)
    return card


def _cross_validate_then_train(config: SegmentationConfig, frame: pd.DataFrame, out_dir: Path, runtime: Runtime,
                               resume: bool, log: Callable[[str], None], started: float,
                               negatives: pd.DataFrame | None = None) -> ModelCard | None:
    show = runtime.is_main
    frame = frame.reset_index(drop=True)
    links = near_duplicate_links(frame, config.link_similarity)
    frame["fold"] = grouped_folds(split_groups(frame, links), config.folds, config.seed)
    negative_train, negative_test = _negative_parts(negatives)
    negative_train["fold"] = (grouped_folds(split_groups(negative_train), config.folds, config.seed)
                              if len(negative_train) else np.zeros(0, dtype=int))
    fold_scores, fold_histories, fold_negatives = [], [], []
    for fold in range(config.folds):
        held, held_negative = frame["fold"] == fold, negative_train["fold"] == fold
        train = pd.concat([frame[~held], negative_train[~held_negative]], ignore_index=True).assign(split="train")
        check_no_leakage(pd.concat([train, frame[held].assign(split="val"),
                                    negative_train[held_negative].assign(split="val"), negative_test]))
        model, result = fit(config, train, None, runtime, _resume_path(out_dir, f"fold{fold + 1}"), resume, started,
                            log, label=f"fold {fold + 1}/{config.folds} ")
        if show:
            probe = Segmenter(model.float(), _card(config, frame, {}, result.history, runtime, started, {}))
            scores = score_images(probe, frame[held], config.orientation)
            fold_scores.append(scores.assign(fold=fold + 1))
            fold_histories.append(result.history)
            line = (f"fold {fold + 1}/{config.folds}: {len(scores)} images, mean Dice {scores['dice'].mean():.4f}, "
                    f"mean IoU {scores['iou'].mean():.4f}")
            if held_negative.any():
                areas = false_positive_areas(probe, negative_train[held_negative])
                fold_negatives.append(areas.assign(fold=fold + 1))
                line += f"; {len(areas)} negatives, mean false-positive area {areas['area'].mean():.5f}"
            log(line)
    everything = pd.concat([frame, negative_train], ignore_index=True).assign(split="train")
    model, result = fit(config, everything, None, runtime, _resume_path(out_dir, "final"), resume, started, log,
                        label="final ")
    if not show:
        return None
    pooled = pd.concat(fold_scores, ignore_index=True)
    folds = [{"fold": int(f), "n": int(len(s)), "dice_mean": float(s["dice"].mean()),
              "iou_mean": float(s["iou"].mean()), "pooled_dice": summarise_scores(s)["pooled_dice"]}
             for f, s in pooled.groupby("fold")]
    cv = {"k": config.folds,
          "grouped_by": f"patient_id, and images whose 32x32 thumbnails have cosine similarity >= "
                        f"{config.link_similarity} ({len(links)} linked pairs)",
          "protocol": f"{config.folds}-fold cross-validation by group; each image is scored once, at its own size, "
                      "by the model trained on the other folds (same recipe and epochs); the shipped model is then "
                      "trained on all images, so it has no held-out score of its own",
          "folds": folds, "pooled": summarise_scores(pooled), "threshold": config.threshold,
          "per_image": pooled[["image", "fold", "dice", "iou"]].round(5).to_dict(orient="list"),
          "fold_histories": fold_histories}
    if fold_negatives:
        negative_areas = pd.concat(fold_negatives, ignore_index=True)
        cv["negatives"] = {**summarise_false_positive_areas(negative_areas),
                           "what": "share of each negative slice's pixels called infection, by the model of the "
                                   "fold that did not see it",
                           "per_image": negative_areas[["image", "fold", "area"]].round(6).to_dict(orient="list"),
                           "folds": [{"fold": int(f), "n": int(len(a)), "area_mean": float(a["area"].mean())}
                                     for f, a in negative_areas.groupby("fold")]}
    data_frame = pd.concat([everything, negative_test], ignore_index=True)
    trained_on = "all images (after cross-validation)" + (
        f", with {len(negative_train)} negative slices; {len(negative_test)} negatives held out" if len(negative_train)
        else "")
    metrics = {"cross_validation": cv}
    card = _card(config, data_frame, metrics, result.history, runtime, started,
                 {"trained_on": trained_on, "cv_k": config.folds,
                  "orientation_note": _orientation_note(config.orientation)})
    if len(negative_test):
        metrics["negatives_held_out"] = _held_out_negatives(Segmenter(model.float(), card), negative_test)
    card.data["by_fold"] = {str(k): int(v) for k, v in frame["fold"].value_counts().sort_index().items()}
    if len(negative_train):
        card.data["negatives_by_fold"] = {str(k): int(v) for k, v in
                                          negative_train["fold"].value_counts().sort_index().items()}
    save_model_dir(out_dir, model, card, half=config.half)
    for tag in [f"fold{f + 1}" for f in range(config.folds)] + ["final"]:
        _resume_path(out_dir, tag).unlink(missing_ok=True)
    return card


def _orientation_note(orientation: str) -> str:
    if orientation == "transpose":
        return ("training slices were stored transposed (anterior on the left) and were transposed to the usual "
                "axial display (anterior up, patient's left on the viewer's right); give the model images in that "
                "usual display orientation, unrotated")
    return "images used as stored; give the model images in the same orientation"
