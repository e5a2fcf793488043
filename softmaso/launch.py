"""Launching an experiment's runs: where, how many at once, packed or not; then its report.

A run is claimed with an exclusive lock (``runs.claim``) before it trains, so two ``reproduce``
processes on one results directory never train the same run; the kernel drops the lock when
its process dies, so a killed grid leaves no stale lock (where there is no flock, the lock
file a dead process left is taken over by the next one on its host). A finished run is
skipped, an interrupted one resumes from its checkpoint, a diverged one is reported and not
retried, a failed one (it raised, or its worker died: error.txt) resumes on the next launch
while the grid goes on without it.

Launchers: ``local`` runs in this process, in sequence, or one worker process per listed
device; ``slurm`` submits a submitit job array (each task requeues itself on preemption or
timeout and resumes from its checkpoint). No scheduler of our own: a process pool or SLURM
decides. How to launch is one frozen :class:`Launch`, passed whole to every hop.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from softmaso import experiments as ex
from softmaso import runs
from softmaso.errors import RunBusy, RunConflict, UserError

Log = Callable[[str], None]
FAILED = ("diverged", "conflict", "damaged", "failed")  # outcomes that make `reproduce` exit 1


@dataclass(frozen=True)
class Slurm:
    """A SLURM job array's settings (``--slurm-*``)."""

    cluster: str = "slurm"  # submitit's cluster: slurm, or local/debug to test without SLURM
    partition: str | None = None
    time_min: int = 24 * 60
    parallelism: int = 16
    gpus: int = 1
    cpus: int = 8


@dataclass(frozen=True)
class Launch:
    """How to train a grid's runs: launcher, devices, threads, packing, data, smoke."""

    launcher: str = "local"  # local or slurm
    devices: tuple[str, ...] = ()  # local worker processes, one per entry; () = this process
    threads: int | None = None  # CPU threads per process (None: the cores shared out)
    pack: bool | None = None  # None: measured where packing can pay (CUDA), else no
    pack_size: int = 30
    data_dir: Path | None = None
    smoke: bool = False
    slurm: Slurm = field(default_factory=Slurm)

    def __post_init__(self):
        if self.launcher not in ("local", "slurm"):
            raise UserError("--launcher", f"{self.launcher!r}; use local or slurm")


# ------------------------------------------------------------------------------- one unit
def train_unit(
    unit: list[ex.Run],
    launch: Launch,
    device: str = "auto",
    *,
    progress=None,
    log: Log | None = None,
) -> dict[Path, str]:
    """Train a unit's runs one by one (:func:`softmaso.training.fit`, which takes each run's
    lock and checks its directory once, under the lock), or a unit that packing planned as one
    pack (:func:`softmaso.packed_training.train_pack`). Each run's outcome: finished, diverged,
    busy, skipped-finished, skipped-diverged, conflict, damaged or failed (training raised:
    error.txt says why, and the others go on)."""
    log = log or _stderr
    if len(unit) > 1:  # only packing plans units of several runs
        from softmaso.packed_training import train_pack

        kw = {"pack": launch.pack, "data_dir": launch.data_dir, "smoke": launch.smoke}
        try:
            packed = train_pack(unit, device, **kw, progress=progress, log=log)
        except Exception as e:  # out of memory in the pack: its runs fail, the grid goes on
            return fail_unit(unit, e, log)
        if packed is not None:
            return packed
    from softmaso.training import fit

    out: dict[Path, str] = {}
    for run in unit:
        try:
            result = fit(
                run.cfg,
                run.dir,
                device=device,
                data_dir=launch.data_dir,
                lock=True,
                live=False,
                progress=progress,
                quiet=True,  # epochs: in metrics.jsonl
                extra={"smoke": launch.smoke},
            )
            skipped = "skipped-" if result.get("skipped") else ""
            out[run.dir] = f"{skipped}{result['status']}"
        except RunBusy:
            out[run.dir] = "busy"
        except RunConflict as e:
            log(f"conflict: {e.message}")
            out[run.dir] = "conflict"
        except UserError as e:  # damaged run files: this run fails, the grid goes on
            log(f"damaged: {run.dir.name}: {e}")
            runs.record_error(run.dir, str(e), damaged=True)  # the table then says damaged too
            out[run.dir] = "damaged"
        except Exception as e:  # out of memory, a CUDA error, a full disk: the others go on
            out.update(fail_unit([run], e, log))
    return out


