"""How a local grid fills its devices: one run at a time per device, runs packed into one
network (:mod:`softmaso.packed_training`), or several worker processes per device.

Without --pack/--no-pack and with each device listed once, a grid on CUDA measures the three
before it trains, on its own runs, and takes the fastest; a CPU never measures (neither packs
nor extra processes have paid there: benchmarks/RESULTS.md) and trains one run at a time per
listed device. A choice that was asked for or measured is recorded in grid.json, and a restart
(on a loaded machine, or another one) trains the rest the same way.
"""

from __future__ import annotations

import contextlib
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
PROBE_SECONDS = 5.0  # timed steps of each candidate, after its warm-up [ours]
WARMUP_STEPS = 3  # untimed steps first (a compiled step compiles in them)
READY_TIMEOUT_S = 900.0  # the most a probe may take to build and warm up (compiling) [ours]
MODES = ("one", "pack", "processes")


@dataclass(frozen=True)
class Fill:
    """How to fill each device: ``one`` run at a time, a ``pack``, or ``processes`` (per_device
    worker processes, each training one run at a time)."""

    mode: str = "one"
    per_device: int = 1
    why: str = "not measured"
    rates: dict[str, float] = field(default_factory=dict)  # images/s of each candidate


def settle(root: Path, todo: list, launch) -> Any:
    """`launch` with its fill settled: --pack/--no-pack decide (and are recorded); a device
    listed twice decides for this launch (no packing); else what `root`'s grid.json recorded;
    else, on CUDA with the local launcher and runs left to train, the fastest of one run at a
    time, a pack and 2 or 4 processes per device, measured now (:func:`measure`) and recorded
    if the measurement worked; else one run at a time, unrecorded. Returns the launch the grid
    then trains with: ``pack`` True or False, and ``devices`` listing each device once per
    worker."""
    doc = rundir.read_grid(root) or {}
    devices = list(launch.devices)
    record = False
    if launch.pack is not None:
        fill = Fill("pack" if launch.pack else "one", why="--pack" if launch.pack else "--no-pack")
        record = True
    elif len(set(devices)) < len(devices):
        fill = Fill(why="--devices")
    elif (fill := _recorded(doc)) is not None:
        if fill.rates:
            log.info(f"filling the devices as measured before: {fill.why}", extra=GRID)
    elif launch.launcher == "local" and _measured_on(launch) and (left := _left(todo)):
        fill = measure(left, launch)
        record = fill.rates.get("processes=1", 0.0) > 0
        if record:
            log.info(f"filling the devices: {fill.why}", extra=GRID)
        else:
            log.warning(
                f"could not measure how to fill the devices ({fill.why}): one run at a time "
                "for this launch; the next one measures again",
                extra=GRID,
            )
    else:
        fill = Fill()
    if record and (doc.get("fill") != asdict(fill) or doc.get("pack") != (fill.mode == "pack")):
        rundir.write_json(
            root / rundir.GRID, {**doc, "pack": fill.mode == "pack", "fill": asdict(fill)}
        )
    if fill.mode == "processes" and launch.launcher == "local":
        devices = [d for d in devices or [_device(launch)] for _ in range(fill.per_device)]
    return replace(launch, pack=fill.mode == "pack", devices=tuple(devices))


def _recorded(doc: dict[str, Any]) -> Fill | None:
    """The fill grid.json recorded (or its `pack`, from before fills were recorded); None
    where there is none, or it is not readable (said)."""
    if "fill" not in doc:
        pack = doc.get("pack")
        return Fill("pack" if pack else "one", why="as recorded") if pack in (True, False) else None
    got, fill = doc["fill"], None
    if isinstance(got, dict) and got.get("mode") in MODES:
        fill = Fill(**{k: got[k] for k in ("mode", "per_device", "why", "rates") if k in got})
    ok = fill is not None and type(fill.per_device) is int and isinstance(fill.rates, dict)
    ok = ok and 1 <= fill.per_device <= max(PROCESSES)
    if not ok:
        log.warning(f"grid.json's fill is not readable, so it is ignored: {got!r}", extra=GRID)
    return fill if ok else None


