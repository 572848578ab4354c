"""The trainer end to end on a handful of real images: single process, resumed, and torchrun with 2 CPU processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covid_models.models.inference import Classifier
from covid_models.training.classifier import fit_temperature

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--modality", "ct", "--limit", "3", "--image-size", "64", "--batch-size", "4", "--lr", "1e-3"]


def _run(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = (launcher or [sys.executable]) + [str(ROOT / "scripts" / "train.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.real_data
@pytest.mark.slow
def test_one_epoch_on_real_images_writes_a_loadable_checkpoint(real_data, tmp_path):
    out = tmp_path / "ct-smoke"
    result = _run(["--data", str(real_data), *SMOKE, "--epochs", "1", "--out", str(out)])
    assert "epoch 1/1" in result.stdout and "AUC" in result.stdout
    classifier = Classifier.load(out)
    card = classifier.card
    assert card.classes == ["covid", "non_covid"] and card.modality == "ct"
    assert card.metrics["test"]["n"] == 6 and set(card.metrics["test"]["per_source"]) == {"ucsd"}
    assert card.default_operating_point == "youden" and 0 <= card.threshold <= 1
    assert card.training["command"].startswith("python scripts/train.py")
    assert classifier.ood is not None and np.isfinite(classifier.ood.threshold)
    prediction = classifier.predict(np.random.default_rng(0).random((100, 90), dtype=np.float32))
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert not (out / "resume_state.pt").exists()


@pytest.mark.real_data
@pytest.mark.slow
def test_an_xray_lung_crop_model_pins_its_segmenter_and_scores_its_test_images_as_at_training(real_data, tmp_path):
    from covid_models.benchmarking import write_segmenter
    from covid_models.metrics import auc
    from covid_models.models.checkpoint import read_card
    from covid_models.training.evaluation import predict_frame
    from covid_models.training.splits import training_table

    weights = tmp_path / "weights"
    segmenter = write_segmenter(weights, "xray-lungs-fixture", "xray", "lungs", seed=4)
    out = weights / "xray-cropped"
    _run(["--data", str(real_data), "--modality", "xray", "--limit", "3", "--image-size", "64", "--batch-size", "4",
          "--epochs", "1", "--lung-crop", "0.1", "--lung-segmenter", str(segmenter), "--out", str(out)])
    classifier = Classifier.load(out)
    assert classifier.card.preprocessing.lung_segmenter == ("xray-lungs-fixture", read_card(segmenter).sha256)
    frame = training_table(real_data, "xray", classifier.card.classes, seed=0)
    test = frame.groupby(["split", "label"], group_keys=False).head(3).query("split == 'test'")
    scored, _ = predict_frame(classifier, test, progress=False)
    # the crop at inference (the segmenter loaded beside the model) is the crop the model was trained and tested on
    assert auc((test["label"] == "covid").to_numpy(), scored[:, 0]) == pytest.approx(
        classifier.card.metrics["test"]["auc"], abs=1e-6)


@pytest.mark.real_data
@pytest.mark.slow
def test_interrupted_training_resumes_from_the_last_epoch(real_data, tmp_path):
    finished = tmp_path / "one-epoch"
    _run(["--data", str(real_data), *SMOKE, "--epochs", "1", "--out", str(finished)])
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    # What a 2-epoch run stopped after its first epoch leaves behind.
    torch.save(_resume_state(finished), interrupted / "resume_state.pt")
    result = _run(["--data", str(real_data), *SMOKE, "--epochs", "2", "--out", str(interrupted), "--resume"])
    assert "resumed" in result.stdout and "epoch 2/2" in result.stdout and "epoch 1/2" not in result.stdout
    assert [h["epoch"] for h in Classifier.load(interrupted).card.training["history"]] == [1, 2]


def _resume_state(directory: Path) -> dict:
    """Rebuild the resume file an interrupted 2-epoch run would have left after its first epoch."""
    from covid_models.models.architectures import build_model
    from covid_models.models.checkpoint import load_state, read_card

    card = read_card(directory)
    model = build_model(card.architecture, len(card.classes))
    state = {k: v for k, v in load_state(directory, card).items() if not k.startswith("ood.")}
    model.load_state_dict(state)
    optimizer = torch.optim.AdamW(model.parameters())
    return {"epoch": 0, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "best_state": model.state_dict(), "history": card.training["history"][:1]}


@pytest.mark.real_data
@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_trains_with_gloo(real_data, tmp_path):
    out = tmp_path / "ct-ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = _run(["--data", str(real_data), *SMOKE, "--epochs", "1", "--device", "cpu", "--out", str(out)],
                  launcher=launcher)
    card = Classifier.load(out).card
    assert card.training["device"].startswith("2 x CPU")
    assert result.stdout.count("wrote ") == 1  # only rank 0 writes


def test_temperature_scaling_softens_overconfident_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (400,))
    signal = (labels * 2 - 1).float()
    noisy = signal + torch.randn(400) * 1.5
    logits = torch.stack([-noisy, noisy], 1) * 5  # right direction, far too confident
    temperature = fit_temperature(logits, labels)
    assert temperature > 2
    nll = torch.nn.functional.cross_entropy
    assert nll(logits / temperature, labels) < nll(logits, labels)


@pytest.mark.slow  # a script in a fresh process
def test_trainer_reports_missing_data_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--data", str(tmp_path / "none"),
                             "--modality", "ct", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_gradient_reversal_is_identity_forward_and_flips_the_gradient_sign():
    from covid_models.training.classifier import reverse_gradient

    features = torch.randn(4, 3, requires_grad=True)
    out = reverse_gradient(features, 0.5)
    assert torch.equal(out, features)
    out.sum().backward()
    assert torch.equal(features.grad, torch.full_like(features, -0.5))


def test_source_adversary_outputs_class_then_source_logits_and_its_loss_trains_both_heads():
    from covid_models.models.architectures import build_model
    from covid_models.training.classifier import AdversarialLoss, SourceAdversary

    model = build_model("resnet18", 3)
    adversary = SourceAdversary(model, num_classes=3, num_sources=2, weight=1.0)
    outputs = adversary(torch.rand(2, 3, 64, 64))
    assert outputs.shape == (2, 5)
    loss = AdversarialLoss(3)(outputs, torch.tensor([[0, 1], [2, 0]]))
    loss.backward()
    assert adversary.head[0].weight.grad is not None and model.fc[1].weight.grad is not None
