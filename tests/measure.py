"""Measurement helpers shared by the tests and the benchmark scripts: resident memory and hooks on a network.

The scripts put tests/ on sys.path to import this, so that a benchmark and the test that guards the same
property read memory the same way.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

import psutil
from torch import nn
from torch.nn.modules import module as torch_module

MB = 1024 * 1024


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
