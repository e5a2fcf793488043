"""Packaged recipes, `softmaso recipes`, any recipe file as a grid, --threads, and an installed
wheel running a named experiment outside the checkout."""

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import torch
import yaml

from softmaso import recipes, rundir
from softmaso.config import dump_yaml, read_recipe

REPO = Path(__file__).resolve().parent.parent
TINY = """\
data:
  name: synthetic
  synthetic_train: 200
model:
  width: 0.0625
train:
  epochs: 1
sweep:
  ortho.mode: [none, exact]
  seed: [0, 1]
"""


def test_every_named_experiment_is_packaged():
    for members in recipes.EXPERIMENTS.values():
        for name in members:
            assert recipes.path_of(name).is_file()
    assert {"smoke", "fashion", "table2/cifar10"} <= set(recipes.names())


def test_train_takes_a_packaged_name_or_a_file(cli, tmp_path):
    r = cli("train", "table2/cifar10", "--print-config")
    assert r.exit_code == 0 and "name: cifar10" in r.stdout
    r = cli("train", "fashion", "--print-config")
    assert r.exit_code == 0 and "name: fashion-mnist" in r.stdout
    r = cli("train", "no-such-recipe", "--print-config")
    assert r.exit_code == 2 and "softmaso recipes" in r.stderr
    r = cli("train", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1


def test_recipes_lists_and_copies(cli, tmp_path):
    r = cli("recipes")
    assert r.exit_code == 0
    assert "fashion" in r.stdout and "experiment table2" in r.stdout
    r = cli("recipes", "--copy", "fashion", tmp_path / "mine")
    assert r.exit_code == 0
    copied = tmp_path / "mine" / "fashion.yaml"
    assert copied.read_text() == recipes.path_of("fashion").read_text()
    r = cli("recipes", "--copy", "fashion", tmp_path / "mine")  # never overwrites
    assert r.exit_code == 2 and "exists" in r.stderr
    assert cli("recipes", "--copy", "nope", tmp_path).exit_code == 2


def test_a_recipe_file_with_a_sweep_runs_as_a_grid(cli, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(TINY)
    res = tmp_path / "res"
    r = cli("reproduce", recipe, "--results", res, "--threads", "1")
    assert r.exit_code == 0, r.output
    torch.set_num_threads(2)
    assert "mine: 4 finished" in r.output
    grid = json.loads((res / rundir.GRID).read_text())
    assert grid["experiment"] == "mine" and len(grid["runs"]) == 4
    assert grid["recipe_files"] == {"mine": str(recipe.absolute())}
    run = res / "mine" / "mode-exact_seed-1"
    assert json.loads((run / rundir.ENV).read_text())["device"]["threads"] == 1
    table = (res / "table.md").read_text()
    assert "ortho (exact)" in table and "(n=2)" in table and "p (Holm)" in table
    # rerun: everything skipped; an interrupted run resumes (its result removed)
    (run / rundir.RESULT).unlink()
    r = cli("reproduce", recipe, "--results", res)
    assert r.exit_code == 0 and "1 finished, 3 skipped-finished" in r.output
    # a missing run shows in the table, its values from the recipe file
    (res / "mine" / "mode-none_seed-0" / rundir.CONFIG).unlink()
    r = cli("table", res)
    assert r.exit_code == 0 and "1 missing" in r.stdout


def test_a_recipe_without_a_sweep_is_refused(cli, tmp_path):
    recipe = tmp_path / "one.yaml"
    recipe.write_text("data:\n  name: synthetic\n")
    r = cli("reproduce", recipe, "--results", tmp_path / "r")
    assert r.exit_code == 2 and "softmaso train" in r.stderr
    r = cli("reproduce", tmp_path / "none.yaml")
    assert r.exit_code == 2 and "no such recipe file" in r.stderr


def test_one_results_folder_holds_one_experiment(cli, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(TINY.replace("[none, exact]", "[none]").replace("[0, 1]", "[0]"))
    b.write_text(TINY.replace("[none, exact]", "[none]").replace("[0, 1]", "[0]"))
    assert cli("reproduce", a, "--results", tmp_path / "r").exit_code == 0
    r = cli("reproduce", b, "--results", tmp_path / "r")
    assert r.exit_code == 2 and "experiment 'a'" in r.stderr


def test_train_threads_are_recorded(cli, tmp_path):
    recipe = tmp_path / "one.yaml"
    recipe.write_text("\n".join(TINY.splitlines()[:7]) + "\n")
    r = cli("train", recipe, "--out", tmp_path / "run", "--device", "cpu", "--threads", "1")
    torch.set_num_threads(2)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / rundir.ENV).read_text())["device"]["threads"] == 1
    assert cli("train", recipe, "--threads", "0").exit_code == 2


def test_an_installed_wheel_runs_a_named_smoke_experiment_outside_the_checkout(tmp_path):
    """Build the wheel from a copy of the sources, install it (no deps) into a fresh venv that
    borrows this environment's dependencies, and run `reproduce fashion --smoke` elsewhere."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "softmaso"), str(src)], check=True)
    for cache in src.rglob("__pycache__"):
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
    )
    (wheel,) = dist.glob("softmaso-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    paths = {"base": str(env_dir), "platbase": str(env_dir)}
    site = Path(sysconfig.get_path("purelib", vars=paths))  # the venv's site-packages
    borrowed = [p for p in sys.path if p.endswith("site-packages")]
    (site / "borrowed.pth").write_text("\n".join(borrowed) + "\n")  # deps, not the editable hook
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SOFTMASO_DATA")}
    py = Path(sysconfig.get_path("scripts", vars=paths)) / Path(sys.executable).name
    where = subprocess.run(
        [py, "-c", "import softmaso; print(softmaso.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(site))  # the wheel's copy, not the checkout
    args = ["reproduce", "fashion", "--smoke", "--runs", "1", "--threads", "2"]
    got = subprocess.run(
        [py, "-m", "softmaso", *args], cwd=work, env=env, capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr[-2000:]
    table = work / "results" / "smoke" / "fashion" / "table.md"
    assert "SMOKE" in table.read_text() and "ortho (exact)" in table.read_text()
    cfg = yaml.safe_load(
        (work / "results/smoke/fashion/fashion/mode-exact_seed-0" / rundir.CONFIG).read_text()
    )
    assert cfg["data"]["name"] == "synthetic"


def test_a_finished_run_with_another_config_is_a_conflict_not_a_skip(cli, tmp_path):
    recipe = tmp_path / "g.yaml"
    recipe.write_text(TINY.replace("[none, exact]", "[none]"))
    res = tmp_path / "res"
    assert cli("reproduce", recipe, "--results", res).exit_code == 0
    before = {p: p.read_bytes() for p in res.rglob("*") if p.is_file()}
    r = cli("reproduce", recipe, "--results", res, "--set", "optim.batch_size=40")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "optim.batch_size: 50 there, 40 here" in r.stderr and "finished run" in r.stderr
    after = {p: p.read_bytes() for p in res.rglob("*") if p.is_file()}
    assert after == before  # nothing relabelled, nothing written


def test_a_truncated_checkpoint_fails_its_run_and_the_grid_goes_on(cli, tmp_path):
    recipe = tmp_path / "g.yaml"
    recipe.write_text(TINY.replace("epochs: 1", "epochs: 2"))
    res = tmp_path / "res"
    bad = res / "g" / "mode-none_seed-1"
    bad.mkdir(parents=True)
    cfg = read_recipe(recipe).config(settings={"ortho.mode": "none", "seed": 1})
    (bad / rundir.CONFIG).write_text(dump_yaml(cfg))
    (bad / rundir.CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    r = cli("reproduce", recipe, "--results", res)
    assert r.exit_code == 1
    assert "1 damaged, 3 finished" in r.output
    assert "damaged: mode-none_seed-1" in r.output and "corrupt or truncated" in r.output
    # the same state everywhere: damaged in the log, the summary, the table and rundir.status
    assert (res / "table.md").exists() and "1 damaged" in (res / "table.md").read_text()
    assert rundir.status(bad)[0] == "damaged"
    (bad / rundir.CHECKPOINT).unlink()  # the damaged file removed: the run trains from scratch
    r = cli("reproduce", recipe, "--results", res)
    assert r.exit_code == 0 and "1 finished, 3 skipped-finished" in r.output
    assert rundir.status(bad)[0] == "finished" and not (bad / rundir.ERROR).exists()
