"""What works on a GPU, in one call: softmaso's CUDA paths checked and timed, one line each.

    bash benchmarks/gpu-first.sh                                  # on a lent GPU machine
    python benchmarks/gpu_check.py --device cuda --budget-s 450 --out gpu-check.json
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check.json   # the CPU dry run

Every check runs softmaso's own commands (`softmaso reproduce` with `--pack` or `--no-pack`, as
a researcher would), or, for the two that step in-process, a fresh Python process of its own: a
crash, a CUDA error or an out-of-memory ends that check only, and the next one starts clean.
After every check the JSON is rewritten (atomically) and one line is printed:

    OK|FAIL|SKIP  name  seconds  figures

`--budget-s`: the whole script ends within that many seconds. A check that would not fit (by its
estimate, below) is skipped and says so; one that runs past the budget is stopped (its whole
process group, a grid's workers too) and fails. OK and FAIL say whether the path works; the
figures say how fast, against issue 24's targets (a missed target is not a FAIL).

Checks, in the order they run (sizes on CUDA; --dry-run: width 1/16, a few hundred images, on
the CPU, torch.compile off: the same commands, tiny). Runs are Table 2's CIFAR-10 recipe on the
synthetic CIFAR-shaped set (test set: a fifth of the training images), `reproduce` runs
`softmaso reproduce table2 --datasets cifar10`:
  single_compiled     `reproduce --runs 1 --no-pack --devices 0` with train.compile: 6 runs one
                      after another in one process, 10,000 images, 2 epochs: each mode's (none,
                      penalty) training images/s in a run's last epoch (target, none: >= 20,000)
  sync_free           the step of none, penalty and exact eager, then none and penalty compiled,
                      under torch.cuda.set_sync_debug_mode("error") after 3 warm-up steps (any
                      host synchronisation fails it); inductor's count of CUDA-graph skips
  table2_shape        Table 2's pack: `reproduce --runs 5 --pack`, the 30 runs of a dataset in one
                      network, fp32 eager, 5,000 images, 2 epochs with evaluation and checkpoints:
                      images/s summed over the runs; peak CUDA memory of an epoch (training and
                      evaluation, from metrics.jsonl: not the export after)
  pack_bf16           the same with train.amp
  workers             `reproduce --runs 1 --no-pack --devices 0,0,0,0,0,0`: 6 runs in 6 worker
                      processes sharing the GPU, compiled unless single_compiled failed, 10,000
                      images, 4 epochs: images/s summed
  pack_compiled       table2_shape with train.compile
  reproduce_smoke     `softmaso reproduce table2 --smoke --runs 1` with default flags: what the
                      grid chose (grid.json, its log), the table written
  packed_vs_separate  `reproduce --runs 1` with --pack and with --no-pack, 500 images, 1 epoch,
                      TF32 off (NVIDIA_TF32_OVERRIDE=0): the largest relative loss difference
  pack_layout         a 30-run pack's step in channels_last and in NCHW, and the same runs
                      stepped apart (packed_training.pack_speedup, as `softmaso bench` times them)
Then the summary: single-run compiled images/s, the best grid mode's images/s summed over its
runs and the Table 2 grid projected at that rate, each against its target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "table2/cifar10"
TARGETS = {  # issue 24, section 1: on one H100/H200
    "single_compiled_images_per_s": 20_000,  # train.compile, ortho.mode none, batch 50
    "grid_images_per_s": 60_000,  # the best way of filling the GPU, summed over its runs
    "grid_hours": 2.0,  # Table 2's 90 runs at that rate
}
PACKED_LOSS_TOLERANCE = 1e-3  # relative; measured 5e-6 on a CPU after 4 steps [ours]
STOP_GRACE_S = 10  # a stopped command's SIGTERM before its SIGKILL
RESERVE_S = STOP_GRACE_S + 5  # of --budget-s, kept for stopping a command and the summary


@dataclass(frozen=True)
class Sizes:
    """How big each check is: CUDA's (the real figures) or the dry run's."""

    width: float  # largeCNN's width multiplier (1: the paper's)
    single_images: int  # training images of a single run
    pack_seeds: int  # seeds per Table 2 cell in a pack: 6 cells x pack_seeds runs
    pack_images: int
    workers: int  # worker processes on the one device
    worker_images: int
    worker_epochs: int
    sync_images: int  # enough for 5 steps of 50
    pvs_images: int  # packed_vs_separate
    layout_runs: int
    layout_steps: int  # pack_layout: steps per timed call, and rounds
    layout_repeats: int
    epochs: int = 2  # single_compiled and the packs: the last epoch is timed


CUDA = Sizes(  # images are training images per run [ours: each check in under ~1.5 min]
    width=1.0,
    single_images=10_000,
    pack_seeds=5,  # 30 runs: Table 2's pack of a dataset
    pack_images=5_000,
    workers=6,
    worker_images=10_000,
    worker_epochs=4,
    sync_images=1_000,
    pvs_images=500,
    layout_runs=30,
    layout_steps=5,
    layout_repeats=3,
)
DRY = Sizes(  # the CPU dry run: the same commands, tiny
    width=0.0625,
    single_images=200,
    pack_seeds=1,
    pack_images=100,
    workers=2,
    worker_images=100,
    worker_epochs=2,
    sync_images=300,
    pvs_images=100,
    layout_runs=2,
    layout_steps=1,
    layout_repeats=1,
)


class OutOfTime(Exception):
    """The budget ran out while a check's command was running (it was stopped)."""


