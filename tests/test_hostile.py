"""Hostile input found by a tester: npz data checked before any run directory is written, run
files that are damaged, two `train` processes on one run, file permissions, the grid's log."""

import json
import stat

import numpy as np
import pytest

from softmaso import rundir, training
from softmaso.config import RunConfig


def _npz(tmp_path, *, size=12, y_train=None, y_test=None, x_fix=None, n=20):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (n, size, size, 1)).astype(np.uint8)
    x_test = rng.integers(0, 256, (n // 2, size, size, 1)).astype(np.uint8)
    if x_fix is not None:
        x_train, x_test = x_fix(x_train.astype(np.float32)), x_test.astype(np.float32)
    arrays = {
        "x_train": x_train,
        "y_train": np.arange(n) % 2 if y_train is None else y_train,
        "x_test": x_test,
        "y_test": np.arange(n // 2) % 2 if y_test is None else y_test,
    }
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def _cfg(path):
    tree = {"data": {"name": "npz", "path": str(path)}, "model": {"width": 0.0625}}
    tree["optim"] = {"batch_size": 5}
    tree["train"] = {"epochs": 1}
    return RunConfig.model_validate(tree)


def _nan(x):
    x[0, 0, 0, 0] = np.nan
    x[1, 0, 0, 0] = np.inf
    return x


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 8}, "images are 8x8; largeCNN needs at least 9x9"),
        ({"y_train": np.r_[np.arange(19) % 2, 999999]}, "labels up to 999999 but only 3"),
        ({"y_train": np.zeros(20, dtype=int)}, "single class"),
        ({"y_test": np.r_[np.arange(9) % 2, 2]}, "absent from y_train (first: 2)"),
        ({"x_fix": _nan}, "x_train has 2 NaN or infinite"),
    ],
)
def test_bad_npz_data_is_one_line_before_any_run_directory(cli, tmp_path, kwargs, message):
    path = _npz(tmp_path, **kwargs)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  name: npz\n  path: {path}\nmodel:\n  width: 0.0625\n")
    r = cli("train", recipe, "--out", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_good_small_npz_trains(tmp_path):
    res = training.fit(_cfg(_npz(tmp_path, size=9)), tmp_path / "run", device="cpu")
    assert res["status"] == "finished"


@pytest.mark.parametrize("content", ["[1, 2]", '"finished"', '{"status": 3}'])
def test_train_on_a_damaged_result_json_is_one_line(cli, tmp_path, content):
    path = _npz(tmp_path, size=9)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  name: npz\n  path: {path}\nmodel:\n  width: 0.0625\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / rundir.RESULT).write_text(content)
    r = cli("train", recipe, "--out", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 2 and "damaged result.json" in r.stderr


def test_train_refuses_a_run_another_process_is_training(cli, tmp_path):
    cfg = _cfg(_npz(tmp_path, size=9))
    with rundir.claim(tmp_path / "run") as mine:
        assert mine
        with pytest.raises(Exception, match="being trained by another process"):
            training.fit(cfg, tmp_path / "run", device="cpu", lock=True)
    assert not (tmp_path / "run" / rundir.CONFIG).exists()
    assert training.fit(cfg, tmp_path / "run", device="cpu", lock=True)["status"]


def test_every_run_file_has_the_usual_permissions(tmp_path):
    training.fit(_cfg(_npz(tmp_path, size=9)), tmp_path / "run", device="cpu")
    for name in (
        rundir.CONFIG,
        rundir.ENV,
        rundir.METRICS,
        rundir.RESULT,
        rundir.WEIGHTS,
        rundir.CHECKPOINT,
    ):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode & 0o044 == 0o044, (name, oct(mode))  # readable by group and others


def test_a_grid_logs_a_line_per_run(cli, tmp_path):
    recipe = tmp_path / "g.yaml"
    path = _npz(tmp_path, size=9)
    recipe.write_text(
        f"data:\n  name: npz\n  path: {path}\nmodel:\n  width: 0.0625\noptim:\n  batch_size: 5\n"
        "train:\n  epochs: 2\nsweep:\n  seed: [0, 1, 2]\n"
    )
    r = cli("reproduce", recipe, "--results", tmp_path / "res")
    assert r.exit_code == 0, r.output
    grid_lines = [x for x in r.stderr.splitlines() if x.startswith("[grid]")]
    assert len(grid_lines) == 3 and "epoch" not in r.stderr
    assert "1/3 g/seed-0: finished, test accuracy" in grid_lines[0]
    grid = json.loads((tmp_path / "res" / rundir.GRID).read_text())
    assert "fill" not in grid and "pack" not in grid  # a CPU neither measures nor records


def test_one_status_vocabulary_for_a_run_directory(tmp_path):
    run = tmp_path / "r"
    assert rundir.status(run)[0] == "new"
    run.mkdir()
    (run / rundir.CONFIG).write_text("seed: 0\n")
    assert rundir.status(run)[0] == "pending"
    (run / rundir.METRICS).write_text("")
    assert rundir.status(run)[0] == "started"
    (run / rundir.RESULT).write_text('{"status": "finished", "final_test_acc": 0.5}')
    status, result, problem = rundir.status(run)
    assert (status, result["final_test_acc"], problem) == ("finished", 0.5, None)
    (run / rundir.RESULT).write_text('{"status": "finished", "final_test_acc": 85.0}')
    status, _, problem = rundir.status(run)
    assert status == "damaged" and "85.0" in problem
    (run / rundir.RESULT).write_text('{"status": "diverged", "final_test_acc": null}')
    assert rundir.status(run)[0] == "diverged"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("[1, 2]", "not a softmaso grid"),
        ('"a string"', "not a softmaso grid"),
        ("{not json", "not a softmaso grid"),
        ('{"runs": {}, "experiment": "tiny", "smoke": false}', "not a softmaso grid"),
        ('{"runs": [], "experiment": "tiny"}', "has no 'smoke' key"),
    ],
)
def test_a_foreign_grid_json_is_one_line_and_left_alone(cli, tmp_path, content, says):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("data: {name: synthetic, synthetic_train: 100}\nsweep: {seed: [0]}\n")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / rundir.GRID).write_text(content)
    r = cli("reproduce", recipe, "--results", tmp_path / "r")
    assert r.exit_code == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "r" / rundir.GRID).read_text() == content  # not overwritten
    assert not (tmp_path / "r" / "tiny").exists()  # nothing trained


