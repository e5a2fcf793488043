"""The run directory's lock (exclusive, released, gone with a killed holder) and the
background checkpoint writer (snapshots, order, errors)."""

import json
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from softmaso import rundir
from softmaso.config import RunConfig


def test_claim_is_exclusive_and_released(tmp_path):
    with rundir.claim(tmp_path) as first:
        assert first
        with rundir.claim(tmp_path) as second:
            assert not second
    with rundir.claim(tmp_path) as again:
        assert again


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from softmaso.rundir import claim\n"
        f"with claim(Path({str(tmp_path)!r})) as ok:\n    print(ok, flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    with rundir.claim(tmp_path) as mine:
        assert not mine
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with rundir.claim(tmp_path) as mine:
        assert mine


def _state(model: torch.nn.Module, epoch: int) -> dict:
    opt = torch.optim.Adam(model.parameters())
    data = SimpleNamespace(num_classes=3, x_train=torch.zeros(1, 1, 9, 9))
    cfg = RunConfig.model_validate({"recipe": "t"})
    rows = [{"epoch": epoch}]
    return rundir.checkpoint_state(
        cfg=cfg,
        data=data,
        epoch=epoch,
        history=rows,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
    )


def test_checkpoint_writer_writes_a_snapshot_while_training_goes_on(tmp_path):
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    writer = rundir.CheckpointWriter()
    writer.submit([(tmp_path / rundir.CHECKPOINT, _state(model, 1))], [(tmp_path, [{"epoch": 1}])])
    with torch.no_grad():
        model.weight.add_(1.0)  # the next epoch trains on at once
    writer.close()
    saved = rundir.load_checkpoint(tmp_path / rundir.CHECKPOINT)
    assert saved["epoch"] == 1 and torch.equal(saved["model"]["weight"], before)
    assert [json.loads(x) for x in (tmp_path / rundir.METRICS).read_text().splitlines()] == [
        {"epoch": 1}
    ]
    writer.submit([(tmp_path / rundir.CHECKPOINT, _state(model, 2))], [])  # in order, replaced
    writer.close()
    assert torch.equal(
        rundir.load_checkpoint(tmp_path / rundir.CHECKPOINT)["model"]["weight"], before + 1
    )


def test_checkpoint_writer_raises_a_failed_write_in_the_training_thread(tmp_path):
    writer = rundir.CheckpointWriter()
    gone = tmp_path / "missing" / rundir.CHECKPOINT  # its folder does not exist
    writer.submit([(gone, _state(torch.nn.Linear(2, 2), 1))], [(tmp_path, [{"epoch": 1}])])
    with pytest.raises(OSError):
        writer.close()
    assert not (tmp_path / rundir.METRICS).exists()  # rows never get ahead of their checkpoint
    writer.close()  # raised once; the writer is usable again
    assert list(tmp_path.iterdir()) == []


def test_without_flock_an_exclusive_lock_file_does(tmp_path, monkeypatch):
    """Lustre without flock raises ENOSYS: the lock falls back to a file made with O_EXCL."""
    import errno
    import os

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(rundir.fcntl, "flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    with rundir.claim(run) as first:
        assert first
        held = (run / rundir.HELD).read_text().strip()
        assert held == f"{os.getpid()}@{os.uname().nodename}"
        with rundir.claim(run) as second:
            assert not second
    assert not (run / rundir.HELD).exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (run / rundir.HELD).write_text(f"{dead}@{os.uname().nodename}\n")  # its process is gone
    with rundir.claim(run) as mine:
        assert mine  # a stale lock of this host is taken over
    (run / rundir.HELD).write_text("1@another-host\n")  # cannot be checked from here: respected
    with rundir.claim(run) as mine:
        assert not mine


def test_atomic_writes_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    import os

    from softmaso import io

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        io.os,
        "fsync",
        lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd),
    )
    monkeypatch.setattr(
        io.os, "replace", lambda a, b: events.append(("replace", str(a))) or real_replace(a, b)
    )
    io.atomic_write(tmp_path / "a.json", lambda tmp: tmp.write_text("{}"))
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] == events[1][1]  # the temp file, synced before it is renamed
    assert events[2][1] == str(tmp_path)  # then the folder that holds the new name
    assert (tmp_path / "a.json").read_text() == "{}"


def test_every_launch_is_recorded_and_the_first_kept(tmp_path):
    cfg = RunConfig.model_validate({"recipe": "t"})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rundir.open_run(cfg, tmp_path, torch.device("cpu"))
        first = json.loads((tmp_path / rundir.ENV).read_text())
        torch.set_num_threads(2)
        rundir.open_run(cfg, tmp_path, torch.device("cpu"))  # a resume with other threads
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / rundir.ENV).read_text()) == first  # not overwritten
    assert [e["device"]["threads"] for e in rundir.launches(tmp_path)] == [1, 2]
