"""Shared fixtures: the real data folder, and the switch that makes its absence an error in CI."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["browser_fixtures", "pacs_fixtures"]  # the Chromium fixture of the browser tests; the Orthanc PACS

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = PROJECT_ROOT / "weights"


def real_data_dir() -> Path | None:
    """The curated dataset: $COVID_DATA_DIR, else ../shared/data beside the checkout."""
    candidates = [os.environ.get("COVID_DATA_DIR"), PROJECT_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "xray" / "manifest.csv").is_file():
            return Path(candidate)
    return None


def require_or_skip(reason: str) -> None:
    """Skip with `reason`, unless COVID_REQUIRE_DATA=1 (set by .ci/run), where a missing prerequisite fails."""
    if os.environ.get("COVID_REQUIRE_DATA") == "1":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Path to the real dataset; skips (or fails in CI) when it is absent."""
    path = real_data_dir()
    if path is None:
        require_or_skip("real data not found: set COVID_DATA_DIR or place the dataset at ../shared/data")
    return path


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored after it: no two thread pools contending on a shared CPU, and
    steadier memory readings; the computation is the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
