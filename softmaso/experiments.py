"""Experiments: recipes with sweeps -> run directories -> launched once each, then reported.

``softmaso reproduce table2`` expands the sweeps of the packaged recipes table2/*.yaml into 90
runs, one directory each, named by its settings
(``results/table2/cifar10/lr-0.001_mode-none_seed-0``); ``softmaso reproduce my.yaml`` does the
same for any recipe with a ``sweep:`` (``results/my/my/...``).
A run is claimed with an exclusive lock (``fcntl.flock`` on ``.lock`` in its directory) before
it trains, so two ``reproduce`` processes on one results directory never train the same run;
the kernel drops the lock when its process dies, so a killed grid leaves no stale lock. A
finished run (result.json) is skipped, an interrupted one resumes from its checkpoint, a
diverged one is reported and not retried.

Launchers: ``local`` runs in this process, in sequence, or one worker process per listed GPU;
``slurm`` submits a submitit job array (each task requeues itself on preemption or timeout
and resumes from its checkpoint). No scheduler of our own: a process pool or SLURM decides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmaso import recipes, runs
from softmaso.config import RunConfig, read_recipe
from softmaso.errors import RunConflict, UserError

EXPERIMENTS = recipes.EXPERIMENTS
GRID = runs.GRID
LOCK = runs.LOCK


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
    if experiment not in EXPERIMENTS:
        raise UserError(
            "EXPERIMENT",
            f"unknown experiment {experiment!r}; one of {', '.join(EXPERIMENTS)}, "
            "or a recipe file with a sweep: (PATH.yaml)",
        )
    return [recipes.path_of(name) for name in EXPERIMENTS[experiment]]


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
    (:data:`EXPERIMENTS`) or a recipe file with a sweep.

    `datasets` keeps only recipes whose file stem is listed; `seeds` replaces the sweep's seed
    list by 0..seeds-1; `overrides` (--set) apply to every run.
    """
    paths = recipe_paths(experiment)
    if datasets:
        known = {p.stem for p in paths}
        for d in datasets:
            if d not in known:
                raise UserError(
                    "--datasets", f"{d!r} is not in {experiment}; one of {', '.join(sorted(known))}"
                )
        paths = [p for p in paths if p.stem in datasets]
    fixed = {key.partition("=")[0].strip() for key in overrides}
    out = []
    for path in paths:
        recipe = read_recipe(path)
        if seeds is not None:
            recipe = _with_seeds(recipe, seeds)
        for settings in recipe.points(fixed):
            cfg = recipe.config(overrides, smoke=smoke, settings=settings)
            out.append(
                Run(recipe.name, settings, cfg, Path(root) / recipe.name / point_name(settings))
            )
    return out


def _with_seeds(recipe, n: int):
    from dataclasses import replace

    if n < 1:
        raise UserError("--runs", f"{n} runs per cell; need at least 1")
    return replace(recipe, sweep={**recipe.sweep, "seed": list(range(n))})


def write_grid(
    root: Path, experiment: str, todo: list[Run], *, smoke: bool, recipe_files=None
) -> None:
    """grid.json: what the experiment expects, so `softmaso table` can show missing runs.

    One results folder holds one experiment: a folder holding another's grid is refused.
    `recipe_files` ({recipe name: file}) is recorded for experiments made from a recipe file.
    """
    root.mkdir(parents=True, exist_ok=True)
    doc = {
        "experiment": experiment,
        "smoke": smoke,
        "created": runs.now(),
        "runs": [
            {"dir": str(r.dir.relative_to(root)), "recipe": r.recipe, "settings": r.settings}
            for r in todo
        ],
    }
    if recipe_files:
        doc["recipe_files"] = {k: str(Path(v).absolute()) for k, v in recipe_files.items()}
    old = runs.read_json(root / GRID)
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
    runs.write_json(root / GRID, doc)


