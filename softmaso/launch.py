"""A grid, from the recipe to the report: sweeps expanded to runs, grid.json, the runs
trained where asked (this process, local worker processes, or SLURM), then the table.

``softmaso reproduce table2`` expands the sweeps of the packaged recipes table2/*.yaml into 90
runs, one directory each, named by its settings
(``results/table2/cifar10/lr-0.001_mode-none_seed-0``); ``softmaso reproduce my.yaml`` does the
same for any recipe with a ``sweep:`` (``results/my/my/...``). ``grid.json`` at the experiment's
root records the runs it expects, so a table can show the missing ones.

A run is claimed with an exclusive lock (``rundir.claim``) before it trains, so two ``reproduce``
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
import logging
import os
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from softmaso import fill, recipes, rundir
from softmaso.config import RunConfig, read_recipe
from softmaso.errors import RunBusy, RunConflict, UserError
from softmaso.ui import GRID

log = logging.getLogger(__name__)
FAILED = ("diverged", "conflict", "damaged", "failed")  # outcomes that make `reproduce` exit 1


# ------------------------------------------------------- recipes -> runs -> grid.json
@dataclass(frozen=True)
class Run:
    """One point of an experiment: its config, its settings and its directory."""

    recipe: str
    settings: dict[str, Any]
    cfg: RunConfig
    dir: Path


def point_name(settings: dict[str, Any]) -> str:
    """Directory name from the swept settings: {'optim.lr': 0.001, 'seed': 0} -> lr-0.001_seed-0."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in settings.items()]
    return "_".join(parts) or "base"


def is_recipe_file(experiment: str) -> bool:
    """Whether `experiment` names a recipe file (``my.yaml``) rather than a named experiment."""
    return experiment.endswith((".yaml", ".yml"))


def experiment_name(experiment: str) -> str:
    """The results name of an experiment: its own name, or a recipe file's stem."""
    return Path(experiment).stem if is_recipe_file(experiment) else experiment


def recipe_paths(experiment: str) -> list[Path]:
    """The recipe files of a named experiment, or [the file] for a recipe file with a sweep."""
    if is_recipe_file(experiment):
        path = Path(experiment)
        if not path.is_file():
            raise UserError("EXPERIMENT", f"no such recipe file: {path}")
        if not read_recipe(path).sweep:
            raise UserError(
                "EXPERIMENT",
                f"{path} has no sweep: section, so it is one run: use `softmaso train {path}`",
            )
        return [path]
    if experiment not in recipes.EXPERIMENTS:
        raise UserError(
            "EXPERIMENT",
            f"unknown experiment {experiment!r}; use {', '.join(recipes.EXPERIMENTS)}, "
            "figure1, theory, all, or a recipe file with a sweep: (PATH.yaml)",
        )
    return [recipes.path_of(name) for name in recipes.EXPERIMENTS[experiment]]


