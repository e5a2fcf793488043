"""fit_packed: P runs in one packed network, each with its own run directory, as if alone.

tests/test_packing.py proves the packed step exact in float64; here, in float32 on CPU, the
whole run: per-run files and formats, agreement with separate fits (to float32 rounding),
exact resume, divergence of one run, and runs at different epochs.
"""

import json

import pytest
import torch
from conftest import finished_files, metric_rows, pack_trio, tiny

from softmaso import launch, packed_training, rundir, training
from softmaso.errors import UserError
from softmaso.packed_training import fit_packed, pack_key, plan_units

FILES = finished_files()


def test_packed_runs_match_separate_runs(tmp_path):
    cfgs = pack_trio(**{"train.epochs": 2, "data.augment": True})
    assert len({pack_key(c) for c in cfgs}) == 1
    packed = fit_packed(cfgs, [tmp_path / f"p{i}" for i in range(3)], device="cpu")
    for i, cfg in enumerate(cfgs):
        alone = training.fit(cfg, tmp_path / f"s{i}", device="cpu")
        assert packed[i]["status"] == "finished" and packed[i]["packed_with"] == 3
        assert {p.name for p in (tmp_path / f"p{i}").iterdir()} == FILES
        assert (tmp_path / f"p{i}" / rundir.CONFIG).read_text() == (
            tmp_path / f"s{i}" / rundir.CONFIG
        ).read_text()
        got, want = metric_rows(tmp_path / f"p{i}"), metric_rows(tmp_path / f"s{i}")
        # float32 rounding differs between packed and separate kernels, and Adam amplifies
        # it over the epoch's 12 steps; the tight check is the next test's
        assert got[-1]["train_loss"] == pytest.approx(want[-1]["train_loss"], rel=2e-2)
        assert got[0]["lr"] == want[0]["lr"] == cfg.optim.lr
        assert got[-1]["test_loss"] == pytest.approx(want[-1]["test_loss"], rel=2e-2)
        assert alone["epochs"] == packed[i]["epochs"] == 2
        # a packed run's checkpoint is a single-run checkpoint: softmaso eval reads it
        ev = training.evaluate_saved(tmp_path / f"p{i}", device="cpu")
        assert ev["test_acc"] == pytest.approx(packed[i]["final_test_acc"], abs=0.01)
    again = fit_packed(cfgs, [tmp_path / f"p{i}" for i in range(3)], device="cpu")
    assert all(r["skipped"] for r in again)


def test_first_steps_agree_to_rounding(tmp_path):
    """Two steps per epoch: too few for Adam to amplify rounding, so any difference in
    initialisation, data order, augmentation draws, preprocessing or per-run lr would show."""
    cfgs = pack_trio(**{"train.epochs": 1, "data.subset": 100, "data.augment": True})
    fit_packed(cfgs, [tmp_path / f"p{i}" for i in range(3)], device="cpu")
    for i, cfg in enumerate(cfgs):
        training.fit(cfg, tmp_path / f"s{i}", device="cpu")
        got, want = metric_rows(tmp_path / f"p{i}")[0], metric_rows(tmp_path / f"s{i}")[0]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=2e-5)
        assert got["test_loss"] == pytest.approx(want["test_loss"], rel=2e-5)
        assert got["ortho_error"] == pytest.approx(want["ortho_error"], rel=1e-3, abs=1e-7)


def test_a_pack_in_nchw_trains_as_in_channels_last(tmp_path, monkeypatch):
    """PACK_LAYOUT is a memory layout only (the GPU check times both): the same first epoch."""
    cfgs = pack_trio(**{"train.epochs": 1, "data.subset": 100})
    fit_packed(cfgs, [tmp_path / f"cl{i}" for i in range(3)], device="cpu")
    monkeypatch.setattr(packed_training, "PACK_LAYOUT", torch.contiguous_format)
    fit_packed(cfgs, [tmp_path / f"nchw{i}" for i in range(3)], device="cpu")
    for i in range(3):
        got, want = metric_rows(tmp_path / f"nchw{i}")[0], metric_rows(tmp_path / f"cl{i}")[0]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=2e-5)
        assert got["test_loss"] == pytest.approx(want["test_loss"], rel=2e-5)