@dataclass
class Budget:
    """Seconds left until the script must end (`seconds` None: no limit)."""

    seconds: float | None
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - RESERVE_S - (time.monotonic() - self.start)


@dataclass
class Context:
    """What a check needs: where it runs, how big, how long, and what ran before it."""

    device: str  # cpu, cuda or cuda:N
    dry: bool
    budget: Budget
    scratch: Path  # run directories go in a folder per check, removed after it
    logs: Path  # one log per check: its commands and their output
    checks: dict[str, dict] = field(default_factory=dict)  # the report's entries so far
    work: Path = Path()  # the running check's folder, log and end
    log: Path | None = None
    deadline: float = math.inf  # time.monotonic()

    def left(self) -> float:
        """Seconds the running check may still take (its limit, or the budget's end)."""
        return min(self.budget.left(), self.deadline - time.monotonic())

    @property
    def sizes(self) -> Sizes:
        return DRY if self.dry else CUDA

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}  # this checkout
        if self.dry:  # inductor on a CPU takes ~10 s per graph; the dry run checks the plumbing
            env["TORCH_COMPILE_DISABLE"] = "1"
        return env

    def grid_devices(self, n: int = 1) -> str:
        """`--devices` for n worker processes on the one device (one: this process)."""
        one = "cpu" if self.device == "cpu" else self.device.partition(":")[2] or "0"
        return ",".join([one] * n)


