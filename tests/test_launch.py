"""Launching grids: one unit, processes sharing a results folder, kill and restart, the local
worker pool, submitit, and the reproduce command."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FAST

from softmaso import launch, rundir
from softmaso.errors import UserError


def test_train_unit_skips_finished_and_reports_conflicts(tmp_path, caplog):
    run = launch.expand("table2", tmp_path, smoke=True, datasets=["svhn"], seeds=1, overrides=FAST)[
        0
    ]
    smoke = launch.Launch(smoke=True)
    assert launch.train_unit([run], smoke, "cpu") == {run.dir: "finished"}
    assert launch.train_unit([run], smoke, "cpu") == {run.dir: "skipped-finished"}
    assert json.loads((run.dir / rundir.RESULT).read_text())["smoke"] is True
    other = launch.Run(
        run.recipe, run.settings, run.cfg.with_overrides(**{"optim.lr": 0.5}), run.dir
    )
    (run.dir / rundir.RESULT).unlink()
    got = launch.train_unit([other], launch.Launch(pack=False), "cpu")
    assert got == {run.dir: "conflict"}
    assert [r.getMessage() for r in caplog.records if r.name == "softmaso.launch"] == [
        f"conflict: {run.dir} holds a run with a different config (optim.lr: "
        f"{run.cfg.optim.lr} there, 0.5 here); choose another run directory, or --set those "
        "keys to the run's values to resume it"
    ]


def test_submitit_debug_executor_runs_the_array(tmp_path):
    todo = launch.expand(
        "table2", tmp_path, smoke=True, datasets=["svhn"], seeds=1, overrides=FAST
    )[:2]
    debug = launch.Launch(launcher="slurm", smoke=True, slurm=launch.Slurm(cluster="debug"))
    out = launch.launch_slurm(todo, debug, folder=tmp_path / ".submitit")
    assert set(out.values()) == {"finished"}
    assert all((r.dir / rundir.RESULT).exists() for r in todo)


def _reproduce(results: Path, *extra: str) -> subprocess.Popen:
    args = ["reproduce", "table2", "--smoke", "--datasets", "svhn", "--runs", "2"]
    args += [a for kv in FAST for a in ("--set", kv)] + ["--results", str(results), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "softmaso", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finished_counts(results: Path) -> list[int]:
    """Epoch lines per run: a run trained twice (or half) would not show exactly 1."""
    return [
        len((d / rundir.METRICS).read_text().splitlines()) for d in sorted(results.glob("svhn/*"))
    ]


def test_two_processes_on_one_directory_train_each_run_once(tmp_path):
    a, b = _reproduce(tmp_path), _reproduce(tmp_path)
    outs = [p.communicate(timeout=240) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    trained = 0
    for _, out in outs:  # the summary is logged (stderr)
        summary = next(
            line for line in out.splitlines() if line.startswith("table2: ") and "runs" not in line
        )
        counts = dict(
            reversed(part.split(" ", 1)) for part in summary[len("table2: ") :].split(", ")
        )
        trained += int(counts.get("finished", 0))
    assert trained == 12  # 3 learning rates x 2 modes x 2 seeds, each trained by one process
    assert _finished_counts(tmp_path) == [1] * 12


def test_killed_grid_restarts_to_completion(tmp_path):
    first = _reproduce(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("svhn/*/result.json"))) < 2:
        time.sleep(0.2)
    first.kill()
    first.communicate()
    second = _reproduce(tmp_path)
    out, err = second.communicate(timeout=240)
    assert second.returncode == 0, err
    assert len(list(tmp_path.glob("svhn/*/result.json"))) == 12
    assert _finished_counts(tmp_path) == [1] * 12


def test_reproduce_cli_smoke_grid_and_bad_input(cli, tmp_path):
    args = ["reproduce", "table2", "--smoke", "--datasets", "svhn,cifar10", "--runs", "2"]
    args += [a for kv in FAST for a in ("--set", kv)] + ["--results", str(tmp_path)]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    table = (tmp_path / "table.md").read_text()
    assert "SMOKE" in table and table.count("(n=2)") == 12
    grid = json.loads((tmp_path / rundir.GRID).read_text())
    assert grid["smoke"] and len(grid["runs"]) == 24
    assert (tmp_path / "figures" / "curves.png").stat().st_size > 0
    for bad, says in (
        (["reproduce", "table3"], "unknown experiment"),
        (["reproduce", "table2", "--devices", "7"], "--devices"),
        (["reproduce", "table2", "--launcher", "pbs"], "--launcher"),
        (["reproduce", "table2", "--launcher", "slurm", "--slurm-cluster", "pbs"], "--slurm-c"),
    ):
        r = cli(*bad)
        assert r.exit_code == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_slurm_without_slurm_is_one_line_and_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    r = cli("reproduce", "table2", "--launcher", "slurm", "--results", tmp_path / "grid")
    assert r.exit_code == 2 and "srun is not on PATH" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "grid").exists()
    todo = launch.expand("table2", tmp_path, smoke=True, datasets=["svhn"], seeds=1, overrides=FAST)
    with pytest.raises(UserError, match="srun is not on PATH"):  # the library says so too
        launch.launch_slurm(todo[:1], launch.Launch(launcher="slurm"), folder=tmp_path / "jobs")
    assert not (tmp_path / "jobs").exists()


def test_one_worker_per_device_pool(tmp_path):
    todo = launch.expand(
        "table2", tmp_path, smoke=True, datasets=["svhn"], seeds=1, overrides=FAST
    )[:3]
    two = launch.Launch(devices=launch.parse_devices("cpu,cpu"), smoke=True)
    out = launch.launch_local(todo, two)
    assert set(out) == {run.dir for run in todo} and set(out.values()) == {"finished"}


def test_a_failed_slurm_task_fails_its_runs_and_the_array_goes_on(tmp_path, monkeypatch):
    todo = launch.expand(
        "table2", tmp_path, smoke=True, datasets=["svhn"], seeds=1, overrides=FAST
    )[:2]
    real = launch.train_unit

    def dies(unit, *args, **kwargs):
        if unit[0].dir == todo[0].dir:
            raise MemoryError("the node ran out of memory (simulated)")
        return real(unit, *args, **kwargs)

    monkeypatch.setattr(launch, "train_unit", dies)
    monkeypatch.setattr("pdb.post_mortem", lambda *a: None)  # submitit's debug cluster: no pdb
    debug = launch.Launch(  # pack=False: a job per run
        launcher="slurm", pack=False, smoke=True, slurm=launch.Slurm(cluster="debug")
    )
    out = launch.launch_slurm(todo, debug, folder=tmp_path / ".submitit")
    assert out == {todo[0].dir: "failed", todo[1].dir: "finished"}
    assert "the node ran out of memory (simulated)" in (todo[0].dir / rundir.ERROR).read_text()


def test_sbatch_without_a_controller_is_one_line(cli, tmp_path, monkeypatch):
    """sbatch on PATH, but it cannot reach slurmctld: what submitit raises, as one line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, code in (("srun", 0), ("sbatch", 1)):
        script = bin_dir / tool
        script.write_text(
            "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Unable to contact "
            f"slurm controller (connect failure)' >&2\nexit {code}\n"
        )
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    args = [*("reproduce", "table2", "--smoke", "--datasets", "svhn", "--runs", "1"), "--launcher"]
    r = cli(*args, "slurm", "--results", tmp_path / "r")
    *said, error = r.stderr.strip().splitlines()  # what the grid said, then the one-line error
    assert r.exit_code == 2 and error.startswith("softmaso: error: --launcher slurm"), r.output
    assert all(line.startswith("table2: ") for line in said), r.output
    assert "SLURM refused the job array" in r.stderr and "Unable to contact" in r.stderr