def test_a_sweep_that_repeats_a_value_trains_each_run_once(cli, tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text(
        "data: {name: synthetic, synthetic_train: 100}\nmodel: {width: 0.0625}\n"
        "train: {epochs: 1}\nsweep: {seed: [0, 0, 1]}\n"
    )
    r = cli("reproduce", recipe, "--results", tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert "1 sweep point(s) repeat another's settings; each run is trained once" in r.output
    assert "twice: 2 finished" in r.output
    assert "(n=2)" in (tmp_path / "r" / "table.md").read_text()


def test_a_huge_sweep_asks_for_yes_before_anything_is_written(cli, tmp_path):
    recipe = tmp_path / "huge.yaml"
    seeds = ", ".join(str(s) for s in range(1001))
    recipe.write_text(f"data: {{name: synthetic}}\nsweep: {{seed: [{seeds}]}}\n")
    r = cli("reproduce", recipe, "--results", tmp_path / "r")
    assert r.exit_code == 2 and "sweeps 1,001 runs (more than 1,000)" in r.stderr
    assert "--yes" in r.stderr and not (tmp_path / "r" / rundir.GRID).exists()


def test_a_full_disk_during_train_is_one_line_naming_the_file(cli, tmp_path, monkeypatch):
    import shutil as sh

    import torch

    from softmaso import io

    real_usage, real_save = sh.disk_usage, torch.save

    def full_save(obj, f, *args, **kwargs):  # torch's own words when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", full_save)
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=4096))
    r = cli("train", "smoke", "--out", run, "--set", "train.epochs=1", "--threads", "1")
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.output  # above: the epoch line
    last = r.stderr.strip().splitlines()[-1]
    assert (
        last == f"softmaso: error: {run / rundir.CHECKPOINT}: No space left on device (0.0 MB free)"
    )
    assert not list(run.glob(".*.tmp"))  # the partial file is gone
    monkeypatch.setattr(torch, "save", real_save)  # space again: the same command finishes
    monkeypatch.setattr(io.shutil, "disk_usage", real_usage)
    assert (
        cli("train", "smoke", "--out", run, "--set", "train.epochs=1", "--threads", "1").exit_code
        == 0
    )
