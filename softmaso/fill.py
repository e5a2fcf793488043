"""How a local grid fills its devices: one run at a time per device, runs packed into one
network (:mod:`softmaso.packed_training`), or several worker processes per device.

Without --pack/--no-pack and with each device listed once, a grid on CUDA measures the three
before it trains, on its own runs, and takes the fastest; a CPU never measures (neither packs
nor extra processes have paid there: benchmarks/RESULTS.md) and trains one run at a time per
listed device. The choice, with the rates that made it, is recorded in grid.json at the first
launch, and a restart (on a loaded machine, or another one) trains the rest the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from softmaso import rundir
from softmaso.ui import GRID

log = logging.getLogger(__name__)

MEASURED_ON = ("cuda",)  # device types where a grid measures how to fill them [ours]
MIN_GAIN = 1.1  # a pack or extra processes must beat one run at a time by this [ours: noise]
PROCESSES = (1, 2, 4)  # worker processes per device tried [ours]
PROBE_SECONDS = 5.0  # timed steps of each process count, after its warm-up [ours]
WARMUP_STEPS = 3  # untimed steps first (a compiled step compiles in them)


@dataclass(frozen=True)
class Fill:
    """How to fill each device: ``one`` run at a time, a ``pack``, or ``processes`` (per_device
    worker processes, each training one run at a time)."""

    mode: str = "one"
    per_device: int = 1
    why: str = "not measured"
    rates: dict[str, float] = field(default_factory=dict)  # images/s of each candidate


def settle(root: Path, todo: list, launch) -> Any:
    """`launch` with its fill settled and recorded in `root`'s grid.json: --pack/--no-pack or a
    device listed twice decide; else what grid.json recorded; else, on CUDA with the local
    launcher, the fastest of one run at a time, a pack and 2 or 4 processes per device, as
    measured now (:func:`measure`); else one run at a time. Returns the launch the grid then
    trains with: ``pack`` True or False, and ``devices`` listing each device once per worker."""
    doc = rundir.read_grid(root) or {}
    devices = list(launch.devices)
    if launch.pack is not None or len(set(devices)) < len(devices):
        fill = Fill("pack" if launch.pack else "one", why="as asked")
    elif isinstance(doc.get("fill"), dict):
        fill = _recorded(doc["fill"])
    elif doc.get("pack") is True:  # a grid.json written before the fill was recorded
        fill = Fill("pack", why="as recorded")
    elif launch.launcher == "local" and _measured_on(devices):
        fill = measure(todo, launch)
    else:
        fill = Fill()
    if doc.get("fill") != asdict(fill) or doc.get("pack") != (fill.mode == "pack"):
        rundir.write_json(
            root / rundir.GRID, {**doc, "pack": fill.mode == "pack", "fill": asdict(fill)}
        )
    if fill.rates:  # measured, now or at the first launch
        log.info(f"filling the devices: {fill.why}", extra=GRID)
    if fill.mode == "processes" and launch.launcher == "local":
        devices = [d for d in devices or [_device(launch)] for _ in range(fill.per_device)]
    return replace(launch, pack=fill.mode == "pack", devices=tuple(devices))


def _recorded(doc: dict[str, Any]) -> Fill:
    known = {k: doc[k] for k in ("mode", "per_device", "why", "rates") if k in doc}
    fill = Fill(**known)
    if fill.mode not in ("one", "pack", "processes") or not isinstance(fill.per_device, int):
        return Fill(why="grid.json's fill was not readable: one run at a time")
    return fill


def _device(launch) -> str:
    from softmaso.devices import resolve_device

    return str(resolve_device(launch.devices[0] if launch.devices else "auto"))


def _measured_on(devices: list[str]) -> bool:
    from softmaso.devices import resolve_device

    return any(resolve_device(d).type in MEASURED_ON for d in devices or ["auto"])


def measure(todo: list, launch) -> Fill:
    """Time the grid's own runs on its first device: 1, 2 and 4 worker processes, each stepping
    its own run (images/s summed), and the largest group of runs that can pack, packed
    (:func:`softmaso.packed_training.pack_speedup`). The fastest wins where it beats one
    process by :data:`MIN_GAIN`; each figure is in the returned Fill."""
    from softmaso.packed_training import pack_key, pack_speedup
    from softmaso.packing import PACKABLE_MODES

    device, cfgs = _device(launch), [run.cfg for run in todo]
    rates = {}
    for k in (k for k in PROCESSES if k <= len(cfgs)):
        rates[f"processes={k}"] = process_rate(cfgs[:k], device, launch.threads, launch.data_dir)
    groups: dict[str, list] = {}
    for cfg in cfgs:
        if cfg.ortho.mode in PACKABLE_MODES:
            groups.setdefault(pack_key(cfg), []).append(cfg)
    group = max(groups.values(), key=len, default=[])[: launch.pack_size]
    if len(group) >= 2:
        import torch

        got = pack_speedup(group, torch.device(device))
        rates[f"pack={len(group)}"] = got["packed_images_per_s"]
    return choose(rates, device)


def rate_of(fill: Fill) -> float:
    """Images/s of the candidate `fill` chose (0.0 where it measured none)."""
    key = {"one": "processes=1", "processes": f"processes={fill.per_device}"}.get(fill.mode)
    if key is None:  # a pack: its one candidate
        key = next((k for k in fill.rates if k.startswith("pack=")), "")
    return fill.rates.get(key, 0.0)


def choose(rates: dict[str, float], device: str) -> Fill:
    """The Fill of the fastest candidate in `rates` ("processes=K" or "pack=P": images/s), or one
    run at a time where nothing beats "processes=1" by :data:`MIN_GAIN`."""
    one = rates.get("processes=1", 0.0)
    best = max(rates, key=rates.get, default="processes=1")
    shown = ", ".join(f"{k}: {v:.0f}" for k, v in rates.items())
    if not rates or rates[best] < MIN_GAIN * one or best == "processes=1":
        return Fill("one", 1, f"one run at a time on {device} ({shown} images/s)", rates)
    kind, n = best.split("=")
    return Fill(
        "pack" if kind == "pack" else "processes",
        1 if kind == "pack" else int(n),
        f"{best.replace('=', ' of ')} on {device}: {rates[best] / one:.2f}x one run at a time "
        f"({shown} images/s; threshold {MIN_GAIN}x)",
        rates,
    )


def process_rate(
    cfgs: list, device: str, threads: int | None = None, data_dir: Path | None = None
) -> float:
    """Images/s summed over len(cfgs) spawned processes, each training its run on `device`,
    timed over the same :data:`PROBE_SECONDS` after every process's warm-up; 0.0 when one of
    them fails (out of memory, say)."""
    import multiprocessing as mp

    from softmaso.devices import cpu_cores

    ctx = mp.get_context("spawn")
    k = len(cfgs)
    threads = threads or max(1, cpu_cores() // k)
    ready, results = ctx.Barrier(k + 1), ctx.SimpleQueue()
    start = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_probe,
            args=(
                c.to_dict(),
                device,
                data_dir,
                threads,
                PROBE_SECONDS,
                ready,
                start,
                results,
            ),
            daemon=True,
        )
        for c in cfgs
    ]
    for p in procs:
        p.start()
    try:
        ready.wait(timeout=900)  # every process built and warmed up
        start.value = time.time() + 0.2
        ready.wait(timeout=60)
    except Exception:  # a broken barrier: a process died before it was ready
        for p in procs:
            p.kill()
        return 0.0
    for p in procs:
        p.join(timeout=PROBE_SECONDS + 600)
    rates = [results.get() for _ in range(k) if not results.empty()]
    return sum(rates) if len(rates) == k and all(r > 0 for r in rates) else 0.0


def _probe(cfg: dict, device: str, data_dir, threads: int, seconds: float, ready, start, results):
    """A probe process: build the run, warm up, then step for `seconds` from `start`."""
    import torch

    from softmaso import training
    from softmaso.config import RunConfig
    from softmaso.devices import set_threads
    from softmaso.timing import sync

    try:
        set_threads(threads)
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        s = training.build(RunConfig.model_validate(cfg), dev, data_dir)
        idx = s.sampler.epoch(0)
        gen = torch.Generator(device=dev).manual_seed(s.cfg.seed)
        for i in range(WARMUP_STEPS):
            training.train_step(s, idx[i % len(idx)], gen)
        sync(dev)
        ready.wait(timeout=960)  # all warmed up
        ready.wait(timeout=120)  # the parent has set the start
    except Exception:  # this run cannot train here (out of memory, say), or another could not
        ready.abort()
        return
    while time.time() < start.value:
        time.sleep(0.001)
    steps, t0 = 0, time.time()
    while time.time() < t0 + seconds:
        training.train_step(s, idx[steps % len(idx)], gen)
        steps += 1
    sync(dev)
    results.put(steps * s.cfg.optim.batch_size / (time.time() - t0))
