"""The training runtime the classifier and segmentation trainers share: device and torchrun set-up, loaders, the
pass over the training batches, and the epoch loop (resume, best epoch, early stopping, history, log line).

A trainer brings what differs (model, loss, loader, the validation pass and the number that picks the epoch to
keep); everything about epochs lives here once, so `--resume --epochs N` means the same for every model.
"""
from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

# --- runtime: device, distributed, progress ---------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        if self.cuda:
            return f"{self.world_size} x {torch.cuda.get_device_name(self.device)}"
        return f"{self.world_size} x CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def setup_runtime(device: str | None = None) -> Runtime:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    return Runtime(torch_device, rank, local_rank, world_size)


def teardown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def autocast(runtime: Runtime) -> AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if runtime.cuda else nullcontext()


def progress(iterable: Iterable, runtime: Runtime, **kwargs: Any) -> Iterable:
    """A tqdm bar on the main process only."""
    if not runtime.is_main:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)


def make_loader(dataset: Dataset, batch_size: int, runtime: Runtime, *, sampler=None, shuffle: bool = False,
                seed: int = 0, workers: int | None = None) -> DataLoader:
    """Pinned memory and worker processes on CUDA; in-process loading on CPU (the images are cached)."""
    if sampler is None and runtime.distributed and shuffle:
        sampler = DistributedSampler(dataset, runtime.world_size, runtime.rank, shuffle=True, seed=seed)
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if runtime.cuda else 0
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle and sampler is None,
                      num_workers=workers, pin_memory=runtime.cuda, persistent_workers=workers > 0,
                      drop_last=False)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                runtime: Runtime, *, epoch: int, total_steps: int, lr: float, desc: str) -> list[float]:
    """One pass over `loader` with the cosine schedule (one epoch of warm-up); returns the batch losses.

    bf16 autocast and channels_last on CUDA; the sampler is told its epoch so DDP ranks and balanced draws
    change from epoch to epoch.
    """
    model.train()
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    steps_per_epoch = len(loader)
    losses = []
    for step, (inputs, targets) in enumerate(progress(loader, runtime, desc=desc, unit="batch")):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(epoch * steps_per_epoch + step, total_steps, lr, steps_per_epoch)
        inputs = inputs.to(runtime.device, non_blocking=True)
        targets = targets.to(runtime.device, non_blocking=True)
        if runtime.cuda:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(runtime):
            loss = loss_fn(model(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# --- the epoch loop ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """How an epoch is scored and which one is kept.

    `validate` runs after each epoch on the main process; its entries join the epoch's history row, in the log
    line under the names `labels` gives them (in that order). The epoch with the best `metric` is kept, higher
    being better for mode "max" and lower for "min"; `patience` stops training after that many epochs without
    a better one.
    """

    validate: Callable[[], dict[str, float]]
    metric: str
    labels: Mapping[str, str]
    mode: Literal["max", "min"] = "max"
    patience: int | None = None

    def best_epoch(self, history: Sequence[Mapping[str, float]]) -> int | None:
        """Index of the first row with the best score; None while no score is a number (NaN never wins: an AUC
        on a one-class validation set). Read from the history, so a resumed run selects as an unbroken one."""
        best: int | None = None
        for index, row in enumerate(history):
            score = row[self.metric]
            if math.isnan(score):
                continue
            if best is None or (score > history[best][self.metric] if self.mode == "max"
                                else score < history[best][self.metric]):
                best = index
        return best


@dataclass(frozen=True)
class Fit:
    """What the loop leaves besides the model: the history rows (main process), the kept epoch's score (None
    without a selection or a numeric score) and the seconds runs before a resume had spent."""

    history: list[dict[str, float]]
    best_score: float | None
    earlier_s: float


def fit_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, loss_fn: nn.Module,
               runtime: Runtime, *, epochs: int, lr: float, resume_path: Path, resume: bool, started: float,
               selection: Selection | None = None, train_model: nn.Module | None = None,
               saved_modules: Mapping[str, nn.Module] | None = None, label: str = "",
               log: Callable[[str], None] = print) -> Fit:
    """Train up to `epochs` epochs and leave `model` holding the kept one: the best by `selection`, else the last.

    Batches go through `train_model` (default `model`; a DDP, torch.compile or extra-head wrapper of it), while
    `model`'s state is the one kept and saved. After each epoch the main process writes `resume_path` (model,
    optimizer, `saved_modules` under their names, best state, history, seconds since `started`); with `resume`
    the loop continues from that file, else it removes a stale one. `label` prefixes the log lines ("fold 2/5 ").
    """
    show = runtime.is_main
    train_model = model if train_model is None else train_model
    saved_modules = saved_modules or {}
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch, earlier_s = 0, 0.0
    if resume and resume_path.is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        for name, module in saved_modules.items():
            module.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
        history, best_state, start_epoch = state["history"], state["best_state"], state["epoch"] + 1
        earlier_s = float(state.get("elapsed_s", 0.0))
        if show:
            log(f"{label}resumed from {resume_path} after epoch {start_epoch}")
    elif not resume and show:
        resume_path.unlink(missing_ok=True)

    total_steps = len(loader) * epochs
    for epoch in range(start_epoch, epochs):
        epoch_start = time.time()
        losses = train_epoch(train_model, loader, optimizer, loss_fn, runtime, epoch=epoch, total_steps=total_steps,
                             lr=lr, desc=f"{label}epoch {epoch + 1}")
        train_seconds = time.time() - epoch_start
        stop = False
        if show:
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                   **(selection.validate() if selection is not None else {}), "lr": optimizer.param_groups[0]["lr"],
                   "seconds": round(time.time() - epoch_start, 1),
                   "train_images_per_s": round(len(loader.dataset) / runtime.world_size / train_seconds, 2)}
            history.append(row)
            improved = False
            if selection is not None:
                best = selection.best_epoch(history)
                improved = best == len(history) - 1
                if improved:
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                since_best = len(history) - 1 - (-1 if best is None else best)
                stop = selection.patience is not None and since_best >= selection.patience
            log(_epoch_line(row, epochs, selection, label) + ("  * best" if improved else ""))
            resume_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        **{name: module.state_dict() for name, module in saved_modules.items()},
                        "best_state": best_state, "history": history,
                        "elapsed_s": earlier_s + time.time() - started}, resume_path)
        if selection is not None and selection.patience is not None and _stop_everywhere(stop, runtime):
            if show:
                log(f"{label}early stop: no {selection.labels[selection.metric]} gain for {selection.patience} epochs")
            break
    barrier(runtime)
    if show and best_state is not None:
        model.load_state_dict(best_state)
    best_score = None
    if selection is not None and (best := selection.best_epoch(history)) is not None:
        best_score = history[best][selection.metric]
    return Fit(history, best_score, earlier_s)


def _stop_everywhere(stop: bool, runtime: Runtime) -> bool:
    """The main process's early-stop decision, on every rank (only it validates)."""
    flag = torch.tensor([int(stop)])
    if runtime.distributed:
        dist.broadcast(flag, 0)
    return bool(flag.item())


def _epoch_line(row: Mapping[str, float], epochs: int, selection: Selection | None, label: str) -> str:
    scores = "".join(f"  {name} {row[key]:.4f}" for key, name in (selection.labels.items() if selection else ()))
    return (f"{label}epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}{scores}  "
            f"{row['seconds']:.0f}s")
