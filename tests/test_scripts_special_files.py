"""The CLIs name every file they skip and why, and never open a special file for reading (a pipe would block)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import CT_CLASSES, write_classifier
from model_fixtures import write_tiny_classifier
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # this checkout's library, not an install
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_evaluate_names_each_special_file_it_skips_and_why(tmp_path):
    """A pipe and a /dev/zero link inside a class folder: named with their reason, never read (a pipe would block
    the run; /dev/zero never ends), and counted; without --skip-unreadable the run stops at the first, naming it."""
    model = write_tiny_classifier(tmp_path / "model")
    data = tmp_path / "data"
    rng = np.random.default_rng(1)
    for label in ("covid", "normal"):
        (data / label).mkdir(parents=True)
        for index in range(3):
            Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(data / label / f"{label}-{index}.png")
    os.mkfifo(data / "covid" / "pipe.png")
    (data / "normal" / "zero.dcm").symlink_to("/dev/zero")
    skipped = _script("evaluate.py", str(model), str(data), "--split", "all", "--no-cam-check", "--skip-unreadable")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    lines = skipped.stderr.splitlines()
    assert any("pipe.png" in line and "named pipe" in line for line in lines), skipped.stderr[-3000:]
    assert any("zero.dcm" in line and "a device" in line for line in lines), skipped.stderr[-3000:]
    assert "2 unreadable file(s) skipped" in skipped.stdout
    stopped = _script("evaluate.py", str(model), str(data), "--split", "all", "--no-cam-check")
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "pipe.png" in stopped.stderr and "named pipe" in stopped.stderr


@pytest.mark.slow  # a script in a fresh process
def test_analyze_scan_says_a_pipe_is_a_pipe(tmp_path):
    weights = tmp_path / "weights"
    write_classifier(weights, "ct-fixture", "ct", CT_CLASSES, seed=3)
    pipe = tmp_path / "scan.zip"
    os.mkfifo(pipe)
    result = _script("analyze_scan.py", str(pipe), "--weights", str(weights), "--no-infection", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'scan.zip' is a named pipe, not a regular file" in result.stderr, result.stderr[-3000:]
    assert "does not exist" not in result.stderr