def _last_line(e: BaseException) -> str:
    """The last non-empty line of an error's message (sbatch's own complaint comes last)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def fail_unit(unit: list[ex.Run], why: str | BaseException, log: Log) -> dict[Path, str]:
    """Record each run of `unit` failed: why (a message, or an exception's traceback) in its
    error.txt (the run stays resumable from its last checkpoint) and one line each in `log`;
    their outcomes, "failed"."""
    if isinstance(why, BaseException):
        why = "".join(traceback.format_exception(why))
    last = why.strip().splitlines()[-1] if why.strip() else "no message"
    for run in unit:
        runs.record_error(run.dir, why)
        log(f"failed: {run.dir.name}: {last} (details: {run.dir / runs.ERROR}; rerun to resume it)")
    return {run.dir: "failed" for run in unit}


def _stderr(text: str) -> None:
    print(f"[grid] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- local
_worker_device = "auto"  # a pool worker's device, set once by its initializer
_worker_news = None  # the queue a worker tells its parent on: (pid, unit index or None)
_worker_stop = None  # set by the parent when the grid stops: queued units are not started


def _pool_init(devices, counter, threads: int | None, news, stop, parent: int) -> None:
    """A pool worker takes the next device of the list and its share of the CPU threads, tells
    the parent its pid, stops its run on SIGTERM as on Ctrl-C (resumable), and ends itself when
    the parent process is gone."""
    global _worker_device, _worker_news, _worker_stop
    from softmaso.devices import set_threads

    with counter.get_lock():
        i = counter.value
        counter.value += 1
    _worker_device, _worker_news, _worker_stop = devices[i % len(devices)], news, stop
    set_threads(threads)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # scancel: the run stays resumable
    news.put((os.getpid(), None))
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    if _worker_device.startswith("cuda:"):  # this worker's GPU is its current device
        import torch

        torch.cuda.set_device(torch.device(_worker_device))


def _end_with(parent: int) -> None:
    """Exit this worker once its parent has died (killed, say): it never trains on orphaned."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _pool_task(i: int, unit: list[ex.Run], launch: Launch) -> dict[Path, str] | None:
    if _worker_stop.is_set():  # queued before the grid was stopped
        return None
    _worker_news.put((os.getpid(), i))  # the parent's record of what each worker trains
    return train_unit(unit, launch, _worker_device, log=_stderr)


def launch_local(
    todo: list[ex.Run], launch: Launch, *, progress=None, on_done=None
) -> dict[Path, str]:
    """In this process, in order; or one worker process per device (one unit per GPU, or per
    listed cpu), each with ``launch.threads`` CPU threads (None: the cores shared out).

    Units are single runs, or packs where packing is asked for or measured (on CUDA:
    ``packed_training.plan_units``)."""
    devices = launch.devices
    units = [[run] for run in todo]
    if launch.pack is not False:
        from softmaso.packed_training import measures_packing, plan_units

        if launch.pack or measures_packing(list(devices) or ["auto"]):
            units = plan_units(
                todo, pack=launch.pack, size=launch.pack_size, devices=len(devices) or 1
            )
    outcomes: dict[Path, str] = {}

    def record(unit: list[ex.Run], got: dict[Path, str]) -> None:
        for run in unit:
            outcomes[run.dir] = got[run.dir]
            if on_done is not None:
                on_done(run, got[run.dir])

    if len(devices) <= 1:
        from softmaso.devices import set_threads

        set_threads(launch.threads)
        log = _stderr if progress is None else progress.console.print
        for unit in units:
            record(unit, train_unit(unit, launch, *devices, progress=progress, log=log))
        return outcomes
    _pool(units, launch, record)
    return outcomes


DIED = "the worker process training it died (killed by a signal: out of memory?)"


def _pool(units: list[list[ex.Run]], launch: Launch, record) -> None:
    """Train the units in one spawned worker process per device, `record(unit, outcomes)` as
    each finishes.

    A worker that dies (SIGKILL, the out-of-memory killer) breaks a process pool, and the pool
    stops every worker with it. Then each unit that was training is retried alone, in a fresh
    one-worker pool: one that kills its worker again is recorded failed (error.txt), the others
    resume; the units not yet started go on in a fresh pool. SIGINT or SIGTERM of this process
    cancels the queued units and interrupts the workers' runs (each stays resumable)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from softmaso.devices import cpu_cores

    ctx = mp.get_context("spawn")
    news, stop = ctx.SimpleQueue(), ctx.Event()
    counter = ctx.Value("i", 0)
    workers, doing = set(), {}  # worker pids; unit index -> pid of the worker training it

    def drain() -> None:  # read as we go: a full pipe would block the workers' put
        while not news.empty():
            pid, i = news.get()
            workers.add(pid)
            if i is not None:
                doing[i] = pid

    threads = launch.threads or max(1, cpu_cores() // len(launch.devices))
    todo: dict[int, list[ex.Run]] = dict(enumerate(units))
    suspects: list[int] = []  # units training when a pool broke: retried alone, in order
    idle_breaks = 0  # pools that broke before any worker took a unit
    while todo:
        alone = bool(suspects)
        batch = {suspects[0]: todo[suspects[0]]} if alone else dict(todo)
        drain()  # what the last pool's workers said: they are gone, and their pids may be reused
        doing.clear()
        workers.clear()
        pool = ProcessPoolExecutor(
            1 if alone else len(launch.devices),
            mp_context=ctx,
            initializer=_pool_init,
            initargs=(launch.devices, counter, threads, news, stop, os.getpid()),
        )
        futures = {pool.submit(_pool_task, i, u, launch): i for i, u in batch.items()}
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    got = fut.result()  # raises BrokenProcessPool before the unit leaves `todo`
                except BrokenProcessPool:
                    raise
                except Exception as e:  # the task itself failed (it could not be sent, say)
                    got = fail_unit(todo[i], e, _stderr)
                record(todo.pop(i), got)
                doing.pop(i, None)
                drain()
        except BrokenProcessPool:
            drain()  # who was training what when the pool broke
            if alone:  # it killed its own worker again: that unit fails, the grid goes on
                unit = todo.pop(suspects[0])
                record(unit, fail_unit(unit, DIED, _stderr))
            else:
                suspects = [i for i in doing if i in todo]
                idle_breaks = 0 if suspects else idle_breaks + 1
                _stderr(
                    f"a worker process died; retrying the {len(suspects)} unit(s) being "
                    "trained then, one at a time, then the rest"
                )
                if idle_breaks >= 2:  # workers that die before they train anything
                    for unit in todo.values():
                        record(unit, fail_unit(unit, DIED, _stderr))
                    todo = {}
        except BaseException:  # Ctrl-C, SIGTERM: stop the queued units and the running ones
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            drain()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)  # fit leaves its run resumable
            raise
        finally:
            pool.shutdown(wait=True)
        suspects = [i for i in suspects if i in todo]


# ---------------------------------------------------------------------------------- slurm
class SubmititTask:
    """A submitit job: train one unit (a run or a pack); on preemption or timeout, requeue and
    resume from the runs' checkpoints. Packing (``pack`` None) is decided on the job's node."""

    def __init__(self, unit: list[ex.Run], launch: Launch):
        self.unit, self.launch = unit, launch

    def __call__(self) -> dict[Path, str]:
        return train_unit(self.unit, self.launch, log=_stderr)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititTask(self.unit, self.launch))


SLURM_CLUSTERS = ("slurm", "local", "debug")  # submitit's: the real one, or here to test


def check_slurm(cluster: str) -> None:
    """UserError unless submitit can submit to `cluster` from this machine (checked before
    anything is written): 'slurm' needs SLURM's srun on PATH, as submitit does."""
    if cluster not in SLURM_CLUSTERS:
        raise UserError("--slurm-cluster", f"{cluster!r}; use {', '.join(SLURM_CLUSTERS)}")
    if cluster == "slurm" and shutil.which("srun") is None:
        raise UserError(
            "--launcher slurm",
            "SLURM's srun is not on PATH: run on a SLURM login node "
            "(--slurm-cluster local runs the same jobs here, to test)",
        )


def launch_slurm(
    todo: list[ex.Run], launch: Launch, *, folder: Path, wait: bool = True
) -> dict[Path, str]:
    """Submit one job array through submitit, a job per unit (cluster 'debug' or 'local' runs
    it here). UserError, before anything is submitted, where the cluster cannot be used
    (:func:`check_slurm`)."""
    s = launch.slurm
    check_slurm(s.cluster)
    import submitit

    from softmaso.packed_training import plan_units

    executor = submitit.AutoExecutor(folder=str(folder), cluster=s.cluster)
    params: dict[str, Any] = {
        "timeout_min": s.time_min,
        "slurm_array_parallelism": s.parallelism,
        "gpus_per_node": s.gpus,
        "cpus_per_task": s.cpus,
        "name": "softmaso",
    }
    if s.partition:
        params["slurm_partition"] = s.partition
    executor.update_parameters(**params)
    units = plan_units(todo, pack=launch.pack, size=launch.pack_size)  # a job (one GPU) per pack
    try:  # submitit prints sbatch's complaint itself: it is in the one line below instead
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(SubmititTask(unit, launch)) for unit in units]
    except Exception as e:  # sbatch there, but no controller answering, a bad partition, ...
        raise UserError(
            "--launcher slurm", f"SLURM refused the job array: {_last_line(e)}"
        ) from None
    out: dict[Path, str] = {}
    for unit, job in zip(units, jobs, strict=True):
        if not wait:
            out.update({r.dir: f"submitted:{job.job_id}" for r in unit})
            continue
        try:
            out.update(job.result())
        except Exception as e:  # the task died (killed, out of memory, node failure)
            why = f"SLURM job {job.job_id} failed: {e}"  # the last line names the cause
            out.update(fail_unit(unit, why, _stderr))
    return {run.dir: out[run.dir] for run in todo}


