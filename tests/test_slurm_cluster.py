"""`softmaso reproduce --launcher slurm` against a real SLURM cluster: a job array, a requeued
task, a cancelled array, failed tasks.

Skipped unless SOFTMASO_SLURM=1 and sinfo answers: `make slurm-test` starts a one-node cluster
(scripts/slurm-cluster.sh), runs these, and stops it. Each grid is a tiny synthetic recipe
trained with one thread per task; the jobs ask no GPU and one CPU each.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import metric_rows

from softmaso import launch, rundir

SLURM_DIR = Path(os.environ.get("SOFTMASO_SLURM_DIR", "/tmp/softmaso-slurm"))


def _why_skip() -> str | None:
    if os.environ.get("SOFTMASO_SLURM") != "1":
        return "real-SLURM tests: run `make slurm-test` (or set SOFTMASO_SLURM=1 with a cluster up)"
    os.environ.setdefault("SLURM_CONF", str(SLURM_DIR / "slurm.conf"))
    try:
        subprocess.run(["sinfo"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        conf = os.environ["SLURM_CONF"]
        return f"SOFTMASO_SLURM=1 but sinfo does not answer (SLURM_CONF={conf}): start a cluster"
    return None


WHY_SKIP = _why_skip()
pytestmark = pytest.mark.skipif(WHY_SKIP is not None, reason=WHY_SKIP or "")

TINY = """data: {name: synthetic, synthetic_train: 100}
model: {width: 0.0625}
optim: {batch_size: 50}
train: {epochs: 2}
sweep: {seed: [0, 1, 2]}
"""
# about 1 s an epoch on one thread (60 steps of 50 images): long enough to stop one midway
SLOW = """data: {name: synthetic, synthetic_train: 3000}
model: {width: 0.0625}
optim: {batch_size: 50}
train: {epochs: 3}
sweep: {seed: SEEDS}
"""
JOBS = ["--slurm-gpus", "0", "--slurm-cpus", "1", "--threads", "1", "--slurm-time", "10"]


def _recipe(tmp_path: Path, text: str, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _reproduce(recipe: Path, results: Path, *extra: str, wait: bool = True):
    """`softmaso reproduce RECIPE --launcher slurm` in a process of its own: its CompletedProcess,
    or with wait=False the Popen."""
    cmd = [sys.executable, "-m", "softmaso", "reproduce", str(recipe), "--launcher", "slurm"]
    cmd += [*JOBS, "--results", str(results), *extra]
    kw = {"capture_output": True, "text": True, "env": {**os.environ, "OMP_NUM_THREADS": "1"}}
    if wait:
        return subprocess.run(cmd, timeout=240, **kw)
    kw["stdout"] = kw["stderr"] = subprocess.PIPE
    del kw["capture_output"]
    return subprocess.Popen(cmd, **kw)


def _until(test, what: str, timeout: float = 120.0):
    t0 = time.monotonic()
    while not (got := test()):
        assert time.monotonic() - t0 < timeout, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)
    return got


def _tasks(results: Path) -> list[str]:
    """The SLURM task ids of the grid's jobs, in submission order (the grid's run order)."""
    found = (results / ".submitit").glob("*_submitted.pkl")
    ids = [p.name.removesuffix("_submitted.pkl") for p in found]
    return sorted(ids, key=lambda i: [int(x) for x in i.split("_")])


def _active(task: str) -> bool:
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i", "--jobs", task.split("_")[0]],
        capture_output=True,
        text=True,
    ).stdout.split()
    return task in out


def _starts(results: Path, task: str) -> int:
    """How many times the task's process started (submitit logs each start)."""
    log = results / ".submitit" / f"{task}_0_log.out"
    return log.read_text().count("Starting with JobEnvironment") if log.exists() else 0


def _epochs(run_dir: Path) -> list[int]:
    lines = (run_dir / rundir.METRICS).read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def _status(run_dir: Path) -> str | None:
    result = rundir.read_json(run_dir / rundir.RESULT)
    return result.get("status") if isinstance(result, dict) else None


def test_array_runs_each_once_without_waiting_then_reports(tmp_path):
    """--no-wait submits the array and returns; every run then finishes exactly once (one
    start per task, one metrics row per epoch); `table` reports them, and reproduce again
    submits nothing."""
    recipe, results = _recipe(tmp_path, TINY), tmp_path / "grid"
    r = _reproduce(recipe, results, "--no-wait")
    assert r.returncode == 0, r.stderr
    assert "submitted SLURM job array" in r.stderr and f"softmaso table {results}" in r.stderr
    assert "3 submitted" in r.stdout + r.stderr
    tasks = _tasks(results)
    assert len(tasks) == 3
    _until(lambda: not any(_active(t) for t in tasks), "the array to end")
    run_dirs = sorted((results / "tiny").iterdir())
    assert [d.name for d in run_dirs] == ["seed-0", "seed-1", "seed-2"]
    for d, task in zip(run_dirs, tasks, strict=True):
        assert _status(d) == "finished" and _epochs(d) == [1, 2]
        assert _starts(results, task) == 1
    table = subprocess.run(
        [sys.executable, "-m", "softmaso", "table", str(results)], capture_output=True, text=True
    )
    assert table.returncode == 0 and "n=3" in table.stdout, table.stdout + table.stderr
    again = _reproduce(recipe, results)
    assert again.returncode == 0, again.stderr
    assert "3 skipped-finished" in again.stdout + again.stderr
    assert "submitted SLURM job array" not in again.stderr and len(_tasks(results)) == 3


