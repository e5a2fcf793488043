"""What each speed trick of softmaso.fast is worth: a training step with the trick against the
same step through its public fallback, on the CPU.

    python benchmarks/fast_tricks.py [--width 1] [--steps 4] [--repeats 7] [--json out.json]

Each figure is the median over rounds of (fallback / trick - 1) of the step's process CPU
time (user + system, one thread), the two timed in turns, so another process on the machine
shifts both alike. Process time, not wall time: it counts what the step itself costs and not
the waits for a shared core. The trick measured:

- ``malloc``: ``fast.keep_freed_memory`` (glibc's mallopt) against the C library's defaults
  (``none`` mode); process-wide, so each arm runs in a fresh process of its own, in turns.

Two more were measured at commit 64965fc and removed for gaining under 3% of a step
(benchmarks/RESULTS.md): oneDNN's matmul for the exact parametrisation's products and
parametrize's private cache for batched orthonormalisation.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch


def _step(mode: str, width: float):
    from softmaso.bench import _setup, _softmaso_step

    return _softmaso_step(_setup(torch.device("cpu"), mode=mode, width=width))


def _cpu_seconds(step, steps: int) -> float:
    t0 = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - t0) / steps


_ARM = """
import sys, time, torch
torch.set_num_threads(1)
from softmaso import training
if sys.argv[1] == "off":
    training.keep_freed_memory = lambda: False
sys.path.insert(0, sys.argv[4])
from fast_tricks import _cpu_seconds, _step
step = _step("none", float(sys.argv[2]))
_cpu_seconds(step, 2)  # warm-up
print(_cpu_seconds(step, int(sys.argv[3])))
"""


def malloc(width: float, steps: int, repeats: int) -> list[float]:
    """Per round, defaults / mallopt - 1, each arm a fresh process (mallopt is process-wide)."""
    here = str(__import__("pathlib").Path(__file__).parent)

    def arm(which: str) -> float:
        args = [sys.executable, "-c", _ARM, which, str(width), str(steps), here]
        return float(subprocess.run(args, capture_output=True, text=True, check=True).stdout)

    return [arm("off") / arm("on") - 1 for _ in range(repeats)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    out = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "width": a.width,
        "steps": a.steps,
        "repeats": a.repeats,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    found = {"malloc": malloc(a.width, a.steps, a.repeats)}
    for trick, ratios in found.items():
        out[trick] = {"gain": statistics.median(ratios), "range": [min(ratios), max(ratios)]}
        print(
            f"{trick}: the fallback costs {out[trick]['gain']:+.1%} of a step "
            f"(rounds {min(ratios):+.1%} to {max(ratios):+.1%})"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