def _left(todo: list) -> list:
    """The runs still to train (not finished nor diverged)."""
    return [r for r in todo if rundir.status(r.dir)[0] not in ("finished", "diverged")]


def _measured_on(launch) -> bool:
    """Whether a grid measures on the device it would measure on (:data:`MEASURED_ON`)."""
    import torch

    return torch.device(_device(launch)).type in MEASURED_ON


def _device(launch) -> str:
    """The device a grid measures on: its first CUDA device (this machine's default if none
    is listed)."""
    from softmaso.devices import resolve_device

    found = [resolve_device(d) for d in launch.devices or ["auto"]]
    return str(next((d for d in found if d.type in MEASURED_ON), found[0]))


def measure(left: list, launch) -> Fill:
    """Time the grid's own runs on its first CUDA device: its largest pack (as
    ``packed_training.plan_units`` cuts the runs, at least one pack per device), and 1, 2 and 4
    worker processes each stepping one run (that pack's runs first, then the others; images/s
    summed). Each candidate runs in processes of its own, so this process keeps no device
    memory. The fastest wins where it beats one process by :data:`MIN_GAIN`; every figure is in
    the returned Fill."""
    from softmaso.packed_training import plan_units

    device = _device(launch)
    units = plan_units(left, pack=True, size=launch.pack_size, devices=len(launch.devices) or 1)
    pack = max(units, key=len)
    runs = [r.cfg for r in pack] + [r.cfg for r in left if r not in pack]  # the pack's first
    log.info(f"measuring how to fill {device} (a minute or more) ...", extra=GRID)
    rates = {}
    for k in (k for k in PROCESSES if k <= len(runs)):
        rates[f"processes={k}"] = process_rate([[c] for c in runs[:k]], device, launch)
    if len(pack) > 1:
        rates[f"pack={len(pack)}"] = process_rate([runs[: len(pack)]], device, launch)
    return choose(rates, device)


def choose(rates: dict[str, float], device: str) -> Fill:
    """The Fill of the fastest candidate in `rates` ("processes=K" or "pack=P": images/s), or one
    run at a time where nothing beats "processes=1" by :data:`MIN_GAIN` (or it measured 0)."""
    one = rates.get("processes=1", 0.0)
    best = max(rates, key=rates.get, default="processes=1")
    shown = ", ".join(f"{k}: {v:.0f}" for k, v in rates.items())
    if one <= 0 or rates[best] < MIN_GAIN * one or best == "processes=1":
        return Fill("one", 1, f"one run at a time on {device} ({shown} images/s)", rates)
    kind, n = best.split("=")
    return Fill(
        "pack" if kind == "pack" else "processes",
        1 if kind == "pack" else int(n),
        f"{best.replace('=', ' of ')} on {device}: {rates[best] / one:.2f}x one run at a time "
        f"({shown} images/s; threshold {MIN_GAIN}x)",
        rates,
    )


def rate_of(fill: Fill) -> float:
    """Images/s of the candidate `fill` chose (0.0 where it measured none)."""
    key = {"one": "processes=1", "processes": f"processes={fill.per_device}"}.get(fill.mode)
    if key is None:  # a pack: its one candidate
        key = next((k for k in fill.rates if k.startswith("pack=")), "")
    return fill.rates.get(key, 0.0)