def settle_pack(root: Path, pack: bool | None) -> bool:
    """Whether the grid in `root` packs: `pack` when given, else what its grid.json recorded
    at an earlier launch, else no. The answer is recorded, so a restart (on a loaded machine
    or another device) trains the rest the same way; which runs were packed is in their
    result.json (``packed_with``) and the table counts them."""
    doc = runs.read_json(root / GRID) or {}
    recorded = doc.get("pack")
    settled = bool(pack) if pack is not None else recorded is True
    if recorded != settled:
        runs.write_json(root / GRID, {**doc, "pack": settled})
    return settled


# ------------------------------------------------------------------------------------ locks
claim = runs.claim  # the run directory's lock lives with the run directory


def state(run_dir: Path) -> str:
    """The run's status (:func:`softmaso.runs.status`)."""
    return runs.status(run_dir)[0]


def run_one(run: Run, **kw) -> str:
    """Train one run unless it is done or claimed elsewhere; returns what happened.

    Keywords as :func:`run_unit` (device, data_dir, smoke, progress).
    """
    return run_unit([run], pack=False, **kw)[run.dir]


# -------------------------------------------------------------------------------- packing
AUTO_PACK_DEVICES = ("cuda",)  # where `pack=None` measures; elsewhere (CPUs) it never packs


def _measures_packing(devices: list[str]) -> bool:
    """Whether `pack=None` measures packing on these devices (else it means no packing)."""
    from softmaso.training import resolve_device

    return any(resolve_device(d).type in AUTO_PACK_DEVICES for d in devices)


_decisions: dict[tuple[str, str, int], tuple[bool, str]] = {}


