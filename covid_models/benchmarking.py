"""What the benchmarks and the tests share: generated chest-like images, small model folders, a running app,
memory and hook counts, the reference CAM, the photographs a chest-image check must refuse, and replaced code
kept as the specification of its faster successor.

A benchmark and the test that guards the same property must measure it the same way, so both import this
module (scripts never put tests/ on sys.path). Nothing here is used by the dashboard: the heavy or optional
packages (pytorch-grad-cam, the network builders) are imported by the functions that need them, and
streamlit is never imported.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
from PIL import Image
from torch import nn
from torch.nn.modules import module as torch_module

from covid_models.imaging.preprocessing import Preprocessing
from covid_models.models.architectures import build_model
from covid_models.models.checkpoint import save_model_dir
from covid_models.models.inference import Classifier
from covid_models.models.model_card import ModelCard
from covid_models.models.ood import OodGuard
from covid_models.training.evaluation import classification_report
from covid_models.training.manifests import SPLITS

XRAY_CLASSES = ["covid", "normal", "pneumonia"]
CT_CLASSES = ["covid", "non_covid"]
FIXTURE_RULE = "test fixture: threshold maximising Youden's J on random validation scores"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright downloads no browser here
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
FEATURES = 1280  # efficientnet_lite0's penultimate width
MB = 1024 * 1024


# ------------------------------------------------------------------------------ images and model folders
def chest_like_png(size: int = 96, seed: int = 0) -> bytes:
    """A greyscale PNG with two dark lung fields in a bright body, so it looks like a radiograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = 0.75 - 0.25 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    lungs = np.exp(-(((x - 0.3) / 0.13) ** 2 + ((y - 0.5) / 0.28) ** 2)) + \
        np.exp(-(((x - 0.7) / 0.13) ** 2 + ((y - 0.5) / 0.28) ** 2))
    pixels = np.clip(body - 0.5 * lungs + rng.normal(0, 0.03, (size, size)), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _fake_report(classes: list[str], seed: int) -> dict:
    """A genuine classification report of the library, computed on random scores for 40 fake images."""
    rng = np.random.default_rng(seed)
    n = 40
    frame = pd.DataFrame({
        "label": [classes[i % len(classes)] for i in range(n)],
        "patient_id": [f"p{i // 2}" for i in range(n)],
        "source": ["fixture-a" if i % 3 else "fixture-b" for i in range(n)],
    })
    scores = rng.dirichlet(np.ones(len(classes)), size=n)
    return classification_report(frame, scores, classes, "covid", 0.5, n_resamples=20)


def _ood_guard(classes: int, threshold: float) -> OodGuard:
    """A guard whose score is the squared norm of the normalised features (always 1); threshold -1 flags every image."""
    return OodGuard(class_means=torch.zeros(classes, FEATURES, dtype=torch.float64),
                    precision=torch.eye(FEATURES, dtype=torch.float64), threshold=threshold)


def write_classifier(directory: Path, name: str, modality: str, classes: list[str], seed: int = 0,
                     ood_threshold: float | None = None) -> Path:
    """One untrained efficientnet_lite0 classifier directory at 64 px."""
    torch.manual_seed(seed)
    model = build_model("efficientnet_lite0", len(classes))
    card = ModelCard(
        name=name, task="classification", modality=modality, architecture="efficientnet_lite0",
        classes=list(classes), positive_class="covid",
        preprocessing=Preprocessing(image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3), temperature=1.0,
        operating_points={"youden": {"threshold": 0.5, "rule": FIXTURE_RULE, "sensitivity": 0.9,
                                     "specificity": 0.8}},
        default_operating_point="youden",
        metrics={"test": _fake_report(classes, seed)},
        data={"n_images": 40, "n_patients": 20, "by_split": {"train": 30, "val": 5, "test": 5},
              "by_label": {c: 40 // len(classes) for c in classes}},
        training={"history": [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.1 / (e + 1),
                               "val_auc": 0.5 + 0.1 * e} for e in range(3)]},
    )
    extra_tensors = None
    if ood_threshold is not None:
        guard = _ood_guard(len(classes), ood_threshold)
        card.extra["ood"] = guard.card_entry()
        extra_tensors = guard.state()
    return save_model_dir(directory / name, model, card, extra_tensors=extra_tensors)


def write_segmenter(directory: Path, name: str, modality: str, target: str, seed: int = 0) -> Path:
    """One untrained U-Net segmentation directory at 64 px (lungs get the lung post-processing)."""
    from covid_models.models.segmentation import (
        DEFAULT_ENCODER,
        POSTPROCESS_LUNGS,
        build_segmentation_model,
        segmentation_preprocessing,
    )

    torch.manual_seed(seed)
    model = build_segmentation_model("unet", pretrained=False)
    card = ModelCard(
        name=name, task="segmentation", modality=modality, architecture="unet", classes=[target],
        preprocessing=segmentation_preprocessing(64),
        operating_points={"default": {"threshold": 0.5, "rule": "test fixture"}}, default_operating_point="default",
        metrics={"test": {"n": 10, "threshold": 0.5, "pooled_dice": 0.5,
                          "dice": {"mean": 0.5, "std": 0.1, "ci95_low": 0.4, "ci95_high": 0.6, "n": 10}}},
        extra={"encoder": DEFAULT_ENCODER, "target": target,
               "postprocess": POSTPROCESS_LUNGS if target == "lungs" else None},
    )
    return save_model_dir(directory / name, model, card)


def make_weights_dir(tmp_path: Path, *, ood_threshold: float | None = None, segmentation: bool = True) -> Path:
    """weights/ with two X-ray classifiers (so an ensemble exists), one CT classifier and, unless
    `segmentation` is False, an X-ray lung and a CT infection segmenter."""
    weights = Path(tmp_path) / "weights"
    write_classifier(weights, "xray-fixture-a", "xray", XRAY_CLASSES, seed=1, ood_threshold=ood_threshold)
    write_classifier(weights, "xray-fixture-b", "xray", XRAY_CLASSES, seed=2, ood_threshold=ood_threshold)
    write_classifier(weights, "ct-fixture", "ct", CT_CLASSES, seed=3, ood_threshold=ood_threshold)
    if segmentation:
        write_segmenter(weights, "xray-lungs-fixture", "xray", "lungs", seed=4)
        write_segmenter(weights, "ct-infection-fixture", "ct", "infection", seed=5)
    return weights


# ---------------------------------------------------------------------------------------- a running app
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, deadline: float, process: subprocess.Popen | None = None) -> None:
    """Until Streamlit's health endpoint at `url` answers; RuntimeError when the process ends or time runs out."""
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"the app at {url} did not answer its health check")
        time.sleep(0.3)


