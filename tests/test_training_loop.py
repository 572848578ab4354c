"""The epoch loop both trainers share, on a one-layer model with scripted validation scores: which epoch is kept,
early stopping, and what `--resume` continues."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from covid_models.training.loop import Fit, Runtime, Selection, fit_epochs

CPU = Runtime(torch.device("cpu"))


class Interrupted(Exception):
    """Raised when a run's scripted scores run out: the run stops mid-training, as when it is killed."""


class ScriptedRun:
    """A linear regression trained by the loop; validation returns the next scripted score and notes the weights
    it saw, so a test knows which epoch's weights the model should end with."""

    def __init__(self, scores: list[float], mode: str = "max", patience: int | None = None):
        torch.manual_seed(0)
        self.model, self.head = nn.Linear(2, 1), nn.Linear(1, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
        self.scores, self.weights, self.lines = iter(scores), [], []
        self.selection = Selection(self._validate, "val_score", {"val_loss": "val loss", "val_score": "val score"},
                                   mode=mode, patience=patience)

    def _validate(self) -> dict[str, float]:
        score = next(self.scores, None)
        if score is None:
            raise Interrupted
        self.weights.append(self.model.weight.detach().clone())
        return {"val_loss": 1.0, "val_score": score}

    def fit(self, resume_path: Path, epochs: int, resume: bool = False) -> Fit:
        return fit_epochs(self.model, self.optimizer, self.loader, nn.MSELoss(), CPU, epochs=epochs, lr=0.1,
                          resume_path=resume_path, resume=resume, started=time.time(), selection=self.selection,
                          saved_modules={"head": self.head}, log=self.lines.append)


@pytest.mark.parametrize("mode, scores, kept", [
    ("max", [0.2, 0.9, 0.5], 1),
    ("min", [0.5, 0.1, 0.3], 1),
    ("max", [math.nan, 0.3, 0.1], 1),  # NaN (an AUC on a one-class validation set) never wins
])
def test_the_best_epoch_by_the_metric_and_its_direction_is_restored_at_the_end(tmp_path, mode, scores, kept):
    run = ScriptedRun(scores, mode=mode)
    fit = run.fit(tmp_path / "resume.pt", epochs=3)
    assert torch.equal(run.model.weight, run.weights[kept]) and not torch.equal(run.weights[kept], run.weights[-1])
    assert fit.best_score == scores[kept]
    assert [row["epoch"] for row in fit.history] == [1, 2, 3]
    assert [row["val_score"] for row in fit.history][kept:] == scores[kept:]
    assert {"train_loss", "val_loss", "lr", "seconds", "train_images_per_s"} <= fit.history[0].keys()


def test_the_log_line_names_each_score_and_marks_each_new_best(tmp_path):
    run = ScriptedRun([0.2, 0.9, 0.5])
    run.fit(tmp_path / "resume.pt", epochs=3)
    assert run.lines[1].startswith("epoch 2/3  train loss ") and "  val loss 1.0000  val score 0.9000  " in run.lines[1]
    assert [line.endswith("  * best") for line in run.lines] == [True, True, False]


def test_patience_stops_after_that_many_epochs_without_a_better_score(tmp_path):
    run = ScriptedRun([0.5, 0.9, 0.8, 0.7, 0.95, 0.99], patience=2)
    fit = run.fit(tmp_path / "resume.pt", epochs=6)
    assert [row["epoch"] for row in fit.history] == [1, 2, 3, 4]
    assert run.lines[-1] == "early stop: no val score gain for 2 epochs"
    assert torch.equal(run.model.weight, run.weights[1])


def test_a_resumed_run_continues_the_history_and_keeps_the_best_epoch_of_both_runs(tmp_path):
    path = tmp_path / "resume.pt"
    interrupted = ScriptedRun([0.2, 0.9])  # killed during its 3rd epoch of 4
    with pytest.raises(Interrupted):
        interrupted.fit(path, epochs=4)
    resumed = ScriptedRun([0.4, 0.3])
    fit = resumed.fit(path, epochs=4, resume=True)
    assert resumed.lines[0] == f"resumed from {path} after epoch 2"
    assert [line.split("  ")[0] for line in resumed.lines[1:]] == ["epoch 3/4", "epoch 4/4"]
    assert [row["val_score"] for row in fit.history] == [0.2, 0.9, 0.4, 0.3]
    assert fit.best_score == 0.9 and torch.equal(resumed.model.weight, interrupted.weights[1])
    assert torch.equal(resumed.head.weight, interrupted.head.weight)  # saved modules come back too


def test_patience_counts_the_epochs_without_gain_from_before_the_resume(tmp_path):
    path = tmp_path / "resume.pt"
    with pytest.raises(Interrupted):
        ScriptedRun([0.9, 0.5], patience=2).fit(path, epochs=5)
    fit = ScriptedRun([0.4, 0.95], patience=2).fit(path, epochs=5, resume=True)
    assert [row["epoch"] for row in fit.history] == [1, 2, 3]


def test_resume_with_nothing_left_to_train_only_restores_the_best_epoch(tmp_path):
    path = tmp_path / "resume.pt"
    finished = ScriptedRun([0.9, 0.2])
    finished.fit(path, epochs=2)
    again = ScriptedRun([])
    fit = again.fit(path, epochs=2, resume=True)
    assert [row["epoch"] for row in fit.history] == [1, 2] and again.weights == []
    assert torch.equal(again.model.weight, finished.weights[0])


def test_without_resume_an_earlier_resume_file_is_not_continued(tmp_path):
    path = tmp_path / "resume.pt"
    with pytest.raises(Interrupted):
        ScriptedRun([0.2, 0.9]).fit(path, epochs=4)
    run = ScriptedRun([0.1, 0.3])
    fit = run.fit(path, epochs=2)
    assert [row["val_score"] for row in fit.history] == [0.1, 0.3] and not run.lines[0].startswith("resumed")
    assert torch.load(path, weights_only=True)["history"] == fit.history


def test_without_a_selection_the_last_epoch_is_kept(tmp_path):
    run = ScriptedRun([])
    path = tmp_path / "resume.pt"
    fit = fit_epochs(run.model, run.optimizer, run.loader, nn.MSELoss(), CPU, epochs=2, lr=0.1, resume_path=path,
                     resume=False, started=time.time(), label="fold 1/2 ", log=run.lines.append)
    state = torch.load(path, weights_only=True)
    assert fit.best_score is None and state["best_state"] is None
    assert torch.equal(run.model.weight, state["model"]["weight"])
    assert "val_loss" not in fit.history[-1] and run.lines[-1].startswith("fold 1/2 epoch 2/2  train loss ")
