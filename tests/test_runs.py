"""The run directory's lock (exclusive, released, gone with a killed holder) and the
background checkpoint writer (snapshots, order, errors)."""

import json
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from softmaso import runs
from softmaso.config import RunConfig


def test_claim_is_exclusive_and_released(tmp_path):
    with runs.claim(tmp_path) as first:
        assert first
        with runs.claim(tmp_path) as second:
            assert not second
    with runs.claim(tmp_path) as again:
        assert again


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from softmaso.runs import claim\n"
        f"with claim(Path({str(tmp_path)!r})) as ok:\n    print(ok, flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    with runs.claim(tmp_path) as mine:
        assert not mine
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with runs.claim(tmp_path) as mine:
        assert mine


def _state(model: torch.nn.Module, epoch: int) -> dict:
    opt = torch.optim.Adam(model.parameters())
    data = SimpleNamespace(num_classes=3, x_train=torch.zeros(1, 1, 9, 9))
    cfg = RunConfig.model_validate({"recipe": "t"})
    rows = [{"epoch": epoch}]
    return runs.checkpoint_state(
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
    writer = runs.CheckpointWriter()
    writer.submit([(tmp_path / runs.CHECKPOINT, _state(model, 1))], [(tmp_path, [{"epoch": 1}])])
    with torch.no_grad():
        model.weight.add_(1.0)  # the next epoch trains on at once
    writer.close()
    saved = runs.load_checkpoint(tmp_path / runs.CHECKPOINT)
    assert saved["epoch"] == 1 and torch.equal(saved["model"]["weight"], before)
    assert [json.loads(x) for x in (tmp_path / runs.METRICS).read_text().splitlines()] == [
        {"epoch": 1}
    ]
    writer.submit([(tmp_path / runs.CHECKPOINT, _state(model, 2))], [])  # in order, replaced
    writer.close()
    assert torch.equal(
        runs.load_checkpoint(tmp_path / runs.CHECKPOINT)["model"]["weight"], before + 1
    )


def test_checkpoint_writer_raises_a_failed_write_in_the_training_thread(tmp_path):
    writer = runs.CheckpointWriter()
    gone = tmp_path / "missing" / runs.CHECKPOINT  # its folder does not exist
    writer.submit([(gone, _state(torch.nn.Linear(2, 2), 1))], [(tmp_path, [{"epoch": 1}])])
    with pytest.raises(OSError):
        writer.close()
    assert not (tmp_path / runs.METRICS).exists()  # rows never get ahead of their checkpoint
    writer.close()  # raised once; the writer is usable again
    assert list(tmp_path.iterdir()) == []
