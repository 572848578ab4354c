"""covid_models.runtime: the CPU policy is in force in every process that imports the library before torch.

The policy's effect on speed is measured by scripts/benchmark_threads.py (not here: no timed tests); these tests
check that it is applied: OpenMP's passive waiting is in the environment before torch loads, and glibc keeps a
freed large block for reuse instead of unmapping it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT

PROBE = """
import json, os, sys
import covid_models  # first, as an entry point does: benchmarking imports torch
from covid_models import runtime
applied = runtime.configure()
from covid_models.benchmarking import rss_mb
import numpy as np
import torch
base = rss_mb(trim=False)
block = np.ones(200 * 2**20 // 8)
del block
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "applied": applied,
                  "kept_mb": rss_mb(trim=False) - base}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "COVID_RUNTIME", "GLIBC_TUNABLES")}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300,
                            cwd=PROJECT_ROOT, env={**clean, **env})
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_importing_the_library_sets_passive_waiting_and_configure_tunes_the_allocator():
    tuned, default = probe(), probe(COVID_RUNTIME="default")
    assert tuned["policy"] == "PASSIVE" and "malloc" in tuned["applied"]
    assert default["policy"] is None and default["applied"] == {}
    assert tuned["kept_mb"] > 150  # the freed 200 MB block stays mapped for the next forward pass
    assert default["kept_mb"] < 50  # glibc's default: unmapped at once


@pytest.mark.slow
def test_a_wait_policy_set_by_the_operator_is_kept():
    assert probe(OMP_WAIT_POLICY="ACTIVE")["policy"] == "ACTIVE"
