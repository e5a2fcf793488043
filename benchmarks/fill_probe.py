"""What a grid would choose to fill a device with, measured here (softmaso/fill.py).

    python benchmarks/fill_probe.py --device cpu --width 0.25 --pack-size 8

A grid measures only on CUDA; this measures on any device, on the smoke Table 2 grid's
`none` and `penalty` runs of one dataset (synthetic, --seeds per cell) at --width: 1, 2 and 4
worker processes each stepping a run (images/s summed), and the first pack the grid would
train, each in processes of its own. Prints the Fill (mode, rates, why) as one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from softmaso import fill, launch, rundir, ui


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pack-size", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    args = ap.parse_args()
    ui.setup_logging()
    fill.MEASURED_ON = ("cuda", "cpu")
    todo = launch.expand(
        "table2",
        Path(tempfile.mkdtemp()),
        smoke=True,
        datasets=["svhn"],
        seeds=args.seeds,
        overrides=[f"model.width={args.width}"],
    )
    todo = [r for r in todo if r.cfg.ortho.mode in ("none", "penalty")]
    how = launch.Launch(devices=(args.device,), threads=args.threads, pack_size=args.pack_size)
    got = fill.measure(todo, how)
    print(json.dumps({**vars(args), "cpu": rundir.cpu_name(), **dataclasses.asdict(got)}, indent=1))


if __name__ == "__main__":  # the probes are spawned processes: they import this file
    main()
