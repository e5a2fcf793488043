"""A grid survives what machines do: a run that raises, a worker killed (the out-of-memory
killer's SIGKILL), SIGTERM and Ctrl-C, and a parent killed outright: no run is lost, none
trains twice, no worker is left behind, and the table names the failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import FAST

from softmaso import launch, rundir, training
from softmaso.reporting import tables
from softmaso.reporting.frame import collect

GRID = ["reproduce", "table2", "--smoke", "--datasets", "svhn", "--runs", "1"]
# A sitecustomize (on PYTHONPATH, so every process of the grid imports it) that kills the
# process training the run with lr 0.0005 and the penalty, at its first step, every time.
KILLER = """\
import os, signal
if os.environ.get("SOFTMASO_TEST_KILL"):
    import softmaso.training as t
    real = t.train_step
    def step(s, idx, gen=None):
        if f"{s.cfg.optim.lr:g}-{s.cfg.ortho.mode}" == os.environ["SOFTMASO_TEST_KILL"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(s, idx, gen)
    t.train_step = step
"""


def _grid(results: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    args = [*GRID, *[a for kv in FAST for a in ("--set", kv)], "--results", str(results), *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "softmaso", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet (it runs no more code)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state in "ZX"


def _worker_pids(results: Path) -> set[int]:
    """The pids the grid's workers wrote into the runs' lock files."""
    pids = set()
    for lock in results.glob(f"svhn/*/{rundir.LOCK}"):
        text = lock.read_text().strip()
        if text:
            pids.add(int(text.split("@")[0]))
    return pids


def test_a_run_that_raises_fails_alone_and_resumes(tmp_path, monkeypatch, caplog):
    todo = launch.expand("table2", tmp_path, smoke=True, datasets=["svhn"], seeds=1, overrides=FAST)
    todo, bad = todo[:3], todo[1]
    real = training.train_step

    def step(s, idx, gen=None):
        if s.cfg == bad.cfg:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(s, idx, gen)

    monkeypatch.setattr(training, "train_step", step)
    out = {}
    for run in todo:
        out.update(launch.train_unit([run], launch.Launch(smoke=True), "cpu"))
    assert out == {todo[0].dir: "finished", bad.dir: "failed", todo[2].dir: "finished"}
    assert "RuntimeError: CUDA out of memory (simulated)" in (bad.dir / rundir.ERROR).read_text()
    assert rundir.status(bad.dir)[0] == "failed"
    [line] = [r.getMessage() for r in caplog.records if r.name == "softmaso.launch"]
    assert line.startswith(f"failed: {bad.dir.name}: RuntimeError: CUDA out of memory")
    cells = tables.summarize(collect(tmp_path)).cells.values()
    assert sum(c.counts.get("failed", 0) for c in cells) == 1
    assert "1 failed" in tables.render(tables.summarize(collect(tmp_path)), "markdown")
    monkeypatch.setattr(training, "train_step", real)  # the cause is gone: it trains again
    assert launch.train_unit([bad], launch.Launch(smoke=True), "cpu") == {bad.dir: "finished"}
    assert not (bad.dir / rundir.ERROR).exists()


def test_a_worker_killed_every_time_fails_its_run_and_the_grid_goes_on(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILLER)
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": path, "SOFTMASO_TEST_KILL": "0.0005-penalty"}
    grid = _grid(tmp_path / "r", "--devices", "cpu,cpu", "--threads", "1", env=env)
    out, err = grid.communicate(timeout=300)
    assert grid.returncode == 1, err
    summary = next(line for line in err.splitlines() if line.startswith("table2: 1 failed"))
    counts = dict(reversed(part.split(" ", 1)) for part in summary[len("table2: ") :].split(", "))
    # a run its worker finished just as the pool broke is found finished on its retry
    assert int(counts.get("finished", 0)) + int(counts.get("skipped-finished", 0)) == 5, out
    assert "a worker process died; retrying" in err
    [bad] = [d for d in (tmp_path / "r").glob("svhn/*") if (d / rundir.ERROR).exists()]
    assert "lr-0.0005_mode-penalty" in bad.name and not (bad / rundir.RESULT).exists()
    assert "worker process training it died" in (bad / rundir.ERROR).read_text()
    assert f"failed: {bad.name}" in err
    assert "1 failed" in (tmp_path / "r" / "table.md").read_text()  # the table names it
    done = [
        json.loads(p.read_text())["status"] for p in (tmp_path / "r").glob("svhn/*/result.json")
    ]
    assert done == ["finished"] * 5


def test_sigterm_stops_a_grid_and_a_killed_parent_leaves_no_worker(tmp_path):
    slow = ["--set", "train.epochs=30", "--devices", "cpu,cpu", "--threads", "1"]
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGKILL, -9)):
        results = tmp_path / sig.name
        grid = _grid(results, *slow)
        deadline = time.time() + 120
        while time.time() < deadline and len(_training(results)) < 2:
            time.sleep(0.1)  # both workers are in the middle of a run
        workers = _worker_pids(results)
        assert len(workers) == 2
        started = time.time()
        grid.send_signal(sig)
        _, err = grid.communicate(timeout=60)
        assert grid.returncode == code, err
        while time.time() - started < 20 and not all(_gone(p) for p in workers):
            time.sleep(0.2)
        assert all(_gone(p) for p in workers), f"workers left after {sig.name}"
        if sig == signal.SIGTERM:
            assert time.time() - started < 30 and "softmaso: stopped by SIGTERM" in err
            assert _training(results), "no run was stopped in the middle"  # left resumable
    rerun = _grid(tmp_path / "SIGTERM", *slow)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "table2: " in err, err
    lines = [
        len(p.read_text().splitlines()) for p in (tmp_path / "SIGTERM").glob("svhn/*/metrics.jsonl")
    ]
    assert lines == [30] * 6  # each run trained its 30 epochs once: the stopped ones resumed


def _training(results: Path) -> list[Path]:
    """Runs with epochs done and no result yet: started, stopped or still training."""
    return [
        m.parent
        for m in results.glob(f"svhn/*/{rundir.METRICS}")
        if not (m.parent / rundir.RESULT).exists()
    ]


def test_sigterm_of_train_says_the_run_is_resumable(tmp_path):
    run = tmp_path / "run"
    args = ["train", "smoke", "--out", str(run), "--threads", "1", "--set", "train.epochs=30"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "softmaso", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / rundir.METRICS).exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert f"terminated (SIGTERM): rerun the same command to resume {run}" in err
    assert (run / rundir.CHECKPOINT).exists() and not (run / rundir.RESULT).exists()
