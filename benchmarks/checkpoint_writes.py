"""How long a pack's epoch loop waits for its checkpoints: host copies, then background writes.

    python benchmarks/checkpoint_writes.py --runs 30 --width 1 --device cpu

Builds a pack of --runs fresh runs at --width (one Adam step, so the optimiser state is full
size), then three times: the blocking part (splitting the pack into single-run states and
copying them to the host, `packed_training.pack_checkpoints`) and the part a background thread does
while training goes on (`rundir.CheckpointWriter`: torch.save of each file, atomic rename).
Prints one JSON object; the first of the three rounds includes the allocator's warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from softmaso import rundir, training
from softmaso.config import RunConfig
from softmaso.packed_training import new_pack, pack_checkpoints
from softmaso.timing import sync


def measure(n: int, width: float, device: torch.device, rounds: int = 3) -> dict:
    cfg = RunConfig.model_validate(
        {
            "recipe": "bench",
            "data": {"name": "synthetic", "synthetic_train": 500},
            "model": {"width": width},
        }
    )
    cfgs = [cfg.with_overrides(seed=i) for i in range(n)]
    s = training.build(cfgs[0], device)
    pack = new_pack(cfgs, s.data, device)
    for p in pack.model.parameters():  # one step: Adam's moments exist, as after an epoch
        p.grad = torch.zeros_like(p)
    pack.optimizer.step()
    out = {
        "runs": n,
        "width": width,
        "device": str(device),
        "cpu": rundir.cpu_name(),
        "blocking_s": [],
        "background_s": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        pack.dirs = [Path(tmp) / f"run{i}" for i in range(n)]
        for d in pack.dirs:
            d.mkdir()
        writer = rundir.CheckpointWriter()
        for _ in range(rounds):
            sync(device)
            t0 = time.perf_counter()
            writer.submit(pack_checkpoints(pack, s.data, 1), [])
            t1 = time.perf_counter()
            writer.close()
            out["blocking_s"].append(t1 - t0)
            out["background_s"].append(time.perf_counter() - t1)
        out["bytes_per_run"] = os.path.getsize(pack.dirs[0] / rundir.CHECKPOINT)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.runs, args.width, torch.device(args.device)), indent=1))


if __name__ == "__main__":
    main()
