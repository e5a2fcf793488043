"""How a local grid fills its devices: one run at a time per device, runs packed into one
network (:mod:`softmaso.packed_training`), or several worker processes per device.

Without --pack/--no-pack and with each device listed once, a grid on CUDA measures the three
before it trains, on its own runs, and takes the fastest; a CPU never measures (neither packs
nor extra processes have paid there: benchmarks/RESULTS.md) and trains one run at a time per
listed device. A choice that was asked for or measured is recorded in grid.json, and a restart
(on a loaded machine, or another one) trains the rest the same way.
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
    time, a pack and 2 or 4 processes per device, measured now (:func:`measure`) and
    recorded; else one run at a time, unrecorded. Returns the launch the grid then trains with:
    ``pack`` True or False, and ``devices`` listing each device once per worker."""
    doc = rundir.read_grid(root) or {}
    devices = list(launch.devices)
    record = True
    if launch.pack is not None:
        fill = Fill("pack" if launch.pack else "one", why="--pack" if launch.pack else "--no-pack")
    elif len(set(devices)) < len(devices):
        fill, record = Fill(why="--devices"), False
    elif "fill" in doc:
        fill = _recorded(doc["fill"])
    elif isinstance(doc.get("pack"), bool):  # a grid.json from before fills were recorded
        fill = Fill("pack" if doc["pack"] else "one", why="as recorded")
    elif launch.launcher == "local" and _measured_on(devices) and (left := _left(todo)):
        fill = measure(left, launch)
    else:
        fill, record = Fill(), False
    if record and (doc.get("fill") != asdict(fill) or doc.get("pack") != (fill.mode == "pack")):
        rundir.write_json(
            root / rundir.GRID, {**doc, "pack": fill.mode == "pack", "fill": asdict(fill)}
        )
    if fill.rates or fill.why.startswith("grid.json"):  # measured, now or at the first launch
        log.info(f"filling the devices: {fill.why}", extra=GRID)
    if fill.mode == "processes" and launch.launcher == "local":
        devices = [d for d in devices or [_device(launch)] for _ in range(fill.per_device)]
    return replace(launch, pack=fill.mode == "pack", devices=tuple(devices))


def _recorded(doc: Any) -> Fill:
    try:
        fill = Fill(**{k: doc[k] for k in ("mode", "per_device", "why", "rates") if k in doc})
        ok = fill.mode in MODES and type(fill.per_device) is int
        ok = ok and 1 <= fill.per_device <= max(PROCESSES) and isinstance(fill.rates, dict)
    except TypeError:
        ok = False
    return fill if ok else Fill(why="grid.json's fill is not readable: one run at a time")


def _left(todo: list) -> list:
    """The runs still to train (not finished nor diverged)."""
    return [r for r in todo if rundir.status(r.dir)[0] not in ("finished", "diverged")]


def _device(launch) -> str:
    """The device a grid measures on: its first CUDA device (this machine's default if none
    is listed)."""
    from softmaso.devices import resolve_device

    found = [resolve_device(d) for d in launch.devices or ["auto"]]
    return str(next((d for d in found if d.type in MEASURED_ON), found[0]))


def _measured_on(devices: list[str]) -> bool:
    from softmaso.devices import resolve_device

    return any(resolve_device(d).type in MEASURED_ON for d in devices or ["auto"])


def measure(left: list, launch) -> Fill:
    """Time the grid's own runs on its first CUDA device: the first pack it would train (as
    ``packed_training.plan_units`` cuts it, one pack per device), and 1, 2 and 4 worker
    processes each stepping one run of the same group (images/s summed). Each candidate runs
    in processes of its own, so this process keeps no device memory. The fastest wins where it
    beats one process by :data:`MIN_GAIN`; every figure is in the returned Fill."""
    from softmaso.packed_training import plan_units

    device = _device(launch)
    units = plan_units(left, pack=True, size=launch.pack_size, devices=len(launch.devices) or 1)
    pack = max(units, key=len)
    runs = [r.cfg for r in pack] + [r.cfg for r in left if r not in pack]  # the pack's first
    log.info(f"measuring how to fill {device} (about a minute) ...", extra=GRID)
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
    say) or is not ready within :data:`READY_TIMEOUT_S`; none is left running."""
    import multiprocessing as mp
    import threading

    from softmaso.devices import cpu_cores

    ctx = mp.get_context("spawn")
    threads = getattr(launch, "threads", None) or max(1, cpu_cores() // len(jobs))
    data_dir = getattr(launch, "data_dir", None)
    ready, results = ctx.Barrier(len(jobs) + 1), ctx.SimpleQueue()
    start = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_probe,
            args=([c.to_dict() for c in job], device, data_dir, threads, PROBE_SECONDS),
            kwargs={"ready": ready, "start": start, "results": results},
            daemon=True,
        )
        for job in jobs
    ]

    done = threading.Event()

    def watch() -> None:  # a process killed outright (SIGKILL, a crash) cannot say so itself
        while not done.is_set() and not ready.broken:
            if any(p.exitcode not in (None, 0) for p in procs):
                ready.abort()
            time.sleep(0.5)

    try:
        for p in procs:
            p.start()
        threading.Thread(target=watch, daemon=True).start()
        ready.wait(timeout=READY_TIMEOUT_S)  # every process built and warmed up
        start.value = time.time() + 0.2
        ready.wait(timeout=60)
        for p in procs:
            p.join(timeout=PROBE_SECONDS + 120)
        rates = [results.get() for _ in jobs if not results.empty()]
        return sum(rates) if len(rates) == len(jobs) and min(rates) > 0 else 0.0
    except Exception:  # a broken barrier: a process failed, or was not ready in time
        return 0.0
    finally:
        done.set()
        for p in procs:
            if p.is_alive():
                p.kill()
            if p.pid is not None:
                p.join()


def _probe(cfgs, device, data_dir, threads, seconds, *, ready, start, results) -> None:
    """A probe process: build its run (or pack), warm up, step for `seconds` from `start`,
    put images/s."""
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
        ready.wait(timeout=READY_TIMEOUT_S)  # all warmed up
        ready.wait(timeout=120)  # the parent has set the start
    except Exception:  # this run cannot train here (out of memory, say), or another could not
        ready.abort()
        return
    while time.time() < start.value:
        time.sleep(0.001)
    steps, t0 = 0, time.time()
    while time.time() < t0 + seconds:
        step()
        steps += 1
    sync(dev)
    results.put(steps * images / (time.time() - t0))


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
    from softmaso.data import Preprocessor, load_data
    from softmaso.packed_training import new_pack, train_step_packed

    data = load_data(cfgs[0].data, data_dir=data_dir).to(device)
    pack = new_pack(cfgs, data, device)
    prep = Preprocessor(cfgs[0].data.preprocess, data.x_train)
    batches = itertools.cycle(torch.stack([s.epoch(0) for s in pack.samplers], dim=1))
    gens = [torch.Generator(device=device).manual_seed(c.seed) for c in cfgs]
    step = lambda: train_step_packed(pack, data, prep, next(batches), gens)  # noqa: E731
    return step, len(cfgs) * cfgs[0].optim.batch_size