# ---------------------------------------------------------------------------------- commands
def command(ctx: Context, cmd: list[str], *, env: dict[str, str] | None = None) -> int:
    """Run `cmd` in the repository, its output appended to the check's log; its exit code.

    It runs in a session of its own, so that when the budget runs out (or this script is
    interrupted, or the check's limit passes) its whole process group stops: a grid's worker
    processes too.
    """
    left = ctx.left()
    if left <= 0:
        raise OutOfTime("no time left (its limit, or the budget) to start it")
    assert ctx.log is not None
    with ctx.log.open("a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        p = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**ctx.env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return p.wait(timeout=None if left == math.inf else left)
        except subprocess.TimeoutExpired:
            stop(p)
            raise OutOfTime(f"stopped after {left:.0f} s: its limit, or the budget's end") from None
        except BaseException:
            stop(p)
            raise


def stop(p: subprocess.Popen) -> None:
    """End a command's process group: SIGTERM (runs stay resumable), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def softmaso(*args: str) -> list[str]:
    return [sys.executable, "-m", "softmaso", *args]


def sets(sizes: Sizes, images: int, *extra: str, epochs: int | None = None) -> list[str]:
    """Overrides of Table 2's CIFAR-10 recipe: the synthetic set of `images` training images."""
    return [
        "data.name=synthetic",
        f"data.synthetic_train={images}",
        f"model.width={sizes.width}",
        f"train.epochs={epochs or sizes.epochs}",
        *extra,
    ]


def as_options(overrides: list[str]) -> list[str]:
    return [a for kv in overrides for a in ("--set", kv)]


def log_tail(ctx: Context, chars: int = 1500) -> str:
    return ctx.log.read_text(errors="replace")[-chars:] if ctx.log and ctx.log.is_file() else ""


# ------------------------------------------------------------------------ reading run folders
def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_result(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return {}


def steady_rate(rows: list[dict]) -> float | None:
    """Training images/s of a run once warm: the median over its epochs after the first
    (which holds cuDNN's autotuning and the compile), or the only epoch."""
    rates = [r["images_per_s"] for r in rows[1:] or rows]
    return statistics.median(rates) if rates else None


def peak_mib(rows: list[dict]) -> float | None:
    """The largest per-epoch peak of CUDA memory (training and evaluation; not the export)."""
    peaks = [r["peak_cuda_mib"] for r in rows if r.get("peak_cuda_mib") is not None]
    return max(peaks) if peaks else None


def grid(ctx: Context, name: str, grid_args: list[str], overrides: list[str], **kw) -> dict:
    """`softmaso reproduce table2 --datasets cifar10 ...` into a scratch folder: exit code,
    wall seconds, and each run's metrics rows and result."""
    results = ctx.work / name
    cmd = softmaso("reproduce", "table2", "--datasets", "cifar10", "--results", str(results))
    t0, stopped = time.perf_counter(), None
    try:
        rc = command(ctx, cmd + grid_args + as_options(overrides), **kw)
    except OutOfTime as e:  # what its runs wrote until then is still worth reading
        rc, stopped = None, str(e)
    wall = time.perf_counter() - t0
    runs = {d.name: (read_rows(d), read_result(d)) for d in sorted(results.glob("cifar10/*/"))}
    return {"exit_code": rc, "stopped": stopped, "wall_s": wall, "runs": runs, "results": results}


def grid_figures(g: dict) -> dict:
    """What a grid's runs say: finished, packed with how many, rates and peak memory."""
    rows = [r for r, _ in g["runs"].values()]
    rates = [x for x in map(steady_rate, rows) if x is not None]
    peaks = [x for x in map(peak_mib, rows) if x is not None]
    images = sum(r["images_per_s"] * r["train_seconds"] for rs in rows for r in rs)
    return {
        "exit_code": g["exit_code"],
        **({"stopped": g["stopped"]} if g["stopped"] else {}),
        "runs": len(g["runs"]),
        "finished": sum(res.get("status") == "finished" for _, res in g["runs"].values()),
        "packed_with": sorted({res.get("packed_with", 1) for _, res in g["runs"].values()}),
        "checkpoints": sum(
            (g["results"] / "cifar10" / n / "checkpoint.pt").is_file() for n in g["runs"]
        ),
        "run_images_per_s": rates,
        "wall_s": g["wall_s"],
        # every run's training images over the command's whole wall time (start-up, data,
        # compile, evaluation, checkpoints and tables included): a lower bound on the rate
        "wall_images_per_s": images / g["wall_s"] if g["wall_s"] else None,
        "peak_cuda_gib": gib(max(peaks, default=None)),
    }


# ------------------------------------------------------------------------------------ checks
def single_compiled(ctx: Context) -> dict:
    """The 6 runs of `--runs 1` one after another in one process, compiled (once): each mode's
    median training images/s of a run's last epoch."""
    S = ctx.sizes
    over = sets(S, S.single_images, "train.compile=true")
    g = grid(ctx, "single", ["--runs", "1", "--no-pack", "--devices", ctx.grid_devices()], over)
    out = grid_figures(g)
    for mode in ("none", "penalty"):
        rates = [
            steady_rate(rows) for name, (rows, _) in g["runs"].items() if f"_mode-{mode}_" in name
        ]
        rates = [r for r in rates if r is not None]
        out[f"{mode}_images_per_s"] = statistics.median(rates) if rates else None
    first = [rows[0]["seconds"] for rows, _ in g["runs"].values() if rows]
    out["first_epoch_s"] = max(first, default=None)  # the first run's: it holds the compile
    out["ok"] = out["exit_code"] == 0 and out["finished"] == 6
    rate, target = out["none_images_per_s"], TARGETS["single_compiled_images_per_s"]
    out["line"] = (
        f"none {fmt(rate)}, penalty {fmt(out['penalty_images_per_s'])} images/s "
        f"({verdict(rate, target, '>=')})"
    )
    return out


def sync_free(ctx: Context) -> dict:
    return in_child(ctx, "sync_free")


def pack(ctx: Context, *extra: str) -> dict:
    """Table 2's 30 runs of a dataset as one pack: images/s summed over the runs, memory."""
    S = ctx.sizes
    over = sets(S, S.pack_images, *extra)
    args = ["--runs", str(S.pack_seeds), "--pack", "--pack-size", "30", "--devices"]
    g = grid(ctx, "pack", [*args, ctx.grid_devices()], over)
    out = grid_figures(g)
    n = 6 * S.pack_seeds
    out["summed_images_per_s"] = sum(out["run_images_per_s"]) if out["run_images_per_s"] else None
    out["ok"] = out["exit_code"] == 0 and out["finished"] == n and out["packed_with"] == [n]
    mem = out["peak_cuda_gib"]
    out["line"] = (
        f"{out['finished']}/{n} runs finished, packed {out['packed_with']}: "
        f"{fmt(out['summed_images_per_s'])} images/s summed"
        + (f", peak CUDA {mem:.1f} GiB" if mem else "")
    )
    return out


def table2_shape(ctx: Context) -> dict:
    return pack(ctx)


def pack_bf16(ctx: Context) -> dict:
    return pack(ctx, "train.amp=true")


def pack_compiled(ctx: Context) -> dict:
    return pack(ctx, "train.compile=true")


def workers(ctx: Context) -> dict:
    """Single runs in several worker processes sharing the device: images/s summed."""
    S = ctx.sizes
    compiled = ctx.checks.get("single_compiled", {}).get("status") != "FAIL"
    over = sets(S, S.worker_images, epochs=S.worker_epochs)
    over += ["train.compile=true"] if compiled else []
    devices = ctx.grid_devices(S.workers)
    g = grid(ctx, "workers", ["--runs", "1", "--no-pack", "--devices", devices], over)
    out = {"workers": S.workers, "compiled": compiled, **grid_figures(g)}
    rates = out["run_images_per_s"]
    # each worker trains one run at a time: the mean run's rate, times the workers (runs that
    # train at the same time; the wall-clock figure above does not assume it)
    out["summed_images_per_s"] = statistics.mean(rates) * S.workers if rates else None
    out["ok"] = out["exit_code"] == 0 and out["finished"] == 6
    out["line"] = (
        f"{S.workers} processes{', compiled' if compiled else ', eager'}: "
        f"{fmt(out['summed_images_per_s'])} images/s summed "
        f"({fmt(out['wall_images_per_s'])} over the whole wall time)"
    )
    return out


def reproduce_smoke(ctx: Context) -> dict:
    """`softmaso reproduce table2 --smoke --runs 1`, default flags: what it chose (grid.json's
    `fill`: one run at a time, a pack or several workers, measured by softmaso/fill.py), the
    table."""
    results = ctx.work / "smoke"
    cmd = softmaso("reproduce", "table2", "--smoke", "--runs", "1", "--results", str(results))
    if ctx.dry:  # one dataset's 6 runs, one narrow epoch each
        cmd += ["--datasets", "svhn", *as_options(["train.epochs=1", f"model.width={DRY.width}"])]
    t0 = time.perf_counter()
    rc = command(ctx, cmd)
    try:  # what the grid chose (pack, ...), without its list of runs
        chosen = json.loads((results / "grid.json").read_text())
        chosen = {k: v for k, v in chosen.items() if k not in ("runs", "created", "experiment")}
    except (OSError, ValueError, AttributeError):
        chosen = None
    lines = log_tail(ctx, 100_000).splitlines()
    said = [s.strip() for s in lines if any(w in s for w in ("packing", "compil", "filling"))]
    table = (results / "table.md").is_file()
    return {
        "exit_code": rc,
        "seconds": time.perf_counter() - t0,
        "table": table,
        "grid": chosen,
        "decisions": said[-10:],
        "ok": rc == 0 and table,
        "line": f"exit {rc}, table {'written' if table else 'missing'}, grid.json {chosen}",
    }


def packed_vs_separate(ctx: Context) -> dict:
    """The same 6 runs packed and apart, TF32 off: the largest relative loss difference."""
    S = ctx.sizes
    over = sets(S, S.pvs_images, epochs=1)
    fp32 = {"NVIDIA_TF32_OVERRIDE": "0"}  # cuBLAS and cuDNN in full fp32 (TF32 rounds to 1e-3)
    args = ["--runs", "1", "--devices", ctx.grid_devices()]
    packed = grid(ctx, "packed", [*args, "--pack"], over, env=fp32)
    apart = grid(ctx, "apart", [*args, "--no-pack"], over, env=fp32)
    gaps: dict[str, float | None] = {}  # None: not trained both ways
    for name, (rows, _) in apart["runs"].items():
        other = packed["runs"].get(name, ([], {}))[0]
        gaps[name] = (
            max(
                abs(a[k] - b[k]) / max(abs(b[k]), 1e-12)
                for a, b in zip(other, rows, strict=True)
                for k in ("train_loss", "test_loss")
            )
            if rows and len(rows) == len(other)
            else None
        )
    known = [g for g in gaps.values() if g is not None]
    worst = max(known) if known and len(known) == len(gaps) else None
    withs = sorted({res.get("packed_with", 1) for _, res in packed["runs"].values()})
    ok = (
        packed["exit_code"] == apart["exit_code"] == 0
        and len(gaps) == 6
        and withs == [6]
        and worst is not None
        and worst < PACKED_LOSS_TOLERANCE
    )
    return {
        "exit_codes": [packed["exit_code"], apart["exit_code"]],
        "packed_with": withs,
        "relative_loss_difference": gaps,
        "max_relative_loss_difference": worst,
        "tolerance": PACKED_LOSS_TOLERANCE,
        "ok": ok,
        "line": f"{len(gaps)} runs, packed {withs}: largest relative loss difference "
        f"{fmt(worst, '.1e')} (tolerance {PACKED_LOSS_TOLERANCE:.0e})",
    }


def pack_layout(ctx: Context) -> dict:
    return in_child(ctx, "pack_layout")


# ---------------------------------------------------------- the checks that step in-process
def in_child(ctx: Context, name: str) -> dict:
    """Run CHILD_CHECKS[name] in a fresh Python process; its figures."""
    got = ctx.work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(got)]
    cmd += ["--device", ctx.device] + (["--dry-run"] if ctx.dry else [])
    rc = command(ctx, cmd)
    if rc != 0 or not got.is_file():
        raise RuntimeError(f"its process ended with exit code {rc} (the log's tail says why)")
    return json.loads(got.read_text())


def _config(sizes: Sizes, images: int, *extra: str):
    from softmaso import recipes
    from softmaso.config import load_recipe

    return load_recipe(recipes.path_of(RECIPE), sets(sizes, images, *extra))


def child_sync_free(device, sizes: Sizes) -> dict:
    """Five steps of each variant; the last two under set_sync_debug_mode("error") on CUDA."""
    out = {}
    variants = [(m, False) for m in ("none", "penalty", "exact")]
    variants += [(m, True) for m in ("none", "penalty")]
    for mode, compiled in variants:
        key = f"{mode}_compiled" if compiled else f"{mode}_eager"
        try:
            out[key] = _sync_free_steps(device, sizes, mode, compiled)
        except Exception as e:  # one variant's finding; the others still run
            out[key] = {"error": first_line(e), "trace": traceback.format_exc()[-1200:]}
        print(f"sync_free {key}: {out[key]}", flush=True)
    bad = [k for k, v in out.items() if "error" in v or v.get("cudagraph_skips")]
    line = "no host synchronisation" if device.type == "cuda" else "ran (the sync check is CUDA's)"
    return {**out, "ok": not bad, "line": f"failed: {', '.join(bad)}" if bad else line}


def _sync_free_steps(device, sizes: Sizes, mode: str, compiled: bool) -> dict:
    import torch

    from softmaso import training
    from softmaso.timing import sync

    cfg = _config(sizes, sizes.sync_images, f"ortho.mode={mode}", f"train.compile={compiled}")
    s = training.build(cfg, device)
    batches = s.sampler.epoch(0)
    try:
        from torch._dynamo.utils import counters

        counters.clear()
    except ImportError:
        counters = None
    for idx in batches[:3]:  # warm-up: allocations, cuDNN's choice, compile, graph recording
        training.train_step(s, idx)
    sync(device)
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        for idx in batches[3:5]:
            training.train_step(s, idx)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    out = {"host_sync_checked": device.type == "cuda"}
    if compiled and counters is not None:
        out["cudagraph_skips"] = int(counters["inductor"].get("cudagraph_skips", 0))
    return out


def child_pack_layout(device, sizes: Sizes) -> dict:
    """A pack's training step in channels_last and in NCHW, and its runs stepped apart."""
    import torch

    from softmaso import packed_training
    from softmaso.data import load_data

    if not hasattr(packed_training, "PACK_LAYOUT") or not hasattr(packed_training, "pack_speedup"):
        return {"skip": "packing has no PACK_LAYOUT switch or pack_speedup (rewritten?)"}
    n = sizes.layout_runs
    cfgs = [_config(sizes, sizes.sync_images, f"seed={i}") for i in range(n)]
    data = load_data(cfgs[0].data).to(device)
    default, got = packed_training.PACK_LAYOUT, {}
    try:
        for name, layout in (("nhwc", torch.channels_last), ("nchw", torch.contiguous_format)):
            packed_training.PACK_LAYOUT = layout
            got[name] = packed_training.pack_speedup(
                cfgs, device, data=data, steps=sizes.layout_steps, repeats=sizes.layout_repeats
            )
            print(f"pack_layout {name}: {got[name]}", flush=True)
    finally:
        packed_training.PACK_LAYOUT = default
    nhwc, nchw = got["nhwc"]["packed_images_per_s"], got["nchw"]["packed_images_per_s"]
    apart = got["nhwc"]["separate_images_per_s"]
    return {
        "runs": n,
        "nhwc_packed_images_per_s": nhwc,
        "nchw_packed_images_per_s": nchw,
        "separate_images_per_s": apart,
        "nchw_over_nhwc": nchw / nhwc,  # > 1: packs should be NCHW
        "packed_over_separate": nhwc / apart,
        "default": "nhwc" if default == torch.channels_last else "nchw",
        "ok": True,
        "line": f"{n} runs packed: channels_last {fmt(nhwc)}, NCHW {fmt(nchw)} images/s; "
        f"apart {fmt(apart)} images/s",
    }


CHILD_CHECKS: dict[str, Callable] = {
    "sync_free": child_sync_free,
    "pack_layout": child_pack_layout,
}


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], dict]
    cuda_s: float  # about how long it takes on an H100: a guess until measured [ours]
    cuda_limit_s: float  # stopped (FAIL) past this, so that one check cannot eat the call
    dry_s: float  # about how long in the dry run

    def estimate(self, ctx: Context) -> float:
        return self.dry_s if ctx.dry else self.cuda_s

    def limit(self, ctx: Context) -> float:
        return math.inf if ctx.dry else self.cuda_limit_s


