"""The first script for a lent GPU (benchmarks/gpu-first.sh, running benchmarks/gpu_check.py)
dry-runs on the CPU: every check, tiny; and its JSON holds each finished check as soon as it
ends, so a call cut at its time limit still returns them. Also benchmarks/checkpoint_writes.py."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _module(name: str = "gpu_check"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _lines(text: str) -> dict[str, list[str]]:
    """The OK/FAIL/SKIP line(s) printed for each check, by check name."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if m := re.match(r"(OK|FAIL|SKIP)\s+(\w+)\s+[\d.]+ s", line):
            found.setdefault(m.group(2), []).append(m.group(1))
    return found


def test_the_first_gpu_script_dry_runs_every_check_on_a_cpu(tmp_path):
    gc = _module()
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env["GPU_FIRST_LIMIT_S"] = "3600"  # a busy machine must not skip checks for time
    p = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu-first.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    names = [c.name for c in gc.CHECKS]
    log = (tmp_path / "gpu-first.log").read_text()
    assert _lines(log) == {name: ["OK"] for name in names}, log[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["dry_run"] and list(report["checks"]) == names
    checks = report["checks"]
    assert {c["status"] for c in checks.values()} == {"OK"}
    assert all((tmp_path / "gpu-check-logs" / f"{n}.log").is_file() for n in names)
    shape = checks["table2_shape"]  # the pack of --runs 1: 6 runs in one network
    assert shape["packed_with"] == [6] and shape["checkpoints"] == 6
    assert checks["single_compiled"]["none_images_per_s"] > 0
    assert checks["workers"]["summed_images_per_s"] > 0
    assert checks["packed_vs_separate"]["max_relative_loss_difference"] < 1e-4
    assert checks["pack_layout"]["nchw_packed_images_per_s"] > 0
    assert checks["reproduce_smoke"]["table"]
    summary = report["summary"]
    assert summary["best_grid_mode"] in ("table2_shape", "pack_bf16", "pack_compiled", "workers")
    assert summary["projected_table2_hours"] > 0
    assert "Table 2 grid projected" in log


def _fake(gc, name, estimate=0.0, run=None):
    return gc.Check(name, run or (lambda ctx: {"ok": True, "line": "fine"}), estimate, 60, estimate)


def test_the_json_holds_each_finished_check_and_a_line_each(tmp_path, capsys):
    gc = _module()
    out = tmp_path / "check.json"
    seen = {}

    def second(ctx):  # what a reader of the JSON sees while the second check runs
        seen.update(json.loads(out.read_text())["checks"])
        return {"ok": False, "line": "slower than it should be"}

    def third(ctx):
        raise RuntimeError("CUDA error: an illegal memory access")

    checks = [
        _fake(gc, "first"),
        _fake(gc, "second", run=second),
        _fake(gc, "third", run=third),
        _fake(gc, "fourth", estimate=60),  # more than the budget has left: skipped
        _fake(gc, "fifth"),  # fits: still runs
    ]
    budget = gc.Budget(gc.RESERVE_S + 30)
    ctx = gc.Context("cpu", True, budget, tmp_path / "scratch", tmp_path)
    gc.run_checks(checks, ctx, out, {"checks": {}})
    assert seen["first"]["status"] == "OK" and seen["second"]["status"] == "RUNNING"
    assert seen["fourth"]["status"] == "PENDING"
    got = json.loads(out.read_text())["checks"]
    assert [v["status"] for v in got.values()] == ["OK", "FAIL", "FAIL", "SKIP", "OK"]
    assert got["third"]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert got["fourth"]["why"].startswith("would not fit")
    printed = capsys.readouterr().out
    assert _lines(printed) == {k: [v["status"]] for k, v in got.items()}
    assert "illegal memory access" in printed and "would not fit" in printed


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_a_command_past_its_time_is_stopped_with_its_children(tmp_path):
    gc = _module()
    ctx = gc.Context("cpu", True, gc.Budget(gc.RESERVE_S + 1), tmp_path, tmp_path)
    ctx.log = tmp_path / "slow.log"
    pid_file = tmp_path / "child.pid"
    t0 = time.monotonic()
    with pytest.raises(gc.OutOfTime):  # a grid's worker processes are its children
        gc.command(ctx, ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"])
    assert time.monotonic() - t0 < 30
    assert not _alive(int(pid_file.read_text()))


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_checkpoint_writes_measures_a_small_pack():
    import torch

    out = _module("checkpoint_writes").measure(2, 0.0625, torch.device("cpu"), rounds=2)
    assert len(out["blocking_s"]) == len(out["background_s"]) == 2
    assert out["bytes_per_run"] > 0 and out["runs"] == 2
