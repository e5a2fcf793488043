"""A run's life after it ends: trained on to more epochs (alone or in its grid), its lock file
gone with its lock (flock, or the O_EXCL file where flock is missing, a stale one taken over by
one process only), and its launches.jsonl and error.txt never left half written."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALLEST, file_bytes, metric_rows, smallest

from softmaso import rundir, training
from softmaso.config import valid_keys
from softmaso.errors import RunConflict


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / rundir.WEIGHTS)


# ------------------------------------------------------------------------- trained on
def test_a_finished_run_trains_on_to_the_metrics_of_one_trained_that_long_at_once(tmp_path):
    on, straight = tmp_path / "on", tmp_path / "straight"
    training.fit(smallest(2), on, device="cpu", lock=True)
    first_weights = _weights(on)
    result = training.fit(smallest(3), on, device="cpu", lock=True)
    assert result["status"] == "finished" and result["epochs"] == 3 and "skipped" not in result
    training.fit(smallest(3), straight, device="cpu", lock=True)
    assert metric_rows(on) == metric_rows(straight)  # bit for bit: same threads, same CPU
    assert rundir.read_json(on / rundir.RESULT)["final_test_acc"] == result["final_test_acc"]
    assert result["final_test_acc"] == rundir.read_json(straight / rundir.RESULT)["final_test_acc"]
    weights, expected = _weights(on), _weights(straight)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert not all(torch.equal(weights[k], first_weights[k]) for k in expected)  # rewritten
    assert rundir.read_config(on)["train"]["epochs"] == 3
    assert rundir.load_checkpoint(on / rundir.CHECKPOINT)["epoch"] == 3
    assert len(rundir.launches(on)) == 2  # the second launch recorded
    assert {p.name for p in on.iterdir()} == {p.name for p in straight.iterdir()}
    again = training.fit(smallest(3), on, device="cpu", lock=True)  # finished: not redone
    assert again["skipped"] and len(rundir.launches(on)) == 2


def test_fewer_epochs_stay_a_conflict_that_changes_nothing(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({k: v for k, v in SMALLEST.items() if k != "recipe"}))
    run = tmp_path / "run"
    args = ("train", recipe, "--out", run, "--device", "cpu")
    assert cli(*args, "--set", "train.epochs=2").exit_code == 0
    before = file_bytes(run)
    r = cli(*args, "--set", "train.epochs=1")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "train.epochs: 2 there, 1 here" in r.stderr and "never back to fewer" in r.stderr
    assert file_bytes(run) == before
    r = cli(*args, "--set", "train.epochs=3")  # more: trained on
    assert r.exit_code == 0 and r.stdout.startswith("finished:"), r.output
    assert rundir.read_json(run / rundir.RESULT)["epochs"] == 3


def test_a_finished_run_without_its_checkpoint_is_not_trained_on(tmp_path):
    run = tmp_path / "run"
    training.fit(smallest(1), run, device="cpu")
    (run / rundir.CHECKPOINT).unlink()
    before = file_bytes(run)
    with pytest.raises(RunConflict, match="without its checkpoint.pt, so it cannot be trained"):
        training.fit(smallest(2), run, device="cpu", lock=True)
    assert file_bytes(run) == before


def test_no_setting_but_the_epochs_counts_them():
    """Training on is exact because nothing but train.epochs depends on the number of epochs:
    a learning rate schedule (or warmup) added to the config would break that, and
    rundir.trains_on must then refuse it."""
    assert not [k for k in valid_keys() if any(w in k for w in ("schedul", "warmup", "decay_"))]
    assert rundir.GROWS in valid_keys()


def test_a_grid_whose_epochs_grew_trains_its_runs_on(cli, tmp_path):
    recipe = tmp_path / "g.yaml"
    body = {k: v for k, v in SMALLEST.items() if k != "recipe"}
    recipe.write_text(json.dumps({**body, "train": {"epochs": 1}, "sweep": {"seed": [0, 1]}}))
    res = tmp_path / "res"
    args = ("reproduce", recipe, "--results", res)
    assert cli(*args).exit_code == 0
    recipe.write_text(json.dumps({**body, "train": {"epochs": 2}, "sweep": {"seed": [0, 1]}}))
    r = cli(*args)
    assert r.exit_code == 0, r.output
    for seed in (0, 1):
        run = res / "g" / f"seed-{seed}"
        assert rundir.read_json(run / rundir.RESULT)["epochs"] == 2
        assert len(rundir.launches(run)) == 2
    grid = rundir.read_grid(res)
    assert {e["config"]["train"]["epochs"] for e in grid["runs"]} == {2}


# --------------------------------------------------------------------------------- locks
def _no_flock(fd, op):
    raise OSError(errno.ENOSYS, "Function not implemented")


@pytest.mark.parametrize("flock", [True, False])
def test_no_lock_file_is_left_once_the_lock_is_released(tmp_path, monkeypatch, flock):
    if not flock:
        monkeypatch.setattr(rundir.fcntl, "flock", _no_flock)
    run = tmp_path / "run"
    run.mkdir()
    with rundir.claim(run) as mine:
        assert mine and {p.name for p in run.iterdir()} == {rundir.LOCK if flock else rundir.HELD}
    assert list(run.iterdir()) == []
    training.fit(smallest(1), run, device="cpu", lock=True)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_a_lock_file_that_cannot_be_written_is_removed_and_says_why(tmp_path, monkeypatch):
    """Without flock, a full disk while the O_EXCL lock file is written: the error reaches
    the caller, and no empty lock file is left for every later claim to find "being written"."""
    monkeypatch.setattr(rundir.fcntl, "flock", _no_flock)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "write", full)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"), rundir.claim(run):
        pass
    monkeypatch.undo()
    assert not run.exists() or not any(run.iterdir())
    monkeypatch.setattr(rundir.fcntl, "flock", _no_flock)
    with rundir.claim(run) as mine:  # the next claim takes the lock
        assert mine


def test_a_lock_file_opened_before_it_was_removed_locks_nothing(tmp_path, monkeypatch):
    """A process that opened .lock just before its holder removed it, and flocks it after,
    holds a file no longer there: it must try again on the one there now."""
    run = tmp_path / "run"
    run.mkdir()
    old = os.open(run / rundir.LOCK, os.O_RDWR | os.O_CREAT)  # opened, then removed on release
    os.unlink(run / rundir.LOCK)
    real_open, calls = os.open, []

    def late_open(path, *args):
        calls.append(path)
        return os.dup(old) if len(calls) == 1 else real_open(path, *args)

    monkeypatch.setattr(rundir.os, "open", late_open)
    with rundir.claim(run) as mine:
        assert mine and len(calls) == 2  # the removed file locked, found out, the new one taken
        monkeypatch.setattr(rundir.os, "open", real_open)
        code = (
            "from pathlib import Path; from softmaso.rundir import claim\n"
            f"with claim(Path({str(run)!r})) as ok: print(ok)"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.stdout.strip() == "False", other.stderr
    os.close(old)


CONTENDER = """
import errno, os, sys, time
from pathlib import Path
from softmaso import rundir
if sys.argv[3] == "noflock":
    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")
    rundir.fcntl.flock = no_flock