CHECKS = [  # most wanted first: a call that runs short skips the last
    Check("single_compiled", single_compiled, 60, 150, 6),
    Check("sync_free", sync_free, 50, 120, 3),
    Check("table2_shape", table2_shape, 45, 120, 6),
    Check("pack_bf16", pack_bf16, 45, 120, 6),
    Check("workers", workers, 60, 150, 8),
    Check("pack_compiled", pack_compiled, 90, 180, 6),
    Check("reproduce_smoke", reproduce_smoke, 120, 240, 6),  # measures its fill: 7 processes
    Check("packed_vs_separate", packed_vs_separate, 45, 120, 10),
    Check("pack_layout", pack_layout, 40, 120, 3),
]


def run_checks(checks: list[Check], ctx: Context, out: Path, report: dict) -> dict:
    """Each check in turn (or skipped, saying why), the JSON rewritten and a line printed after
    every one, so that a call cut short still returns what finished."""
    entries = report.setdefault("checks", {})
    for check in checks:
        entries.setdefault(check.name, {"status": "PENDING"})
    ctx.checks = entries
    write(out, report)
    for check in checks:
        entry, need, left = entries[check.name], check.estimate(ctx), ctx.budget.left()
        t0 = time.monotonic()
        if entry["status"] == "SKIP":  # --only or --skip
            pass
        elif need > left:
            why = f"would not fit: about {need:.0f} s, {max(left, 0):.0f} s left"
            entry.update(status="SKIP", why=why)
        else:
            entry["status"] = "RUNNING"
            write(out, report)
            budget = "" if left == math.inf else f", {left:.0f} s left"
            print(f"== {check.name}: about {need:.0f} s{budget}", file=sys.stderr, flush=True)
            entry.update(run_one(check, ctx))
        entry["seconds"] = round(time.monotonic() - t0, 1)
        write(out, report)
        print(status_line(check.name, entry), flush=True)
    return report