def process_rate(jobs: list[list], device: str, launch=None) -> float:
    """Images/s summed over one spawned process per job, all on `device` at once, timed over
    the same :data:`PROBE_SECONDS` after every one has warmed up. A job is a list of run
    configs: one run, or several trained as a pack. 0.0 when a process fails (out of memory,
    say: its error is logged), dies, or is not ready within :data:`READY_TIMEOUT_S`; none is
    left running. Each process talks through a pipe of its own, so one killed outright is seen
    at once (end of file) and a probe whose launcher died ends too."""
    import multiprocessing as mp

    from softmaso.devices import cpu_cores

    ctx = mp.get_context("spawn")
    threads = getattr(launch, "threads", None) or max(1, cpu_cores() // len(jobs))
    data_dir = getattr(launch, "data_dir", None)
    pipes = [ctx.Pipe() for _ in jobs]  # (this end, the probe's end)
    procs = [
        ctx.Process(
            target=_probe,
            args=([c.to_dict() for c in job], device, data_dir, threads, PROBE_SECONDS, end),
            daemon=True,
        )
        for job, (_, end) in zip(jobs, pipes, strict=True)
    ]
    conns = [mine for mine, _ in pipes]
    try:
        for p in procs:
            p.start()
        for _, end in pipes:
            end.close()  # the probe holds the only other end: its death is an end of file
        if _gather(conns, READY_TIMEOUT_S) is None:  # built and warmed up
            return 0.0
        start = time.time() + 0.2
        for c in conns:
            c.send(start)
        rates = _gather(conns, PROBE_SECONDS + 120)
        return sum(rates) if rates and min(rates) > 0 else 0.0
    finally:
        for c in conns:
            c.close()
        for p in procs:
            if p.is_alive():
                p.kill()
            if p.pid is not None:
                p.join()


def _gather(conns: list, timeout: float) -> list | None:
    """One message from each connection within `timeout` seconds; None if one ended (its
    process died), sent an error (logged), or was late."""
    from multiprocessing.connection import wait

    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(conns):
        pending = [c for i, c in enumerate(conns) if i not in got]
        ready = wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        for c in ready:
            try:
                message = c.recv()
            except (EOFError, OSError):
                return None
            if isinstance(message, str):
                log.warning(f"a probe failed: {message}", extra=GRID)
                return None
            got[conns.index(c)] = message
    return [got[i] for i in range(len(conns))]


def _probe(cfgs: list, device: str, data_dir, threads: int, seconds: float, conn) -> None:
    """A probe process: build its run (or pack), warm up, say so (a float: 0.0), wait for the
    start time, step for `seconds` from it, send images/s; an error's first line instead."""
    import torch

    from softmaso.config import RunConfig
    from softmaso.devices import set_threads
    from softmaso.timing import sync

    try:
        set_threads(threads)
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        step, images = _stepper([RunConfig.model_validate(c) for c in cfgs], dev, data_dir)
        for _ in range(WARMUP_STEPS):
            step()
        sync(dev)
        conn.send(0.0)  # ready
        if not conn.poll(READY_TIMEOUT_S + 60):
            return
        start = conn.recv()  # EOFError: the launcher is gone
        while time.time() < start:
            time.sleep(0.001)
        steps, t0 = 0, time.time()
        while time.time() < t0 + seconds:
            step()
            steps += 1
        sync(dev)
        conn.send(steps * images / (time.time() - t0))
    except Exception as e:  # this run cannot train here (out of memory, say), or no launcher
        with contextlib.suppress(OSError):
            conn.send(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def _stepper(cfgs: list, device, data_dir):
    """(a training step of the run or pack, images it trains on per step)."""
    import itertools

    import torch

    from softmaso import training

    if len(cfgs) == 1:
        s = training.build(cfgs[0], device, data_dir)
        batches = itertools.cycle(s.sampler.epoch(0))
        gen = torch.Generator(device=device).manual_seed(s.cfg.seed)
        return (lambda: training.train_step(s, next(batches), gen)), cfgs[0].optim.batch_size
    from softmaso.data import load_data
    from softmaso.packed_training import pack_step

    data = load_data(cfgs[0].data, data_dir=data_dir).to(device)
    return pack_step(cfgs, data, device), len(cfgs) * cfgs[0].optim.batch_size
