"""The server loads and runs its models as it starts, before any visitor: the first upload does not wait for them.

`streamlit run streamlit_app.py` serves the file's `st.App`, whose lifespan warms the models before the server
answers; no session is opened here, only Streamlit's health endpoint is asked. Speed is measured by
scripts/benchmark_app.py (first against second upload after a fresh start), never here."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_fixtures import PROJECT_ROOT, make_weights_dir

from covid_models.benchmarking import free_port, wait_healthy
from covid_models.models.discovery import discover_models
from covid_models.models.inference import Classifier
from covid_models.models.segmentation import Segmenter

START_TIMEOUT_S = 180  # a shared CI machine may be busy; the test waits, it does not time anything


@pytest.mark.slow
def test_the_models_are_loaded_and_run_once_at_server_start_before_any_session(tmp_path: Path) -> None:
    weights = make_weights_dir(tmp_path)
    port, log_path = free_port(), tmp_path / "server.log"
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "COVID_WEIGHTS_DIR": str(weights), "COVID_REVIEW_DB": str(tmp_path / "reviews.sqlite3"), "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", time.monotonic() + START_TIMEOUT_S, process)
            output = log_path.read_text(errors="replace")  # read as soon as the server answers, no session opened
        finally:
            process.terminate()
            process.wait(timeout=30)
    classifiers = len(discover_models(weights, "classification"))
    assert f"warmed {classifiers} classifier(s) of {weights}" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def test_the_warm_up_fills_the_servers_model_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the warm-up, a page asking for any shipped model gets the cached one: nothing is loaded again."""
    import streamlit as st

    from pages import shared

    weights = make_weights_dir(tmp_path)
    monkeypatch.setenv("COVID_WEIGHTS_DIR", str(weights))
    st.cache_resource.clear()
    assert shared._warmed_models(str(weights)) == len(discover_models(weights, "classification"))
    loads: list[str] = []
    for owner in (Classifier, Segmenter):
        original = owner.load.__func__

        def counting(cls, directory, *args, _original=original, **kwargs):
            loads.append(str(directory))
            return _original(cls, directory, *args, **kwargs)

        monkeypatch.setattr(owner, "load", classmethod(counting))
    for directory, _card in discover_models(weights, "classification"):
        shared.load_classifier(str(directory))
    for directory, _card in discover_models(weights, "segmentation"):
        shared.load_segmenter(str(directory))
    assert loads == []
    st.cache_resource.clear()