def run_one(check: Check, ctx: Context) -> dict:
    """One check's entry: its figures and OK, FAIL or SKIP (its run folders removed after)."""
    ctx.log = ctx.logs / f"{check.name}.log"
    ctx.deadline = time.monotonic() + check.limit(ctx)
    ctx.work = ctx.scratch / check.name
    ctx.work.mkdir(parents=True)
    try:
        got = check.run(ctx)
    except Exception as e:  # a failed check is a finding; the next one still runs
        got = {"ok": False, "error": first_line(e), "trace": traceback.format_exc()[-1500:]}
        got["log_tail"] = log_tail(ctx)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)  # a 30-run pack's checkpoints: 0.5 GB
    if "skip" in got:
        return {"status": "SKIP", "why": got.pop("skip"), **got}
    status = "OK" if got.pop("ok") else "FAIL"
    if status == "FAIL" and "log_tail" not in got:
        got["log_tail"] = log_tail(ctx)
    return {"status": status, **got}


def status_line(name: str, entry: dict) -> str:
    what = entry.get("line") or entry.get("why") or ""
    if entry["status"] == "FAIL":
        why = entry.get("error") or entry.get("stopped")
        what = "; ".join(w for w in (why, what) if w)
    return f"{entry['status']:<4} {name:<19} {entry.get('seconds', 0):6.1f} s  {what}"


