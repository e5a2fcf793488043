"""How a grid fills its devices (softmaso/fill.py): measured where asked, recorded, kept."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import FAST

from softmaso import fill, launch, rundir


def _grid(tmp_path, n: int = 4):
    todo = launch.expand("table2", tmp_path, smoke=True, datasets=["svhn"], seeds=2, overrides=FAST)
    todo = [r for r in todo if r.cfg.ortho.mode in ("none", "penalty")][:n]
    launch.write_grid(tmp_path, "t", todo, smoke=True)
    return todo


def _recorded(root) -> dict:
    return json.loads((root / rundir.GRID).read_text())


@pytest.mark.parametrize(
    ("rates", "mode", "per_device"),
    [
        ({"processes=1": 10, "processes=2": 18, "processes=4": 25, "pack=4": 24}, "processes", 4),
        ({"processes=1": 100, "processes=2": 105, "pack=4": 300}, "pack", 1),
        ({"processes=1": 100, "processes=2": 108, "pack=4": 50}, "one", 1),  # under MIN_GAIN
        ({"processes=1": 100, "processes=2": 0.0}, "one", 1),  # two processes ran out of memory
        ({"processes=1": 0.0, "pack=3": 10.0}, "one", 1),  # one process failed: nothing to beat
        ({}, "one", 1),
    ],
)
def test_the_fastest_fill_wins_by_a_margin(rates, mode, per_device):
    got = fill.choose(rates, "cuda:0")
    assert (got.mode, got.per_device, got.rates) == (mode, per_device, rates)
    best = max(rates.values(), default=0.0)
    assert fill.rate_of(got) == (best if mode != "one" else rates.get("processes=1", 0.0))
    assert "cuda:0" in got.why


def test_flags_decide_then_the_record_then_the_cpu_never_measures(tmp_path, monkeypatch):
    monkeypatch.setattr(fill, "measure", lambda *a, **k: pytest.fail("measured"))
    todo = _grid(tmp_path)
    how = fill.settle(tmp_path, todo, launch.Launch())  # on this CPU: one run at a time
    assert (how.pack, how.devices) == (False, ()) and "fill" not in _recorded(tmp_path)
    how = fill.settle(tmp_path, todo, launch.Launch(pack=True))
    assert how.pack and _recorded(tmp_path)["pack"] is True
    assert _recorded(tmp_path)["fill"]["why"] == "--pack"
    how = fill.settle(tmp_path, todo, launch.Launch())  # a restart keeps the first decision
    assert how.pack
    how = fill.settle(tmp_path, todo, launch.Launch(devices=("cpu", "cpu")))  # twice: asked
    assert how.devices == ("cpu", "cpu") and not how.pack
    assert _recorded(tmp_path)["fill"]["mode"] == "pack"  # for this launch only


def test_a_recorded_processes_fill_gives_each_device_its_workers(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(fill, "measure", lambda *a, **k: pytest.fail("measured"))
    todo = _grid(tmp_path)
    doc = _recorded(tmp_path)
    chosen = fill.Fill("processes", 2, "measured earlier", {"processes=2": 1.0})
    rundir.write_json(tmp_path / rundir.GRID, {**doc, "fill": fill.asdict(chosen)})
    how = fill.settle(tmp_path, todo, launch.Launch(devices=("cpu",), smoke=True))
    assert how.devices == ("cpu", "cpu") and not how.pack  # launch_local: a worker each
    for odd in ({"mode": "teleport"}, {"mode": "processes", "per_device": 0}, "yes", {"x": 1}):
        rundir.write_json(tmp_path / rundir.GRID, {**doc, "fill": odd})
        with caplog.at_level(logging.INFO, logger="softmaso"):
            assert fill.settle(tmp_path, todo, launch.Launch()).devices == ()  # one at a time
        assert "grid.json's fill is not readable" in caplog.text
        assert _recorded(tmp_path)["fill"] == odd  # left as the user wrote it


def test_a_measurement_that_failed_is_not_recorded(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(fill, "MEASURED_ON", ("cuda", "cpu"))
    failed = fill.choose({"processes=1": 0.0, "processes=2": 0.0}, "cpu")
    monkeypatch.setattr(fill, "measure", lambda *a, **k: failed)
    todo = _grid(tmp_path)
    with caplog.at_level(logging.INFO, logger="softmaso"):
        how = fill.settle(tmp_path, todo, launch.Launch())
    assert (how.pack, how.devices) == (False, ()) and "fill" not in _recorded(tmp_path)
    assert "could not measure" in caplog.text


@pytest.mark.parametrize("packed", [True, False])
def test_an_older_grid_json_keeps_its_packing_and_is_not_measured(tmp_path, monkeypatch, packed):
    monkeypatch.setattr(fill, "MEASURED_ON", ("cuda", "cpu"))
    monkeypatch.setattr(fill, "measure", lambda *a, **k: pytest.fail("measured"))
    todo = _grid(tmp_path)
    rundir.write_json(tmp_path / rundir.GRID, {**_recorded(tmp_path), "pack": packed})
    assert fill.settle(tmp_path, todo, launch.Launch()).pack is packed


def test_nothing_left_to_train_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(fill, "MEASURED_ON", ("cuda", "cpu"))
    monkeypatch.setattr(fill, "measure", lambda *a, **k: pytest.fail("measured"))
    todo = _grid(tmp_path, 1)
    assert set(launch.train_unit(todo, launch.Launch(smoke=True), "cpu").values()) == {"finished"}
    assert not fill.settle(tmp_path, todo, launch.Launch()).pack
    assert "fill" not in _recorded(tmp_path)


def test_where_it_measures_it_times_processes_and_a_pack_of_the_grids_runs(
    tmp_path, monkeypatch, caplog
):
    """The real probe, on the CPU as on a GPU: spawned processes and a pack, each timed."""
    monkeypatch.setattr(fill, "MEASURED_ON", ("cuda", "cpu"))
    monkeypatch.setattr(fill, "PROCESSES", (1, 2))
    monkeypatch.setattr(fill, "PROBE_SECONDS", 0.5)
    todo = _grid(tmp_path, 3)
    with caplog.at_level(logging.INFO, logger="softmaso"):
        how = fill.settle(tmp_path, todo, launch.Launch(threads=1, smoke=True))
    rates = _recorded(tmp_path)["fill"]["rates"]
    assert set(rates) == {"processes=1", "processes=2", "pack=3"}
    assert all(v > 0 for v in rates.values()), rates
    assert any(m.startswith("filling the devices:") for m in caplog.messages)
    mode = _recorded(tmp_path)["fill"]["mode"]
    assert how.pack == (mode == "pack") and len(how.devices) == (2 if mode == "processes" else 0)


def test_a_probe_that_cannot_train_counts_as_zero(monkeypatch):
    cfg = launch.expand("table2", "/tmp", smoke=True, datasets=["svhn"], seeds=1, overrides=FAST)[
        0
    ].cfg
    bad = cfg.with_overrides(**{"optim.batch_size": 100000})  # more than the training images
    assert fill.process_rate([[cfg], [bad]], "cpu") == 0.0


def test_a_second_launch_of_a_grid_waits_while_the_first_settles_it(tmp_path, caplog):
    import threading
    import time

    root, order = tmp_path / "grid", []

    def first() -> None:
        with rundir.claim(root) as mine:
            order.append(mine)
            time.sleep(1.5)  # writing grid.json, measuring
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.3)
    with caplog.at_level(logging.INFO, logger="softmaso"), launch._grid_lock(root):
        order.append("second")
    thread.join()
    assert order == [True, "first done", "second"]
    assert "waiting for another launch" in caplog.text


def test_a_probe_killed_outright_ends_the_measurement_at_once():
    """SIGKILL (the out-of-memory killer) of one probe: 0 images/s, soon, and no probe left."""
    import multiprocessing
    import os
    import signal
    import threading
    import time

    cfg = launch.expand("table2", "/tmp", smoke=True, datasets=["svhn"], seeds=1, overrides=FAST)
    jobs = [[cfg[0].cfg], [cfg[1].cfg]]
    got = []
    thread = threading.Thread(target=lambda: got.append(fill.process_rate(jobs, "cpu")))
    thread.start()
    time.sleep(3.0)  # built, warmed up and waiting for the other, or stepping
    os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
    t0 = time.monotonic()
    thread.join(timeout=60)
    assert got == [0.0] and not multiprocessing.active_children()
    assert time.monotonic() - t0 < fill.PROBE_SECONDS + 3


PARENT = """
import multiprocessing, sys, threading, time
from softmaso import fill, launch
FAST = {fast!r}
if __name__ == "__main__":
    runs = launch.expand("table2", "/tmp", smoke=True, datasets=["svhn"], seeds=1, overrides=FAST)
    jobs = [[runs[0].cfg], [runs[1].cfg]]
    threading.Thread(target=fill.process_rate, args=(jobs, "cpu"), daemon=True).start()
    while len(multiprocessing.active_children()) < 2:
        time.sleep(0.05)
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(600)
"""


def test_probes_end_when_their_launcher_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(fast=FAST))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    probes = [int(pid) for pid in parent.stdout.readline().split()]
    time.sleep(1.0)
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            return " Z " not in open(f"/proc/{pid}/stat").read()  # a zombie has ended
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while any(alive(p) for p in probes) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in probes if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert len(probes) == 2 and not left