def expand(
    experiment: str,
    root: Path,
    *,
    smoke: bool = False,
    datasets: list[str] | None = None,
    seeds: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> list[Run]:
    """The runs of an experiment (one per sweep point of each of its recipes): a named one
    (``recipes.EXPERIMENTS``) or a recipe file with a sweep.

    `datasets` keeps only recipes whose file stem is listed; `seeds` replaces the sweep's seed
    list by 0..seeds-1; `overrides` (--set) apply to every run.
    """
    out = []
    fixed = _fixed(overrides)
    for recipe in _recipes(experiment, datasets, seeds):
        for settings in recipe.points(fixed):
            cfg = recipe.config(overrides, smoke=smoke, settings=settings)
            out.append(
                Run(recipe.name, settings, cfg, Path(root) / recipe.name / point_name(settings))
            )
    return out


def grid_size(
    experiment: str,
    *,
    datasets: list[str] | None = None,
    seeds: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> int:
    """How many runs :func:`expand` would make (sweep points, repeats included), counted from
    the sweeps' lengths without building a config: cheap for any sweep."""
    import math

    fixed = _fixed(overrides)
    return sum(
        math.prod(len(r.sweep[k]) for k in r.sweep if k not in fixed)
        for r in _recipes(experiment, datasets, seeds)
    )


def _fixed(overrides) -> set[str]:
    """The keys --set gives every run: not swept."""
    return {key.partition("=")[0].strip() for key in overrides}


def _recipes(experiment: str, datasets: list[str] | None, seeds: int | None) -> list:
    """The experiment's recipes that `datasets` keeps (by file stem; UserError for one it does
    not have), each with its seed list replaced by 0..seeds-1 when `seeds` is given."""
    paths = recipe_paths(experiment)
    if datasets:
        known = {p.stem for p in paths}
        for d in datasets:
            if d not in known:
                raise UserError(
                    "--datasets", f"{d!r} is not in {experiment}; one of {', '.join(sorted(known))}"
                )
        paths = [p for p in paths if p.stem in datasets]
    read = [read_recipe(path) for path in paths]
    return read if seeds is None else [_with_seeds(r, seeds) for r in read]


def _with_seeds(recipe, n: int):
    if n < 1:
        raise UserError("--runs", f"{n} runs per cell; need at least 1")
    return replace(recipe, sweep={**recipe.sweep, "seed": list(range(n))})


def write_grid(
    root: Path, experiment: str, todo: list[Run], *, smoke: bool, recipe_files=None
) -> None:
    """grid.json: what the experiment expects (each run's directory, settings and resolved
    config), so `softmaso table` can show missing runs without reading the recipes.

    One results folder holds one experiment: a folder holding another's grid is refused.
    `recipe_files` ({recipe name: file}) is recorded for experiments made from a recipe file.
    """
    root.mkdir(parents=True, exist_ok=True)
    doc = {
        "experiment": experiment,
        "smoke": smoke,
        "created": rundir.now(),
        "runs": [
            {
                "dir": str(r.dir.relative_to(root)),
                "recipe": r.recipe,
                "settings": r.settings,
                "config": r.cfg.to_dict(),
            }
            for r in todo
        ],
    }
    if recipe_files:
        doc["recipe_files"] = {k: str(Path(v).absolute()) for k, v in recipe_files.items()}
    old = rundir.read_grid(root)
    if old is not None and "smoke" not in old:
        raise UserError(
            str(root / rundir.GRID),
            "has no 'smoke' key, so whether it holds smoke or real runs is unknown; remove it, "
            "or choose another results folder",
        )
    if old and old.get("experiment") != experiment:
        raise UserError(
            "--results",
            f"{root} holds the grid of experiment {old.get('experiment')!r}, not {experiment!r}; "
            "give each experiment its own results folder",
        )
    if old and old.get("smoke") != smoke:
        kind = "smoke" if old.get("smoke") else "real"
        raise UserError("--results", f"{root} holds {kind} runs; keep smoke and real results apart")
    if old and old.get("experiment") == experiment:  # keep runs of earlier, partial invocations
        new_dirs = {r["dir"] for r in doc["runs"]}
        doc["runs"] = [r for r in old.get("runs", []) if r["dir"] not in new_dirs] + doc["runs"]
        if doc["runs"] == old.get("runs"):
            return
        # what the first launch recorded stays: its date, the pack choice, recipe files
        doc = {**old, **doc, "created": old.get("created", doc["created"])}
        if recipe_files or old.get("recipe_files"):
            doc["recipe_files"] = {**old.get("recipe_files", {}), **doc.get("recipe_files", {})}
    rundir.write_json(root / rundir.GRID, doc)


def check_grid(todo: list[Run]) -> None:
    """RunConflict, before anything trains or is written, if any run directory holds a run
    with another config, finished or not: a grid never skips, nor relabels, a run it would
    not have made. Names the first conflicts and how many there are."""
    from softmaso.rundir import check_unfinished

    conflicts = []
    for run in todo:
        try:
            check_unfinished(run.cfg, run.dir)
        except RunConflict as e:
            conflicts.append(e.message)
        except UserError:  # damaged run files: that run fails when its turn comes
            pass
    if conflicts:
        more = f" (and {len(conflicts) - 1} more runs like it)" if len(conflicts) > 1 else ""
        raise RunConflict("--results", f"{conflicts[0]}{more}")


def plan_line(todo: list[Run], *, at_once: int = 1) -> str:
    """What a grid is about to do, said before it trains: "N runs to train (M finished
    already), about T", T from the seconds per epoch of its finished runs (their result.json's
    wall_seconds over epochs) times the epochs left, shared by `at_once` runs training together;
    unknown, and said so, until a run of the grid has finished (a run's speed depends on the
    machine, its load and the model far too much to guess it from the recipe)."""
    left = ended = diverged = 0
    epochs_left, seconds, epochs_done = 0, 0.0, 0
    for run in todo:
        state, result, _ = rundir.status(run.dir)
        if state == "finished":
            seconds += result.get("wall_seconds") or 0.0
            epochs_done += result.get("epochs") or 0
        done = result.get("epochs", 0) if result else len(rundir.read_metrics(run.dir))
        if state == "diverged" or (state == "finished" and done >= run.cfg.train.epochs):
            ended += 1
            diverged += state == "diverged"
            continue
        left += 1
        epochs_left += max(run.cfg.train.epochs - done, 0)
    also = f"{ended - diverged} finished" + (f", {diverged} diverged" if diverged else "")
    line = f"{left} run{'s' if left != 1 else ''} to train ({also} already)"
    if not left:
        return line
    if not seconds or not epochs_done:
        return f"{line}, time unknown until the first run ends"
    total = seconds / epochs_done * epochs_left / max(at_once, 1)
    shown = f"{total:.0f} s" if total < 90 else f"{total / 60:.0f} min"
    shown = f"{total / 3600:.1f} h" if total >= 90 * 60 else shown
    return f"{line}, about {shown} ({seconds / epochs_done:.1f} s per epoch so far)"


@dataclass(frozen=True)
class Slurm:
    """A SLURM job array's settings (``--slurm-*``)."""

    PARALLELISM: ClassVar[int] = 16  # tasks of an array running at once, on SLURM [ours]

    cluster: str = "slurm"  # submitit's cluster: slurm, or local/debug to test without SLURM
    partition: str | None = None
    time_min: int = 24 * 60  # minutes per job
    parallelism: int | None = None  # None: PARALLELISM on SLURM, the cores / threads on local
    gpus: int = 1
    cpus: int = 8
    wait: bool = True  # False (--no-wait): submit the array and return

    def __post_init__(self):
        if self.time_min < 1:
            raise UserError("--slurm-time", f"{self.time_min}; a job needs at least 1 minute")
        if self.parallelism is not None and self.parallelism < 1:
            raise UserError("--slurm-parallelism", f"{self.parallelism}; use 1 or more")
        if not self.wait and self.cluster != "slurm":
            raise UserError(
                "--no-wait",
                f"the {self.cluster!r} cluster runs its jobs under this process; "
                "--no-wait needs --slurm-cluster slurm",
            )


@dataclass(frozen=True)
class Launch:
    """How to train a grid's runs: launcher, devices, threads, packing, data, smoke."""

    launcher: str = "local"  # local or slurm
    devices: tuple[str, ...] = ()  # local worker processes, one per entry; () = this process
    threads: int | None = None  # CPU threads per process (None: the cores shared out)
    pack: bool | None = None  # None: as grid.json recorded, else measured on CUDA (fill.py)
    pack_size: int = 30
    data_dir: Path | None = None
    smoke: bool = False
    slurm: Slurm = field(default_factory=Slurm)

    def __post_init__(self):
        if self.launcher not in ("local", "slurm"):
            raise UserError("--launcher", f"{self.launcher!r}; use local or slurm")
        if self.launcher == "local" and not self.slurm.wait:
            raise UserError("--no-wait", "a local grid runs in this process; use --launcher slurm")


# ------------------------------------------------------------------------------- one unit
def train_unit(
    unit: list[Run],
    launch: Launch,
    device: str = "auto",
) -> dict[Path, str]:
    """Train a unit's runs one by one (:func:`softmaso.training.fit`, which takes each run's
    lock and checks its directory once, under the lock), or a unit that packing planned as one
    pack (:func:`softmaso.packed_training.train_pack`). Each run's outcome: finished, diverged,
    busy, skipped-finished, skipped-diverged, conflict, damaged or failed (training raised:
    error.txt says why, and the others go on)."""
    if len(unit) > 1:  # only packing plans units of several runs
        from softmaso.packed_training import train_pack

        try:
            packed = train_pack(unit, device, data_dir=launch.data_dir, smoke=launch.smoke)
        except Exception as e:  # out of memory in the pack: its runs fail, the grid goes on
            return fail_unit(unit, e)
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
                extra={"smoke": launch.smoke},
            )
            skipped = "skipped-" if result.get("skipped") else ""
            out[run.dir] = f"{skipped}{result['status']}"
        except RunBusy:
            out[run.dir] = "busy"
        except RunConflict as e:
            log.warning(f"conflict: {e.message}", extra=GRID)
            out[run.dir] = "conflict"
        except UserError as e:  # damaged run files: this run fails, the grid goes on
            log.warning(f"damaged: {run.dir.name}: {e}", extra=GRID)
            rundir.record_error(run.dir, str(e), damaged=True)  # the table then says damaged too
            out[run.dir] = "damaged"
        except Exception as e:  # out of memory, a CUDA error, a full disk: the others go on
            out.update(fail_unit([run], e))
    return out


def _last_line(e: BaseException) -> str:
    """The last non-empty line of an error's message (sbatch's own complaint comes last)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def fail_unit(unit: list[Run], why: str | BaseException) -> dict[Path, str]:
    """Record each run of `unit` failed: why (a message, or an exception's traceback) in its
    error.txt (the run stays resumable from its last checkpoint) and one line each logged;
    their outcomes, "failed"."""
    if isinstance(why, BaseException):
        why = "".join(traceback.format_exception(why))
    last = why.strip().splitlines()[-1] if why.strip() else "no message"
    for run in unit:
        rundir.record_error(run.dir, why)
        where = run.dir / rundir.ERROR
        log.error(f"failed: {run.dir.name}: {last} (details: {where}; rerun to resume)", extra=GRID)
    return {run.dir: "failed" for run in unit}


# ---------------------------------------------------------------------------------- local
_worker_device = "auto"  # a pool worker's device, set once by its initializer
_worker_news = None  # the queue a worker tells its parent on: (pid, unit index or None)
_worker_stop = None  # set by the parent when the grid stops: queued units are not started


def _pool_init(devices, counter, threads: int | None, news, stop, parent: int, level: int):
    """A pool worker takes the next device of the list and its share of the CPU threads, tells
    the parent its pid, stops its run on SIGTERM as on Ctrl-C (resumable), and ends itself when
    the parent process is gone. It logs as the parent does, a run's epochs only at DEBUG."""
    global _worker_device, _worker_news, _worker_stop
    from softmaso import ui
    from softmaso.devices import set_threads

    ui.setup_logging(level)
    if level > logging.DEBUG:
        logging.getLogger(ui.EPOCHS).setLevel(logging.WARNING)

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


def _pool_task(i: int, unit: list[Run], launch: Launch) -> dict[Path, str] | None:
    if _worker_stop.is_set():  # queued before the grid was stopped
        return None
    _worker_news.put((os.getpid(), i))  # the parent's record of what each worker trains
    return train_unit(unit, launch, _worker_device)


def launch_local(todo: list[Run], launch: Launch) -> dict[Path, str]:
    """In this process, in order; or one worker process per device (one unit per GPU, or per
    listed cpu), each with ``launch.threads`` CPU threads (None: the cores shared out). A
    line per run as it ends (:class:`GridProgress`).

    Units are single runs, or packs where ``launch.pack`` (``packed_training.plan_units``)."""
    devices = launch.devices
    units = [[run] for run in todo]
    if launch.pack:
        from softmaso.packed_training import plan_units

        units = plan_units(todo, pack=True, size=launch.pack_size, devices=len(devices) or 1)
    outcomes: dict[Path, str] = {}
    grid = GridProgress(len(todo))

    def record(unit: list[Run], got: dict[Path, str]) -> None:
        for run in unit:
            outcomes[run.dir] = got[run.dir]
            grid.done(run, got[run.dir])

    if len(devices) <= 1:
        from softmaso.devices import set_threads
        from softmaso.ui import epoch_lines

        set_threads(launch.threads)
        with epoch_lines():
            for unit in units:
                record(unit, train_unit(unit, launch, *devices))
    else:
        _pool(units, launch, record)
    grid.close()
    return outcomes


DIED = "the worker process training it died (killed by a signal: out of memory?)"


def _pool(units: list[list[Run]], launch: Launch, record) -> None:
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
    from softmaso.ui import log_level

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
    todo: dict[int, list[Run]] = dict(enumerate(units))
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
            initargs=(launch.devices, counter, threads, news, stop, os.getpid(), log_level()),
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
                    got = fail_unit(todo[i], e)
                record(todo.pop(i), got)
                doing.pop(i, None)
                drain()
        except BrokenProcessPool:
            drain()  # who was training what when the pool broke
            if alone:  # it killed its own worker again: that unit fails, the grid goes on
                unit = todo.pop(suspects[0])
                record(unit, fail_unit(unit, DIED))
            else:
                suspects = [i for i in doing if i in todo]
                idle_breaks = 0 if suspects else idle_breaks + 1
                log.warning(
                    f"a worker process died; retrying the {len(suspects)} unit(s) being "
                    "trained then, one at a time, then the rest",
                    extra=GRID,
                )
                if idle_breaks >= 2:  # workers that die before they train anything
                    for unit in todo.values():
                        record(unit, fail_unit(unit, DIED))
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
    resume from the runs' checkpoints. A unit of several runs is a pack (``--pack``).

    In a process of its own (a SLURM or a local job) it uses ``launch.threads`` CPU threads,
    else the CPUs SLURM gave the task, and logs as the command line does. SIGTERM, which SLURM
    sends on `scancel`, `scontrol requeue`, a preemption and at the time limit (before SIGKILL,
    ``KillWait`` later), stops the run as Ctrl-C does: fit leaves it at its last checkpoint (the
    last epoch boundary) and the job exits without a result, so a requeued job resumes there and
    a cancelled one is reported failed (:func:`launch_slurm`). Submitit's own signal (USR2,
    ``signal_delay_s`` before the time limit or a preemption) calls :meth:`checkpoint`, which
    requeues this same task, and stops the run the same way (SystemExit)."""

    def __init__(self, unit: list[Run], launch: Launch):
        self.unit, self.launch = unit, launch

    def __call__(self) -> dict[Path, str]:
        from softmaso.errors import Terminated

        if self.launch.slurm.cluster == "debug":  # in the submitting process: leave it be
            return train_unit(self.unit, self.launch)
        _job_process(self.launch)
        try:
            return train_unit(self.unit, self.launch)
        except Terminated:
            log.warning(
                "stopped by SIGTERM (scancel, requeue, preemption or time limit): the runs "
                "resume from their last checkpoint when requeued or relaunched",
                extra=GRID,
            )
            raise SystemExit(Terminated.exit_code) from None  # no result: not an ended task

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititTask(self.unit, self.launch))


def _job_process(launch: Launch) -> None:
    """A job's process: its logging, its CPU threads, and SIGTERM raising Terminated."""
    from softmaso import ui
    from softmaso.devices import cpu_cores, set_threads
    from softmaso.errors import catch_stops

    ui.setup_logging()
    threads = launch.threads or int(os.environ.get("SLURM_CPUS_PER_TASK") or 0)
    set_threads(min(threads, cpu_cores()) if threads else None)
    catch_stops()  # SIGTERM raises Terminated, as in the CLI: over submitit's, which only logs it


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


def launch_slurm(todo: list[Run], launch: Launch, *, folder: Path) -> dict[Path, str]:
    """Submit the runs through submitit, a job per unit, and wait for them (a line per run as it
    ends): on 'slurm' one job array, at most ``parallelism`` tasks at once; on 'local' jobs in
    processes here, ``parallelism`` at a time (default: the cores / threads); on 'debug', one
    after another in this process. A job that ends without a result (cancelled, killed, its
    node lost) fails its runs (error.txt) and the others go on. With ``slurm.wait`` False, the
    array is submitted and its runs' outcomes are "submitted". UserError, before anything is
    submitted, where the cluster cannot be used (:func:`check_slurm`)."""
    s = launch.slurm
    check_slurm(s.cluster)
    from softmaso.packed_training import plan_units

    grid, out = GridProgress(len(todo)), _ended(todo)
    for run in todo:
        if run.dir in out:
            grid.done(run, out[run.dir])
    left = [run for run in todo if run.dir not in out]
    if not left:
        grid.close()
        return out
    units = plan_units(left, pack=launch.pack, size=launch.pack_size)  # a job (one GPU) per pack
    launch = _settle_parallelism(launch)
    executor = _executor(launch.slurm, folder)

    def record(unit: list[Run], job, got: dict[Path, str] | None, why: str = "") -> None:
        if got is None:  # it ended without a result, or with submitit's error
            got = fail_unit(unit, f"SLURM job {job.job_id} failed: {why}")
        for run in unit:
            out[run.dir] = got[run.dir]
            grid.done(run, got[run.dir])

    if s.cluster == "local":
        _run_local(executor, units, launch, record)
    else:
        jobs = _submit(executor, units, launch)
        array = jobs[0].job_id.split("_")[0]
        if s.cluster == "slurm":
            log.info(
                f"submitted SLURM job array {array}: {len(jobs)} task(s), at most "
                f"{launch.slurm.parallelism} at once; their logs: {folder}",
                extra=GRID,
            )
        if not s.wait:
            log.info(
                f"not waiting (--no-wait): `squeue -j {array}` shows the array; "
                f"`softmaso table {folder.parent}` reports the runs, and the same reproduce "
                "command again relaunches what is missing",
                extra=GRID,
            )
            grid.close()
            return {run.dir: out.get(run.dir, "submitted") for run in todo}
        for i, got, why in _results(jobs, poll=s.cluster == "slurm"):
            record(units[i], jobs[i], got, why)
    grid.close()
    return {run.dir: out[run.dir] for run in todo}


def _ended(todo: list[Run]) -> dict[Path, str]:
    """{run dir: skipped-finished or skipped-diverged} of the runs that have ended, which get
    no job (on a cluster, it would wait in the queue only to skip them)."""
    out = {}
    for run in todo:
        try:
            done = rundir.check_unfinished(run.cfg, run.dir)
        except UserError:  # another's directory, a damaged result: its job reports it
            continue
        if done:
            out[run.dir] = f"skipped-{done['status']}"
    return out


def _settle_parallelism(launch: Launch) -> Launch:
    """The jobs running at once (``parallelism``: on SLURM, default ``Slurm.PARALLELISM``; on
    'local', default the cores / threads) and, on 'local', each one's threads (``threads``,
    default its share of the cores)."""
    from softmaso.devices import cpu_cores

    if launch.slurm.cluster != "local":
        n = launch.slurm.parallelism or Slurm.PARALLELISM
        return replace(launch, slurm=replace(launch.slurm, parallelism=n))
    cores = cpu_cores()
    n = launch.slurm.parallelism or max(1, cores // (launch.threads or 1))
    threads = launch.threads or max(1, cores // n)
    return replace(launch, threads=threads, slurm=replace(launch.slurm, parallelism=n))


def _executor(s: Slurm, folder: Path):
    import submitit

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
    return executor


def _submit(executor, units: list[list[Run]], launch: Launch, batch: bool = True) -> list:
    """Submitit's jobs for `units` (one job array if `batch`); sbatch's refusal as UserError."""
    try:  # submitit prints sbatch's complaint itself: it is in the one line below instead
        with contextlib.redirect_stderr(io.StringIO()):
            if not batch:
                return [executor.submit(SubmititTask(unit, launch)) for unit in units]
            with executor.batch():
                jobs = [executor.submit(SubmititTask(unit, launch)) for unit in units]
            return jobs
    except Exception as e:  # sbatch there, but no controller answering, a bad partition, ...
        raise UserError(
            "--launcher slurm", f"SLURM refused the job array: {_last_line(e)}"
        ) from None


def _run_local(executor, units: list[list[Run]], launch: Launch, record) -> None:
    """Cluster 'local': at most ``parallelism`` jobs running, the next submitted as one ends."""
    queue, running = list(range(len(units))), {}
    while queue or running:
        while queue and len(running) < launch.slurm.parallelism:
            i = queue.pop(0)
            running[i] = _submit(executor, [units[i]], launch, batch=False)[0]
        for i in [i for i, job in running.items() if job.done()]:
            job = running.pop(i)
            record(units[i], job, *_result(job))
        time.sleep(0.2)


def _result(job) -> tuple[dict[Path, str] | None, str]:
    """(the task's outcomes, "") or (None, why it has none: submitit's error, its last line)."""
    try:
        return job.result(), ""
    except Exception as e:  # the task raised, or died (killed, out of memory, node failure)
        return None, str(e)


SLURM_ACTIVE = (  # squeue's states of a task that may still produce a result
    *("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING"),
    *("REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "STAGE_OUT", "PREEMPTED"),
)
RESULT_GRACE_S = 15.0  # how long a completed task may take to show its result file (NFS)


def _results(jobs: list, *, poll: bool):
    """(index, outcomes or None, why) of each job as it ends.

    Not through submitit's ``job.result()`` on SLURM: that asks sacct, which a cluster without
    accounting refuses, and then waits forever for a job that was cancelled or killed before it
    wrote its result. A task has ended once its result file is there, or once squeue says it
    left the queue (or forgot it) and no result came within ``RESULT_GRACE_S``."""
    if not poll:
        for i, job in enumerate(jobs):
            yield i, *_result(job)
        return
    todo, ended, t0, last_poll = set(range(len(jobs))), {}, time.monotonic(), -1e9
    while todo:
        now = time.monotonic()
        if now - last_poll >= min(30.0, 2.0 + (now - t0) / 10):  # squeue: seldom, as grids last
            states, last_poll = _squeue({job.job_id.split("_")[0] for job in jobs}), now
            for i in todo if states is not None else ():
                state = states.get(jobs[i].job_id, "gone from the queue")
                if state in SLURM_ACTIVE:
                    ended.pop(i, None)  # requeued
                else:
                    ended.setdefault(i, (now, state))
        for i in sorted(todo):
            job = jobs[i]
            if job.paths.result_pickle.exists():
                todo.discard(i)
                yield i, *_result(job)
            elif i in ended and now - ended[i][0] > _grace(ended[i][1]):
                todo.discard(i)
                why = f"it ended {ended[i][1]} without a result (cancelled, killed or its node"
                yield i, None, f"{why} lost); its log: {job.paths.stderr}"
        time.sleep(1.0)


def _grace(state: str) -> float:
    """Seconds to wait for the result of a task squeue says ended in `state`: one that was
    cancelled or killed has none to write, nor has one squeue forgot long ago."""
    return RESULT_GRACE_S if state == "COMPLETED" else RESULT_GRACE_S / 3


def _squeue(arrays: set[str]) -> dict[str, str] | None:
    """{task id ('123_4'): state} of the tasks squeue still shows of these job arrays; None
    where squeue cannot answer now (a busy controller: ask again later)."""
    import subprocess

    cmd = ["squeue", "--noheader", "--array", "--states=all", "--format=%i %T"]
    try:
        done = subprocess.run(
            [*cmd, "--jobs", ",".join(sorted(arrays))], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:  # every id forgotten (MinJobAge passed) is an error to squeue
        return {} if "Invalid job id" in done.stderr else None
    return dict(line.split()[:2] for line in done.stdout.splitlines() if len(line.split()) >= 2)


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


class GridProgress:
    """A grid's progress: a line of the bar where one is shown, else a log line per run with
    its accuracy and the time left (estimated from the runs this launch trained, not the
    skipped ones)."""

    def __init__(self, total: int):
        from softmaso.ui import Task

        self.total, self.t0 = total, time.perf_counter()
        self.ended = self.failed = self.trained = 0
        self.bar = Task(f"grid ({total} runs)", total=total)

    def done(self, run: Run, outcome: str) -> None:
        self.ended += 1
        self.failed += outcome in FAILED
        self.trained += outcome in ("finished", "diverged")
        if self.bar.shown:
            self.bar.advance()
            self.bar.note(f"{self.failed} failed")
            return
        line = f"{self.ended}/{self.total} {run.recipe}/{run.dir.name}: {outcome}"
        result = rundir.read_json(run.dir / rundir.RESULT)
        acc = result.get("final_test_acc") if isinstance(result, dict) else None
        if outcome == "finished" and isinstance(acc, (int, float)):
            line += f", test accuracy {acc:.4f}"
        if self.trained and self.ended < self.total:
            eta = (time.perf_counter() - self.t0) / self.trained * (self.total - self.ended)
            line += f"; about {eta:.0f} s left" if eta < 90 else f"; about {eta / 60:.0f} min left"
        log.info(line, extra=GRID)

    def close(self) -> None:
        self.bar.close()


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
    if experiment == "all":
        return [*NOT_GRIDS, *recipes.EXPERIMENTS]
    if experiment not in NOT_GRIDS:
        recipe_paths(experiment)  # the one "unknown experiment" error
    return [experiment]


def reproduce(
    names: list[str],
    launch: Launch,
    select: Selection,
    *,
    results: Path | None,
    command: str,
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
            ok &= _theory_half(name, base)
            continue
        label = experiment_name(name)
        root = results if results and len(names) == 1 else base / label
        size = grid_size(
            name, datasets=select.datasets, seeds=select.seeds, overrides=select.overrides
        )
        if size > MAX_RUNS and not select.large:  # before 10,000 configs are built
            raise UserError(
                "--yes",
                f"{label} sweeps {size:,} runs (more than {MAX_RUNS:,}); check the sweep, "
                "or pass --yes to launch them all",
            )
        todo = expand(
            name,
            root,
            smoke=launch.smoke,
            datasets=select.datasets,
            seeds=select.seeds,
            overrides=list(select.overrides),
        )
        unique = list({run.dir: run for run in todo}.values())  # seed: [0, 0] is one run
        if len(unique) < len(todo):
            log.info(
                f"{label}: {len(todo) - len(unique)} sweep point(s) repeat another's settings; "
                "each run is trained once"
            )
            todo = unique
        todo = _device_defaults(todo, how_fast(launch))
        files = {p.stem: p for p in recipe_paths(name)} if is_recipe_file(name) else None
        check_grid(todo)
        with _grid_lock(root):  # two launches of one grid: the second follows the first's fill
            write_grid(root, label, todo, smoke=launch.smoke, recipe_files=files)
            how = fill.settle(root, todo, launch)
        smoke_note = " (SMOKE: synthetic stand-in data)" if launch.smoke else ""
        slurm_at_once = how.slurm.parallelism or Slurm.PARALLELISM
        at_once = max(len(how.devices), 1) if how.launcher == "local" else slurm_at_once
        plan = plan_line(todo, at_once=at_once)
        log.info(f"{label}: {plan}, in {root}{smoke_note}")
        if how.launcher == "slurm":
            outcomes = launch_slurm(todo, how, folder=root / ".submitit")
        else:
            outcomes = launch_local(todo, how)
        log.info(f"{label}: {summary_line(outcomes)}")
        for path in write_report(root, paper=name.startswith("table2"), command=command):
            log.info(f"wrote {path}")
        ok &= not any(o in FAILED for o in outcomes.values())
    return ok


@contextlib.contextmanager
def _grid_lock(root: Path):
    """Hold the grid folder's lock (:func:`softmaso.rundir.claim` on it) for the block, waiting
    while another launch of the same grid writes its grid.json or measures its fill."""
    said = False
    while True:
        with rundir.claim(root) as mine:
            if mine:
                yield
                return
        if not said:
            who = ""
            for path in (root / rundir.LOCK, root / rundir.HELD):
                with contextlib.suppress(OSError):  # released meanwhile
                    who = f" ({path}: {path.read_text(errors='replace').strip()})"
                    break
            log.info(
                f"waiting for another launch of {root} to settle its grid.json{who}; if none "
                "is running, remove that lock file",
                extra=GRID,
            )
            said = True
        time.sleep(1.0)


def how_fast(launch: Launch) -> str:
    """The device type a grid's runs will train on, for their defaults: what SLURM's jobs get
    (--slurm-gpus); cuda where a listed local worker device is a GPU (a mixed list: the GPU's
    defaults for all, and the CPU workers compile too, slower to start); else this machine's
    (submitit's local and debug clusters run here, on its default device)."""
    if launch.launcher == "slurm" and launch.slurm.cluster == "slurm":
        return "cuda" if launch.slurm.gpus > 0 else "cpu"
    if launch.devices and launch.launcher == "local":
        return "cuda" if any(d.startswith("cuda") for d in launch.devices) else "cpu"
    from softmaso.devices import resolve_device

    return resolve_device("auto").type


def _device_defaults(todo: list[Run], device_type: str) -> list[Run]:
    """Each run's config with the device's defaults (:func:`softmaso.training.device_defaults`),
    a started run keeping what it started with."""
    import torch

    from softmaso.training import device_defaults

    device = torch.device(device_type)
    return [
        replace(run, cfg=device_defaults(run.cfg, device, rundir.saved_config(run.dir)[1]))
        for run in todo
    ]


def _theory_half(name: str, base: Path) -> bool:
    if name == "theory":
        from softmaso.reporting.claims import check_claims

        return check_claims(json_path=base / "theory.json")
    from softmaso.reporting.figure1 import figure1_spec, write_figure1

    for path in write_figure1(figure1_spec(), base / "figures"):
        log.info(f"wrote {path}")
    return True