@contextmanager
def running_app(env: dict[str, str], *, timeout: float = 90.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """`streamlit run streamlit_app.py` on a free local port with `env` added; yields (url, process).

    A DATABASE_URL of the caller's environment is not passed on (only one given in `env`), so the app never
    writes to a real review database by accident. The server's output goes to a temporary log that is shown
    in the error when it does not come up.
    """
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below, after the server stops)
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    inherited = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**inherited, "HF_HUB_OFFLINE": "1", **env},
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, time.monotonic() + timeout, process)
        except RuntimeError as error:
            log.seek(0)
            raise RuntimeError(f"{error}:\n{log.read().decode(errors='replace')[-4000:]}") from None
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


# ------------------------------------------------------------------------------------ memory and hooks
def hooks_left(model: nn.Module) -> tuple[int, int]:
    """(forward, backward) hooks registered on any module of `model`, plus the global module hooks."""
    forward = len(torch_module._global_forward_hooks) + len(torch_module._global_forward_pre_hooks)
    backward = len(torch_module._global_backward_hooks) + len(torch_module._global_backward_pre_hooks)
    for sub in model.modules():
        forward += len(sub._forward_hooks) + len(sub._forward_pre_hooks)
        backward += len(sub._backward_hooks) + len(sub._backward_pre_hooks)
    return forward, backward


def rss_mb(trim: bool = True) -> float:
    """Resident memory of this process (MiB) after a full garbage collection.

    With `trim`, freed heap is handed back to the system first (glibc's malloc_trim), so the figure counts
    memory still held rather than what the allocator keeps cached for reuse.
    """
    gc.collect()
    if trim:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    return psutil.Process().memory_info().rss / MB


def server_rss_mb(pid: int) -> float:
    """Resident memory (MiB) of a server process and all its children."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / MB


def reset_peak_rss() -> None:
    """Start a new peak: the kernel's high-water mark of resident memory (VmHWM) is set to the current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_mb() -> float:
    """Highest resident memory (MiB) of this process since it started or since `reset_peak_rss` (Linux VmHWM).

    Unlike `getrusage`'s ru_maxrss, it does not include the parent's peak carried over by fork and exec.
    """
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