# ----------------------------------------------------------------------------------- summary
def summarise(checks: dict[str, dict]) -> dict:
    """The figures issue 24 asks for, from the checks that ran, against the targets. The best
    grid mode is the fastest fp32 one (the paper's protocol); the bf16 pack is listed beside."""
    single = checks.get("single_compiled", {}).get("none_images_per_s")
    failed = (
        " [from a check that failed]"
        if checks.get("single_compiled", {}).get("status") == "FAIL"
        else ""
    )
    modes = {
        name: checks[name]["summed_images_per_s"]
        for name in ("table2_shape", "pack_compiled", "workers", "pack_bf16")
        if checks.get(name, {}).get("status") == "OK" and checks[name].get("summed_images_per_s")
    }
    fp32 = {k: v for k, v in modes.items() if k != "pack_bf16"}
    best = max(fp32, key=fp32.get) if fp32 else None
    rate = fp32.get(best)
    hours = grid_images() / rate / 3600 if rate else None
    return {
        "single_compiled_images_per_s": single,
        "grid_modes_images_per_s": modes,
        "best_grid_mode": best,
        "best_grid_images_per_s": rate,
        "projected_table2_hours": hours,
        "targets": TARGETS,
        "lines": [
            f"single-run compiled (none): {fmt(single)} images/s "
            f"({verdict(single, TARGETS['single_compiled_images_per_s'], '>=')}){failed}",
            f"best grid mode (fp32): {best or 'none measured'}, {fmt(rate)} images/s summed "
            f"({verdict(rate, TARGETS['grid_images_per_s'], '>=')}); bf16 pack: "
            f"{fmt(modes.get('pack_bf16'))} images/s",
            f"Table 2 grid projected at that rate: {fmt(hours, '.1f')} h "
            f"({verdict(hours, TARGETS['grid_hours'], '<=')})",
        ],
    }


