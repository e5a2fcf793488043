"""Experiments: sweeps expanded into named runs, bad expansions, grid.json."""

import json

import pytest

from softmaso import fill, launch, rundir
from softmaso.config import read_recipe
from softmaso.errors import UserError


def test_table2_expands_to_90_named_runs(tmp_path):
    todo = launch.expand("table2", tmp_path)
    assert len(todo) == 90 and len({r.dir for r in todo}) == 90
    assert {r.cfg.data.name for r in todo} == {"svhn", "cifar10", "cifar100"}
    first = todo[0]
    assert first.dir == tmp_path / "svhn" / "lr-0.001_mode-none_seed-0"
    assert first.settings == {"optim.lr": 0.001, "ortho.mode": "none", "seed": 0}
    assert first.cfg.optim.lr == 0.001 and first.cfg.seed == 0


def test_filters_seeds_overrides_and_smoke(tmp_path):
    todo = launch.expand(
        "table2", tmp_path, datasets=["svhn"], seeds=2, overrides=["optim.lr=0.01"]
    )
    assert len(todo) == 2 * 2 and {r.cfg.optim.lr for r in todo} == {0.01}
    assert all("lr-" not in r.dir.name for r in todo)  # a --set key is no longer swept
    smoke = launch.expand("gs-cifar100", tmp_path, smoke=True)
    assert len(smoke) == 5 and {r.cfg.data.name for r in smoke} == {"synthetic"}
    assert {r.cfg.ortho.mode for r in smoke} == {"exact"}


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"datasets": ["mnist"]}, "--datasets"),
        ({"seeds": 0}, "--runs"),
        ({"overrides": ["optim.lrr=1"]}, "optim.lrr"),
    ],
)
def test_bad_expansions(tmp_path, kwargs, where):
    with pytest.raises(UserError, match=where):
        launch.expand("table2", tmp_path, **kwargs)
    with pytest.raises(UserError, match="unknown experiment"):
        launch.expand("table3", tmp_path)


def test_a_sweep_key_must_exist(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("sweep:\n  optim.lrate: [0.1, 0.2]\n")
    with pytest.raises(UserError, match="did you mean 'optim.lr'"):
        read_recipe(p)
    p.write_text("sweep:\n  seed: 3\n")
    with pytest.raises(UserError, match="non-empty list"):
        read_recipe(p)


def test_grid_json_records_each_runs_config_and_tables_read_it(tmp_path):
    """A missing run is placed from grid.json alone: the recipe file may be gone."""
    from softmaso.reporting.frame import collect

    recipe = tmp_path / "g.yaml"
    recipe.write_text(
        "data:\n  name: synthetic\nmodel:\n  width: 0.0625\noptim:\n  lr: 0.002\n"
        "sweep:\n  seed: [0, 1]\n"
    )
    root = tmp_path / "res"
    todo = launch.expand(str(recipe), root)
    launch.write_grid(root, "g", todo, smoke=False, recipe_files={"g": recipe})
    grid = json.loads((root / rundir.GRID).read_text())
    assert [r["config"]["optim"]["lr"] for r in grid["runs"]] == [0.002, 0.002]
    recipe.unlink()
    frame = collect(root)
    assert list(frame["status"]) == ["missing", "missing"] and set(frame["optim.lr"]) == {0.002}


def test_a_grid_that_grows_keeps_what_its_first_launch_recorded(tmp_path):
    """More seeds later (or an older grid.json upgraded): the date and the pack choice stay."""
    recipe = tmp_path / "g.yaml"
    recipe.write_text("data:\n  name: synthetic\nmodel:\n  width: 0.0625\nsweep:\n  seed: [0]\n")
    root = tmp_path / "res"
    launch.write_grid(root, "g", launch.expand(str(recipe), root), smoke=False)
    assert fill.settle(root, [], launch.Launch(pack=True)).pack
    first = json.loads((root / rundir.GRID).read_text())
    recipe.write_text(recipe.read_text().replace("[0]", "[0, 1]"))
    launch.write_grid(root, "g", launch.expand(str(recipe), root), smoke=False)
    grown = json.loads((root / rundir.GRID).read_text())
    assert len(grown["runs"]) == 2
    assert grown["created"] == first["created"] and grown["pack"] is True
    assert fill.settle(root, [], launch.Launch()).pack  # a restart without --pack: as recorded