def test_requeued_or_signalled_task_resumes_and_matches_an_uninterrupted_run(tmp_path):
    """A task stopped in its second epoch, by `scontrol requeue` (SLURM sends SIGTERM, then
    starts it again) or by submitit's USR2 (what SLURM sends before a time limit or preemption:
    submitit calls checkpoint() and requeues it): the run stops at its last checkpoint, the
    task starts again and resumes there, and the run ends once with the metrics of the same
    run trained without a stop (beside them)."""
    recipe = _recipe(tmp_path, SLOW.replace("SEEDS", "[0]"), "slow")
    grids = {how: tmp_path / how for how in ("requeue", "usr2", "plain")}
    procs = {how: _reproduce(recipe, grids[how], wait=False) for how in ("requeue", "usr2")}
    stops = {"requeue": ["scontrol", "requeue"], "usr2": ["scancel", "--signal=USR2"]}
    t0 = time.monotonic()
    while stops:  # each stopped once its first epoch is written, in its second
        for how in [h for h in stops if (grids[h] / "slow" / "seed-0" / rundir.METRICS).exists()]:
            subprocess.run([*stops.pop(how), _tasks(grids[how])[0]], check=True, timeout=30)
        assert time.monotonic() - t0 < 120, f"waited 120 s for the first epoch of {list(stops)}"
        time.sleep(0.1)
    procs["plain"] = _reproduce(recipe, grids["plain"], wait=False)  # on the CPU they left
    for how, p in procs.items():
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0 and "1 finished" in out + err, f"{how}: {err}"
    plain = metric_rows(grids["plain"] / "slow" / "seed-0")
    for how in ("requeue", "usr2"):
        (task,) = _tasks(grids[how])
        run_dir = grids[how] / "slow" / "seed-0"
        log = (grids[how] / ".submitit" / f"{task}_0_log.err").read_text()
        assert _starts(grids[how], task) == 2 and "resuming after epoch" in log, how
        assert _status(run_dir) == "finished" and _epochs(run_dir) == [1, 2, 3], how
        assert len((run_dir / rundir.LAUNCHES).read_text().splitlines()) == 2, how
        assert metric_rows(run_dir) == plain, how
    requeued = grids["requeue"] / ".submitit" / f"{_tasks(grids['requeue'])[0]}_0_log.err"
    assert "stopped by SIGTERM" in requeued.read_text()


def test_cancelled_array_is_reported_and_reproduce_finishes_what_is_missing(tmp_path):
    """`scancel` of the whole array while it trains: reproduce reports its runs failed (exit 1)
    instead of waiting forever; reproduce again trains what is missing, each run once."""
    recipe = _recipe(tmp_path, SLOW.replace("SEEDS", "[0, 1, 2]"), "slow")
    results = tmp_path / "grid"
    p = _reproduce(recipe, results, wait=False)
    first = results / "slow" / "seed-0"
    _until(lambda: (first / rundir.METRICS).exists(), "the first epoch", timeout=90)
    array = _tasks(results)[0].split("_")[0]
    subprocess.run(["scancel", array], check=True, timeout=30)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert "without a result" in err and "failed" in out + err
    assert _status(first) is None and (first / rundir.CHECKPOINT).exists()  # resumable
    again = _reproduce(recipe, results)
    assert again.returncode == 0, again.stderr
    for seed in range(3):
        d = results / "slow" / f"seed-{seed}"
        assert _status(d) == "finished" and _epochs(d) == [1, 2, 3]
        assert not (d / rundir.ERROR).exists()


def test_failed_tasks_are_reported_while_the_others_finish(tmp_path):
    """A run with a damaged checkpoint (its task reports it) and a task killed (SIGKILL: no
    result) are each recorded with error.txt and named; the third run finishes; exit 1."""

    recipe = _recipe(tmp_path, SLOW.replace("SEEDS", "[0, 1, 2]"), "slow")
    results = tmp_path / "grid"
    damaged = launch.expand(str(recipe), results)[0]
    rundir.open_run(damaged.cfg, damaged.dir, torch.device("cpu"))
    (damaged.dir / rundir.CHECKPOINT).write_bytes(b"PK\x03\x04 not a whole checkpoint")
    p = _reproduce(recipe, results, wait=False)
    killed = results / "slow" / "seed-1"
    _until(lambda: (killed / rundir.METRICS).exists(), "the first epoch", timeout=90)
    task = _tasks(results)[1]
    subprocess.run(["scancel", "--signal=KILL", task], check=True, timeout=30)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 1, err
    assert "damaged" in (damaged.dir / rundir.ERROR).read_text() or "checkpoint" in err
    assert "without a result" in (killed / rundir.ERROR).read_text()
    assert _status(results / "slow" / "seed-2") == "finished"
    summary = out + err
    assert "1 damaged" in summary and "1 failed" in summary and "1 finished" in summary