def grid_images() -> int:
    from softmaso.bench import GRID_IMAGES  # the 90 runs' training images

    return GRID_IMAGES


def verdict(value: float | None, target: float, how: str) -> str:
    if value is None:
        return f"target {how} {target:,}: not measured"
    met = value >= target if how == ">=" else value <= target
    return f"target {how} {target:,}: {'met' if met else 'missed'}"


def gib(mib: float | None) -> float | None:
    return None if mib is None else mib / 1024


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def write(path: Path, report: dict) -> None:
    from softmaso.rundir import write_json  # atomic: a reader never sees half a file

    write_json(path, report)


def environment(device: str) -> dict:
    """Versions, commit and host, and for CUDA the GPU as nvidia-smi names it (this process
    starts no CUDA context: the checks' processes have the GPU to themselves)."""
    import torch

    from softmaso import rundir

    env = rundir.environment(torch.device("cpu"))
    env.pop("argv", None)
    env["cpu"] = env.pop("device")
    if device != "cpu":
        env["cuda"], env["cudnn"] = torch.version.cuda, torch.backends.cudnn.version()
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            env["gpu"] = smi.stdout.strip().splitlines()[1:]
        except (OSError, subprocess.SubprocessError) as e:
            env["gpu"] = first_line(e)
    return env