# ----------------------------------------------------------------------------------- grid
def summary_line(outcomes: dict[Path, str]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def parse_devices(text: str | None) -> tuple[str, ...]:
    """'0,1' -> ('cuda:0', 'cuda:1') ('cpu' allowed); UserError for a GPU that is not there."""
    if not text:
        return ()
    from softmaso.devices import resolve_device

    out = []
    for item in text.split(","):
        item = item.strip()
        spec = f"cuda:{item}" if item.isdigit() else item
        try:
            out.append(str(resolve_device(spec)))
        except UserError as e:
            raise UserError("--devices", e.message) from None
    return tuple(out)


class GridLog:
    """A grid's progress: a bar on a terminal, else one line per run with its accuracy and
    the time left (estimated from the runs this launch trained, not the skipped ones)."""

    def __init__(self, total: int, live: bool):
        self.total, self.t0, self.done, self.failed, self.trained = (
            total,
            time.perf_counter(),
            0,
            0,
            0,
        )
        self.progress = self.task = None
        if live:
            from softmaso.ui import new_progress

            self.progress = new_progress()
            self.progress.start()
            self.task = self.progress.add_task(f"grid ({total} runs)", total=total, info="")

    def __call__(self, run: ex.Run, outcome: str) -> None:
        self.done += 1
        self.failed += outcome in FAILED
        self.trained += outcome in ("finished", "diverged")
        if self.progress is not None:
            self.progress.update(self.task, advance=1, info=f"{self.failed} failed")
            return
        line = f"{self.done}/{self.total} {run.recipe}/{run.dir.name}: {outcome}"
        result = runs.read_json(run.dir / runs.RESULT)
        acc = result.get("final_test_acc") if isinstance(result, dict) else None
        if outcome == "finished" and isinstance(acc, (int, float)):
            line += f", test accuracy {acc:.4f}"
        if self.trained and self.done < self.total:
            eta = (time.perf_counter() - self.t0) / self.trained * (self.total - self.done)
            line += f"; about {eta / 60:.0f} min left"
        _stderr(line)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# ------------------------------------------------------------------------------ reproduce
@dataclass(frozen=True)
class Selection:
    """Which runs of an experiment: seeds per cell, recipes kept, --set overrides."""

    seeds: int | None = None
    datasets: list[str] | None = None
    overrides: tuple[str, ...] = ()
    large: bool = False  # a grid of more than MAX_RUNS runs is launched only when asked


MAX_RUNS = 1000  # runs a grid launches without --yes


NOT_GRIDS = ("theory", "figure1")  # what `reproduce` runs besides the recipes' experiments


def check_names(experiment: str) -> list[str]:
    """The experiments `softmaso reproduce EXPERIMENT` runs (``all``: the checks, Figure 1,
    then every experiment of :data:`softmaso.recipes.EXPERIMENTS` in order); UserError for an
    unknown one."""
    from softmaso import recipes

    if experiment == "all":
        return [*NOT_GRIDS, *recipes.EXPERIMENTS]
    if experiment not in NOT_GRIDS:
        ex.recipe_paths(experiment)  # the one "unknown experiment" error
    return [experiment]


def reproduce(
    names: list[str],
    launch: Launch,
    select: Selection,
    *,
    results: Path | None,
    command: str,
    echo: Log = print,
) -> bool:
    """Run each experiment (a grid, the theory checks, or Figure 1) and write its report;
    True when all went well (no run diverged, conflicted or was damaged, every claim held).

    A grid, in order: its runs expanded from the recipes' sweeps, checked against what the
    results folder holds (before anything is written), recorded in grid.json, trained (finished
    runs are skipped, interrupted ones resume), then its table and figures written."""
    from softmaso.io import check_output_dir
    from softmaso.reporting.report import write_report

    if launch.launcher == "slurm":
        check_slurm(launch.slurm.cluster)
    base = check_output_dir(
        results or Path("results/smoke" if launch.smoke else "results"), where="--results"
    )
    ok = True
    for name in names:
        if name in NOT_GRIDS:
            ok &= _theory_half(name, base, echo)
            continue
        label = ex.experiment_name(name)
        root = results if results and len(names) == 1 else base / label
        size = ex.grid_size(
            name, datasets=select.datasets, seeds=select.seeds, overrides=select.overrides
        )
        if size > MAX_RUNS and not select.large:  # before 10,000 configs are built
            raise UserError(
                "--yes",
                f"{label} sweeps {size:,} runs (more than {MAX_RUNS:,}); check the sweep, "
                "or pass --yes to launch them all",
            )
        todo = ex.expand(
            name,
            root,
            smoke=launch.smoke,
            datasets=select.datasets,
            seeds=select.seeds,
            overrides=list(select.overrides),
        )
        unique = list({run.dir: run for run in todo}.values())  # seed: [0, 0] is one run
        if len(unique) < len(todo):
            echo(
                f"{label}: {len(todo) - len(unique)} sweep point(s) repeat another's settings; "
                "each run is trained once"
            )
            todo = unique
        files = {p.stem: p for p in ex.recipe_paths(name)} if ex.is_recipe_file(name) else None
        ex.check_grid(todo)
        ex.write_grid(root, label, todo, smoke=launch.smoke, recipe_files=files)
        how = replace(launch, pack=ex.settle_pack(root, launch.pack))
        smoke_note = " (SMOKE: synthetic stand-in data)" if launch.smoke else ""
        echo(f"{label}: {len(todo)} runs in {root}{smoke_note}")
        if how.launcher == "slurm":
            outcomes = launch_slurm(todo, how, folder=root / ".submitit")
        else:  # a bar on a terminal, else a line per run
            log = GridLog(len(todo), sys.stderr.isatty())
            try:
                outcomes = launch_local(todo, how, progress=log.progress, on_done=log)
            finally:
                log.close()
        echo(f"{label}: {summary_line(outcomes)}")
        for path in write_report(root, paper=name.startswith("table2"), command=command):
            echo(f"wrote {path}")
        ok &= not any(o in FAILED for o in outcomes.values())
    return ok


def _theory_half(name: str, base: Path, echo: Log) -> bool:
    if name == "theory":
        from softmaso.reporting.theory import check_claims

        return check_claims(json_path=base / "theory.json")
    from softmaso.reporting.figure1 import figure1_spec, write_figure1

    for path in write_figure1(figure1_spec(), base / "figures"):
        echo(f"wrote {path}")
    return True