def test_quiet_and_verbose_are_log_levels(cli, tmp_path):
    """A grid says a line per run and its summary; -q only warnings and errors; -v adds every
    run's line per epoch. What it says is on stderr, through logging."""
    recipe = tmp_path / "one.yaml"
    recipe.write_text(
        "data: {name: synthetic, synthetic_train: 100}\nmodel: {width: 0.0625}\n"
        "optim: {batch_size: 50}\ntrain: {epochs: 2}\nsweep: {seed: [0, 1]}\n"
    )
    said = {}
    for flag in ("-q", None, "-v"):
        args = [flag] if flag else []
        r = cli(*args, "reproduce", recipe, "--results", tmp_path / f"r{flag}")
        assert r.exit_code == 0, r.output
        said[flag] = r.stderr.splitlines()
    assert said["-q"] == []
    grid = [line for line in said[None] if line.startswith("[grid] ")]
    assert len(grid) == 2 and "2/2 one/" in grid[1] and "one: 2 finished" in said[None]
    assert not any(" epoch " in line for line in said[None])
    epochs = [line for line in said["-v"] if "] epoch " in line]
    assert len(epochs) == 4  # 2 runs x 2 epochs, each tagged with its run
    assert len([line for line in said["-v"] if line.startswith("[grid] ")]) == 2