# -------------------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    names = [c.name for c in CHECKS]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda; cpu with --dry-run)")
    ap.add_argument("--dry-run", action="store_true", help="every check, tiny, compile off")
    ap.add_argument("--budget-s", type=float, help="end within this many seconds")
    ap.add_argument("--only", default="", help=f"comma-separated checks: {', '.join(names)}")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip")
    ap.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="the JSON")
    ap.add_argument("--child", choices=list(CHILD_CHECKS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    for opt in ("only", "skip"):
        chosen = {s for s in getattr(args, opt).split(",") if s}
        if unknown := chosen - set(names):
            ap.error(f"--{opt}: {', '.join(sorted(unknown))} not a check; the checks: {names}")
        setattr(args, opt, chosen)
    return args


def child(args: argparse.Namespace) -> int:
    """The in-process half of a check, in its own process: its figures to --out."""
    from softmaso.devices import resolve_device
    from softmaso.rundir import write_json

    device = resolve_device(args.device)
    write_json(args.out, CHILD_CHECKS[args.child](device, DRY if args.dry_run else CUDA))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if str(ROOT) not in sys.path:  # this checkout's softmaso, installed or not
        sys.path.insert(0, str(ROOT))
    if args.child:
        return child(args)
    import tempfile

    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = out.parent / f"{out.stem}-logs"
    logs.mkdir(exist_ok=True)
    report = {
        "dry_run": args.dry_run,
        "device": args.device,
        "budget_s": args.budget_s,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": vars(DRY if args.dry_run else CUDA),
        "environment": environment(args.device),
        "checks": {},
    }
    for c in CHECKS:
        if (args.only and c.name not in args.only) or c.name in args.skip:
            report["checks"][c.name] = {"status": "SKIP", "why": "--only or --skip"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context(args.device, args.dry_run, Budget(args.budget_s), Path(tmp), logs)
        run_checks(CHECKS, ctx, out, report)
    report["summary"] = summarise(report["checks"])
    write(out, report)
    for line in report["summary"]["lines"]:
        print(line)
    failed = [k for k, v in report["checks"].items() if v["status"] == "FAIL"]
    print(f"wrote {out}; {'FAILED: ' + ', '.join(failed) if failed else 'no check failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
