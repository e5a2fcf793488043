"""Timing on a device: variants timed in turns, so a slow drift of the machine cancels out."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rounds(
    variants: dict[str, Callable[[], None]], device, *, steps: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each variant in each round, variants timed in turns (A B A B ...)
    after one warm-up round."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(repeats + 1):
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            if rnd:  # round 0 is the warm-up
                times[name].append((time.perf_counter() - t0) / steps)
    return times


def interleaved(
    variants: dict[str, Callable[[], None]], device, *, steps: int, repeats: int
) -> dict[str, float]:
    """Median seconds per call of each variant, timed in turns after one warm-up round."""
    times = rounds(variants, device, steps=steps, repeats=repeats)
    return {k: statistics.median(v) for k, v in times.items()}