def plan_units(
    todo: list[Run], *, pack: bool | None, size: int = 30, devices: int = 1
) -> list[list[Run]]:
    """Runs grouped into units of work: packs of runs that can share a network, or single runs.

    Runs with the same ``packed_training.pack_key`` form a group (Table 2: the 30 runs of a
    dataset); a group is cut into packs of at most `size` runs, and into at least one pack per
    device where it has the runs, so that every device gets work.
    """
    if pack is False or size < 2:
        return [[run] for run in todo]
    from softmaso.packed_training import pack_key

    groups: dict[str, list[Run]] = {}
    for run in todo:
        groups.setdefault(pack_key(run.cfg), []).append(run)
    units = []
    for group in groups.values():
        n = max(-(-len(group) // size), min(devices, len(group)))  # packs in this group
        per = -(-len(group) // n)
        units += [group[i : i + per] for i in range(0, len(group), per)]
    return units


def decide_pack(
    runs_: list[Run], device: str, data_dir: Path | None = None
) -> tuple[bool, str, Any]:
    """Measure whether packing these runs is faster on `device` (once per shape, size, device).

    The probe is the pack itself: its runs packed against the same runs stepped apart, two
    steps each after a warm-up, so the size that decides is the size that trains. Returns
    (pack?, why, the dataset the probe loaded, on the device; None for a decision made before),
    so that the pack need not load it again.
    """
    from softmaso.bench import pack_speedup
    from softmaso.data import load_data
    from softmaso.packed_training import pack_key
    from softmaso.packing import PACK_MIN_SPEEDUP
    from softmaso.training import resolve_device

    dev = resolve_device(device)
    key = (pack_key(runs_[0].cfg), str(dev), len(runs_))
    data = None
    if key not in _decisions:
        data = load_data(runs_[0].cfg.data, data_dir=data_dir).to(dev)
        got = pack_speedup([r.cfg for r in runs_], dev, data=data)
        yes = got["speedup"] >= PACK_MIN_SPEEDUP
        _decisions[key] = (
            yes,
            f"{'packing' if yes else 'not packing'}: {len(runs_)} runs packed step "
            f"{got['speedup']:.2f}x as fast as apart on {dev} "
            f"({got['packed_images_per_s']:.0f} vs {got['separate_images_per_s']:.0f} images/s; "
            f"threshold {PACK_MIN_SPEEDUP}x)",
        )
    return (*_decisions[key], data)


def check_grid(todo: list[Run]) -> None:
    """RunConflict, before anything trains or is written, if any run directory holds a run
    with another config, finished or not: a grid never skips, nor relabels, a run it would
    not have made. Names the first conflicts and how many there are."""
    from softmaso.training import check_unfinished

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


def _outcome_before(run: Run, log=None) -> str | None:
    """Why a claimed run will not train now (skipped or conflict, whose reason goes to `log`),
    or None if it will."""
    from softmaso.training import check_unfinished

    try:
        check_unfinished(run.cfg, run.dir)  # finished runs too: same config, or a conflict
    except RunConflict as e:
        if log is not None:
            log(f"conflict: {e.message}")
        return "conflict"
    except UserError as e:  # a damaged result.json
        _damaged(log, run.dir.name, e)
        return "damaged"
    before = state(run.dir)
    if before in ("finished", "diverged"):
        return f"skipped-{before}"
    return None


def run_unit(
    unit: list[Run],
    *,
    pack: bool | None = None,
    device: str = "auto",
    data_dir: Path | None = None,
    smoke: bool = False,
    progress=None,
    log=None,
) -> dict[Path, str]:
    """Train the runs of a unit that are neither done nor claimed elsewhere: as one pack
    (``fit_packed``) or one by one (``fit``); `pack` None measures whether packing pays on
    this device. Returns each run's outcome: finished, diverged, busy, skipped-..., conflict."""
    from softmaso.packed_training import fit_packed
    from softmaso.training import fit

    out: dict[Path, str] = {}
    with contextlib.ExitStack() as stack:
        mine = []
        for run in unit:
            if not stack.enter_context(claim(run.dir)):
                out[run.dir] = "busy"
            elif (why := _outcome_before(run, log)) is not None:
                out[run.dir] = why
            else:
                mine.append(run)
        data = None
        if len(mine) > 1 and pack is None:
            if not _measures_packing([device]):
                pack = False  # packing has never been faster on a CPU (softmaso bench)
            else:
                pack, why, data = decide_pack(mine, device, data_dir)
                if log is not None:
                    log(why)
        kw = {"device": device, "data_dir": data_dir, "live": False, "progress": progress}
        kw["quiet"] = True  # the grid logs a line per run; epochs are in each metrics.jsonl
        if len(mine) > 1 and pack:
            cfgs, dirs = [r.cfg for r in mine], [r.dir for r in mine]
            try:
                results = fit_packed(cfgs, dirs, **kw, extra={"smoke": smoke}, data=data)
            except UserError as e:  # a damaged checkpoint of one run: the pack cannot start
                _damaged(log, f"pack of {len(mine)} runs", e)
                out.update({r.dir: "damaged" for r in mine})
            else:
                out.update(
                    {r.dir: str(res["status"]) for r, res in zip(mine, results, strict=True)}
                )
        else:
            del data  # each run loads its own: do not hold a second copy meanwhile
            for run in mine:
                try:
                    res = fit(run.cfg, run.dir, **kw, extra={"smoke": smoke})
                except RunConflict:
                    raise
                except UserError as e:  # damaged run files: this run fails, the grid goes on
                    _damaged(log, run.dir.name, e)
                    out[run.dir] = "damaged"
                else:
                    out[run.dir] = str(res["status"])
    return {run.dir: out[run.dir] for run in unit}


def _damaged(log, what: str, e: UserError) -> None:
    if log is not None:
        log(f"damaged: {what}: {e}")


# -------------------------------------------------------------------------------- launchers
def _pool_init(devices, counter, threads) -> None:
    from softmaso.training import set_threads

    with counter.get_lock():
        i = counter.value
        counter.value += 1
    device = devices[i % len(devices)]
    os.environ["SOFTMASO_WORKER_DEVICE"] = device
    set_threads(threads)
    if device.startswith("cuda:"):  # this worker's GPU is its current device (streams, graphs)
        import torch

        torch.cuda.set_device(torch.device(device))


def _pool_task(unit: list[Run], pack, data_dir, smoke) -> dict[Path, str]:
    device = os.environ["SOFTMASO_WORKER_DEVICE"]
    return run_unit(unit, pack=pack, device=device, data_dir=data_dir, smoke=smoke, log=_stderr)


def _stderr(text: str) -> None:
    import sys

    print(f"[grid] {text}", file=sys.stderr, flush=True)


def launch_local(
    todo: list[Run],
    *,
    devices: list[str] | None,
    pack: bool | None = None,
    pack_size: int = 30,
    data_dir=None,
    smoke=False,
    progress=None,
    on_done=None,
    threads: int | None = None,
) -> dict[Path, str]:
    """In this process, in order; or one worker process per device (one unit per GPU, or per
    listed cpu), each with `threads` CPU threads (None: the cores divided among the workers).

    Units are single runs or packs (:func:`plan_units`); `pack` None decides per pack by
    measuring (:func:`decide_pack`), False never packs.
    """
    if pack is None and not _measures_packing(devices or ["auto"]):
        pack = False  # packing has never been faster on a CPU: one unit per run
    units = plan_units(todo, pack=pack, size=pack_size, devices=len(devices or [None]))
    outcomes: dict[Path, str] = {}

    def record(unit: list[Run], got: dict[Path, str]) -> None:
        for run in unit:
            outcomes[run.dir] = got[run.dir]
            if on_done is not None:
                on_done(run, got[run.dir])

    if not devices or len(devices) == 1:
        from softmaso.training import set_threads

        set_threads(threads)
        device = devices[0] if devices else "auto"
        log = _stderr if progress is None else progress.console.print
        for unit in units:
            got = run_unit(
                unit,
                pack=pack,
                device=device,
                data_dir=data_dir,
                smoke=smoke,
                progress=progress,
                log=log,
            )
            record(unit, got)
        return outcomes
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from softmaso.training import cpu_cores

    if threads is None:
        threads = max(1, cpu_cores() // len(devices))
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    with ProcessPoolExecutor(
        len(devices), mp_context=ctx, initializer=_pool_init, initargs=(devices, counter, threads)
    ) as pool:
        futures = {pool.submit(_pool_task, u, pack, data_dir, smoke): u for u in units}
        for fut in as_completed(futures):
            record(futures[fut], fut.result())
    return outcomes


class SubmititTask:
    """A submitit job: train one unit (a run or a pack); on preemption or timeout, requeue and
    resume from the runs' checkpoints. Packing (`pack` None) is decided on the job's node."""

    def __init__(self, unit: list[Run], data_dir, smoke: bool, pack: bool | None = None):
        self.unit, self.data_dir, self.smoke, self.pack = unit, data_dir, smoke, pack

    def __call__(self) -> dict[Path, str]:
        return run_unit(
            self.unit, pack=self.pack, data_dir=self.data_dir, smoke=self.smoke, log=_stderr
        )

    def checkpoint(self, *args, **kwargs):
        import submitit

        again = SubmititTask(self.unit, self.data_dir, self.smoke, self.pack)
        return submitit.helpers.DelayedSubmission(again)


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
    todo: list[Run],
    *,
    folder: Path,
    cluster: str | None = "slurm",
    partition: str | None = None,
    time_min: int = 24 * 60,
    parallelism: int = 16,
    gpus: int = 1,
    cpus: int = 8,
    data_dir=None,
    smoke=False,
    pack: bool | None = None,
    pack_size: int = 30,
    wait: bool = True,
) -> dict[Path, str]:
    """Submit one job array through submitit, a job per unit (cluster 'debug' or 'local' runs
    it here; None lets submitit choose). UserError, before anything is submitted, where the
    cluster cannot be used (:func:`check_slurm`)."""
    if cluster is not None:
        check_slurm(cluster)
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {
        "timeout_min": time_min,
        "slurm_array_parallelism": parallelism,
        "gpus_per_node": gpus,
        "cpus_per_task": cpus,
        "name": "softmaso",
    }
    if partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    units = plan_units(todo, pack=pack, size=pack_size)  # a job (one GPU) per pack
    with executor.batch():
        jobs = [executor.submit(SubmititTask(unit, data_dir, smoke, pack)) for unit in units]
    out: dict[Path, str] = {}
    for unit, job in zip(units, jobs, strict=True):
        got = job.result() if wait else {r.dir: f"submitted:{job.job_id}" for r in unit}
        out.update(got)
    return {run.dir: out[run.dir] for run in todo}


def summary_line(outcomes: dict[Path, str]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


# ------------------------------------------------------------------------------ the grid
def parse_devices(text: str | None) -> list[str] | None:
    """'0,1' -> ['cuda:0', 'cuda:1'] ('cpu' allowed); UserError for a GPU that is not there."""
    if not text:
        return None
    from softmaso.training import resolve_device

    out = []
    for item in text.split(","):
        item = item.strip()
        spec = f"cuda:{item}" if item.isdigit() else item
        try:
            out.append(str(resolve_device(spec)))
        except UserError as e:
            raise UserError("--devices", e.message) from None
    return out


def run_grid(
    todo: list[Run],
    *,
    launcher: str = "local",
    devices: list[str] | None = None,
    data_dir: Path | None = None,
    smoke: bool = False,
    slurm: dict[str, Any] | None = None,
    live: bool | None = None,
    pack: bool | None = None,
    pack_size: int = 30,
    threads: int | None = None,
) -> dict[Path, str]:
    """Launch every run (finished ones are skipped inside); show the grid's progress.

    `pack`: True packs runs that can share a network, False never, None where measured faster.
    """
    import sys
    import time

    if launcher == "slurm":
        return launch_slurm(
            todo, data_dir=data_dir, smoke=smoke, pack=pack, pack_size=pack_size, **(slurm or {})
        )
    live = sys.stderr.isatty() if live is None else live
    t0, done, failed = time.perf_counter(), [0], [0]
    progress = grid_task = None
    if live:
        from softmaso.training import _new_progress

        progress = _new_progress()
        progress.start()
        grid_task = progress.add_task(f"grid ({len(todo)} runs)", total=len(todo), info="")

    trained = [0]  # runs this launch trained: the ETA counts them, not the skipped ones

    def on_done(run: Run, outcome: str) -> None:
        done[0] += 1
        failed[0] += outcome in ("diverged", "conflict", "damaged")
        trained[0] += outcome in ("finished", "diverged")
        line = f"{done[0]}/{len(todo)} {run.recipe}/{run.dir.name}: {outcome}"
        result = runs.read_json(run.dir / runs.RESULT)
        acc = result.get("final_test_acc") if isinstance(result, dict) else None
        if outcome == "finished" and isinstance(acc, (int, float)):
            line += f", test accuracy {acc:.4f}"
        if trained[0] and done[0] < len(todo):
            eta = (time.perf_counter() - t0) / trained[0] * (len(todo) - done[0])
            line += f"; about {eta / 60:.0f} min left"
        if progress is not None:
            progress.update(grid_task, advance=1, info=f"{failed[0]} failed")
        else:
            print(f"[grid] {line}", file=sys.stderr, flush=True)

    try:
        return launch_local(
            todo,
            devices=devices,
            pack=pack,
            pack_size=pack_size,
            data_dir=data_dir,
            smoke=smoke,
            progress=progress,
            on_done=on_done,
            threads=threads,
        )
    finally:
        if progress is not None:
            progress.stop()


def report(root: Path, *, paper: bool, command: str) -> list[Path]:
    """Write the table (markdown, LaTeX, CSV) and the learning curves of an experiment."""
    from softmaso.reporting import curves, tables

    summary = tables.summarize(tables.collect(root))
    stamp = f"Made by `{command}` at commit {runs.git_commit() or 'unknown'} on {runs.now()}."
    paths = []
    for fmt, ext in (("markdown", "md"), ("latex", "tex"), ("csv", "csv")):
        text = tables.render(summary, fmt, paper=paper)
        if fmt == "markdown":
            text = text.rstrip("\n") + f"\n\n{stamp}\n"
        path = root / f"table.{ext}"
        tables.write_table(text, path)
        paths.append(path)
    with contextlib.suppress(UserError):  # no finished epoch yet: nothing to plot
        paths += curves.plot_curves(root, root / "figures")
    return paths
