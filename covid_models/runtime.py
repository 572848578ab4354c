"""Process-wide CPU settings for the server and the scripts: OpenMP waiting, torch threads and the allocator.

Call `configure()` first thing in an entry point (streamlit_app.py, each script's `main`), before anything
imports torch: OpenMP reads `OMP_WAIT_POLICY` once, when torch loads it.

- Waiting: by default OpenMP threads spin for a while after each parallel region. When another process computes
  on the same cores (a training run, predict.py, a second replica), the spinning threads and the other process's
  threads steal each other's cores and a forward pass becomes tens of times slower. `PASSIVE` makes idle threads
  sleep instead (scripts/benchmark_threads.py measures both, with and without a busy second torch process).
- Threads: `COVID_TORCH_THREADS` (default: torch's own choice, one per core) sets the intra-op threads.
- Allocator: glibc returns every large freed block to the system at once (mmap per block above a dynamic
  threshold, heap trimmed above 128 KB), so each forward pass pays page faults again for the same activations.
  A 256 MB mmap threshold and a 512 MB trim threshold keep that memory for reuse; the same settings as
  `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=536870912`, applied with
  `mallopt` from inside the process, so that no re-exec and no environment before start-up is needed (Streamlit
  Community Cloud starts the process itself). It costs up to a few hundred MB of freed memory kept for reuse.

Set `COVID_RUNTIME=default` to leave all three as the libraries set them (for measuring the difference).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

THREADS_ENV = "COVID_TORCH_THREADS"
SWITCH_ENV = "COVID_RUNTIME"
WAIT_POLICY = "PASSIVE"
MMAP_THRESHOLD = 256 * 1024 * 1024
TRIM_THRESHOLD = 512 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's malloc.h


def _enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "").strip().lower() != "default"


def set_wait_policy() -> str | None:
    """`OMP_WAIT_POLICY` (unless already set) while torch is not loaded yet; the policy in force, if known.

    Called by `import covid_models` itself, so that it holds even where a page or a script imports the library
    before its entry point calls `configure` (the first request of a fresh Streamlit server can run a page alone).
    """
    if _enabled() and "torch" not in sys.modules:  # once OpenMP is loaded it no longer reads the variable
        os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return os.environ.get("OMP_WAIT_POLICY")


def configure() -> dict[str, str]:
    """Apply the policy to this process (idempotent); returns what was set, for logs and benchmarks."""
    if not _enabled():
        return {}
    applied: dict[str, str] = {}
    policy = set_wait_policy()
    if policy:
        applied["OMP_WAIT_POLICY"] = policy
    if tune_malloc():
        applied["malloc"] = f"mmap_threshold={MMAP_THRESHOLD} trim_threshold={TRIM_THRESHOLD}"
    threads = os.environ.get(THREADS_ENV, "").strip()
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        applied["torch_threads"] = threads
    return applied


def tune_malloc() -> bool:
    """glibc's mmap and trim thresholds raised for this process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
