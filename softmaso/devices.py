"""Devices and CPU threads: which device a run trains on, how many threads it may use, and
bf16 autocast. Every entry point (train, reproduce's workers, analyze, bench) goes through
here, so a bad --device or --threads is one clear line wherever it is given."""

from __future__ import annotations

import contextlib
import os

import torch

from softmaso.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N; UserError if not available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(
            "--device", f"{spec!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError("--device", f"{spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    n = torch.cuda.device_count()
    if n == 0:
        raise UserError("--device", f"{spec!r} asked for, but no CUDA device is available here")
    if device.index is not None and device.index >= n:
        raise UserError("--device", f"{spec!r} does not exist; this machine has cuda:0..{n - 1}")
    return device


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads for torch's operators in this process (None: leave torch's
    default, every core). Two processes that each use every core slow each other down many
    times over (benchmarks/RESULTS.md), so a grid of CPU workers gives each a share."""
    if threads is not None:
        check_threads(threads)
        torch.set_num_threads(threads)


def check_threads(threads: int | None) -> None:
    """UserError unless `threads` is None or 1 ..= the cores this process may run on (more
    threads than cores only slow a CPU run down; far more crash torch)."""
    cores = cpu_cores()
    if threads is not None and not 1 <= threads <= cores:
        raise UserError(
            "--threads", f"{threads} is not between 1 and {cores} (the cores this machine gives us)"
        )


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on the device when `amp` (``train.amp``), on CUDA and on CPUs alike."""
    if amp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