# --------------------------------------------------------------------------------------- reference CAM
def reference_cam(classifier: Classifier, pixels: np.ndarray, method: str, target_class: str) -> np.ndarray:
    """pytorch-grad-cam's map (at the network's input size) of `method` for `target_class`.

    Its backward pass reaches the weights, which a loaded Classifier keeps frozen: they are made trainable
    for the call, and frozen again with no gradient left on them.
    """
    import pytorch_grad_cam as cams
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kinds = {"gradcam": cams.GradCAM, "gradcam++": cams.GradCAMPlusPlus, "eigencam": cams.EigenCAM,
             "hirescam": cams.HiResCAM, "scorecam": cams.ScoreCAM, "xgradcam": cams.XGradCAM,
             "layercam": cams.LayerCAM, "ablationcam": cams.AblationCAM}
    target = ClassifierOutputTarget(classifier.card.classes.index(target_class))
    classifier.model.requires_grad_(True)
    try:
        with kinds[method](model=classifier.model, target_layers=[classifier.cam_layer]) as cam, torch.enable_grad():
            return cam(input_tensor=classifier.to_input(pixels)[None], targets=[target])[0]
    finally:
        classifier.model.zero_grad(set_to_none=True)
        classifier.model.requires_grad_(False).eval()



def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of timings, NaN when there are none: one definition for every benchmark."""
    return float(np.percentile(values, q)) if len(values) else float("nan")

# --- photographs: what the chest-image check and the OOD guard must refuse -----------------------------

# (top, left) of each half-size crop, as shares of the photograph's height and width
PHOTO_CROPS = ((0, 0), (0, 1 / 3), (1 / 3, 0), (1 / 3, 1 / 3), (0, 1 / 2), (1 / 2, 0), (1 / 4, 1 / 4), (1 / 2, 1 / 2))


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def photographs() -> list[tuple[str, bytes]]:
    """scikit-learn's two sample photos, whole and in 8 half-size crops, each in colour and in grey."""
    from sklearn.datasets import load_sample_image

    found = []
    for name in ("china.jpg", "flower.jpg"):
        photo = load_sample_image(name)
        h, w = photo.shape[:2]
        pieces = [("whole", photo)] + [
            (f"crop{i}", photo[int(t * h): int(t * h) + h // 2, int(s * w): int(s * w) + w // 2])
            for i, (t, s) in enumerate(PHOTO_CROPS)]
        for piece, array in pieces:
            found.append((f"{name}:{piece}:colour", jpeg_bytes(np.ascontiguousarray(array))))
            grey = np.round(array.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
            found.append((f"{name}:{piece}:grey", jpeg_bytes(grey.astype(np.uint8))))
    return found


def grey_photographs() -> list[np.ndarray]:
    """The two scikit-learn sample photos as greyscale, whole and in 8 crops each."""
    from sklearn.datasets import load_sample_image

    images = []
    for name in ("china.jpg", "flower.jpg"):
        grey = load_sample_image(name).astype(np.float32).mean(axis=2) / 255
        images.append(grey)
        h, w = grey.shape
        for top, left in [(0, 0), (0, w // 3), (h // 3, 0), (h // 3, w // 3), (0, w // 2), (h // 2, 0),
                          (h // 4, w // 4), (h // 2, w // 2)]:
            images.append(grey[top: top + h // 2, left: left + w // 2])
    return images


# --- replaced code kept as the specification its faster successor must equal ---------------------------

def reference_split_groups(frame: pd.DataFrame, linked_ids=()) -> np.ndarray:
    """split_groups as it was (a union-find in Python, commit 3163568), kept as the specification."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    for stem, patient in zip([Path(p).stem for p in frame["image"]], frame["patient_id"], strict=True):
        union(f"img:{stem}", f"pat:{patient}")
    for a, b in linked_ids:
        union(f"img:{a}", f"img:{b}")
    return pd.factorize(pd.Series([find(f"pat:{p}") for p in frame["patient_id"]]))[0]


def reference_patient_split(frame: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 0,
                            linked_ids=()) -> pd.DataFrame:
    """patient_split as it was before it was vectorised (commit 3163568), kept as the specification."""
    frame = frame.copy()
    frame["_group"] = reference_split_groups(frame, linked_ids)
    rng = np.random.default_rng(seed)
    stratum_of = frame.groupby("_group").agg(
        stratum=("label", lambda s: s.mode().iloc[0]), source=("source", "first"), size=("label", "size"))
    stratum_of["key"] = stratum_of["stratum"] + "|" + stratum_of["source"]
    assignment: dict[int, str] = {}
    for _, block in stratum_of.groupby("key"):
        order = rng.permutation(block.index.to_numpy())
        counts = dict.fromkeys(SPLITS, 0)
        total = block["size"].sum()
        for group in order:
            deficits = {s: f * total - counts[s] for s, f in zip(SPLITS, fractions, strict=True)}
            target = max(deficits, key=deficits.get)
            assignment[group] = target
            counts[target] += int(block.loc[group, "size"])
    frame["split"] = frame["_group"].map(assignment)
    return frame.drop(columns="_group")