if sys.argv[4] == "slow":  # every contender judges the stale file before any removes it
    judge = rundir._stale
    rundir._stale = lambda *a: (judge(*a), time.sleep(0.5))[0]
run, go = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
won = 0
for _ in range(int(sys.argv[5])):
    with rundir.claim(run) as mine:
        if mine:
            won += 1
            fd = os.open(run.parent / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"in {os.getpid()}\\n".encode())
            time.sleep(float(sys.argv[6]))
            os.write(fd, f"out {os.getpid()}\\n".encode())
            os.close(fd)
print(won)
"""


def _contend(tmp_path: Path, n: int, *, flock: bool, slow: bool, rounds: int, hold: float):
    run, go = tmp_path / "run", tmp_path / "go"
    args = [str(run), str(go), "flock" if flock else "noflock", "slow" if slow else "-"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, *args, str(rounds), str(hold)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    time.sleep(1.0)  # all started (and waiting for go)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    lines = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    return [int(o[0]) for o in outs], lines


def _one_at_a_time(lines: list[str]) -> bool:
    return (
        all(
            a.startswith("in ") and b == "out " + a[3:]
            for a, b in zip(lines[::2], lines[1::2], strict=False)
        )
        and len(lines) % 2 == 0
    )


@pytest.mark.parametrize("flock", [True, False])
def test_processes_that_claim_and_release_in_a_loop_hold_the_lock_one_at_a_time(tmp_path, flock):
    won, lines = _contend(tmp_path, 3, flock=flock, slow=False, rounds=150, hold=0.0)
    assert sum(won) > 0 and len(lines) == 2 * sum(won) and _one_at_a_time(lines)
    run = tmp_path / "run"  # made by the claims: removed, or left empty
    assert not run.exists() or list(run.iterdir()) == []


def test_two_processes_taking_over_one_stale_lock_file_do_not_both_win(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (run / rundir.HELD).write_text(f"{dead}@{os.uname().nodename}\n")  # left by a killed run
    won, lines = _contend(tmp_path, 3, flock=False, slow=True, rounds=1, hold=1.5)
    assert sorted(won) == [0, 0, 1] and _one_at_a_time(lines)
    assert list(run.iterdir()) == []  # the stale file, the fresh one and the markers gone


# ------------------------------------------------------------------ whole lines and files
def test_launches_are_appended_in_one_write_and_a_torn_line_is_skipped(tmp_path, monkeypatch):
    cfg = smallest(1)
    rundir.open_run(cfg, tmp_path, torch.device("cpu"))
    with open(tmp_path / rundir.LAUNCHES, "a") as f:
        f.write('{"softmaso": "0.1", "argv": ["sof')  # a crash mid-write
    writes, real_write = [], os.write
    monkeypatch.setattr(rundir.os, "write", lambda fd, b: writes.append(b) or real_write(fd, b))
    rundir.open_run(cfg, tmp_path, torch.device("cpu"))
    assert len(writes) == 1 and writes[0].startswith(b"\n{") and writes[0].endswith(b"}\n")
    assert len(rundir.launches(tmp_path)) == 2
    lines = (tmp_path / rundir.LAUNCHES).read_text().splitlines()
    assert len(lines) == 3 and lines[1].endswith("sof")  # the torn line stays alone


def test_error_txt_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    rundir.record_error(tmp_path, "first failure")
    real = Path.write_text

    def torn(self, text, *a, **k):
        real(self, text[:5], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", torn)
    rundir.record_error(tmp_path, "second failure, much longer")
    monkeypatch.undo()
    assert (tmp_path / rundir.ERROR).read_text() == "first failure\n"
    assert [p.name for p in tmp_path.iterdir()] == [rundir.ERROR]  # no temp file left