def test_slurm_options_refused_in_one_line_and_local_jobs_share_the_cores(cli, monkeypatch):
    """--slurm-time and --slurm-parallelism below 1, and --no-wait where this process runs the
    jobs, are one-line errors; submitit's local cluster runs the cores / threads jobs at once,
    each with its share of the cores, unless told otherwise."""
    for bad, says in (
        (["--slurm-time", "0"], "--slurm-time"),
        (["--slurm-parallelism", "0"], "--slurm-parallelism"),
        (["--slurm-cluster", "debug", "--no-wait"], "--no-wait"),
        (["--launcher", "local", "--no-wait"], "--no-wait"),  # the last --launcher counts
        (["--slurm-gpus", "-1"], "--slurm-gpus"),
        (["--slurm-cpus", "0"], "--slurm-cpus"),
    ):
        r = cli("reproduce", "table2", "--launcher", "slurm", *bad)
        assert r.exit_code == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1
    monkeypatch.setattr("softmaso.devices.cpu_cores", lambda: 8)
    local = launch.Launch(launcher="slurm", slurm=launch.Slurm(cluster="local"))
    settled = launch._settle_parallelism(local)
    assert (settled.slurm.parallelism, settled.threads) == (8, 1)
    settled = launch._settle_parallelism(replace(local, threads=2))
    assert (settled.slurm.parallelism, settled.threads) == (4, 2)
    settled = launch._settle_parallelism(replace(local, slurm=launch.Slurm("local", parallelism=2)))
    assert (settled.slurm.parallelism, settled.threads) == (2, 4)
    on_slurm = launch._settle_parallelism(launch.Launch(launcher="slurm"))
    assert on_slurm.slurm.parallelism == launch.Slurm.PARALLELISM


def test_a_grid_takes_the_defaults_of_the_device_it_trains_on(tmp_path, monkeypatch):
    """GPUs listed or given by SLURM: the runs' configs compile; CPU workers: eager. The
    choice is in grid.json's and each run's config."""
    assert launch.how_fast(launch.Launch(devices=("cuda:0", "cuda:1"))) == "cuda"
    assert launch.how_fast(launch.Launch(devices=("cpu", "cpu"))) == "cpu"
    assert launch.how_fast(launch.Launch(launcher="slurm")) == "cuda"  # --slurm-gpus 1
    for gpu in (False, True):  # submitit's local and debug clusters run here, --devices or not
        monkeypatch.setattr("torch.cuda.is_available", lambda gpu=gpu: gpu)
        for here in ("local", "debug"):
            on = launch.Launch(launcher="slurm", devices=("cpu",), slurm=launch.Slurm(here))
            assert launch.how_fast(on) == ("cuda" if gpu else "cpu")
    cpu_slurm = launch.Launch(launcher="slurm", slurm=launch.Slurm(gpus=0))
    assert launch.how_fast(cpu_slurm) == "cpu"
    todo = launch.expand("table2", tmp_path, smoke=True, datasets=["svhn"], seeds=1, overrides=FAST)
    on_gpu = launch._device_defaults(todo, "cuda")
    assert all(run.cfg.train.compile for run in on_gpu)
    assert not any(run.cfg.train.compile for run in launch._device_defaults(todo, "cpu"))