def test_interrupted_pack_resumes_exactly(tmp_path, monkeypatch):
    cfgs = pack_trio()
    dirs = [tmp_path / f"r{i}" for i in range(3)]
    fit_packed(cfgs, [tmp_path / f"straight{i}" for i in range(3)], device="cpu")
    real, calls = packed_training._evaluate, {"n": 0}

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C during the second epoch's evaluation
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(packed_training, "_evaluate", interrupting)
    with pytest.raises(KeyboardInterrupt):
        fit_packed(cfgs, dirs, device="cpu")
    assert [len(metric_rows(d)) for d in dirs] == [1, 1, 1]
    assert not any((d / rundir.RESULT).exists() for d in dirs)
    monkeypatch.setattr(packed_training, "_evaluate", real)
    fit_packed(cfgs, dirs, device="cpu")
    for i, d in enumerate(dirs):
        assert metric_rows(d) == metric_rows(tmp_path / f"straight{i}")


def test_a_diverged_run_leaves_the_pack(tmp_path, monkeypatch):
    from softmaso.packing import PackedLargeCNN

    forward = PackedLargeCNN.forward

    def nan_in_run_1_of_3(self, x):
        out = forward(self, x)  # (B, P, K)
        if self.runs == 3:
            mask = torch.ones(1, 3, 1)
            mask[0, 1] = float("nan")
            out = out * mask
        return out

    monkeypatch.setattr(PackedLargeCNN, "forward", nan_in_run_1_of_3)
    res = fit_packed(pack_trio(), [tmp_path / f"r{i}" for i in range(3)], device="cpu")
    assert [r["status"] for r in res] == ["finished", "diverged", "finished"]
    assert [r["epochs"] for r in res] == [3, 0, 3]
    assert json.loads((tmp_path / "r1" / rundir.RESULT).read_text())["status"] == "diverged"
    assert not (tmp_path / "r1" / rundir.WEIGHTS).exists()
    assert res[0]["final_test_acc"] > 0.3  # the others trained on


def test_runs_at_different_epochs_train_in_separate_packs(tmp_path, monkeypatch):
    cfgs = pack_trio(**{"train.epochs": 2})
    real, calls = training.evaluate, {"n": 0}

    def interrupting(s, split="test"):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(s, split)

    monkeypatch.setattr(training, "evaluate", interrupting)
    with pytest.raises(KeyboardInterrupt):  # run 0 stops after epoch 1, alone
        training.fit(cfgs[0], tmp_path / "r0", device="cpu")
    monkeypatch.setattr(training, "evaluate", real)
    res = fit_packed(cfgs, [tmp_path / f"r{i}" for i in range(3)], device="cpu")
    assert [r["status"] for r in res] == ["finished"] * 3
    assert [r["packed_with"] for r in res] == [1, 2, 2]
    assert [r["epoch"] for r in metric_rows(tmp_path / "r0")] == [1, 2]


def test_runs_that_differ_in_shape_do_not_pack(tmp_path):
    with pytest.raises(UserError, match="differ in more than"):
        fit_packed([tiny(), tiny(**{"model.width": 0.25})], [tmp_path / "a", tmp_path / "b"])
    assert pack_key(tiny(**{"ortho.mode": "exact"})) != pack_key(tiny())
    assert pack_key(tiny(**{"ortho.mode": "penalty"})) == pack_key(tiny())


# ------------------------------------------------------------------------- reproduce side
def test_plan_units_groups_table2_by_dataset(tmp_path):
    todo = launch.expand("table2", tmp_path)
    assert [len(u) for u in plan_units(todo, pack=True)] == [30, 30, 30]
    for unit in plan_units(todo, pack=True):
        assert len({r.recipe for r in unit}) == 1
    assert [len(u) for u in plan_units(todo, pack=True, devices=4)] == [
        8,
        8,
        8,
        6,
    ] * 3
    assert [len(u) for u in plan_units(todo, pack=True, size=12)] == [10] * 9
    assert len(plan_units(todo, pack=False)) == len(plan_units(todo, pack=True, size=1))
    assert len(plan_units(todo, pack=False)) == 90


def test_a_unit_of_runs_trains_packed_and_resumes_as_skipped(tmp_path):
    """launch.train_unit trains a unit that packing planned as one pack (its grid chose to)."""
    unit = [
        launch.Run("t", {"seed": i}, tiny(seed=i, **{"train.epochs": 1}), tmp_path / f"r{i}")
        for i in range(2)
    ]
    assert set(launch.train_unit(unit, launch.Launch(pack=True), "cpu").values()) == {"finished"}
    packed_with = {json.loads((r.dir / rundir.RESULT).read_text()).get("packed_with") for r in unit}
    assert packed_with == {2}
    assert set(launch.train_unit(unit, launch.Launch(), "cpu").values()) == {"skipped-finished"}
    assert plan_units(unit, pack=True) == [[unit[0], unit[1]]]
